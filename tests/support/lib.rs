//! Helpers for every test package: waiting on conditions, a real
//! PostgreSQL, and the SQL PostgREST would run for a request.

pub mod eventually;
pub mod pg;
pub mod postgrest_sql;
