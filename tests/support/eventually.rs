//! Waiting on a condition, never on time: poll until it holds or a deadline
//! passes, then fail saying what never happened.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `probe` (quickly at first, then every 100 ms) until it returns
/// `Some`, or `within` has passed.
pub fn poll_until<T>(within: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// [`poll_until`], panicking with `what` when the deadline passes.
///
/// # Panics
/// When `probe` has not returned `Some` within `within`.
#[track_caller]
pub fn eventually<T>(within: Duration, what: &str, probe: impl FnMut() -> Option<T>) -> T {
    match poll_until(within, probe) {
        Some(v) => v,
        None => panic!("within {within:?}, never: {what}"),
    }
}

/// The async twin of [`poll_until`], for tests on a tokio runtime.
pub async fn poll_until_async<T, F>(within: Duration, mut probe: impl FnMut() -> F) -> Option<T>
where
    F: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The async twin of [`eventually`].
///
/// # Panics
/// When `probe` has not returned `Some` within `within`.
pub async fn eventually_async<T, F>(within: Duration, what: &str, probe: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    match poll_until_async(within, probe).await {
        Some(v) => v,
        None => panic!("within {within:?}, never: {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_as_soon_as_the_condition_holds() {
        let mut n = 0;
        let got = eventually(Duration::from_secs(5), "n reaches 3", || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(got, 3);
    }

    #[test]
    fn gives_up_at_the_deadline() {
        assert_eq!(poll_until(Duration::from_millis(30), || None::<()>), None);
    }

    #[test]
    #[should_panic(expected = "never: the impossible")]
    fn says_what_never_happened() {
        eventually(Duration::from_millis(10), "the impossible", || None::<()>);
    }
}
