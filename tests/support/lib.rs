//! Helpers for the cross-crate tests: a real PostgreSQL, and the SQL
//! PostgREST would run for a request.

pub mod pg;
pub mod postgrest_sql;
