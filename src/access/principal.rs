//! The caller a request authenticates as: the operator (`admin.token`), a program key
//! or a partner key (SPEC §9). Anything else is `401`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;

use super::keys::{hash_secret, ApiKey, KeyScope, KEY_PREFIX};
use crate::registry::Registry;
use crate::signature::constant_time_eq;

/// The roles a route can be open to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Operator,
    Program,
    Partner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Program => "program",
            Role::Partner => "partner",
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    Operator,
    /// A key of one program or of one partner of it (its scope says which).
    Key(Arc<ApiKey>),
}

impl Principal {
    pub fn role(&self) -> Role {
        match self {
            Principal::Operator => Role::Operator,
            Principal::Key(k) => match k.scope {
                KeyScope::Program => Role::Program,
                KeyScope::Partner => Role::Partner,
            },
        }
    }

    /// Who a write is recorded as in the audit trails: `admin` or `key:{id}`.
    pub fn actor(&self) -> String {
        match self {
            Principal::Operator => "admin".to_string(),
            Principal::Key(k) => format!("key:{}", k.id),
        }
    }

    /// The key's id; `None` for the operator.
    pub fn key(&self) -> Option<&ApiKey> {
        match self {
            Principal::Operator => None,
            Principal::Key(k) => Some(k),
        }
    }

    /// The program a key belongs to; `None` for the operator, who has them all.
    pub fn program(&self) -> Option<&str> {
        self.key().map(|k| k.program_id.as_str())
    }
}

/// Why a request did not authenticate (always `401`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("unknown key or token")]
    Unknown,
    #[error("{0}")]
    Unusable(&'static str),
}

/// The bearer token of `Authorization`, if the header has that form. The scheme is
/// case-insensitive (RFC 9110 §11.1).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let (scheme, token) = headers.get(AUTHORIZATION)?.to_str().ok()?.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Authenticates a request: the operator token, or a key the registry holds that is
/// neither revoked nor expired at `now`.
pub fn authenticate(
    headers: &HeaderMap,
    admin_token: &str,
    registry: &Registry,
    now: DateTime<Utc>,
) -> Result<Principal, AuthError> {
    let token = bearer(headers).ok_or(AuthError::Missing)?;
    if !token.starts_with(KEY_PREFIX) {
        return if constant_time_eq(token.as_bytes(), admin_token.as_bytes()) {
            Ok(Principal::Operator)
        } else {
            Err(AuthError::Unknown)
        };
    }
    // Looked up by the secret's hash: the table holds no secret to compare in time.
    let key = registry
        .key_by_hash(&hash_secret(token))
        .ok_or(AuthError::Unknown)?;
    key.usable(now).map_err(AuthError::Unusable)?;
    Ok(Principal::Key(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn registry() -> Arc<Registry> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(Registry::open(
            Arc::new(crate::registry::MemoryStore::new()),
        ))
        .unwrap()
    }

    proptest! {
        /// Whatever an `Authorization` header holds, authentication answers without
        /// panicking, and nothing but the operator token itself authorizes.
        #[test]
        fn arbitrary_authorization_headers_never_authorize(raw in proptest::collection::vec(any::<u8>(), 0..80),
                                                             text in "(Bearer |bearer |Basic )?(tlk_)?\\PC{0,60}") {
            let r = registry();
            for value in [raw.clone(), text.clone().into_bytes()] {
                let mut headers = HeaderMap::new();
                if let Ok(v) = hyper::header::HeaderValue::from_bytes(&value) {
                    headers.insert(AUTHORIZATION, v);
                }
                let got = authenticate(&headers, "operator-token-123", &r, Utc::now());
                prop_assert!(got.is_err(), "{:?} authorized", String::from_utf8_lossy(&value));
            }
        }
    }

    #[test]
    fn the_operator_token_authorizes_and_a_near_miss_does_not() {
        let r = registry();
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, v.parse().unwrap());
            authenticate(&h, "operator-token-123", &r, Utc::now())
        };
        assert!(matches!(
            with("Bearer operator-token-123"),
            Ok(Principal::Operator)
        ));
        assert!(matches!(
            with("bearer  operator-token-123 "),
            Ok(Principal::Operator)
        ));
        assert_eq!(
            with("Bearer operator-token-12").unwrap_err(),
            AuthError::Unknown
        );
        assert_eq!(
            with("Bearer tlk_operator-token-123").unwrap_err(),
            AuthError::Unknown
        );
        assert_eq!(
            with("Basic operator-token-123").unwrap_err(),
            AuthError::Missing
        );
    }
}
