//! What the live view shows and how keys change it: the table (sorted,
//! filtered by pool and health, marked rows, each worker's control state),
//! the detail or audit pane, the dialog and the answers. No I/O here: the
//! view says what to send, [`super::link`] sends it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use heartbeat_sdk::read::Snapshot;
use heartbeat_sdk::sidecar::{AuditEntry, ControlAnswer, ControlError, ControlRequest, PoolBudget};
use heartbeat_sdk::{Health, ReadError, StatusRow};
use ratatui::crossterm::event::KeyCode;
use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState, Wrap};
use ratatui::Frame;

use super::dialog::{Dialog, Outcome};
use crate::fleet::{applied, impact, pool_of, state_of};
use crate::table::{headline, row_cells, COLUMNS, NO_WORKERS};

/// The keys that steer, as the footer lists them: shifted, so a stray key
/// never opens a dialog.
const ACTIONS: [(char, &str); 7] = [
    ('P', "pause"),
    ('U', "resume"),
    ('D', "drain"),
    ('R', "restart"),
    ('N', "run_now"),
    ('E', "enable"),
    ('X', "disable"),
];
/// The audit pane keeps this many entries.
const AUDIT_KEPT: usize = 200;
/// A request not applied is shown (red after `--wait`'s default 2 min) this long.
const PENDING_SHOWN: std::time::Duration = std::time::Duration::from_secs(600);
const PENDING_LATE: std::time::Duration = std::time::Duration::from_secs(120);
/// An applied request stays on its row this long.
const APPLIED_SHOWN: std::time::Duration = std::time::Duration::from_secs(15);

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

/// The health filter, in the order `h` goes through it.
const HEALTH_FILTERS: [Option<HealthFilter>; 9] = [
    None,
    Some(HealthFilter::Attention),
    Some(HealthFilter::Is(Health::Running)),
    Some(HealthFilter::Is(Health::Stale)),
    Some(HealthFilter::Is(Health::Hung)),
    Some(HealthFilter::Is(Health::Flapping)),
    Some(HealthFilter::Is(Health::Crashed)),
    Some(HealthFilter::Is(Health::Stopped)),
    Some(HealthFilter::Is(Health::Unknown)),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HealthFilter {
    /// What `status` exits 1 for.
    Attention,
    Is(Health),
}

impl HealthFilter {
    fn admits(self, r: &StatusRow, now: chrono::DateTime<chrono::Utc>) -> bool {
        match self {
            HealthFilter::Attention => r.needs_attention(now),
            HealthFilter::Is(h) => r.health(now) == h,
        }
    }
    fn label(self) -> &'static str {
        match self {
            HealthFilter::Attention => "needs attention",
            HealthFilter::Is(h) => h.as_str(),
        }
    }
}

/// The lower pane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pane {
    Detail,
    Audit,
}

/// A request a worker has been asked to apply, shown on its row.
struct Pending {
    action: String,
    generation: i64,
    asked: Instant,
    /// Seconds from the answer to the row that shows it applied.
    applied_after: Option<(f64, Instant)>,
}

/// An answer or an error, shown until the next key.
struct Notice {
    text: String,
    bad: bool,
}

/// What a key asks of the loop.
#[derive(Debug, PartialEq)]
pub enum Effect {
    Nothing,
    Quit,
    Send(ControlRequest),
}

pub struct View {
    target: String,
    /// `user@host` for the audit log, unless a signed-in token says who.
    actor: Option<String>,
    snapshot: Snapshot,
    budgets: BTreeMap<String, PoolBudget>,
    audit: Vec<AuditEntry>,
    error: Option<String>,
    pub ever_read: bool,
    sort: SortKey,
    reverse: bool,
    pool_filter: Option<String>,
    health_filter: usize,
    /// Indexes into the snapshot's rows, as shown.
    shown: Vec<usize>,
    /// The cursor's line in `shown`, and the first line on screen.
    cursor: usize,
    offset: usize,
    marked: BTreeSet<String>,
    pending: BTreeMap<String, Pending>,
    dialog: Option<Dialog>,
    notice: Option<Notice>,
    sending: Option<String>,
    pane: Pane,
    fetched_at: Option<chrono::DateTime<chrono::Local>>,
    /// Table lines on screen at the last draw (page up and down move by it).
    page: usize,
    /// The name column's width, measured at each read.
    name_width: u16,
    budgets_error: Option<String>,
}

/// Which columns show, most important first: a narrow terminal drops the
/// rest, never the names. Index 12 is the view's own CONTROL column.
const PRIORITY: [usize; 13] = [0, 1, 12, 2, 3, 4, 5, 9, 10, 11, 6, 7, 8];
/// Each column's width (the name's is measured).
const WIDTHS: [u16; 13] = [0, 8, 8, 12, 9, 7, 7, 8, 12, 10, 7, 12, 20];
const NAME_WIDTH: (u16, u16) = (8, 40);
/// The mark before a name.
const MARK: &str = "● ";
const NO_MARK: &str = "  ";

impl View {
    pub fn new(target: String, actor: Option<String>) -> Self {
        View {
            target,
            actor,
            snapshot: Snapshot {
                rows: Vec::new(),
                now: chrono::Utc::now(),
            },
            budgets: BTreeMap::new(),
            audit: Vec::new(),
            error: None,
            ever_read: false,
            sort: SortKey::Name,
            reverse: false,
            pool_filter: None,
            health_filter: 0,
            shown: Vec::new(),
            cursor: 0,
            offset: 0,
            marked: BTreeSet::new(),
            pending: BTreeMap::new(),
            dialog: None,
            notice: None,
            sending: None,
            pane: Pane::Detail,
            fetched_at: None,
            page: 10,
            name_width: NAME_WIDTH.0,
            budgets_error: None,
        }
    }

    /// The last rows read, to judge the exit code by.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// A read of the rows.
    pub fn rows(&mut self, fetched: Result<Snapshot, ReadError>) {
        // The cursor follows the worker, not the line, across refreshes.
        let at = self.current().map(|r| r.worker_name.clone());
        match fetched {
            Ok(s) => {
                self.snapshot = s;
                self.error = None;
                self.ever_read = true;
                // A worker whose row is gone can be neither marked nor waited for.
                let names: std::collections::HashMap<&str, usize> = self
                    .snapshot
                    .rows
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (r.worker_name.as_str(), i))
                    .collect();
                self.marked.retain(|m| names.contains_key(m.as_str()));
                settle_pending(&mut self.pending, &self.snapshot.rows, &names);
            }
            Err(e) => self.error = Some(e.to_string()),
        }
        self.fetched_at = Some(chrono::Local::now());
        self.arrange(at);
    }

    /// A read of the pools' budgets. Until one succeeds no dialog opens: a
    /// protected pool would look unprotected.
    pub fn budgets(&mut self, read: Result<Vec<PoolBudget>, ControlError>) {
        match read {
            Ok(budgets) => {
                self.budgets = budgets.into_iter().map(|b| (b.pool.clone(), b)).collect();
                self.budgets_error = None;
            }
            Err(e) => self.budgets_error = Some(e.to_string()),
        }
    }

    /// New audit entries, oldest first; one already kept is skipped.
    pub fn audit(&mut self, read: Result<Vec<AuditEntry>, ControlError>) {
        let Ok(entries) = read else {
            return;
        };
        for entry in entries {
            if self.audit.last().is_none_or(|last| entry.id > last.id) {
                self.audit.push(entry);
            }
        }
        let over = self.audit.len().saturating_sub(AUDIT_KEPT);
        self.audit.drain(..over);
    }

    /// The store's answer to a request the view sent.
    pub fn answer(&mut self, answer: Result<ControlAnswer, ControlError>) {
        self.sending = None;
        self.notice = Some(match answer {
            Ok(a) if a.accepted() => {
                for (name, generation) in a.generations.clone().unwrap_or_default() {
                    self.pending.insert(
                        name,
                        Pending {
                            action: a.action.clone(),
                            generation,
                            asked: Instant::now(),
                            applied_after: None,
                        },
                    );
                }
                for name in &a.workers {
                    self.marked.remove(name);
                }
                Notice {
                    text: format!("accepted (audit #{}): {}", a.audit_id, a.message),
                    bad: false,
                }
            }
            Ok(a) => Notice {
                text: format!(
                    "refused ({}): {}",
                    a.rule.as_deref().unwrap_or("rule"),
                    a.message
                ),
                bad: true,
            },
            Err(e) => Notice {
                text: format!("not sent: {e}"),
                bad: true,
            },
        });
    }

    pub fn key(&mut self, code: KeyCode) -> Effect {
        if let Some(dialog) = &mut self.dialog {
            match dialog.key(code) {
                Outcome::Open => {}
                Outcome::Cancelled => self.dialog = None,
                Outcome::Confirmed { confirm } => {
                    if let Some(dialog) = self.dialog.take() {
                        return Effect::Send(self.request(dialog, confirm));
                    }
                }
            }
            return Effect::Nothing;
        }
        // A refusal or an error stays until a key; that key only closes it.
        if self.notice.take().is_some_and(|n| n.bad) {
            return Effect::Nothing;
        }
        let page = self.page as i64;
        match code {
            KeyCode::Char('q') => return Effect::Quit,
            // Esc never quits: it is what one presses to back out.
            KeyCode::Esc => self.marked.clear(),
            KeyCode::Down | KeyCode::Char('j') => self.move_by(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_by(-1),
            KeyCode::PageDown => self.move_by(page),
            KeyCode::PageUp => self.move_by(-page),
            KeyCode::Home | KeyCode::Char('g') => self.move_by(i64::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.move_by(i64::MAX / 2),
            KeyCode::Char(' ') => {
                if let Some(name) = self.current().map(|r| r.worker_name.clone()) {
                    if !self.marked.remove(&name) {
                        self.marked.insert(name);
                    }
                    self.move_by(1);
                }
            }
            KeyCode::Char('a') => self.mark_all_shown(),
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                self.rearrange();
            }
            KeyCode::Char('r') => {
                self.reverse = !self.reverse;
                self.rearrange();
            }
            KeyCode::Char('f') => {
                self.pool_filter = self.next_pool();
                self.rearrange();
            }
            KeyCode::Char('h') => {
                self.health_filter = (self.health_filter + 1) % HEALTH_FILTERS.len();
                self.rearrange();
            }
            KeyCode::Char('l') => {
                self.pane = match self.pane {
                    Pane::Detail => Pane::Audit,
                    Pane::Audit => Pane::Detail,
                }
            }
            KeyCode::Char(c) => {
                if let Some((_, action)) = ACTIONS.iter().find(|(k, _)| *k == c) {
                    self.open_dialog(action);
                }
            }
            _ => {}
        }
        Effect::Nothing
    }

    /// `a`: every worker shown is marked, or, when all already are, none.
    fn mark_all_shown(&mut self) {
        let names: Vec<String> = self
            .shown
            .iter()
            .map(|&i| self.snapshot.rows[i].worker_name.clone())
            .collect();
        if names.iter().all(|n| self.marked.contains(n)) {
            for n in &names {
                self.marked.remove(n);
            }
        } else {
            self.marked.extend(names);
        }
    }

    /// The pool after the one filtered on (`None`: every pool).
    fn next_pool(&self) -> Option<String> {
        let pools: BTreeSet<String> = self
            .snapshot
            .rows
            .iter()
            .map(pool_of)
            .chain(self.budgets.keys().cloned())
            .collect();
        match &self.pool_filter {
            None => pools.into_iter().next(),
            Some(now) => pools.into_iter().find(|p| p > now),
        }
    }

    /// The workers an action is for: the marked ones, else the cursor's.
    fn targets(&self) -> Vec<&StatusRow> {
        if self.marked.is_empty() {
            return self.current().into_iter().collect();
        }
        self.snapshot
            .rows
            .iter()
            .filter(|r| self.marked.contains(&r.worker_name))
            .collect()
    }

    fn open_dialog(&mut self, action: &str) {
        let refuse = match (&self.budgets_error, &self.sending) {
            (Some(e), _) => Some(format!(
                "cannot read the pools' budgets ({e}): nothing is sent without them"
            )),
            (None, Some(on_its_way)) => {
                Some(format!("{on_its_way} is on its way: wait for its answer"))
            }
            (None, None) => None,
        };
        if let Some(text) = refuse {
            self.notice = Some(Notice { text, bad: true });
            return;
        }
        let targets = self.targets();
        if targets.is_empty() {
            self.notice = Some(Notice {
                text: "no worker to act on: none is shown (change the filter with f or h)".into(),
                bad: true,
            });
            return;
        }
        let names = targets.iter().map(|r| r.worker_name.clone()).collect();
        let impact = impact(
            action,
            &targets,
            &self.snapshot,
            &self.budgets,
            false,
            false,
        );
        self.dialog = Some(Dialog::new(action, names, impact));
    }

    fn request(&mut self, dialog: Dialog, confirm: Option<String>) -> ControlRequest {
        self.sending = Some(format!(
            "{} for {}",
            dialog.action.replace('_', "-"),
            dialog.workers.join(", ")
        ));
        let mut request = ControlRequest::workers(dialog.action, dialog.workers);
        request.confirm = confirm;
        request.actor = self.actor.clone();
        request
    }

    fn move_by(&mut self, delta: i64) {
        let n = self.shown.len() as i64;
        if n == 0 {
            return;
        }
        self.cursor = (self.cursor as i64).saturating_add(delta).clamp(0, n - 1) as usize;
    }

    fn current(&self) -> Option<&StatusRow> {
        self.shown
            .get(self.cursor)
            .and_then(|&i| self.snapshot.rows.get(i))
    }

    /// Sorts and filters again, the cursor on the same worker.
    fn rearrange(&mut self) {
        let at = self.current().map(|r| r.worker_name.clone());
        self.arrange(at);
    }

    fn arrange(&mut self, at: Option<String>) {
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
        let health = HEALTH_FILTERS[self.health_filter];
        let pool = self.pool_filter.as_deref();
        self.shown = self
            .snapshot
            .rows
            .iter()
            .enumerate()
            .filter(|(_, r)| pool.is_none_or(|p| pool_of(r) == p))
            .filter(|(_, r)| health.is_none_or(|h| h.admits(r, now)))
            .map(|(i, _)| i)
            .collect();
        self.cursor = at
            .and_then(|name| {
                self.shown
                    .iter()
                    .position(|&i| self.snapshot.rows[i].worker_name == name)
            })
            .unwrap_or(self.cursor)
            .min(self.shown.len().saturating_sub(1));
        self.name_width =
            self.snapshot
                .rows
                .iter()
                .map(|r| r.worker_name.chars().count() + MARK.chars().count())
                .max()
                .unwrap_or(0)
                .clamp(usize::from(NAME_WIDTH.0), usize::from(NAME_WIDTH.1)) as u16;
    }

    /// The columns that fit in `width`, in display order, with their widths.
    fn columns_for(&self, width: u16) -> Vec<(usize, u16)> {
        // Borders take 2; each column after the first takes a space.
        let mut room = width.saturating_sub(2);
        let mut shown = Vec::new();
        for &i in &PRIORITY {
            let w = if i == 0 {
                self.name_width.min(room)
            } else {
                WIDTHS[i]
            };
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

    pub fn draw(&mut self, f: &mut Frame) {
        let area = f.area();
        // The lower pane only where there is room for the table too.
        let pane_height = match area.height {
            h if h >= 30 => 12,
            h if h >= 20 => 8,
            _ => 0,
        };
        let help_lines = footer(area.width);
        let [title, table, pane, help] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(pane_height),
            Constraint::Length(help_lines.len() as u16),
        ])
        .areas(area);
        self.draw_title(f, title);
        self.draw_table(f, table);
        if pane_height > 0 {
            match self.pane {
                Pane::Detail => self.draw_detail(f, pane),
                Pane::Audit => self.draw_audit(f, pane),
            }
        }
        let grey = Style::new().fg(Color::DarkGray);
        f.render_widget(
            Paragraph::new(
                help_lines
                    .into_iter()
                    .map(|l| Line::from(l).style(grey))
                    .collect::<Vec<_>>(),
            ),
            help,
        );
        if let Some(dialog) = &self.dialog {
            dialog.draw(f, area);
        } else if let Some(notice) = self.notice.as_ref().filter(|n| n.bad) {
            draw_notice(f, area, &notice.text);
        }
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
        let red = Style::new().fg(Color::Red);
        if let Some(e) = &self.error {
            spans.push(Span::styled(format!("   error: {e}"), red));
        }
        if let Some(e) = &self.budgets_error {
            spans.push(Span::styled(format!("   budgets: {e}"), red));
        }
        if let Some(sending) = &self.sending {
            spans.push(Span::styled(
                format!("   sending {sending}…"),
                Style::new().fg(Color::Yellow),
            ));
        } else if let Some(notice) = self.notice.as_ref().filter(|n| !n.bad) {
            spans.push(Span::styled(
                format!("   {}", notice.text),
                Style::new().fg(Color::Green),
            ));
        }
        f.render_widget(Line::from(spans), area);
    }

    fn control_cell(&self, r: &StatusRow) -> (String, Style) {
        match self.pending.get(&r.worker_name) {
            Some(p) => {
                let verb = p.action.replace('_', "-");
                match p.applied_after {
                    Some((secs, _)) => (
                        format!("{verb} applied {secs:.1} s"),
                        Style::new().fg(Color::Green),
                    ),
                    None => (
                        format!("{verb} pending {} s", p.asked.elapsed().as_secs()),
                        Style::new().fg(if p.asked.elapsed() > PENDING_LATE {
                            Color::Red
                        } else {
                            Color::Yellow
                        }),
                    ),
                }
            }
            None => match state_of(r) {
                "active" => ("-".into(), Style::new()),
                state => (state.to_owned(), Style::new().fg(Color::Yellow)),
            },
        }
    }

    fn draw_table(&mut self, f: &mut Frame, area: Rect) {
        let now = self.snapshot.now;
        let columns = self.columns_for(area.width);
        // Only the lines on screen are built: 5,000 workers cost what 40 do.
        let body = usize::from(area.height.saturating_sub(3)).max(1);
        self.page = body;
        if self.cursor < self.offset {
            self.offset = self.cursor;
        } else if self.cursor >= self.offset + body {
            self.offset = self.cursor + 1 - body;
        }
        self.offset = self.offset.min(self.shown.len().saturating_sub(body));
        let end = (self.offset + body).min(self.shown.len());
        let header = Row::new(columns.iter().map(|(i, _)| match *i {
            12 => "CONTROL",
            0 => "  WORKER",
            i => COLUMNS[i],
        }))
        .style(Style::new().add_modifier(Modifier::BOLD));
        let rows: Vec<Row> = self.shown[self.offset..end]
            .iter()
            .map(|&at| {
                let r = &self.snapshot.rows[at];
                let health = r.health(now);
                let cells = row_cells(r, now);
                let marked = self.marked.contains(&r.worker_name);
                Row::new(columns.iter().map(|(i, _)| {
                    match *i {
                        0 => Cell::from(format!(
                            "{}{}",
                            if marked { MARK } else { NO_MARK },
                            cells[0]
                        ))
                        .style(if marked {
                            Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)
                        } else {
                            Style::new()
                        }),
                        1 => Cell::from(cells[1].clone()).style(Style::new().fg(color(health))),
                        12 => {
                            let (text, style) = self.control_cell(r);
                            Cell::from(text).style(style)
                        }
                        i => Cell::from(cells[i].clone()),
                    }
                }))
            })
            .collect();
        let widths: Vec<Constraint> = columns
            .iter()
            .map(|(_, w)| Constraint::Length(*w))
            .collect();
        let mut title = format!(
            " sorted by {}{} · {} of {} shown",
            self.sort.label(),
            if self.reverse { ", reversed" } else { "" },
            self.shown.len(),
            self.snapshot.rows.len()
        );
        if let Some(pool) = &self.pool_filter {
            title.push_str(&format!(" · pool {pool}"));
        }
        if let Some(h) = HEALTH_FILTERS[self.health_filter] {
            title.push_str(&format!(" · health {}", h.label()));
        }
        if !self.marked.is_empty() {
            let hidden = self.marked.len()
                - self
                    .shown
                    .iter()
                    .filter(|&&i| self.marked.contains(&self.snapshot.rows[i].worker_name))
                    .count();
            title.push_str(&format!(" · {} marked", self.marked.len()));
            if hidden > 0 {
                title.push_str(&format!(" ({hidden} not shown)"));
            }
        }
        title.push(' ');
        let table = Table::new(rows, widths)
            .header(header)
            .block(Block::new().borders(Borders::ALL).title(title))
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
        let mut state = TableState::default()
            .with_selected((!self.shown.is_empty()).then(|| self.cursor - self.offset));
        f.render_stateful_widget(table, area, &mut state);
    }

    fn draw_detail(&self, f: &mut Frame, area: Rect) {
        let now = self.snapshot.now;
        let text = match self.current() {
            None => vec![Line::from(NO_WORKERS)],
            Some(r) => detail_lines(r, now),
        };
        let block = Block::new().borders(Borders::ALL).title(format!(
            " {} ",
            self.current()
                .map(|r| r.worker_name.as_str())
                .unwrap_or("detail")
        ));
        f.render_widget(
            Paragraph::new(text).block(block).wrap(Wrap { trim: false }),
            area,
        );
    }

    fn draw_audit(&self, f: &mut Frame, area: Rect) {
        let room = usize::from(area.height.saturating_sub(2));
        let grey = Style::new().fg(Color::DarkGray);
        let actor_width = self
            .audit
            .iter()
            .rev()
            .take(room)
            .map(|e| e.actor.chars().count())
            .max()
            .unwrap_or(0);
        let lines: Vec<Line> = match self.audit.is_empty() {
            true => vec![Line::styled("no request in the last 24 h", grey)],
            false => self
                .audit
                .iter()
                .rev()
                .take(room)
                .map(|e| audit_line(e, actor_width))
                .collect(),
        };
        f.render_widget(
            Paragraph::new(lines).block(
                Block::new()
                    .borders(Borders::ALL)
                    .title(" audit log, newest first "),
            ),
            area,
        );
    }
}

/// The keys, packed into as few lines as `width` allows (at most three; a
/// terminal narrower than that loses the last ones, never the table).
fn footer(width: u16) -> Vec<String> {
    let mut keys: Vec<String> = [
        "q quit",
        "↑↓ PgUp PgDn g G move",
        "space mark",
        "a mark all shown",
        "Esc unmark",
        "f pool",
        "h health",
        "s sort",
        "r reverse",
        "l audit/detail",
    ]
    .map(str::to_owned)
    .to_vec();
    keys.extend(
        ACTIONS
            .iter()
            .map(|(k, a)| format!("{k} {}", a.replace('_', "-"))),
    );
    let width = usize::from(width.max(20));
    let mut lines: Vec<String> = vec![String::new()];
    for key in keys {
        let line = lines.last_mut().expect("a line");
        if !line.is_empty() && line.chars().count() + 2 + key.chars().count() + 1 > width {
            lines.push(String::new());
        }
        let line = lines.last_mut().expect("a line");
        line.push_str(if line.is_empty() { " " } else { "  " });
        line.push_str(&key);
    }
    lines.truncate(3);
    lines
}

/// Marks the requests the rows now show applied; forgets them a while
/// later, and forgets those whose worker is gone or that waited too long.
fn settle_pending(
    pending: &mut BTreeMap<String, Pending>,
    rows: &[StatusRow],
    names: &std::collections::HashMap<&str, usize>,
) {
    pending.retain(|name, p| {
        let Some(&at) = names.get(name.as_str()) else {
            return false;
        };
        if p.applied_after.is_none() && applied(&p.action, &rows[at], p.generation) {
            p.applied_after = Some((p.asked.elapsed().as_secs_f64(), Instant::now()));
        }
        match p.applied_after {
            Some((_, at)) => at.elapsed() < APPLIED_SHOWN,
            None => p.asked.elapsed() < PENDING_SHOWN,
        }
    });
}

fn audit_line(e: &AuditEntry, actor_width: usize) -> Line<'static> {
    let about = match (&e.workers, &e.pool) {
        (Some(w), _) if !w.is_empty() => w.join(","),
        (_, Some(p)) => format!("pool {p}"),
        _ => "-".into(),
    };
    let why = match e.detail.get("rule").and_then(|r| r.as_str()) {
        Some(rule) => format!("rule {rule}"),
        None => e.reason.clone().unwrap_or_default(),
    };
    let outcome = match e.outcome.as_str() {
        "refused" | "failed" | "timed_out" => Style::new().fg(Color::Red),
        _ => Style::new().fg(Color::Green),
    };
    Line::from(vec![
        Span::raw(format!(
            "{}  {:<actor_width$}  {:<12} {:<30} ",
            e.at.with_timezone(&chrono::Local).format("%H:%M:%S"),
            e.actor,
            e.action,
            about
        )),
        Span::styled(format!("{:<9}", e.outcome), outcome),
        Span::raw(format!(" {why}")),
    ])
}

fn draw_notice(f: &mut Frame, area: Rect, text: &str) {
    let width = area.width.saturating_sub(4).min(100);
    let [popup] = Layout::horizontal([Constraint::Length(width)])
        .flex(Flex::Center)
        .areas(area);
    // Two border lines, the wrapped text, a blank and the key.
    let inner = usize::from(width.saturating_sub(2)).max(1);
    let height = (text.chars().count().div_ceil(inner) as u16 + 4).min(area.height);
    let [popup] = Layout::vertical([Constraint::Length(height)])
        .flex(Flex::Center)
        .areas(popup);
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(vec![
            Line::styled(text.to_owned(), Style::new().fg(Color::Red)),
            Line::from(""),
            Line::styled("any key closes this", Style::new().fg(Color::DarkGray)),
        ])
        .wrap(Wrap { trim: false })
        .block(Block::new().borders(Borders::ALL).title(" not done ")),
        popup,
    );
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
        field(
            "pool",
            format!(
                "{}   state {}   control generation {}",
                pool_of(r),
                state_of(r),
                crate::fleet::field(r, "control_generation")
                    .as_i64()
                    .unwrap_or(0)
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
    if let (Some(at), Some(period)) = (r.last_progress_at, r.watchdog_seconds) {
        lines.push(field(
            "progress",
            format!(
                "{} by its clock (hung after {} without)",
                crate::table::ago(now, at),
                crate::table::duration(period)
            ),
        ));
    }
    for note in crate::table::notes(r, now) {
        // The note starts with the name, which the pane's title already says.
        let text = note
            .strip_prefix(&format!("{}: ", r.worker_name))
            .unwrap_or(&note)
            .to_owned();
        lines.push(field("note", text));
    }
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
        Health::Crashed | Health::Flapping => Color::Red,
        Health::Hung => Color::Magenta,
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

    fn row(
        name: &str,
        status: &str,
        ago: i64,
        pool: &str,
        state: &str,
        generation: i64,
    ) -> StatusRow {
        let now = chrono::Utc::now();
        serde_json::from_value(json!({
            "worker_name": name, "status": status, "jobs_processed": 42, "error_count": 3,
            "last_heartbeat": now - chrono::Duration::seconds(ago), "heartbeat_interval_seconds": 30,
            "memory_rss_bytes": 50_593_792, "uptime_seconds": 7500, "pid": 4242,
            "hostname": "vps-1", "last_error": "ERROR: upstream timed out", "cpu_percent": 2.5,
            "pool": pool, "state": state, "control_generation": generation,
            "controls": {"pause": "by stopping the worker"}
        }))
        .expect("row")
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            rows: vec![
                row(
                    "order-executor-eu-west-1",
                    "running",
                    3,
                    "orders",
                    "active",
                    0,
                ),
                row("pnl-nightly", "crashed", 40, "default", "active", 0),
                row("crawler", "running", 600, "default", "active", 0),
            ],
            now: chrono::Utc::now(),
        }
    }

    /// Four running workers in pool `web`, at most two of them down.
    fn web(view: &mut View, state_of_1: &str, generation: i64) {
        view.rows(Ok(Snapshot {
            rows: vec![
                row("web-1", "running", 1, "web", state_of_1, generation),
                row("web-2", "running", 1, "web", "active", 0),
                row("web-3", "running", 1, "web", "active", 0),
                row("web-4", "running", 1, "web", "active", 0),
            ],
            now: chrono::Utc::now(),
        }));
        view.budgets(Ok(vec![PoolBudget {
            pool: "web".into(),
            max_unavailable: 2,
            min_available: 1,
            protected: false,
        }]));
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

    fn cursor(view: &View) -> Option<&str> {
        view.current().map(|r| r.worker_name.as_str())
    }

    fn keys(view: &mut View, keys: &str) -> Vec<Effect> {
        keys.chars()
            .map(|c| view.key(KeyCode::Char(c)))
            .filter(|e| *e != Effect::Nothing)
            .collect()
    }

    #[test]
    fn a_wide_terminal_shows_every_column_and_the_detail_pane() {
        let mut view = View::new("the local store /tmp/x.db".into(), None);
        view.rows(Ok(snapshot()));
        let screen = render(&mut view, 170, 40);
        for column in COLUMNS.iter().skip(1).chain(&["CONTROL"]) {
            assert!(screen.contains(column), "{column} missing:\n{screen}");
        }
        assert!(screen.contains("Worker Status  1/3 running"), "{screen}");
        assert!(screen.contains("order-executor-eu-west-1"), "{screen}");
        assert!(
            screen.contains("stale") && screen.contains("crashed"),
            "{screen}"
        );
        assert!(screen.contains("last error"), "detail pane:\n{screen}");
        assert!(
            screen.contains("default   state active   control generation 0"),
            "detail pane:\n{screen}"
        );
        assert!(
            screen.contains("q quit") && screen.contains("P pause"),
            "{screen}"
        );
    }

    #[test]
    fn a_narrow_terminal_keeps_names_whole_and_drops_columns_instead() {
        let mut view = View::new("the local store /tmp/x.db".into(), None);
        view.rows(Ok(snapshot()));
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
    fn keys_move_the_cursor_and_sort() {
        let mut view = View::new("t".into(), None);
        view.rows(Ok(snapshot()));
        assert_eq!(cursor(&view), Some("crawler"));
        view.key(KeyCode::Down);
        assert_eq!(cursor(&view), Some("order-executor-eu-west-1"));
        view.key(KeyCode::Char('s'));
        assert_eq!(view.sort, SortKey::Health);
        assert_eq!(
            cursor(&view),
            Some("order-executor-eu-west-1"),
            "the cursor follows the worker"
        );
        let screen = render(&mut view, 150, 40);
        assert!(screen.contains("sorted by health"), "{screen}");
        let mut refreshed = snapshot();
        refreshed.rows.reverse();
        view.rows(Ok(refreshed));
        assert_eq!(
            cursor(&view),
            Some("order-executor-eu-west-1"),
            "a refresh keeps the worker under the cursor"
        );
    }

    #[test]
    fn a_read_error_shows_and_keeps_the_last_rows() {
        let mut view = View::new("t".into(), None);
        view.rows(Ok(snapshot()));
        view.rows(Err(ReadError::Timeout(std::time::Duration::from_secs(10))));
        let screen = render(&mut view, 150, 40);
        assert!(screen.contains("error: no answer within 10s"), "{screen}");
        assert!(screen.contains("pnl-nightly"), "{screen}");
    }

    #[test]
    fn filters_by_pool_and_health_and_marks_what_is_shown() {
        let mut view = View::new("t".into(), None);
        view.rows(Ok(snapshot()));
        view.budgets(Ok(Vec::new()));
        keys(&mut view, "f");
        assert_eq!(view.pool_filter.as_deref(), Some("default"));
        keys(&mut view, "a");
        assert_eq!(
            view.marked,
            BTreeSet::from(["crawler".to_owned(), "pnl-nightly".to_owned()]),
            "a marks the shown workers only"
        );
        let screen = render(&mut view, 150, 40);
        assert!(
            screen.contains("2 of 3 shown · pool default · 2 marked"),
            "{screen}"
        );
        assert!(!screen.contains("order-executor"), "{screen}");
        assert!(screen.contains("● crawler"), "{screen}");
        keys(&mut view, "a");
        assert!(view.marked.is_empty(), "a again unmarks them");

        keys(&mut view, "ff");
        assert_eq!(view.pool_filter, None, "after the last pool: every pool");
        keys(&mut view, "h");
        let screen = render(&mut view, 150, 40);
        assert!(
            screen.contains("2 of 3 shown · health needs attention"),
            "{screen}"
        );
        assert!(
            screen.contains("pnl-nightly") && !screen.contains("order-executor"),
            "{screen}"
        );
        keys(&mut view, "h");
        assert_eq!(view.shown.len(), 1, "running only");
        assert_eq!(cursor(&view), Some("order-executor-eu-west-1"));
    }

    #[test]
    fn an_action_on_the_marked_workers_shows_the_impact_then_sends_on_y() {
        let mut view = View::new("t".into(), Some("alice@vps-1".into()));
        web(&mut view, "active", 0);
        keys(&mut view, "  ");
        assert_eq!(view.marked.len(), 2, "space marks and moves on");
        assert!(
            keys(&mut view, "P").is_empty(),
            "P opens the dialog, sends nothing"
        );
        let screen = render(&mut view, 150, 40);
        assert!(screen.contains("pause 2 workers"), "{screen}");
        assert!(screen.contains("pause web-1, web-2"), "{screen}");
        assert!(
            screen.contains(
                "pool web: 4 workers, available 4 -> 2 (budget: at most 2 down, at least 1 up)"
            ),
            "the CLI's impact:\n{screen}"
        );
        assert!(
            screen.contains("web-1: pause by stopping the worker"),
            "{screen}"
        );
        assert!(screen.contains("y go on"), "{screen}");
        // q types into the dialog, it does not quit.
        assert_eq!(keys(&mut view, "q"), Vec::new());
        assert!(view.dialog.is_none(), "q cancels the dialog");
        keys(&mut view, "P");
        let sent = keys(&mut view, "y");
        let Some(Effect::Send(request)) = sent.first() else {
            panic!("y sends: {sent:?}");
        };
        assert_eq!(request.action.as_deref(), Some("pause"));
        assert_eq!(
            request.workers.as_deref(),
            Some(&["web-1".to_owned(), "web-2".to_owned()][..])
        );
        assert_eq!(request.actor.as_deref(), Some("alice@vps-1"));
        assert_eq!(request.confirm, None);
        let screen = render(&mut view, 150, 40);
        assert!(
            screen.contains("sending pause for web-1, web-2…"),
            "{screen}"
        );
        assert!(keys(&mut view, "D").is_empty() && view.dialog.is_none());
        let screen = render(&mut view, 150, 40);
        assert!(
            screen.contains("pause for web-1, web-2 is on its way: wait for its answer"),
            "no second request while one is on its way:\n{screen}"
        );
    }

    #[test]
    fn an_accepted_request_shows_pending_then_applied_on_each_row() {
        let mut view = View::new("t".into(), None);
        web(&mut view, "active", 0);
        view.answer(Ok(serde_json::from_value(json!({
            "outcome": "accepted", "action": "pause", "rule": null,
            "message": "web-1 will pause", "workers": ["web-1"], "pool": "web",
            "available_before": 4, "available_after": 3, "forced": false, "pools": [],
            "generations": {"web-1": 7}, "audit_id": 12
        }))
        .expect("answer")));
        let screen = render(&mut view, 170, 40);
        assert!(
            screen.contains("accepted (audit #12): web-1 will pause"),
            "{screen}"
        );
        assert!(screen.contains("pause pending 0 s"), "{screen}");
        // A row of the old generation is not the answer yet...
        web(&mut view, "paused", 6);
        assert!(render(&mut view, 170, 40).contains("pause pending"));
        // ...the row of the request's generation is.
        web(&mut view, "paused", 7);
        let screen = render(&mut view, 170, 40);
        assert!(screen.contains("pause applied 0."), "{screen}");
        assert!(!screen.contains("pending"), "{screen}");
    }

    #[test]
    fn a_refusal_shows_the_rule_until_a_key_closes_it() {
        let mut view = View::new("t".into(), None);
        web(&mut view, "active", 0);
        view.answer(Ok(serde_json::from_value(json!({
            "outcome": "refused", "action": "pause", "rule": "max_unavailable",
            "message": "pool web allows at most 2 unavailable: 2 are, and this would make 4",
            "workers": ["web-3", "web-4"], "pool": "web",
            "available_before": 2, "available_after": 0, "forced": false, "pools": [],
            "audit_id": 13
        }))
        .expect("answer")));
        let screen = render(&mut view, 150, 40);
        assert!(
            screen.contains("refused (max_unavailable): pool web allows at most 2 unavailable"),
            "{screen}"
        );
        assert!(screen.contains("any key closes this"), "{screen}");
        let at = view.cursor;
        view.key(KeyCode::Down);
        assert_eq!(view.cursor, at, "the closing key does nothing else");
        assert!(!render(&mut view, 150, 40).contains("refused"));
    }

    #[test]
    fn a_protected_pool_needs_its_name_typed_in_the_dialog() {
        let mut view = View::new("t".into(), None);
        web(&mut view, "active", 0);
        view.budgets(Ok(vec![PoolBudget {
            pool: "web".into(),
            max_unavailable: 2,
            min_available: 1,
            protected: true,
        }]));
        keys(&mut view, "R");
        let screen = render(&mut view, 150, 40);
        assert!(
            screen.contains("type the pool's name (web) to go on: _"),
            "{screen}"
        );
        assert!(keys(&mut view, "y").is_empty(), "y is typed, not a yes");
        assert_eq!(
            view.key(KeyCode::Enter),
            Effect::Nothing,
            "wrong name: nothing"
        );
        view.key(KeyCode::Backspace);
        keys(&mut view, "we");
        assert!(render(&mut view, 150, 40).contains("to go on: we_"));
        keys(&mut view, "b");
        let Effect::Send(request) = view.key(KeyCode::Enter) else {
            panic!("the typed name confirms");
        };
        assert_eq!(request.action.as_deref(), Some("restart"));
        assert_eq!(request.confirm.as_deref(), Some("web"));
    }

    #[test]
    fn no_dialog_opens_without_the_budgets() {
        let mut view = View::new("t".into(), None);
        view.rows(Ok(snapshot()));
        view.budgets(Err(ControlError::Store("connection refused".into())));
        keys(&mut view, "P");
        assert!(view.dialog.is_none());
        let screen = render(&mut view, 150, 40);
        assert!(
            screen.contains("cannot read the pools' budgets (connection refused): nothing is sent"),
            "{screen}"
        );
    }

    #[test]
    fn the_audit_pane_lists_the_newest_first_once_each() {
        let mut view = View::new("t".into(), None);
        view.rows(Ok(snapshot()));
        let entry = |id: i64, action: &str, outcome: &str| -> AuditEntry {
            serde_json::from_value(json!({
                "id": id, "at": chrono::Utc::now(), "actor": "service_role (alice@vps-1)",
                "action": action, "workers": ["web-1"], "pool": "web", "outcome": outcome,
                "detail": if outcome == "refused" { json!({"rule": "last_available"}) } else { json!({}) }
            }))
            .expect("entry")
        };
        view.audit(Ok(vec![
            entry(1, "pause", "accepted"),
            entry(2, "pause", "refused"),
        ]));
        view.audit(Ok(vec![
            entry(2, "pause", "refused"),
            entry(3, "resume", "accepted"),
        ]));
        assert_eq!(view.audit.len(), 3, "entry 2 read twice is kept once");
        keys(&mut view, "l");
        let screen = render(&mut view, 150, 40);
        let resume = screen.find("resume").expect(&screen);
        let refused = screen.find("refused").expect(&screen);
        assert!(resume < refused, "newest first:\n{screen}");
        assert!(screen.contains("rule last_available"), "{screen}");
        assert!(screen.contains("service_role (alice@vps-1)"), "{screen}");
    }

    #[test]
    fn five_thousand_workers_scroll_and_build_only_the_lines_on_screen() {
        let mut view = View::new("t".into(), None);
        let rows: Vec<StatusRow> = (0..5000)
            .map(|i| row(&format!("worker-{i:04}"), "running", 1, "bulk", "active", 0))
            .collect();
        view.rows(Ok(Snapshot {
            rows,
            now: chrono::Utc::now(),
        }));
        let screen = render(&mut view, 150, 40);
        assert!(screen.contains("5000 of 5000 shown"), "{screen}");
        assert!(screen.contains("worker-0000") && !screen.contains("worker-4999"));
        view.key(KeyCode::End);
        let screen = render(&mut view, 150, 40);
        assert!(
            screen.contains("┌ worker-4999"),
            "End goes to the last:\n{screen}"
        );
        view.key(KeyCode::PageUp);
        let page = view.page;
        assert_eq!(view.cursor, 4999 - page);
        let screen = render(&mut view, 150, 40);
        assert!(
            screen.contains(&format!("┌ worker-{:04}", 4999 - page)),
            "{screen}"
        );
        view.key(KeyCode::Home);
        assert_eq!(cursor(&view), Some("worker-0000"));
        keys(&mut view, "a");
        assert_eq!(view.marked.len(), 5000);
    }

    #[test]
    fn the_dialog_over_five_thousand_marked_workers_keeps_the_numbers_and_the_question() {
        let mut view = View::new("t".into(), None);
        let rows: Vec<StatusRow> = (0..5000)
            .map(|i| row(&format!("worker-{i:04}"), "running", 1, "bulk", "active", 0))
            .collect();
        view.rows(Ok(Snapshot {
            rows,
            now: chrono::Utc::now(),
        }));
        view.budgets(Ok(Vec::new()));
        keys(&mut view, "aP");
        for (w, h) in [(150, 40), (80, 24)] {
            let screen = render(&mut view, w, h);
            assert!(screen.contains("pause 5000 workers"), "{w}x{h}:\n{screen}");
            assert!(screen.contains("… and 4994 more"), "{w}x{h}:\n{screen}");
            assert!(
                screen.contains("pool bulk: 5000 workers, available 5000 -> 0"),
                "the numbers at {w}x{h}:\n{screen}"
            );
            assert!(
                screen.contains("more lines about the workers"),
                "{w}x{h}:\n{screen}"
            );
            assert!(
                screen.contains("y go on"),
                "the question at {w}x{h}:\n{screen}"
            );
        }
        assert_eq!(view.key(KeyCode::Enter), Effect::Nothing, "Enter is no yes");
        assert!(view.dialog.is_some());
    }

    #[test]
    fn esc_unmarks_and_never_quits_and_only_q_does() {
        let mut view = View::new("t".into(), None);
        web(&mut view, "active", 0);
        keys(&mut view, " ");
        assert_eq!(view.key(KeyCode::Esc), Effect::Nothing);
        assert!(view.marked.is_empty());
        assert_eq!(view.key(KeyCode::Esc), Effect::Nothing, "twice: still here");
        assert_eq!(view.key(KeyCode::Char('q')), Effect::Quit);
    }

    #[test]
    fn marks_hidden_by_a_filter_are_said_and_vanished_workers_unmarked() {
        let mut view = View::new("t".into(), None);
        view.rows(Ok(snapshot()));
        view.budgets(Ok(Vec::new()));
        keys(&mut view, "ffa");
        assert_eq!(view.pool_filter.as_deref(), Some("orders"));
        keys(&mut view, "f");
        assert_eq!(view.pool_filter, None);
        keys(&mut view, "h");
        keys(&mut view, "h");
        let screen = render(&mut view, 150, 40);
        assert!(
            screen.contains("1 marked") && !screen.contains("not shown"),
            "running: order-executor is shown:\n{screen}"
        );
        keys(&mut view, "hh");
        let screen = render(&mut view, 150, 40);
        assert!(screen.contains("1 marked (1 not shown)"), "{screen}");
        let mut gone = snapshot();
        gone.rows
            .retain(|r| r.worker_name != "order-executor-eu-west-1");
        view.rows(Ok(gone));
        assert!(
            view.marked.is_empty(),
            "a worker whose row is gone is unmarked"
        );
    }

    #[test]
    fn an_answer_unmarks_only_what_it_was_for_and_pending_goes_with_the_row() {
        let mut view = View::new("t".into(), None);
        web(&mut view, "active", 0);
        keys(&mut view, "    ");
        assert_eq!(view.marked.len(), 4);
        view.answer(Ok(serde_json::from_value(json!({
            "outcome": "accepted", "action": "pause", "rule": null,
            "message": "ok", "workers": ["web-1"], "pool": "web",
            "available_before": 4, "available_after": 3, "forced": false, "pools": [],
            "generations": {"web-1": 7}, "audit_id": 12
        }))
        .expect("answer")));
        assert_eq!(view.marked.len(), 3, "marked while it was on its way: kept");
        assert!(view.pending.contains_key("web-1"));
        let mut gone = view.snapshot.clone();
        gone.rows.retain(|r| r.worker_name != "web-1");
        view.rows(Ok(gone));
        assert!(view.pending.is_empty(), "no row, nothing to wait for");
    }

    #[test]
    fn the_footer_fits_eighty_columns_in_three_lines_with_every_action() {
        let lines = footer(80);
        assert!(lines.len() <= 3, "{lines:?}");
        for line in &lines {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
        let all = lines.join(" ");
        for (k, _) in ACTIONS {
            assert!(all.contains(&format!("{k} ")), "{k} in {all}");
        }
        assert!(
            all.contains("q quit") && all.contains("Esc unmark"),
            "{all}"
        );
        assert_eq!(footer(200).len(), 1, "{:?}", footer(200));
    }

    #[test]
    fn the_detail_pane_says_how_the_previous_instance_ended_and_the_progress() {
        let mut view = View::new("t".into(), None);
        let now = chrono::Utc::now();
        let mut r = row("looping", "running", 1, "default", "active", 0);
        r.restarts = Some(4);
        r.last_exit_at = Some(now - chrono::Duration::seconds(12));
        r.last_exit_status = Some("crashed".into());
        r.last_exit_code = Some(1);
        r.last_exit_error = Some("Error: boom".into());
        r.last_progress_at = Some(now - chrono::Duration::seconds(90));
        r.watchdog_seconds = Some(120);
        view.rows(Ok(Snapshot { rows: vec![r], now }));
        let screen = render(&mut view, 150, 40);
        assert!(
            screen.contains("restarted 4 times; the previous instance crashed 12 s ago (exit code 1): Error: boom"),
            "{screen}"
        );
        assert!(
            screen.contains("1 min ago by its clock (hung after 2 min without)"),
            "{screen}"
        );
        assert!(screen.contains("RESTARTS"), "{screen}");
    }
}
