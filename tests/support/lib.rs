//! Helpers for every test package: waiting on conditions, a real
//! PostgreSQL, the SQL PostgREST would run for a request, and a misbehaving
//! PostgREST (`chaos`).

pub mod chaos;
pub mod eventually;
pub mod pg;
pub mod postgrest_sql;
