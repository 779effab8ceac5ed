//! The one clock helper rows use.

use chrono::{DateTime, SubsecRound, Utc};

/// Now, at the precision PostgreSQL keeps, so a row reads back as sent.
pub(crate) fn now_micros() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
