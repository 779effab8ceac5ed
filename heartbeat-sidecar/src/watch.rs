//! `heartbeat-sidecar status --watch`: a live table refreshed every 2 s, with
//! a detail pane for the selected worker.
//!
//! Rows are fetched on a thread of their own, so keys answer at once even
//! while a request hangs.

use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::Duration;

use heartbeat_sdk::read::{Reader, Snapshot};
use heartbeat_sdk::{Health, ReadError, StatusRow};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState, Wrap};
use ratatui::Frame;

use crate::exit::{Exit, USAGE};
use crate::table::{exit_code, headline, row_cells, COLUMNS, NO_WORKERS};

const REFRESH: Duration = Duration::from_secs(2);

/// Runs until `q`; returns the exit code of the last snapshot read.
pub fn watch(reader: Reader) -> Exit {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        eprintln!(
            "heartbeat-sidecar: status --watch needs a terminal (a tty on stdin and stdout); in scripts use `status` or `status --json`"
        );
        return Exit::Code(USAGE);
    }
    let mut view = View::new(reader.describe().to_owned());
    let (rows_tx, rows_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let fetcher = std::thread::Builder::new()
        .name("hp-watch-fetch".into())
        .spawn(move || fetch_until_stopped(&reader, &rows_tx, &stop_rx));
    if let Err(e) = fetcher {
        eprintln!("heartbeat-sidecar: cannot start the live view: {e}");
        return Exit::Code(USAGE);
    }
    let mut terminal = ratatui::init();
    loop {
        while let Ok(fetched) = rows_rx.try_recv() {
            view.update(fetched);
        }
        if terminal.draw(|f| view.draw(f)).is_err() {
            break;
        }
        if !matches!(event::poll(Duration::from_millis(200)), Ok(true)) {
            continue;
        }
        let Ok(Event::Key(key)) = event::read() else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => break,
            code => view.key(code),
        }
    }
    ratatui::restore();
    // The fetcher may be stuck in a request: it is not waited for.
    let _ = stop_tx.send(());
    match view.ever_read {
        true => Exit::Code(exit_code(&view.snapshot)),
        false => Exit::Code(USAGE),
    }
}

fn fetch_until_stopped(
    reader: &Reader,
    rows: &mpsc::Sender<Result<Snapshot, ReadError>>,
    stop: &mpsc::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = rows.send(Err(ReadError::Connect(format!("no runtime: {e}"))));
            return;
        }
    };
    loop {
        if rows.send(runtime.block_on(reader.fetch())).is_err() {
            return;
        }
        match stop.recv_timeout(REFRESH) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

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
    ever_read: bool,
    sort: SortKey,
    reverse: bool,
    table: TableState,
    fetched_at: Option<chrono::DateTime<chrono::Local>>,
}

/// Which columns show, most important first: a narrow terminal drops the
/// rest, never the names.
const PRIORITY: [usize; 11] = [0, 1, 2, 3, 4, 8, 9, 10, 5, 6, 7];
/// Each column's width (the name's is measured).
const WIDTHS: [u16; 11] = [0, 8, 12, 9, 7, 7, 8, 12, 10, 7, 12];
const NAME_WIDTH: (u16, u16) = (6, 40);

impl View {
    fn new(target: String) -> Self {
        View {
            target,
            snapshot: Snapshot {
                rows: Vec::new(),
                now: chrono::Utc::now(),
            },
            error: None,
            ever_read: false,
            sort: SortKey::Name,
            reverse: false,
            table: TableState::default().with_selected(Some(0)),
            fetched_at: None,
        }
    }

    fn update(&mut self, fetched: Result<Snapshot, ReadError>) {
        // The selection follows the worker, not the line, across refreshes.
        let selected = self.selected().map(|r| r.worker_name.clone());
        match fetched {
            Ok(s) => {
                self.snapshot = s;
                self.error = None;
                self.ever_read = true;
            }
            Err(e) => self.error = Some(e.to_string()),
        }
        self.fetched_at = Some(chrono::Local::now());
        self.sort_rows();
        self.select_named(selected);
    }

    fn key(&mut self, code: KeyCode) {
        match code {
            KeyCode::Down | KeyCode::Char('j') => self.move_by(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_by(-1),
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                self.sort_rows();
            }
            KeyCode::Char('r') => {
                self.reverse = !self.reverse;
                self.sort_rows();
            }
            _ => {}
        }
    }

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
        self.sort_rows_only();
        self.select_named(selected);
    }

    fn select_named(&mut self, name: Option<String>) {
        let at = name
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

    fn sort_rows_only(&mut self) {
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
    }

    fn selected(&self) -> Option<&StatusRow> {
        self.table
            .selected()
            .and_then(|i| self.snapshot.rows.get(i))
    }

    /// The columns that fit in `width`, in display order, with their widths.
    fn columns_for(&self, width: u16) -> Vec<(usize, u16)> {
        let name = self
            .snapshot
            .rows
            .iter()
            .map(|r| r.worker_name.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(usize::from(NAME_WIDTH.0), usize::from(NAME_WIDTH.1)) as u16;
        // Borders take 2; each column after the first takes a space.
        let mut room = width.saturating_sub(2);
        let mut shown = Vec::new();
        for &i in &PRIORITY {
            let w = if i == 0 { name.min(room) } else { WIDTHS[i] };
            let need = w + u16::from(!shown.is_empty());
            if need > room {
                continue;
            }
            room -= need;
            shown.push((i, w));
        }
        shown.sort_by_key(|(i, _)| *i);
        shown
    }

    fn draw(&mut self, f: &mut Frame) {
        let area = f.area();
        // The detail pane only where there is room for the table too.
        let detail_height = match area.height {
            h if h >= 30 => 12,
            h if h >= 20 => 8,
            _ => 0,
        };
        let [title, table, detail, help] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(detail_height),
            Constraint::Length(1),
        ])
        .areas(area);
        self.draw_title(f, title);
        self.draw_table(f, table);
        if detail_height > 0 {
            self.draw_detail(f, detail);
        }
        f.render_widget(
            Line::from(" q quit   ↑/↓ select   s sort   r reverse")
                .style(Style::new().fg(Color::DarkGray)),
            help,
        );
    }

    fn draw_title(&self, f: &mut Frame, area: Rect) {
        let mut spans = vec![
            Span::styled(
                headline(&self.snapshot),
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
        f.render_widget(Line::from(spans), area);
    }

    fn draw_table(&mut self, f: &mut Frame, area: Rect) {
        let now = self.snapshot.now;
        let columns = self.columns_for(area.width);
        let header = Row::new(columns.iter().map(|(i, _)| COLUMNS[*i]))
            .style(Style::new().add_modifier(Modifier::BOLD));
        let rows: Vec<Row> = self
            .snapshot
            .rows
            .iter()
            .map(|r| {
                let health = r.health(now);
                let cells = row_cells(r, now);
                Row::new(columns.iter().map(|(i, _)| {
                    let cell = Cell::from(cells[*i].clone());
                    if *i == 1 {
                        cell.style(Style::new().fg(color(health)))
                    } else {
                        cell
                    }
                }))
            })
            .collect();
        let widths: Vec<Constraint> = columns
            .iter()
            .map(|(_, w)| Constraint::Length(*w))
            .collect();
        let block = Block::new().borders(Borders::ALL).title(format!(
            " sorted by {}{} ",
            self.sort.label(),
            if self.reverse { ", reversed" } else { "" }
        ));
        let table = Table::new(rows, widths)
            .header(header)
            .block(block)
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
        f.render_stateful_widget(table, area, &mut self.table);
    }

    fn draw_detail(&self, f: &mut Frame, area: Rect) {
        let now = self.snapshot.now;
        let text = match self.selected() {
            None => vec![Line::from(NO_WORKERS)],
            Some(r) => detail_lines(r, now),
        };
        let block = Block::new().borders(Borders::ALL).title(format!(
            " {} ",
            self.selected()
                .map(|r| r.worker_name.as_str())
                .unwrap_or("detail")
        ));
        f.render_widget(
            Paragraph::new(text).block(block).wrap(Wrap { trim: false }),
            area,
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

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use serde_json::json;

    fn snapshot() -> Snapshot {
        let now = chrono::Utc::now();
        let row = |name: &str, status: &str, ago: i64| -> StatusRow {
            serde_json::from_value(json!({
                "worker_name": name, "status": status, "jobs_processed": 42, "error_count": 3,
                "last_heartbeat": now - chrono::Duration::seconds(ago), "heartbeat_interval_seconds": 30,
                "memory_rss_bytes": 50_593_792, "uptime_seconds": 7500, "pid": 4242,
                "hostname": "vps-1", "last_error": "ERROR: upstream timed out", "cpu_percent": 2.5
            }))
            .expect("row")
        };
        Snapshot {
            rows: vec![
                row("order-executor-eu-west-1", "running", 3),
                row("pnl-nightly", "crashed", 40),
                row("crawler", "running", 600),
            ],
            now,
        }
    }

    fn render(view: &mut View, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("terminal");
        terminal.draw(|f| view.draw(f)).expect("draw");
        let buffer = terminal.backend().buffer().clone();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol().to_owned())
                    .collect::<String>()
                    + "\n"
            })
            .collect()
    }

    #[test]
    fn a_wide_terminal_shows_every_column_and_the_detail_pane() {
        let mut view = View::new("the local store /tmp/x.db".into());
        view.update(Ok(snapshot()));
        let screen = render(&mut view, 150, 40);
        for column in COLUMNS {
            assert!(screen.contains(column), "{column} missing:\n{screen}");
        }
        assert!(screen.contains("Worker Status  1/3 running"), "{screen}");
        assert!(screen.contains("order-executor-eu-west-1"), "{screen}");
        assert!(
            screen.contains("stale") && screen.contains("crashed"),
            "{screen}"
        );
        assert!(screen.contains("last error"), "detail pane:\n{screen}");
        assert!(screen.contains("q quit"), "{screen}");
    }

    #[test]
    fn a_narrow_terminal_keeps_names_whole_and_drops_columns_instead() {
        let mut view = View::new("the local store /tmp/x.db".into());
        view.update(Ok(snapshot()));
        let screen = render(&mut view, 60, 12);
        assert!(
            screen.contains("order-executor-eu-west-1") && screen.contains("pnl-nightly"),
            "names cut at 60x12:\n{screen}"
        );
        assert!(
            screen.contains("HEALTH") && screen.contains("running"),
            "{screen}"
        );
        assert!(
            !screen.contains("HOST"),
            "low-priority columns go first:\n{screen}"
        );
    }

    #[test]
    fn keys_move_the_selection_and_sort() {
        let mut view = View::new("t".into());
        view.update(Ok(snapshot()));
        assert_eq!(
            view.selected().map(|r| r.worker_name.as_str()),
            Some("crawler")
        );
        view.key(KeyCode::Down);
        assert_eq!(
            view.selected().map(|r| r.worker_name.as_str()),
            Some("order-executor-eu-west-1")
        );
        view.key(KeyCode::Char('s'));
        assert_eq!(view.sort, SortKey::Health);
        assert_eq!(
            view.selected().map(|r| r.worker_name.as_str()),
            Some("order-executor-eu-west-1"),
            "the selection follows the worker"
        );
        let screen = render(&mut view, 150, 40);
        assert!(screen.contains("sorted by health"), "{screen}");
        let mut refreshed = snapshot();
        refreshed.rows.reverse();
        view.update(Ok(refreshed));
        assert_eq!(
            view.selected().map(|r| r.worker_name.as_str()),
            Some("order-executor-eu-west-1"),
            "a refresh keeps the selected worker"
        );
    }

    #[test]
    fn a_read_error_shows_and_keeps_the_last_rows() {
        let mut view = View::new("t".into());
        view.update(Ok(snapshot()));
        view.update(Err(ReadError::Timeout(Duration::from_secs(10))));
        let screen = render(&mut view, 150, 40);
        assert!(screen.contains("error: no answer within 10s"), "{screen}");
        assert!(screen.contains("pnl-nightly"), "{screen}");
    }
}
