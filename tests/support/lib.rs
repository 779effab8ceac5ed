//! Helpers for every test package: waiting on conditions, a real
//! PostgreSQL, the SQL PostgREST would run for a request, the control
//! scenarios every store must pass, a misbehaving PostgREST (`chaos`) and a webhook receiver.

pub mod chaos;
pub mod control_scenarios;
pub mod eventually;
mod http_head;
pub mod pg;
pub mod postgrest_sql;
pub mod receiver;
pub mod skip;
