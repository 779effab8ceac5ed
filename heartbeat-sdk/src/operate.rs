//! The operator's side: control requests, pool budgets and the audit log,
//! against Supabase (`hp_control()` and friends by RPC) or the local store
//! (the same rule in Rust). The store is found as the read side finds it.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::config::target::StoreSettings;
use crate::model::alert::{AlertBatch, AlertClaim};
use crate::model::control::{AuditEntry, ControlAnswer, ControlError, ControlRequest, PoolBudget};
use crate::model::error::ConfigError;
use crate::model::event::{Pruned, WorkerEvent};
use crate::transport::Store;

/// Steers workers through the store `settings` point to.
pub struct Operator {
    store: Store,
    /// A signed-in operator's token goes with every request (the database
    /// takes the actor from it).
    signed_in: bool,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("store", &self.store)
            .field("signed_in", &self.signed_in)
            .finish()
    }
}

impl Operator {
    /// Opens the store (nothing is sent yet); a signed-in operator's token
    /// is [`StoreSettings::operator_token`].
    ///
    /// # Errors
    /// A [`ConfigError`] for a missing or malformed setting.
    pub fn open(settings: &StoreSettings) -> Result<Operator, ConfigError> {
        let (target, _) = settings.resolve_for_reading()?;
        let store = target.into_store(concat!("heartbeat-sidecar/", env!("CARGO_PKG_VERSION")))?;
        Ok(Operator {
            store,
            signed_in: settings.operator_token.is_some(),
        })
    }

    /// Whether this is the local store (a file here), not Supabase.
    pub fn is_local(&self) -> bool {
        matches!(self.store, Store::Local(_))
    }

    /// Whether the actor is taken from a signed-in operator's token.
    pub fn signed_in(&self) -> bool {
        self.signed_in
    }

    /// One control request: `hp_control()`.
    ///
    /// # Errors
    /// [`ControlError`]: bad input, a caller that may not steer, a store
    /// that fails. A refusal is an answer, not an error.
    pub async fn control(&self, request: &ControlRequest) -> Result<ControlAnswer, ControlError> {
        match &self.store {
            Store::Local(store) => {
                let (store, request) = (store.clone(), request.clone());
                blocking(move || store.control(&request)).await
            }
            Store::Supabase(client) => {
                let arguments = serde_json::to_value(request)
                    .map_err(|e| ControlError::Store(format!("cannot write the request: {e}")))?;
                client.rpc("hp_control", &arguments).await
            }
        }
    }

    /// Sets a pool's budget (`None` keeps a value): `hp_pool_set()`.
    ///
    /// # Errors
    /// As [`control`](Self::control).
    pub async fn pool_set(
        &self,
        pool: &str,
        max_unavailable: Option<i64>,
        min_available: Option<i64>,
        protected: Option<bool>,
        actor: Option<&str>,
    ) -> Result<serde_json::Value, ControlError> {
        match &self.store {
            Store::Local(store) => {
                let (store, pool, actor) =
                    (store.clone(), pool.to_owned(), actor.map(str::to_owned));
                blocking(move || {
                    store.pool_set(
                        &pool,
                        max_unavailable,
                        min_available,
                        protected,
                        actor.as_deref(),
                    )
                })
                .await
            }
            Store::Supabase(client) => {
                let arguments = json!({
                    "pool": pool,
                    "max_unavailable": max_unavailable,
                    "min_available": min_available,
                    "protected": protected,
                    "actor": actor,
                });
                client.rpc("hp_pool_set", &arguments).await
            }
        }
    }

    /// Every pool with a budget row; the caller adds the pools its workers
    /// name (with the defaults).
    ///
    /// # Errors
    /// [`ControlError`] when the store cannot be read.
    pub async fn pools(&self) -> Result<Vec<PoolBudget>, ControlError> {
        match &self.store {
            Store::Local(store) => {
                let store = store.clone();
                blocking(move || store.pools()).await
            }
            Store::Supabase(client) => client
                .select_table(
                    "hp_pool",
                    &[
                        (
                            "select",
                            "pool,max_unavailable,min_available,protected".into(),
                        ),
                        ("order", "pool.asc".into()),
                    ],
                )
                .await
                .map_err(|e| ControlError::Store(e.to_string())),
        }
    }

    /// Starts a rolling restart of `pool`: `hp_rollout_start()`.
    ///
    /// # Errors
    /// As [`control`](Self::control); a refusal is an answer.
    #[allow(clippy::too_many_arguments)]
    pub async fn rollout_start(
        &self,
        pool: &str,
        max_unavailable: Option<i64>,
        settle_seconds: i64,
        timeout_seconds: i64,
        reason: Option<&str>,
        confirm: Option<&str>,
        actor: Option<&str>,
    ) -> Result<Value, ControlError> {
        match &self.store {
            Store::Local(store) => {
                let store = store.clone();
                let (pool, reason, confirm, actor) = (
                    pool.to_owned(),
                    reason.map(str::to_owned),
                    confirm.map(str::to_owned),
                    actor.map(str::to_owned),
                );
                blocking(move || {
                    store.rollout_start(
                        &pool,
                        max_unavailable,
                        settle_seconds,
                        timeout_seconds,
                        reason.as_deref(),
                        confirm.as_deref(),
                        actor.as_deref(),
                    )
                })
                .await
            }
            Store::Supabase(client) => {
                let arguments = json!({
                    "pool": pool, "max_unavailable": max_unavailable,
                    "settle_seconds": settle_seconds, "timeout_seconds": timeout_seconds,
                    "reason": reason, "confirm": confirm, "actor": actor,
                });
                client.rpc("hp_rollout_start", &arguments).await
            }
        }
    }

    /// Moves a rollout on (idempotent): `hp_rollout_step()`.
    ///
    /// # Errors
    /// As [`control`](Self::control).
    pub async fn rollout_step(&self, id: i64) -> Result<Value, ControlError> {
        match &self.store {
            Store::Local(store) => {
                let store = store.clone();
                blocking(move || store.rollout_step(id)).await
            }
            Store::Supabase(client) => client.rpc("hp_rollout_step", &json!({"id": id})).await,
        }
    }

    /// Stops a rollout where it is: `hp_rollout_abort()`.
    ///
    /// # Errors
    /// As [`control`](Self::control).
    pub async fn rollout_abort(
        &self,
        id: i64,
        reason: Option<&str>,
        actor: Option<&str>,
    ) -> Result<Value, ControlError> {
        match &self.store {
            Store::Local(store) => {
                let store = store.clone();
                let (reason, actor) = (reason.map(str::to_owned), actor.map(str::to_owned));
                blocking(move || store.rollout_abort(id, reason.as_deref(), actor.as_deref())).await
            }
            Store::Supabase(client) => {
                client
                    .rpc(
                        "hp_rollout_abort",
                        &json!({"id": id, "reason": reason, "actor": actor}),
                    )
                    .await
            }
        }
    }

    /// A rollout's summary (as `hp_rollout_summary()` says it): `id`'s, else
    /// the pool's latest, else the latest of all; `None` when there is none.
    ///
    /// # Errors
    /// [`ControlError`] when the store cannot be read.
    pub async fn rollout_status(
        &self,
        id: Option<i64>,
        pool: Option<&str>,
    ) -> Result<Option<Value>, ControlError> {
        match &self.store {
            Store::Local(store) => {
                let (store, pool) = (store.clone(), pool.map(str::to_owned));
                blocking(move || store.rollout_status(id, pool.as_deref())).await
            }
            Store::Supabase(client) => {
                let read = |e: crate::model::error::ReadError| ControlError::Store(e.to_string());
                let mut query = vec![
                    ("select", "*".to_owned()),
                    ("order", "id.desc".to_owned()),
                    ("limit", "1".to_owned()),
                ];
                if let Some(id) = id {
                    query.push(("id", format!("eq.{id}")));
                } else if let Some(pool) = pool {
                    query.push(("pool", format!("eq.{pool}")));
                }
                let rollouts: Vec<Value> = client
                    .select_table("hp_rollout", &query)
                    .await
                    .map_err(read)?;
                let Some(mut rollout) = rollouts.into_iter().next() else {
                    return Ok(None);
                };
                let rollout_id = rollout["id"].as_i64().unwrap_or_default();
                let rows: Vec<Value> = client
                    .select_table(
                        "hp_rollout_worker",
                        &[
                            ("select", "worker_name,state,skip_reason".to_owned()),
                            ("rollout_id", format!("eq.{rollout_id}")),
                            ("order", "position.asc".to_owned()),
                        ],
                    )
                    .await
                    .map_err(read)?;
                let workers: serde_json::Map<String, Value> = rows
                    .iter()
                    .map(|w| {
                        let state = w["state"].as_str().unwrap_or_default();
                        let text = match w["skip_reason"].as_str() {
                            Some(why) => format!("{state}: {why}"),
                            None => state.to_owned(),
                        };
                        (
                            w["worker_name"].as_str().unwrap_or_default().to_owned(),
                            Value::from(text),
                        )
                    })
                    .collect();
                rollout["rollout_id"] = json!(rollout_id);
                rollout["workers"] = Value::Object(workers);
                Ok(Some(rollout))
            }
        }
    }

    /// The audit log since `since`, about `worker` when given, oldest first.
    ///
    /// # Errors
    /// [`ControlError`] when the store cannot be read.
    pub async fn audit(
        &self,
        since: Option<DateTime<Utc>>,
        worker: Option<&str>,
    ) -> Result<Vec<AuditEntry>, ControlError> {
        match &self.store {
            Store::Local(store) => {
                let (store, worker) = (store.clone(), worker.map(str::to_owned));
                blocking(move || store.audit(since, worker.as_deref())).await
            }
            Store::Supabase(client) => {
                let mut filters = Vec::new();
                if let Some(t) = since {
                    filters.push(("at", format!("gte.{}", t.to_rfc3339())));
                }
                if let Some(w) = worker {
                    filters.push(("workers", format!("cs.{{{w}}}")));
                }
                select_by_id(client, "hp_audit_log", filters, |e: &AuditEntry| e.id).await
            }
        }
    }
}

impl Operator {
    /// What happened (`hp_worker_events`) since `since`, about `worker` when
    /// given, oldest first; past Supabase's 1,000-row cap, by id.
    ///
    /// # Errors
    /// [`ControlError`] when the store cannot be read.
    pub async fn events(
        &self,
        since: Option<DateTime<Utc>>,
        worker: Option<&str>,
    ) -> Result<Vec<WorkerEvent>, ControlError> {
        match &self.store {
            Store::Local(store) => {
                let (store, worker) = (store.clone(), worker.map(str::to_owned));
                blocking(move || {
                    store
                        .events(since, worker.as_deref())
                        .map_err(|e| ControlError::Store(e.to_string()))
                })
                .await
            }
            Store::Supabase(client) => {
                let mut filters = Vec::new();
                if let Some(t) = since {
                    filters.push(("at", format!("gte.{}", t.to_rfc3339())));
                }
                if let Some(w) = worker {
                    filters.push(("worker_name", format!("eq.{w}")));
                }
                select_by_id(client, "hp_worker_events", filters, |e: &WorkerEvent| e.id).await
            }
        }
    }

    /// `hp_sweep()`: records the workers that went stale or hung (or came
    /// back) since the last sweep, once each however many sweep at once, and
    /// drops events older than `retain`. Returns what it recorded.
    ///
    /// # Errors
    /// [`ControlError`] when the store cannot be written.
    pub async fn sweep(&self, retain: chrono::Duration) -> Result<Vec<WorkerEvent>, ControlError> {
        match &self.store {
            Store::Local(store) => {
                let store = store.clone();
                blocking(move || {
                    store
                        .sweep(retain)
                        .map_err(|e| ControlError::Store(e.to_string()))
                })
                .await
            }
            Store::Supabase(client) => {
                let arguments = json!({ "retain": format!("{} seconds", retain.num_seconds()) });
                client.rpc("hp_sweep", &arguments).await
            }
        }
    }
}

impl Operator {
    /// `hp_prune()`: removes the workers not seen for `gone_for` (at least
    /// an hour), their control rows with them, each recorded as a `pruned`
    /// event; with `dry_run` only says which. A pruned worker that comes
    /// back simply reappears.
    ///
    /// # Errors
    /// [`ControlError::Invalid`] for less than an hour; else when the store
    /// cannot be written.
    pub async fn prune(
        &self,
        gone_for: chrono::Duration,
        dry_run: bool,
    ) -> Result<Vec<Pruned>, ControlError> {
        if gone_for < chrono::Duration::hours(1) {
            return Err(ControlError::Invalid {
                code: "22023".into(),
                message: format!(
                    "gone for {} s is under an hour: a worker that beats slowly would be removed (prune workers gone for days, e.g. --gone-for 7d)",
                    gone_for.num_seconds()
                ),
            });
        }
        match &self.store {
            Store::Local(store) => {
                let store = store.clone();
                blocking(move || {
                    store
                        .prune(gone_for, dry_run)
                        .map_err(|e| ControlError::Store(e.to_string()))
                })
                .await
            }
            Store::Supabase(client) => {
                let arguments = json!({
                    "gone_for": format!("{} seconds", gone_for.num_seconds()),
                    "dry_run": dry_run,
                });
                client.rpc("hp_prune", &arguments).await
            }
        }
    }
}

impl Operator {
    /// `hp_alert_claim()`: takes (or renews) a webhook's delivery cursor for
    /// this watcher and returns the events after it; while another
    /// watcher's lease runs, says who holds it and returns none.
    ///
    /// # Errors
    /// [`ControlError`] when the store cannot be written (on Supabase, also
    /// a missing `sql/20261201000003_hp_alerts.sql`).
    pub async fn alert_claim(&self, claim: &AlertClaim) -> Result<AlertBatch, ControlError> {
        match &self.store {
            Store::Local(store) => {
                let (store, claim) = (store.clone(), claim.clone());
                blocking(move || {
                    store
                        .alert_claim(&claim)
                        .map_err(|e| ControlError::Store(e.to_string()))
                })
                .await
            }
            Store::Supabase(client) => {
                let arguments = serde_json::to_value(claim)
                    .map_err(|e| ControlError::Store(format!("cannot write the claim: {e}")))?;
                client.rpc("hp_alert_claim", &arguments).await
            }
        }
    }

    /// `hp_alert_ack()`: the events up to `through` were delivered
    /// (`delivered` of them sent); renews the lease. False when this watcher
    /// no longer holds the sink.
    ///
    /// # Errors
    /// [`ControlError`] when the store cannot be written.
    pub async fn alert_ack(
        &self,
        sink: &str,
        holder: &str,
        through: i64,
        delivered: u32,
    ) -> Result<bool, ControlError> {
        match &self.store {
            Store::Local(store) => {
                let (store, sink, holder) = (store.clone(), sink.to_owned(), holder.to_owned());
                blocking(move || {
                    store
                        .alert_ack(&sink, &holder, through, delivered)
                        .map_err(|e| ControlError::Store(e.to_string()))
                })
                .await
            }
            Store::Supabase(client) => {
                let arguments = json!({
                    "sink": sink, "holder": holder, "through": through, "delivered": delivered,
                });
                client.rpc("hp_alert_ack", &arguments).await
            }
        }
    }

    /// `hp_alert_release()`: lets go of the sink, so another watcher takes
    /// over at once.
    ///
    /// # Errors
    /// [`ControlError`] when the store cannot be written.
    pub async fn alert_release(&self, sink: &str, holder: &str) -> Result<bool, ControlError> {
        match &self.store {
            Store::Local(store) => {
                let (store, sink, holder) = (store.clone(), sink.to_owned(), holder.to_owned());
                blocking(move || {
                    store
                        .alert_release(&sink, &holder)
                        .map_err(|e| ControlError::Store(e.to_string()))
                })
                .await
            }
            Store::Supabase(client) => {
                let arguments = json!({ "sink": sink, "holder": holder });
                client.rpc("hp_alert_release", &arguments).await
            }
        }
    }
}

/// Every row of `table` that `filters` match, oldest id first: page after
/// page past Supabase's 1,000-row cap, each after the last id seen, until a
/// page brings nothing new.
async fn select_by_id<T: serde::de::DeserializeOwned>(
    client: &crate::transport::postgrest::PostgrestClient,
    table: &str,
    filters: Vec<(&str, String)>,
    id: impl Fn(&T) -> i64,
) -> Result<Vec<T>, ControlError> {
    let mut all: Vec<T> = Vec::new();
    loop {
        let mut query = vec![
            ("select", "*".to_owned()),
            ("order", "id.asc".to_owned()),
            ("limit", "1000".to_owned()),
        ];
        query.extend(filters.iter().cloned());
        let last = all.last().map(&id);
        if let Some(last) = last {
            query.push(("id", format!("gt.{last}")));
        }
        let page: Vec<T> = client
            .select_table(table, &query)
            .await
            .map_err(|e| ControlError::Store(e.to_string()))?;
        let before = all.len();
        all.extend(page.into_iter().filter(|e| last.is_none_or(|l| id(e) > l)));
        if all.len() == before {
            return Ok(all);
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ControlError::Store(format!("the local store's task failed: {e}")))?
}
