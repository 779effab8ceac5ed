//! Saying a test was skipped where it shows: `eprintln!` in a passing test
//! is captured by the test harness and never printed, so a skipped test
//! would pass in silence. This writes to the process's real stderr.

use std::io::Write;

/// Prints a loud SKIPPED banner, past the test harness's capture.
pub fn loudly(what: &str) {
    let _ = writeln!(std::io::stderr(), "\n##### SKIPPED: {what} #####\n");
}

/// When `HP_REQUIRE_<name>=1`, panics with `what`; otherwise says loudly
/// that the test was skipped. Every test that needs something external
/// (PostgreSQL, PM2, node, tmux, systemd-analyze) goes through here.
///
/// # Panics
/// When the thing is required (`HP_REQUIRE_<name>=1`).
pub fn or_require(name: &str, what: &str) {
    if std::env::var(format!("HP_REQUIRE_{name}")).as_deref() == Ok("1") {
        panic!("HP_REQUIRE_{name}=1 but {what}");
    }
    loudly(what);
}
