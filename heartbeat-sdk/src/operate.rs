//! The operator's side: control requests, pool budgets and the audit log,
//! against Supabase (`hp_control()` and friends by RPC) or the local store
//! (the same rule in Rust). The store is found as the read side finds it.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::config::target::StoreSettings;
use crate::model::control::{AuditEntry, ControlAnswer, ControlError, ControlRequest, PoolBudget};
use crate::model::error::ConfigError;
use crate::transport::Store;

/// Steers workers through the store `settings` point to.
pub struct Operator {
    store: Store,
    /// A signed-in operator's token (`HP_OPERATOR_JWT`): the database takes
    /// the actor from it. Never printed.
    operator_token: Option<String>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("store", &self.store)
            .field("signed_in", &self.operator_token.is_some())
            .finish()
    }
}

impl Operator {
    /// Opens the store (nothing is sent yet). `operator_token` is a signed-in
    /// operator's JWT, sent as the bearer with the configured key.
    ///
    /// # Errors
    /// A [`ConfigError`] for a missing or malformed setting.
    pub fn open(
        settings: &StoreSettings,
        operator_token: Option<String>,
    ) -> Result<Operator, ConfigError> {
        let (target, _) = settings.resolve_for_reading()?;
        let store = target.into_store(concat!("heartbeat-sidecar/", env!("CARGO_PKG_VERSION")))?;
        Ok(Operator {
            store,
            operator_token: operator_token.filter(|t| !t.trim().is_empty()),
        })
    }

    /// Whether the actor is taken from a signed-in operator's token.
    pub fn signed_in(&self) -> bool {
        self.operator_token.is_some()
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
                client
                    .rpc("hp_control", &arguments, self.operator_token.as_deref())
                    .await
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
                client
                    .rpc("hp_pool_set", &arguments, self.operator_token.as_deref())
                    .await
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
                let mut query = vec![("select", "*".to_owned()), ("order", "id.asc".to_owned())];
                if let Some(t) = since {
                    query.push(("at", format!("gte.{}", t.to_rfc3339())));
                }
                if let Some(w) = worker {
                    query.push(("workers", format!("cs.{{{w}}}")));
                }
                client
                    .select_table("hp_audit_log", &query)
                    .await
                    .map_err(|e| ControlError::Store(e.to_string()))
            }
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
