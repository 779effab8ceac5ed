//! `heartbeat-sidecar status --watch`: a live table refreshed every 2 s, with
//! a detail pane for the selected worker.

use std::time::{Duration, Instant};

use heartbeat_sdk::{Health, StatusRow};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState, Wrap};
use ratatui::Frame;

use crate::status::{exit_code, row_cells, Snapshot, Source, COLUMNS, EXIT_UNREADABLE};

const REFRESH: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortKey {
    Name,
    Health,
    LastSeen,
    Jobs,
    Errors,
    Memory,
}

impl SortKey {
    fn next(self) -> Self {
        match self {
            SortKey::Name => SortKey::Health,
            SortKey::Health => SortKey::LastSeen,
            SortKey::LastSeen => SortKey::Jobs,
            SortKey::Jobs => SortKey::Errors,
            SortKey::Errors => SortKey::Memory,
            SortKey::Memory => SortKey::Name,
        }
    }
    fn label(self) -> &'static str {
        match self {
            SortKey::Name => "name",
            SortKey::Health => "health",
            SortKey::LastSeen => "last seen",
            SortKey::Jobs => "jobs",
            SortKey::Errors => "errors",
            SortKey::Memory => "memory",
        }
    }
}

struct View {
    target: String,
    snapshot: Snapshot,
    error: Option<String>,
    sort: SortKey,
    reverse: bool,
    table: TableState,
    fetched_at: Option<chrono::DateTime<chrono::Local>>,
}

/// Runs until `q`; returns the exit code of the last snapshot.
pub async fn watch(source: &Source, target: String) -> i32 {
    let mut view = View {
        target,
        snapshot: Snapshot {
            rows: Vec::new(),
            now: chrono::Utc::now(),
        },
        error: None,
        sort: SortKey::Name,
        reverse: false,
        table: TableState::default().with_selected(Some(0)),
        fetched_at: None,
    };
    let mut terminal = ratatui::init();
    let mut last_fetch: Option<Instant> = None;
    let mut ever_read = false;
    loop {
        if last_fetch.is_none_or(|t| t.elapsed() >= REFRESH) {
            match source.fetch().await {
                Ok(s) => {
                    view.snapshot = s;
                    view.error = None;
                    ever_read = true;
                }
                Err(e) => view.error = Some(e.to_string()),
            }
            view.fetched_at = Some(chrono::Local::now());
            view.sort_rows();
            last_fetch = Some(Instant::now());
        }
        if terminal.draw(|f| view.draw(f)).is_err() {
            break;
        }
        let wait = REFRESH
            .saturating_sub(last_fetch.map(|t| t.elapsed()).unwrap_or_default())
            .min(Duration::from_millis(250));
        if let Ok(true) = event::poll(wait) {
            if let Ok(Event::Key(key)) = event::read() {
                if key.kind != KeyEventKind::Press {
                    continue;
                }
                match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => break,
                    KeyCode::Down | KeyCode::Char('j') => view.move_by(1),
                    KeyCode::Up | KeyCode::Char('k') => view.move_by(-1),
                    KeyCode::Char('s') => {
                        view.sort = view.sort.next();
                        view.sort_rows();
                    }
                    KeyCode::Char('r') => {
                        view.reverse = !view.reverse;
                        view.sort_rows();
                    }
                    _ => {}
                }
            }
        }
    }
    ratatui::restore();
    if ever_read {
        exit_code(&view.snapshot)
    } else {
        EXIT_UNREADABLE
    }
}

impl View {
    fn move_by(&mut self, delta: i64) {
        let n = self.snapshot.rows.len() as i64;
        if n == 0 {
            return;
        }
        let at = self.table.selected().unwrap_or(0) as i64;
        self.table
            .select(Some((at + delta).clamp(0, n - 1) as usize));
    }

    fn sort_rows(&mut self) {
        let selected = self.selected().map(|r| r.worker_name.clone());
        let now = self.snapshot.now;
        let key = self.sort;
        self.snapshot.rows.sort_by(|a, b| {
            let order = match key {
                SortKey::Name => a.worker_name.cmp(&b.worker_name),
                SortKey::Health => a.health(now).cmp(&b.health(now)),
                SortKey::LastSeen => b.last_heartbeat.cmp(&a.last_heartbeat),
                SortKey::Jobs => b.jobs_processed.cmp(&a.jobs_processed),
                SortKey::Errors => b.error_count.cmp(&a.error_count),
                SortKey::Memory => b.memory_rss_bytes.cmp(&a.memory_rss_bytes),
            };
            order.then_with(|| a.worker_name.cmp(&b.worker_name))
        });
        if self.reverse {
            self.snapshot.rows.reverse();
        }
        let at = selected
            .and_then(|name| {
                self.snapshot
                    .rows
                    .iter()
                    .position(|r| r.worker_name == name)
            })
            .unwrap_or(0);
        self.table
            .select(Some(at.min(self.snapshot.rows.len().saturating_sub(1))));
    }

    fn selected(&self) -> Option<&StatusRow> {
        self.table
            .selected()
            .and_then(|i| self.snapshot.rows.get(i))
    }

    fn draw(&mut self, f: &mut Frame) {
        let [title, table, detail, help] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(5),
            Constraint::Length(12),
            Constraint::Length(1),
        ])
        .areas(f.area());
        let now = self.snapshot.now;
        let running = self
            .snapshot
            .rows
            .iter()
            .filter(|r| r.health(now) == Health::Running)
            .count();
        let mut spans = vec![
            Span::styled(
                format!(
                    "Worker Status  {running}/{} running",
                    self.snapshot.rows.len()
                ),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::raw(format!("   {}", self.target)),
        ];
        if let Some(t) = self.fetched_at {
            spans.push(Span::raw(format!("   updated {}", t.format("%H:%M:%S"))));
        }
        if let Some(e) = &self.error {
            spans.push(Span::styled(
                format!("   error: {e}"),
                Style::new().fg(Color::Red),
            ));
        }
        f.render_widget(Line::from(spans), title);

        let header = Row::new(COLUMNS).style(Style::new().add_modifier(Modifier::BOLD));
        let rows: Vec<Row> = self
            .snapshot
            .rows
            .iter()
            .map(|r| {
                let health = r.health(now);
                let cells = row_cells(r, now).into_iter().enumerate().map(|(i, c)| {
                    if i == 1 {
                        Cell::from(c).style(Style::new().fg(color(health)))
                    } else {
                        Cell::from(c)
                    }
                });
                Row::new(cells)
            })
            .collect();
        let name_width = self
            .snapshot
            .rows
            .iter()
            .map(|r| r.worker_name.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(6, 40) as u16;
        let widths = [
            Constraint::Length(name_width),
            Constraint::Length(8),
            Constraint::Length(12),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(12),
            Constraint::Length(10),
            Constraint::Length(12),
        ];
        let block = Block::new().borders(Borders::ALL).title(format!(
            " sorted by {}{} ",
            self.sort.label(),
            if self.reverse { ", reversed" } else { "" }
        ));
        let table_widget = Table::new(rows, widths)
            .header(header)
            .block(block)
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
        f.render_stateful_widget(table_widget, table, &mut self.table);

        let detail_text = match self.selected() {
            None => vec![Line::from("No worker has reported yet.")],
            Some(r) => detail_lines(r, now),
        };
        let detail_block = Block::new().borders(Borders::ALL).title(format!(
            " {} ",
            self.selected()
                .map(|r| r.worker_name.as_str())
                .unwrap_or("detail")
        ));
        f.render_widget(
            Paragraph::new(detail_text)
                .block(detail_block)
                .wrap(Wrap { trim: false }),
            detail,
        );
        f.render_widget(
            Line::from(" q quit   ↑/↓ select   s sort   r reverse")
                .style(Style::new().fg(Color::DarkGray)),
            help,
        );
    }
}

fn detail_lines(r: &StatusRow, now: chrono::DateTime<chrono::Utc>) -> Vec<Line<'static>> {
    let field = |k: &str, v: String| {
        Line::from(vec![
            Span::styled(format!("{k:<14}"), Style::new().fg(Color::DarkGray)),
            Span::raw(v),
        ])
    };
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut lines = vec![
        field(
            "health",
            format!(
                "{} (status {})",
                r.health(now).as_str(),
                opt(r.status.clone())
            ),
        ),
        field("last error", opt(r.last_error.clone()).replace('\n', " | ")),
        field(
            "exit",
            match (r.exit_code, r.exit_signal) {
                (Some(c), _) => format!("code {c}"),
                (None, Some(s)) => format!("signal {s}"),
                _ => "-".into(),
            },
        ),
        field(
            "version",
            format!(
                "{}   reporter {}",
                opt(r.version.clone()),
                opt(r.reporter.clone())
            ),
        ),
        field("started", opt(r.started_at.map(|t| t.to_rfc3339()))),
        field(
            "error streak",
            format!("{} in a row", r.consecutive_errors.unwrap_or(0)),
        ),
    ];
    let meta = r
        .metadata
        .as_ref()
        .map(|m| serde_json::to_string(m).unwrap_or_default())
        .unwrap_or_else(|| "{}".into());
    lines.push(field("metadata", meta));
    lines
}

fn color(h: Health) -> Color {
    match h {
        Health::Running => Color::Green,
        Health::Stale => Color::Yellow,
        Health::Crashed => Color::Red,
        Health::Stopped => Color::Gray,
        Health::Unknown => Color::DarkGray,
    }
}
