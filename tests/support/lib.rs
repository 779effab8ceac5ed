//! Helpers for the cross-crate tests: a real PostgreSQL, the SQL PostgREST
//! would run for a request, and a misbehaving PostgREST (`chaos`).

pub mod chaos;
pub mod pg;
pub mod postgrest_sql;
