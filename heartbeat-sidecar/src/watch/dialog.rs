//! The live view's confirmation dialog: the same impact the command line
//! prints, then `y`, or the pool's name typed where the CLI asks for it.

use ratatui::crossterm::event::KeyCode;
use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};
use ratatui::Frame;

use crate::fleet::Impact;

/// An action waiting for the operator's word.
pub struct Dialog {
    /// `pause`, `run_now`... as sent.
    pub action: String,
    pub workers: Vec<String>,
    impact: Impact,
    typed: String,
}

/// What a key did to the dialog.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still open.
    Open,
    Cancelled,
    /// Go on; `confirm` is the pool's name when one was typed.
    Confirmed {
        confirm: Option<String>,
    },
}

impl Dialog {
    pub fn new(action: &str, workers: Vec<String>, impact: Impact) -> Dialog {
        Dialog {
            action: action.to_owned(),
            workers,
            impact,
            typed: String::new(),
        }
    }

    pub fn key(&mut self, code: KeyCode) -> Outcome {
        if self.impact.name_conflict.is_some() {
            // Nothing to confirm: one request cannot name two pools.
            return match code {
                KeyCode::Esc | KeyCode::Enter | KeyCode::Char('n' | 'q') => Outcome::Cancelled,
                _ => Outcome::Open,
            };
        }
        match (&self.impact.name_needed, code) {
            (_, KeyCode::Esc) => Outcome::Cancelled,
            (Some(pool), KeyCode::Enter) if self.typed == *pool => Outcome::Confirmed {
                confirm: Some(pool.clone()),
            },
            (Some(_), KeyCode::Enter) => Outcome::Open,
            (Some(_), KeyCode::Backspace) => {
                self.typed.pop();
                Outcome::Open
            }
            (Some(_), KeyCode::Char(c)) => {
                self.typed.push(c);
                Outcome::Open
            }
            // As the command line's `[y/N]`: only y goes on.
            (None, KeyCode::Char('y' | 'Y')) => Outcome::Confirmed { confirm: None },
            (None, KeyCode::Char('n' | 'N' | 'q')) => Outcome::Cancelled,
            _ => Outcome::Open,
        }
    }

    /// Draws the dialog over `area`: the pools' numbers and the question
    /// always show; the per-worker lines take the room that is left, and a
    /// line says how many did not fit.
    pub fn draw(&self, f: &mut Frame, area: Rect) {
        let width = area.width.saturating_sub(4).min(110);
        let inner = usize::from(width.saturating_sub(2)).max(1);
        let rows = |line: &Line| line.width().div_ceil(inner).max(1);
        let key = Style::new().add_modifier(Modifier::BOLD);

        let shown_names = 6;
        let mut names = self.workers[..self.workers.len().min(shown_names)].join(", ");
        if self.workers.len() > shown_names {
            names.push_str(&format!(
                ", … and {} more",
                self.workers.len() - shown_names
            ));
        }
        let mut top = vec![Line::from(format!("{} {names}", self.action))];
        let mut workers = Vec::new();
        let mut bottom = Vec::new();
        for line in self.impact.lines.iter().skip(1) {
            if line.starts_with("  pool ") {
                top.push(Line::from(line.clone()));
            } else if line.starts_with("  the runs in flight") {
                bottom.push(Line::from(line.clone()));
            } else {
                workers.push(Line::from(line.clone()));
            }
        }
        bottom.push(Line::from(""));
        match (&self.impact.name_conflict, &self.impact.name_needed) {
            (Some(pools), _) => {
                bottom.push(Line::styled(
                    format!(
                        "pools {pools} each need their name confirmed: mark one pool at a time"
                    ),
                    Style::new().fg(Color::Red),
                ));
                bottom.push(Line::from(vec![
                    Span::styled("Esc", key),
                    Span::raw(" close"),
                ]));
            }
            (None, Some(pool)) => {
                bottom.push(Line::from(vec![
                    Span::raw(format!("type the pool's name ({pool}) to go on: ")),
                    Span::styled(format!("{}_", self.typed), key),
                ]));
                bottom.push(Line::from(vec![
                    Span::styled("Enter", key),
                    Span::raw(" go on   "),
                    Span::styled("Esc", key),
                    Span::raw(" cancel"),
                ]));
            }
            (None, None) => bottom.push(Line::from(vec![
                Span::styled("y", key),
                Span::raw(" go on   "),
                Span::styled("n", key),
                Span::raw("/"),
                Span::styled("Esc", key),
                Span::raw(" cancel"),
            ])),
        }
        let room = usize::from(area.height.saturating_sub(4));
        let fixed: usize = top.iter().chain(&bottom).map(rows).sum();
        let mut left = room.saturating_sub(fixed);
        let mut text = top;
        let total = workers.len();
        let mut kept = 0;
        for line in workers {
            // Keep a line for "… N more" unless this is the last one.
            let need = rows(&line) + usize::from(kept + 1 < total);
            if need > left {
                break;
            }
            left -= rows(&line);
            text.push(line);
            kept += 1;
        }
        if kept < total {
            text.push(Line::styled(
                format!(
                    "  … {} more lines about the workers (`heartbeat-sidecar {} NAME...` prints them all)",
                    total - kept,
                    self.action.replace('_', "-")
                ),
                Style::new().fg(Color::DarkGray),
            ));
        }
        text.extend(bottom);
        let height = (text.iter().map(rows).sum::<usize>() as u16 + 2).min(area.height);
        let [popup] = Layout::horizontal([Constraint::Length(width)])
            .flex(Flex::Center)
            .areas(area);
        let [popup] = Layout::vertical([Constraint::Length(height)])
            .flex(Flex::Center)
            .areas(popup);
        let title = format!(
            " {} {} worker{} ",
            self.action.replace('_', "-"),
            self.workers.len(),
            if self.workers.len() == 1 { "" } else { "s" }
        );
        f.render_widget(Clear, popup);
        f.render_widget(
            Paragraph::new(text)
                .block(Block::new().borders(Borders::ALL).title(title))
                .wrap(Wrap { trim: false }),
            popup,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn impact(name_needed: Option<&str>, name_conflict: Option<&str>) -> Impact {
        Impact {
            lines: vec![
                "drain web-1, api-1".into(),
                "  pool web: 2 workers, available 2 -> 1".into(),
            ],
            name_needed: name_needed.map(str::to_owned),
            name_conflict: name_conflict.map(str::to_owned),
        }
    }

    fn screen(dialog: &Dialog) -> String {
        let mut terminal = Terminal::new(TestBackend::new(100, 20)).expect("terminal");
        terminal.draw(|f| dialog.draw(f, f.area())).expect("draw");
        let buffer = terminal.backend().buffer().clone();
        (0..20)
            .map(|y| {
                (0..100)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
                    + "\n"
            })
            .collect()
    }

    #[test]
    fn a_plain_dialog_goes_on_with_y_only_and_stops_with_n_or_esc() {
        let workers = vec!["web-1".to_owned()];
        for (key, outcome) in [
            (KeyCode::Char('y'), Outcome::Confirmed { confirm: None }),
            (KeyCode::Enter, Outcome::Open),
            (KeyCode::Char('n'), Outcome::Cancelled),
            (KeyCode::Esc, Outcome::Cancelled),
            (KeyCode::Char('x'), Outcome::Open),
        ] {
            let mut d = Dialog::new("drain", workers.clone(), impact(None, None));
            assert_eq!(d.key(key), outcome, "{key:?}");
        }
        let d = Dialog::new("run_now", workers, impact(None, None));
        let s = screen(&d);
        assert!(s.contains("run-now 1 worker"), "{s}");
        assert!(s.contains("pool web: 2 workers, available 2 -> 1"), "{s}");
        assert!(s.contains("y go on   n/Esc cancel"), "{s}");
    }

    #[test]
    fn two_pools_that_each_need_their_name_cannot_be_confirmed() {
        let mut d = Dialog::new(
            "drain",
            vec!["web-1".into(), "api-1".into()],
            impact(Some("web"), Some("api and web")),
        );
        let s = screen(&d);
        assert!(
            s.contains("pools api and web each need their name confirmed"),
            "{s}"
        );
        for c in "web".chars() {
            assert_eq!(d.key(KeyCode::Char(c)), Outcome::Open);
        }
        assert_eq!(
            d.key(KeyCode::Enter),
            Outcome::Cancelled,
            "Enter only closes it"
        );
    }

    #[test]
    fn esc_cancels_while_typing_a_name() {
        let mut d = Dialog::new("drain", vec!["web-1".into()], impact(Some("web"), None));
        d.key(KeyCode::Char('w'));
        assert_eq!(d.key(KeyCode::Esc), Outcome::Cancelled);
    }
}
