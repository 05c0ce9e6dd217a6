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
