//! API keys (SPEC §9): `tlk_…` secrets shown once, stored as their SHA-256, scoped to
//! one program or one partner of it, with an optional expiry and a revocation time.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::model::{valid_id, Invalid};

/// Prefix of every key secret: a leaked key is recognisable (secret scanners) and
/// never mistaken for the operator token.
pub const KEY_PREFIX: &str = "tlk_";

/// Keys one program may hold, revoked ones included: every accepted value has a bound.
pub const MAX_KEYS_PER_PROGRAM: usize = 1000;

/// What a key reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyScope {
    /// Everything of one program (SPEC §3.3, §3.5, §3.6, §9.2) but creating programs.
    Program,
    /// The partner API (SPEC §9.1) of one partner.
    Partner,
}

impl KeyScope {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyScope::Program => "program",
            KeyScope::Partner => "partner",
        }
    }
}

/// A key as the registry stores it: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub id: String,
    pub scope: KeyScope,
    pub program_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_id: Option<String>,
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    #[serde(with = "crate::events::rfc3339_millis")]
    pub created_at: DateTime<Utc>,
    #[serde(default, with = "crate::events::rfc3339_millis_opt")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, with = "crate::events::rfc3339_millis_opt")]
    pub revoked_at: Option<DateTime<Utc>>,
    /// Who created it: `admin` or `key:{id}`.
    pub created_by: String,
}

impl ApiKey {
    /// Whether the key authenticates at `now`.
    pub fn usable(&self, now: DateTime<Utc>) -> Result<(), &'static str> {
        if self.revoked_at.is_some_and(|r| r <= now) {
            return Err("the key is revoked");
        }
        if self.expires_at.is_some_and(|e| e <= now) {
            return Err("the key has expired");
        }
        Ok(())
    }

    /// Checks the fields a caller chose.
    pub fn validate(&self, now: DateTime<Utc>) -> Result<(), Invalid> {
        if !valid_id(&self.program_id) {
            return Err(Invalid::new(
                "program_id",
                "must be 1-64 of A-Z a-z 0-9 _ . -",
            ));
        }
        match (self.scope, &self.partner_id) {
            (KeyScope::Partner, None) => {
                return Err(Invalid::new("partner_id", "is required for a partner key"))
            }
            (KeyScope::Program, Some(_)) => {
                return Err(Invalid::new(
                    "partner_id",
                    "a program key is not for one partner",
                ))
            }
            (KeyScope::Partner, Some(p)) if !valid_id(p) => {
                return Err(Invalid::new(
                    "partner_id",
                    "must be 1-64 of A-Z a-z 0-9 _ . -",
                ))
            }
            _ => {}
        }
        if self.name.trim().is_empty()
            || self.name.len() > 100
            || self.name.chars().any(char::is_control)
        {
            return Err(Invalid::new(
                "name",
                "must be 1-100 characters, none of them control characters",
            ));
        }
        if let Some(e) = self.expires_at {
            if e <= now || e > now + chrono::Duration::days(3660) {
                return Err(Invalid::new(
                    "expires_at",
                    "must be in the future and at most 10 years ahead",
                ));
            }
        }
        Ok(())
    }
}

/// Hex SHA-256 of a presented secret: what the registry looks keys up by.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A fresh key: its id and its secret (`tlk_` and 42 base62 characters, 250 bits).
pub fn generate() -> (String, String) {
    let id = format!("key_{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
    let mut secret = String::from(KEY_PREFIX);
    for _ in 0..2 {
        // 21 base62 digits take 125 of a v4 UUID's 122 random bits and 3 fixed ones;
        // two of them give ~244 bits of randomness.
        let mut n = uuid::Uuid::new_v4().as_u128();
        for _ in 0..21 {
            secret.push(BASE62[(n % 62) as usize] as char);
            n /= 62;
        }
    }
    (id, secret)
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scope: KeyScope, partner: Option<&str>) -> ApiKey {
        ApiKey {
            id: "key_1".into(),
            scope,
            program_id: "acme".into(),
            partner_id: partner.map(str::to_string),
            name: "ci".into(),
            hash: hash_secret("tlk_x"),
            created_at: Utc::now(),
            expires_at: None,
            revoked_at: None,
            created_by: "admin".into(),
        }
    }

    #[test]
    fn secrets_are_fresh_prefixed_and_hashed() {
        let (id, a) = generate();
        let (_, b) = generate();
        assert!(id.starts_with("key_") && id.len() == 24);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == 46, "{a}");
        assert_ne!(a, b);
        assert_eq!(hash_secret(&a).len(), 64);
        assert_ne!(hash_secret(&a), hash_secret(&b));
    }

    #[test]
    fn scope_and_partner_go_together() {
        let now = Utc::now();
        assert!(key(KeyScope::Program, None).validate(now).is_ok());
        assert!(key(KeyScope::Partner, Some("alice")).validate(now).is_ok());
        let field = |k: ApiKey| k.validate(now).unwrap_err().field;
        assert_eq!(field(key(KeyScope::Partner, None)), "partner_id");
        assert_eq!(field(key(KeyScope::Program, Some("alice"))), "partner_id");
        let mut k = key(KeyScope::Program, None);
        k.expires_at = Some(now - chrono::Duration::seconds(1));
        assert_eq!(field(k), "expires_at");
        let mut k = key(KeyScope::Program, None);
        k.name = "a\nb".into();
        assert_eq!(field(k), "name");
    }

    #[test]
    fn revoked_and_expired_keys_do_not_authenticate() {
        let now = Utc::now();
        let mut k = key(KeyScope::Program, None);
        assert!(k.usable(now).is_ok());
        k.expires_at = Some(now);
        assert!(k.usable(now).is_err());
        k.expires_at = None;
        k.revoked_at = Some(now - chrono::Duration::seconds(1));
        assert!(k.usable(now).is_err());
    }
}
