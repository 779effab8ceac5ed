//! The model: what a row is, what a reader concludes from one, the key, the
//! errors. No I/O here, and nothing here imports the other layers.

pub(crate) mod alert;
pub(crate) mod clock;
pub(crate) mod control;
pub(crate) mod desired;
pub(crate) mod error;
pub(crate) mod event;
pub(crate) mod health;
pub(crate) mod key;
pub(crate) mod liveness;
pub(crate) mod row;
pub(crate) mod status_row;
pub(crate) mod text;
