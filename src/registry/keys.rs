//! API keys in the registry (SPEC §9): stored like every entity, so a revocation rides
//! the change log to every process within `registry.refresh_ms`.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::api_key::{ApiKey, KeyScope, MAX_KEYS_PER_PROGRAM};
use super::{Entity, Invalid, LinkEntry, Registry, RegistryError};

impl Registry {
    /// The key whose secret hashes to `hash`.
    pub fn key_by_hash(&self, hash: &str) -> Option<Arc<ApiKey>> {
        let id = self.key_hashes.get(hash)?.value().clone();
        self.key(&id)
    }

    pub fn key(&self, id: &str) -> Option<Arc<ApiKey>> {
        self.keys.get(id).map(|e| Arc::clone(e.value()))
    }

    /// The keys of a program, revoked ones included, oldest first.
    pub fn keys_of(&self, program_id: &str) -> Vec<Arc<ApiKey>> {
        let mut keys: Vec<Arc<ApiKey>> = self
            .keys
            .iter()
            .filter(|e| e.value().program_id == program_id)
            .map(|e| Arc::clone(e.value()))
            .collect();
        keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        keys
    }

    /// Stores a new key, after checking that its program (and partner) exist and that
    /// the program has room for it.
    pub async fn create_key(&self, key: ApiKey, now: DateTime<Utc>) -> Result<(), RegistryError> {
        key.validate(now)?;
        let _w = self.writes.lock().await;
        self.refresh().await?;
        if self.program(&key.program_id).is_none() {
            return Err(Invalid::new("program_id", "no such program").into());
        }
        if let Some(partner) = &key.partner_id {
            if self
                .partner(partner)
                .is_none_or(|p| p.program_id != key.program_id)
            {
                return Err(Invalid::new("partner_id", "no such partner in the program").into());
            }
        }
        if self.keys_of(&key.program_id).len() >= MAX_KEYS_PER_PROGRAM {
            return Err(RegistryError::Conflict(format!(
                "the program has {MAX_KEYS_PER_PROGRAM} keys, revoked ones included"
            )));
        }
        self.put(Entity::Key(key)).await
    }

    /// Revokes a key from `at` on; revoking it again changes nothing.
    pub async fn revoke_key(
        &self,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<Arc<ApiKey>, RegistryError> {
        let _w = self.writes.lock().await;
        self.refresh().await?;
        let key = self.key(id).ok_or(RegistryError::NotFound("key"))?;
        if key.revoked_at.is_some() {
            return Ok(key);
        }
        let mut revoked = (*key).clone();
        revoked.revoked_at = Some(at);
        self.put(Entity::Key(revoked)).await?;
        Ok(self.key(id).expect("just written"))
    }

    /// A partner's links, by code.
    pub fn links_of(&self, partner_id: &str) -> Vec<Arc<LinkEntry>> {
        let codes: Vec<String> = self
            .partner_links
            .get(partner_id)
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default();
        codes.iter().filter_map(|c| self.link(c)).collect()
    }
}

/// When keys were last used, written to the store at most once a minute per key and
/// process, off the request's path.
#[derive(Default)]
pub struct KeyUses {
    written: dashmap::DashMap<String, i64>,
}

/// How often one process records the use of one key.
const USE_EVERY_MS: i64 = 60_000;

impl KeyUses {
    /// Notes a use of key `id` now.
    pub fn note(&self, registry: &Arc<Registry>, id: &str) {
        let now = Utc::now().timestamp_millis();
        let due = match self.written.get(id) {
            Some(at) => now - *at >= USE_EVERY_MS,
            None => true,
        };
        if !due {
            return;
        }
        self.written.insert(id.to_string(), now);
        let store = Arc::clone(registry.store());
        let id = id.to_string();
        tokio::spawn(async move {
            if let Err(e) = store.note_key_use(&id, now).await {
                tracing::warn!(error = %e, key = %id, "key use not recorded");
            }
        });
    }
}

/// Whether a key of `scope` may be created by a caller whose own key has scope `by`
/// (`None`: the operator). Program keys make partner keys of their program only.
pub fn may_create(by: Option<KeyScope>, scope: KeyScope) -> bool {
    match by {
        None => true,
        Some(KeyScope::Program) => scope == KeyScope::Partner,
        Some(KeyScope::Partner) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::api_key::{generate, hash_secret};
    use crate::registry::{MemoryStore, Program};

    fn key(scope: KeyScope, program: &str, partner: Option<&str>) -> (ApiKey, String) {
        let (id, secret) = generate();
        (
            ApiKey {
                id,
                scope,
                program_id: program.into(),
                partner_id: partner.map(str::to_string),
                name: "test".into(),
                hash: hash_secret(&secret),
                created_at: Utc::now(),
                expires_at: None,
                revoked_at: None,
                created_by: "admin".into(),
            },
            secret,
        )
    }

    async fn registry() -> Arc<Registry> {
        let r = Registry::open(Arc::new(MemoryStore::new())).await.unwrap();
        let program: Program =
            serde_json::from_value(crate::testkit::fixtures::unit_program_json()).unwrap();
        r.put_program("acme", program.clone()).await.unwrap();
        r.put_program("globex", program).await.unwrap();
        for (id, p) in [("alice", "acme"), ("gina", "globex")] {
            let partner = crate::testkit::fixtures::partner(p);
            r.put_partner(id, partner).await.unwrap();
        }
        r
    }

    #[tokio::test]
    async fn keys_are_found_by_hash_and_revocation_reaches_a_second_cache() {
        let r = registry().await;
        let (k, secret) = key(KeyScope::Partner, "acme", Some("alice"));
        r.create_key(k.clone(), Utc::now()).await.unwrap();
        assert_eq!(r.key_by_hash(&hash_secret(&secret)).unwrap().id, k.id);
        let other = Registry::open(Arc::clone(r.store())).await.unwrap();
        assert!(other.key(&k.id).unwrap().revoked_at.is_none());
        r.revoke_key(&k.id, Utc::now()).await.unwrap();
        other.refresh().await.unwrap();
        assert!(other
            .key_by_hash(&hash_secret(&secret))
            .unwrap()
            .revoked_at
            .is_some());
        // Revoking twice keeps the first time.
        let first = r.key(&k.id).unwrap().revoked_at;
        r.revoke_key(&k.id, Utc::now()).await.unwrap();
        assert_eq!(r.key(&k.id).unwrap().revoked_at, first);
        assert_eq!(r.keys_of("acme").len(), 1);
        assert!(r.keys_of("globex").is_empty());
    }

    #[tokio::test]
    async fn a_partner_key_names_a_partner_of_its_program() {
        let r = registry().await;
        let (k, _) = key(KeyScope::Partner, "acme", Some("gina"));
        let err = r.create_key(k, Utc::now()).await.unwrap_err();
        assert!(matches!(err, RegistryError::Invalid(ref i) if i.field == "partner_id"));
        let (k, _) = key(KeyScope::Program, "nope", None);
        let err = r.create_key(k, Utc::now()).await.unwrap_err();
        assert!(matches!(err, RegistryError::Invalid(ref i) if i.field == "program_id"));
    }

    #[test]
    fn program_keys_make_partner_keys_only() {
        assert!(may_create(None, KeyScope::Program));
        assert!(may_create(Some(KeyScope::Program), KeyScope::Partner));
        assert!(!may_create(Some(KeyScope::Program), KeyScope::Program));
        assert!(!may_create(Some(KeyScope::Partner), KeyScope::Partner));
    }
}
