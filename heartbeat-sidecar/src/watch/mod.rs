//! `heartbeat-sidecar status --watch`: a live table refreshed every 2 s, with
//! a detail pane, an audit pane, and keys that steer the marked workers
//! through the same rules and the same impact as the operator commands.

mod dialog;
mod link;
mod view;

use std::io::IsTerminal;
use std::time::Duration;

use heartbeat_sdk::read::Reader;
use heartbeat_sdk::sidecar::Operator;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use crate::exit::{Exit, USAGE};
use crate::table::exit_code;
use link::{Link, News};
use view::{Effect, View};

/// Runs until `q`; returns the exit code of the last snapshot read.
pub fn watch(reader: Reader, operator: Operator) -> Exit {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        eprintln!(
            "heartbeat-sidecar: status --watch needs a terminal (a tty on stdin and stdout); in scripts use `status` or `status --json`"
        );
        return Exit::Code(USAGE);
    }
    let actor = (!operator.signed_in()).then(crate::fleet::declared_actor);
    let mut view = View::new(reader.describe().to_owned(), actor);
    let link = match Link::start(reader, operator) {
        Ok(link) => link,
        Err(e) => {
            eprintln!("heartbeat-sidecar: cannot start the live view: {e}");
            return Exit::Code(USAGE);
        }
    };
    let mut terminal = ratatui::init();
    loop {
        while let Ok(news) = link.news.try_recv() {
            match news {
                News::Rows(rows) => view.rows(rows),
                News::Budgets(budgets) => view.budgets(budgets),
                News::Audit(entries) => view.audit(entries),
                News::Answer { answer } => view.answer(answer),
            }
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
        // The terminal is raw: Ctrl-C is a key, not a signal. Other
        // control keys mean nothing here (Ctrl-A is not `a`).
        if key.modifiers.contains(KeyModifiers::CONTROL) {
            if key.code == KeyCode::Char('c') {
                break;
            }
            continue;
        }
        match view.key(key.code) {
            Effect::Quit => break,
            Effect::Send(request) => link.send(request),
            Effect::Nothing => {}
        }
    }
    ratatui::restore();
    // The link's thread may be stuck in a request: it is not waited for.
    drop(link);
    match view.ever_read {
        true => Exit::Code(exit_code(view.snapshot())),
        false => Exit::Code(USAGE),
    }
}
