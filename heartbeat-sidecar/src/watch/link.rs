//! The live view's line to the store: a thread of its own that reads the
//! rows, the budgets and the audit log every 2 s and sends control requests,
//! so keys answer at once even while a request hangs.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use heartbeat_sdk::read::{Reader, Snapshot};
use heartbeat_sdk::sidecar::{
    AuditEntry, ControlAnswer, ControlError, ControlRequest, Operator, PoolBudget,
};
use heartbeat_sdk::ReadError;
use tokio::sync::Notify;

/// How often the rows are read.
const REFRESH: Duration = Duration::from_secs(2);
/// The audit pane starts with the last day.
const AUDIT_SINCE: chrono::Duration = chrono::Duration::hours(24);

/// What the store said.
pub enum News {
    Rows(Result<Snapshot, ReadError>),
    Budgets(Result<Vec<PoolBudget>, ControlError>),
    /// New audit entries, oldest first (an entry may repeat: the view keeps one per id).
    Audit(Result<Vec<AuditEntry>, ControlError>),
    /// The answer to a request the view sent.
    Answer {
        answer: Result<ControlAnswer, ControlError>,
    },
}

/// The view's end: requests go out, news comes in.
pub struct Link {
    requests: tokio::sync::mpsc::UnboundedSender<ControlRequest>,
    pub news: mpsc::Receiver<News>,
}

impl Link {
    /// Starts the thread (it ends when the `Link` is dropped; a request
    /// that hangs is not waited for).
    pub fn start(reader: Reader, operator: Operator) -> std::io::Result<Link> {
        let (requests, asked) = tokio::sync::mpsc::unbounded_channel();
        let (news_tx, news) = mpsc::channel();
        std::thread::Builder::new()
            .name("hp-watch-store".into())
            .spawn(move || serve(reader, operator, asked, news_tx))?;
        Ok(Link { requests, news })
    }

    /// Sends a control request; its answer comes as [`News::Answer`].
    pub fn send(&self, request: ControlRequest) {
        let _ = self.requests.send(request);
    }
}

fn serve(
    reader: Reader,
    operator: Operator,
    mut asked: tokio::sync::mpsc::UnboundedReceiver<ControlRequest>,
    news: mpsc::Sender<News>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = news.send(News::Rows(Err(ReadError::Connect(format!(
                "no runtime: {e}"
            )))));
            return;
        }
    };
    let (reader, operator) = (Arc::new(reader), Arc::new(operator));
    // An answered request is followed by a read at once, to show it.
    let kick = Arc::new(Notify::new());
    runtime.block_on(async move {
        let refresher = tokio::spawn(refresh_until_gone(
            reader,
            operator.clone(),
            news.clone(),
            kick.clone(),
        ));
        while let Some(request) = asked.recv().await {
            let (operator, news, kick) = (operator.clone(), news.clone(), kick.clone());
            tokio::spawn(async move {
                let answer = operator.control(&request).await;
                let _ = news.send(News::Answer { answer });
                kick.notify_one();
            });
        }
        refresher.abort();
    });
}

async fn refresh_until_gone(
    reader: Arc<Reader>,
    operator: Arc<Operator>,
    news: mpsc::Sender<News>,
    kick: Arc<Notify>,
) {
    let mut audit_since: DateTime<Utc> = Utc::now() - AUDIT_SINCE;
    loop {
        let rows = reader.fetch().await;
        let budgets = operator.pools().await;
        let audit = operator.audit(Some(audit_since), None).await;
        if let Ok(entries) = &audit {
            // The next read starts at the newest entry seen (it comes again,
            // and the view drops it): entries written in the same instant are
            // not missed.
            if let Some(last) = entries.last() {
                audit_since = last.at;
            }
        }
        for item in [News::Rows(rows), News::Budgets(budgets), News::Audit(audit)] {
            if news.send(item).is_err() {
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(REFRESH) => {}
            _ = kick.notified() => {}
        }
    }
}
