//! Configuration: the environment's names and defaults, where rows go, and
//! the builder that checks it all once at start.

pub(crate) mod builder;
pub mod env;
pub(crate) mod target;
