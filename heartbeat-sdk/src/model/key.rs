//! The Supabase API key, kept out of every log, error and `Debug` output.

use std::fmt;

/// A Supabase API key: a legacy JWT (`eyJ...`) or a new `sb_secret_...` key.
///
/// `Debug` and `Display` never show the key itself.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key. Validation happens when the heartbeat starts.
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// Legacy keys are JWTs; only those may also go in `Authorization: Bearer`.
    /// Supabase rejects `sb_secret_` keys as a bearer token ("Expected 3 parts in JWT").
    pub fn is_jwt(&self) -> bool {
        self.0.starts_with("eyJ")
    }

    pub(crate) fn is_publishable(&self) -> bool {
        self.0.starts_with("sb_publishable_")
    }

    /// The key, for building request headers. Never log this.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// A key that can go in an HTTP header: visible ASCII, no spaces.
    pub(crate) fn is_header_safe(&self) -> bool {
        !self.0.is_empty() && self.0.bytes().all(|b| b.is_ascii_graphic())
    }

    fn kind(&self) -> &'static str {
        if self.is_jwt() {
            "jwt"
        } else if self.0.starts_with("sb_secret_") {
            "sb_secret"
        } else if self.is_publishable() {
            "sb_publishable"
        } else {
            "unknown kind"
        }
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey(<redacted {}>)", self.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let key = ApiKey::new("sb_secret_FAKE_test_key_do_not_use");
        let shown = format!("{key:?}");
        assert!(!shown.contains("FAKE"), "{shown}");
        assert_eq!(shown, "ApiKey(<redacted sb_secret>)");
    }

    #[test]
    fn jwt_detection() {
        assert!(ApiKey::new("eyJhbGciOiJIUzI1NiJ9.e30.x").is_jwt());
        assert!(!ApiKey::new("sb_secret_abc").is_jwt());
    }

    #[test]
    fn header_safety() {
        assert!(ApiKey::new("sb_secret_abc").is_header_safe());
        assert!(!ApiKey::new("sb_secret_abc\n").is_header_safe());
        assert!(!ApiKey::new("").is_header_safe());
    }
}
