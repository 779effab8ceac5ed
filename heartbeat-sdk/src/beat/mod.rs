//! The beat: the state the worker's threads share with the beat thread, the
//! loop that turns it into rows, and what the loop needs (backoff, log
//! limiting, process facts, signals).

pub(crate) mod backoff;
pub(crate) mod beat_loop;
pub(crate) mod control_state;
pub(crate) mod counters;
pub(crate) mod log_limit;
pub(crate) mod probe;
pub(crate) mod progress;
pub(crate) mod runs;
pub(crate) mod shared;
pub(crate) mod signals;
