//! The Supabase API key, kept out of every log, error and `Debug` output.

use std::fmt;

/// The claims of a legacy JWT key that matter here.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub(crate) struct JwtClaims {
    /// The database role the key acts as.
    pub role: Option<String>,
    /// The worker an `hp_reporter` key may write.
    pub worker_name: Option<String>,
}

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

    /// A legacy JWT key's claims, read without checking the signature (that
    /// is the server's job): enough to refuse an `anon` key at start, and to
    /// know a worker-scoped `hp_reporter` key's worker.
    pub(crate) fn jwt_claims(&self) -> Option<JwtClaims> {
        use base64::Engine as _;
        if !self.is_jwt() {
            return None;
        }
        let payload = self.0.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        serde_json::from_slice(&bytes).ok()
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
    fn jwt_claims_are_read_without_the_signature() {
        use base64::Engine as _;
        let jwt = |claims: &str| {
            let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            ApiKey::new(format!(
                "{}.{}.FAKE-signature",
                enc.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
                enc.encode(claims)
            ))
        };
        let anon = jwt(r#"{"role":"anon","iss":"supabase"}"#).jwt_claims();
        assert_eq!(anon.and_then(|c| c.role).as_deref(), Some("anon"));
        let scoped = jwt(r#"{"role":"hp_reporter","worker_name":"orders-1"}"#)
            .jwt_claims()
            .unwrap_or_default();
        assert_eq!(scoped.worker_name.as_deref(), Some("orders-1"));
        assert_eq!(ApiKey::new("sb_secret_x").jwt_claims(), None);
        assert_eq!(ApiKey::new("eyJnot-a-jwt").jwt_claims(), None);
    }

    #[test]
    fn header_safety() {
        assert!(ApiKey::new("sb_secret_abc").is_header_safe());
        assert!(!ApiKey::new("sb_secret_abc\n").is_header_safe());
        assert!(!ApiKey::new("").is_header_safe());
    }
}
