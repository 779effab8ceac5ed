//! `heartbeat-sidecar alerts`: a small long-running watcher. Every round
//! (15 s) it runs the sweep, so workers that went silent are recorded stale
//! or hung, then each webhook claims its cursor in the store and gets the
//! new events of the kinds chosen, oldest first. An event counts as
//! delivered on a 2xx; the cursor moves past it only then. A webhook that
//! fails is retried with backoff (its events wait, in order, in the store);
//! other webhooks go on.

mod message;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use heartbeat_sdk::sidecar::{AlertClaim, Backoff, NotifySocket, Operator};
use tokio::sync::{watch, Notify};

use crate::cli::{AlertFormat, AlertsArgs};
use crate::exit::{Exit, USAGE};
use webhook::Webhook;

/// The webhooks, when no `--webhook` is given: a secret kept out of `ps`.
const WEBHOOKS_VAR: &str = "HP_ALERT_WEBHOOKS";
/// New events are looked for this often (or every `--every`, when shorter).
const LOOK_EVERY: Duration = Duration::from_secs(5);
/// At most this many events per claim; a full batch is followed at once.
const BATCH: u32 = 100;
/// A failing webhook is retried after 1 s, 2 s, 4 s... up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often ghosts are pruned with `--prune-gone-for`.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub async fn alerts(args: AlertsArgs) -> Exit {
    match Watcher::new(args) {
        Ok(watcher) => watcher.run().await,
        Err(e) => {
            eprintln!("heartbeat-sidecar alerts: {e}");
            Exit::Code(USAGE)
        }
    }
}

struct Watcher {
    operator: Arc<Operator>,
    webhooks: Vec<Arc<Webhook>>,
    kinds: Vec<String>,
    every: Duration,
    lease: Duration,
    prune_gone_for: Option<chrono::Duration>,
    holder: String,
}

impl Watcher {
    fn new(args: AlertsArgs) -> Result<Watcher, String> {
        let kinds = args.kinds.0;
        let mut webhooks: Vec<Arc<Webhook>> = Vec::new();
        let from_env = std::env::var(WEBHOOKS_VAR).unwrap_or_default();
        // Spaces, tabs or newlines between them: a URL has none.
        let given: Vec<&str> = if args.webhooks.is_empty() {
            from_env.split_whitespace().collect()
        } else {
            if !from_env.trim().is_empty() {
                tracing::warn!("{WEBHOOKS_VAR} is set too and not used: --webhook wins");
            }
            args.webhooks.iter().map(String::as_str).collect()
        };
        let source = if args.webhooks.is_empty() {
            WEBHOOKS_VAR
        } else {
            "--webhook"
        };
        for (n, text) in given
            .into_iter()
            .filter(|w| !w.trim().is_empty())
            .enumerate()
        {
            let hook = Webhook::parse(text, args.format)
                .map_err(|e| format!("webhook {} of {source}: {e}", n + 1))?;
            if !webhooks.iter().any(|h| h.key == hook.key) {
                webhooks.push(Arc::new(hook));
            }
        }
        if webhooks.is_empty() {
            return Err("no webhook: pass --webhook URL, or set HP_ALERT_WEBHOOKS (better for a secret URL: not in the process list)".into());
        }
        if args.every < Duration::from_secs(1) {
            return Err(format!(
                "--every {} is under a second: give e.g. 15s",
                humantime::format_duration(args.every)
            ));
        }
        let prune_gone_for = match args.prune_gone_for {
            Some(d) if d < Duration::from_secs(3600) => {
                return Err(format!(
                    "--prune-gone-for {} is under an hour: a worker that beats slowly would be removed (e.g. 7d)",
                    humantime::format_duration(d)
                ))
            }
            Some(d) => Some(chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)),
            None => None,
        };
        let (_, operator) = crate::fleet::open(&args.store)?;
        Ok(Watcher {
            operator: Arc::new(operator),
            webhooks,
            kinds,
            every: args.every,
            // Renewed every round and every delivery; long enough to outlast
            // a retry's wait, short enough that a dead watcher's place is
            // taken within minutes.
            lease: (args.every * 4).max(Duration::from_secs(120)),
            prune_gone_for,
            // The random part tells apart two containers that are both
            // root@same-host pid 1.
            holder: format!(
                "{} pid {} ({:04x})",
                crate::fleet::declared_actor(),
                std::process::id(),
                fastrand::u16(..)
            ),
        })
    }

    async fn run(self) -> Exit {
        // Each webhook's place is taken before the first sweep, so what that
        // sweep records is sent. A local store that cannot be written (a
        // missing directory, a file that is not a store) is a mistake to say
        // now, not to retry forever; Supabase may be down a while: retried.
        for hook in &self.webhooks {
            let claim = AlertClaim {
                sink: hook.key.clone(),
                holder: self.holder.clone(),
                kinds: self.kinds.clone(),
                lease: self.lease,
                max_events: 1,
            };
            if let Err(e) = self.operator.alert_claim(&claim).await {
                if self.operator.is_local() {
                    eprintln!("heartbeat-sidecar alerts: {e}");
                    return Exit::Code(USAGE);
                }
            }
        }
        let shown: Vec<String> = self
            .webhooks
            .iter()
            .map(|h| format!("{} as {}", h.shown, format_name(h.format)))
            .collect();
        tracing::info!(
            "sending {} to {} every {} as {}",
            self.kinds.join(", "),
            shown.join(", "),
            humantime::format_duration(self.every),
            self.holder
        );
        for hook in self.webhooks.iter().filter(|h| h.in_clear()) {
            tracing::warn!(
                "{} is plain http to another host: the events go in clear (use https)",
                hook.shown
            );
        }
        let (stop_tx, stop) = watch::channel(false);
        let swept = Arc::new(Notify::new());
        let client = webhook::client();
        let mut tasks = tokio::task::JoinSet::new();
        for hook in &self.webhooks {
            let delivery = Delivery {
                operator: Arc::clone(&self.operator),
                webhook: Arc::clone(hook),
                client: client.clone(),
                claim: AlertClaim {
                    sink: hook.key.clone(),
                    holder: self.holder.clone(),
                    kinds: self.kinds.clone(),
                    lease: self.lease,
                    max_events: BATCH,
                },
                every: self.every.min(LOOK_EVERY),
                swept: Arc::clone(&swept),
                stop: stop.clone(),
            };
            tasks.spawn(delivery.run());
        }
        let sweeper = tokio::spawn(sweep_rounds(
            Arc::clone(&self.operator),
            self.every,
            self.prune_gone_for,
            swept,
            stop.clone(),
        ));

        let signal = wait_for_stop().await;
        tracing::info!("{signal}: finishing the deliveries under way, then stopping");
        if let Some(notify) = NotifySocket::from_env() {
            let _ = notify.send(b"STOPPING=1");
        }
        let _ = stop_tx.send(true);
        let finished =
            tokio::time::timeout(webhook::POST_TIMEOUT + Duration::from_secs(2), async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
        if finished.is_err() {
            tasks.abort_all();
        }
        sweeper.abort();
        // Another watcher takes over now rather than after the lease; all
        // at once, so many webhooks stop as fast as one.
        let mut releases = tokio::task::JoinSet::new();
        for hook in &self.webhooks {
            let (operator, key, holder) = (
                Arc::clone(&self.operator),
                hook.key.clone(),
                self.holder.clone(),
            );
            releases.spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    operator.alert_release(&key, &holder),
                )
                .await;
            });
        }
        while releases.join_next().await.is_some() {}
        Exit::Code(0)
    }
}

/// The name `--format` takes for it.
fn format_name(format: AlertFormat) -> String {
    clap::ValueEnum::to_possible_value(&format)
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

/// How long before the next try: the backoff, or longer when the receiver
/// asks (`Retry-After`), never less than a second: a `Retry-After: 0` must
/// not make a busy loop.
fn retry_wait(backoff: Duration, retry_after: Option<Duration>) -> Duration {
    backoff
        .max(retry_after.unwrap_or_default())
        .max(Duration::from_secs(1))
}

async fn wait_for_stop() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return "";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Every `every`: the sweep, then (once an hour) the prune; the webhooks are
/// woken to send what it recorded. Under systemd, `READY=1` after the first
/// round and `WATCHDOG=1` after each, so `WatchdogSec=` restarts a watcher
/// whose rounds stopped.
async fn sweep_rounds(
    operator: Arc<Operator>,
    every: Duration,
    prune_gone_for: Option<chrono::Duration>,
    swept: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let notify = NotifySocket::from_env();
    if let Some(period) = notify.as_ref().and_then(NotifySocket::watchdog) {
        if period < every * 2 {
            tracing::warn!(
                "WatchdogSec= ({}) is under twice --every ({}): systemd may restart a watcher that is fine",
                humantime::format_duration(period),
                humantime::format_duration(every)
            );
        }
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = String::new();
    let mut pruned_at: Option<tokio::time::Instant> = None;
    let mut ready = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match operator
            .sweep(chrono::Duration::days(crate::events::RETAIN_DAYS))
            .await
        {
            Ok(recorded) => {
                for e in &recorded {
                    tracing::info!("the sweep recorded {} {}", e.worker_name, e.kind);
                }
                if !last_error.is_empty() {
                    tracing::info!("the sweep runs again");
                    last_error.clear();
                }
            }
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    tracing::warn!("the sweep did not run ({e}); trying again every round");
                    last_error = e;
                }
            }
        }
        if let Some(gone_for) = prune_gone_for {
            if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                pruned_at = Some(tokio::time::Instant::now());
                match operator.prune(gone_for, false).await {
                    Ok(gone) => {
                        for p in gone {
                            tracing::info!(
                                "pruned {}, not seen since {:?}",
                                p.worker_name,
                                p.last_seen
                            );
                        }
                    }
                    Err(e) => tracing::warn!("the prune did not run ({e}); next in an hour"),
                }
            }
        }
        swept.notify_waiters();
        if let Some(n) = &notify {
            if !ready {
                ready = true;
                let _ = n.send(b"READY=1");
            }
            if n.watchdog().is_some() {
                let _ = n.send(b"WATCHDOG=1");
            }
        }
    }
}

/// One webhook's deliveries.
struct Delivery {
    operator: Arc<Operator>,
    webhook: Arc<Webhook>,
    client: reqwest::Client,
    claim: AlertClaim,
    every: Duration,
    swept: Arc<Notify>,
    stop: watch::Receiver<bool>,
}

/// What one claim led to.
enum Round {
    /// All sent (or nothing to send); more may be waiting when the batch was full.
    Done { full: bool },
    /// Wait this long before the next try.
    Retry(Duration),
}

impl Delivery {
    async fn run(mut self) {
        let mut backoff = Backoff::new(Duration::from_secs(1), MAX_BACKOFF);
        let mut rng = fastrand::Rng::new();
        let mut held_by: Option<String> = None;
        let mut store_error = String::new();
        loop {
            if *self.stop.borrow() {
                return;
            }
            let round = match self.operator.alert_claim(&self.claim).await {
                Err(e) => {
                    let e = e.to_string();
                    if e != store_error {
                        tracing::warn!(
                            "{}: cannot claim its place in the store ({e}); the events wait there, trying again",
                            self.webhook.shown
                        );
                        store_error = e;
                    }
                    Round::Retry(backoff.next_delay(rng.f64()))
                }
                Ok(batch) if !batch.held => {
                    let other = batch.holder.unwrap_or_default();
                    if held_by.as_deref() != Some(other.as_str()) {
                        tracing::info!(
                            "{}: {other} sends its events; this watcher takes over if it stops",
                            self.webhook.shown
                        );
                        if let Some(differ) = kinds_differ(&self.claim.kinds, &batch.kinds) {
                            tracing::warn!("{}: {other} {differ}", self.webhook.shown);
                        }
                        held_by = Some(other);
                    }
                    Round::Done { full: false }
                }
                Ok(batch) => {
                    if !store_error.is_empty() {
                        tracing::info!("{}: the store answers again", self.webhook.shown);
                        store_error.clear();
                    }
                    if held_by.take().is_some() {
                        tracing::info!("{}: this watcher now sends its events", self.webhook.shown);
                    }
                    let full = batch.events.len() >= BATCH as usize;
                    self.send(batch, &mut backoff, &mut rng, full).await
                }
            };
            let wait = match round {
                Round::Done { full: true } => continue,
                Round::Done { full: false } => None,
                Round::Retry(wait) => Some(wait),
            };
            let swept = Arc::clone(&self.swept);
            tokio::select! {
                _ = tokio::time::sleep(wait.unwrap_or(self.every + Duration::from_secs(1))) => {}
                // A round's sweep wakes a webhook that is not waiting out a retry.
                _ = swept.notified(), if wait.is_none() => {}
                _ = self.stop.changed() => return,
            }
        }
    }

    async fn send(
        &mut self,
        batch: heartbeat_sdk::sidecar::AlertBatch,
        backoff: &mut Backoff,
        rng: &mut fastrand::Rng,
        full: bool,
    ) -> Round {
        for event in &batch.events {
            if *self.stop.borrow() {
                return Round::Done { full: false };
            }
            if let Err(e) = self.webhook.post(&self.client, event).await {
                let wait = retry_wait(backoff.next_delay(rng.f64()), e.retry_after);
                tracing::warn!(
                    "{}: event {} ({} {}) not delivered: {}; next try in {}",
                    self.webhook.shown,
                    event.id,
                    event.worker_name,
                    event.kind,
                    e.why,
                    humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
                );
                return Round::Retry(wait);
            }
            backoff.reset();
            tracing::info!(
                "{}: delivered event {} ({} {})",
                self.webhook.shown,
                event.id,
                event.worker_name,
                event.kind
            );
            if !self.ack(event.id, 1, backoff, rng).await {
                return Round::Retry(self.every);
            }
        }
        if !self.ack(batch.through, 0, backoff, rng).await {
            return Round::Retry(self.every);
        }
        Round::Done { full }
    }

    /// Moves the cursor to `through`, retrying while the store fails (for
    /// half the lease: the event was delivered, and a cursor left behind
    /// would send it again). False when it could not, or another watcher
    /// holds the webhook now.
    async fn ack(
        &self,
        through: i64,
        delivered: u32,
        backoff: &mut Backoff,
        rng: &mut fastrand::Rng,
    ) -> bool {
        let give_up = tokio::time::Instant::now() + self.claim.lease / 2;
        loop {
            match self
                .operator
                .alert_ack(&self.claim.sink, &self.claim.holder, through, delivered)
                .await
            {
                Ok(true) => return true,
                Ok(false) => {
                    tracing::warn!(
                        "{}: another watcher took over (this one was stalled past its lease); leaving the events to it",
                        self.webhook.shown
                    );
                    return false;
                }
                Err(e) if tokio::time::Instant::now() >= give_up || *self.stop.borrow() => {
                    tracing::warn!(
                        "{}: delivered up to event {through} but the store did not record it ({e}): those may be sent again",
                        self.webhook.shown
                    );
                    return false;
                }
                Err(_) => tokio::time::sleep(backoff.next_delay(rng.f64())).await,
            }
        }
    }
}

/// What a waiting watcher says when the holder of its webhook sends other
/// kinds than its own `--on`: one cursor per webhook, so while the holder
/// holds it, its kinds are the ones sent. None when they match (or the
/// holder's are not known).
fn kinds_differ(own: &[String], theirs: &[String]) -> Option<String> {
    if theirs.is_empty() {
        return None;
    }
    let missing: Vec<&str> = own
        .iter()
        .filter(|k| !theirs.contains(k))
        .map(String::as_str)
        .collect();
    let extra: Vec<&str> = theirs
        .iter()
        .filter(|k| !own.contains(k))
        .map(String::as_str)
        .collect();
    if missing.is_empty() && extra.is_empty() {
        return None;
    }
    let mut said = format!("sends {}, not this watcher's --on", theirs.join(","));
    if !missing.is_empty() {
        said.push_str(&format!(
            ": until it stops, {} events are not sent",
            missing.join(",")
        ));
    }
    said.push_str(". Give every watcher of one webhook the same --on");
    Some(said)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receiver_may_slow_the_retries_but_never_speed_them_up() {
        let s = Duration::from_secs;
        assert_eq!(retry_wait(s(4), None), s(4));
        assert_eq!(retry_wait(s(4), Some(s(0))), s(4), "Retry-After: 0");
        assert_eq!(retry_wait(Duration::from_millis(500), Some(s(0))), s(1));
        assert_eq!(retry_wait(s(4), Some(s(120))), s(120));
    }

    #[test]
    fn a_waiting_watcher_says_when_the_holder_sends_other_kinds() {
        let kinds = |k: &str| k.split(',').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            kinds_differ(&kinds("crashed,stale"), &kinds("stale,crashed")),
            None
        );
        assert_eq!(kinds_differ(&kinds("crashed"), &[]), None, "not known");
        assert_eq!(
            kinds_differ(&kinds("crashed,hung"), &kinds("crashed")).as_deref(),
            Some("sends crashed, not this watcher's --on: until it stops, hung events are not sent. Give every watcher of one webhook the same --on")
        );
        assert_eq!(
            kinds_differ(&kinds("crashed"), &kinds("crashed,started")).as_deref(),
            Some("sends crashed,started, not this watcher's --on. Give every watcher of one webhook the same --on")
        );
    }
}
