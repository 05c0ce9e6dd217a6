//! Durable registry storage behind one trait: Redis in the full stack, memory in the
//! embedded default. Every write also appends to a change log that every process's
//! cache follows, which is how a change reaches them all within a second.

use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::api_key::ApiKey;
use super::model::{Link, Partner, Program, Webhook};
use super::promo::PromoCode;

/// One registry entity, as stored and as carried in the change log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Entity {
    // Boxed: a program with its plan and rules is several times the size of the rest.
    Program(Box<Program>),
    Partner(Partner),
    Link(Link),
    Webhook(Webhook),
    Key(ApiKey),
    #[serde(rename = "promo_code")]
    PromoCode(PromoCode),
}

/// A store failure; always retryable from the caller's point of view.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("registry store unavailable: {0}")]
    Unavailable(String),
    #[error("registry store holds undecodable data: {0}")]
    Corrupt(String),
}

/// Changes since a cursor.
#[derive(Debug)]
pub enum Changes {
    /// These entities changed, in order; continue from the new cursor.
    Entries(Vec<Entity>, String),
    /// The log no longer reaches back to the cursor: load everything again.
    Reload,
}

/// Where registry entities live.
#[async_trait]
pub trait RegistryStore: Send + Sync + 'static {
    /// Everything, with the cursor to follow changes from.
    async fn load(&self) -> Result<(Vec<Entity>, String), StoreError>;
    /// Changes after `cursor`.
    async fn changes(&self, cursor: &str) -> Result<Changes, StoreError>;
    /// Writes (creates or replaces) an entity and logs the change; the cursor of the
    /// change (see [`version`]).
    async fn put(&self, entity: &Entity) -> Result<String, StoreError>;
    /// Creates a link unless its code is taken (`None`); the cursor of the change.
    async fn insert_link(&self, link: &Link) -> Result<Option<String>, StoreError>;
    /// Is the store reachable?
    async fn ping(&self) -> Result<(), StoreError>;
    /// Takes lock `name` for `token` for at most `ttl`, unless another token holds it;
    /// whether it was taken. Reviews and payouts of one program hold one, so that two
    /// edges never pay one row twice.
    async fn try_lock(
        &self,
        name: &str,
        token: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError>;
    /// Releases lock `name` if `token` still holds it.
    async fn unlock(&self, name: &str, token: &str) -> Result<(), StoreError>;
    /// Records that key `id` was used at `at_ms` (not a logged change: `last_used_at`
    /// is information, not configuration).
    async fn note_key_use(&self, id: &str, at_ms: i64) -> Result<(), StoreError>;
    /// When each of `ids` was last used, as far as any process recorded.
    async fn key_uses(&self, ids: &[String]) -> Result<Vec<Option<i64>>, StoreError>;
}

/// The registry version a cursor stands for: the number events carry as
/// `registry_version` (SPEC §5.3). Cursors of one store grow with every change, and so
/// do their versions: the memory store's are change counts, Redis stream ids `ms-seq`
/// become `ms · 1000 + seq` (registry writes are API calls: never a thousand in one
/// millisecond), which stays below 2⁵³ for JSON readers that parse numbers as doubles.
pub fn version(cursor: &str) -> u64 {
    match cursor.split_once('-') {
        None => cursor.parse().unwrap_or(0),
        Some((ms, seq)) => {
            let ms: u64 = ms.parse().unwrap_or(0);
            let seq: u64 = seq.parse().unwrap_or(0);
            ms.saturating_mul(1000).saturating_add(seq.min(999))
        }
    }
}

/// The embedded default's store: process memory.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    entities: std::collections::BTreeMap<(u8, String), Entity>,
    /// The newest changes; `dropped` older ones are gone (a follower that far behind
    /// reloads everything), so a long-running process holds a bounded log.
    log: std::collections::VecDeque<Entity>,
    dropped: usize,
    /// Lock name → (holder, until).
    locks: std::collections::HashMap<String, (String, std::time::Instant)>,
    /// Key id → when it was last used (ms).
    key_uses: std::collections::HashMap<String, i64>,
}

/// Changes the memory store's log keeps.
const MEMORY_LOG_LEN: usize = 10_000;

impl MemoryInner {
    fn append(&mut self, e: Entity) -> String {
        self.log.push_back(e);
        if self.log.len() > MEMORY_LOG_LEN {
            self.log.pop_front();
            self.dropped += 1;
        }
        self.end().to_string()
    }

    /// The cursor after the last change.
    fn end(&self) -> usize {
        self.dropped + self.log.len()
    }
}

fn entity_key(e: &Entity) -> (u8, String) {
    match e {
        Entity::Program(p) => (0, p.id.clone()),
        Entity::Partner(p) => (1, p.id.clone()),
        Entity::Link(l) => (2, l.code.clone()),
        Entity::Webhook(w) => (3, w.key()),
        Entity::Key(k) => (4, k.id.clone()),
        Entity::PromoCode(c) => (
            5,
            format!("{}:{}", c.program_id, PromoCode::canonical(&c.code)),
        ),
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic while holding the lock leaves consistent data (each write is one
        // insert and one push), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl RegistryStore for MemoryStore {
    async fn load(&self) -> Result<(Vec<Entity>, String), StoreError> {
        let inner = self.lock();
        Ok((
            inner.entities.values().cloned().collect(),
            inner.end().to_string(),
        ))
    }

    async fn changes(&self, cursor: &str) -> Result<Changes, StoreError> {
        let inner = self.lock();
        let Ok(from) = cursor.parse::<usize>() else {
            return Ok(Changes::Reload);
        };
        if from > inner.end() || from < inner.dropped {
            return Ok(Changes::Reload);
        }
        Ok(Changes::Entries(
            inner
                .log
                .iter()
                .skip(from - inner.dropped)
                .cloned()
                .collect(),
            inner.end().to_string(),
        ))
    }

    async fn put(&self, entity: &Entity) -> Result<String, StoreError> {
        let mut inner = self.lock();
        inner.entities.insert(entity_key(entity), entity.clone());
        Ok(inner.append(entity.clone()))
    }

    async fn insert_link(&self, link: &Link) -> Result<Option<String>, StoreError> {
        let entity = Entity::Link(link.clone());
        let mut inner = self.lock();
        let key = entity_key(&entity);
        if inner.entities.contains_key(&key) {
            return Ok(None);
        }
        inner.entities.insert(key, entity.clone());
        Ok(Some(inner.append(entity)))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn try_lock(
        &self,
        name: &str,
        token: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let now = std::time::Instant::now();
        let mut inner = self.lock();
        match inner.locks.get(name) {
            Some((held, until)) if held != token && *until > now => Ok(false),
            _ => {
                inner
                    .locks
                    .insert(name.to_string(), (token.to_string(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn unlock(&self, name: &str, token: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.locks.get(name).is_some_and(|(held, _)| held == token) {
            inner.locks.remove(name);
        }
        Ok(())
    }

    async fn note_key_use(&self, id: &str, at_ms: i64) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let at = inner.key_uses.entry(id.to_string()).or_insert(at_ms);
        *at = (*at).max(at_ms);
        Ok(())
    }

    async fn key_uses(&self, ids: &[String]) -> Result<Vec<Option<i64>>, StoreError> {
        let inner = self.lock();
        Ok(ids
            .iter()
            .map(|id| inner.key_uses.get(id).copied())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_log_is_bounded_and_a_follower_too_far_behind_reloads() {
        let store = MemoryStore::new();
        let link = |i: usize| {
            Entity::Link(
                serde_json::from_value(serde_json::json!({"code": format!("code{i}"),
                    "program_id": "p", "partner_id": "a", "destination": "https://x.example/"}))
                .unwrap(),
            )
        };
        for i in 0..MEMORY_LOG_LEN + 5 {
            store.put(&link(i)).await.unwrap();
        }
        let end = MEMORY_LOG_LEN + 5;
        assert!(matches!(store.changes("0").await.unwrap(), Changes::Reload));
        match store.changes(&(end - 3).to_string()).await.unwrap() {
            Changes::Entries(e, next) => {
                assert_eq!(e, vec![link(end - 3), link(end - 2), link(end - 1)]);
                assert_eq!(next, end.to_string());
            }
            Changes::Reload => panic!("a follower three behind follows"),
        }
        let (all, cursor) = store.load().await.unwrap();
        assert_eq!(all.len(), end);
        assert_eq!(cursor, end.to_string());
    }

    #[test]
    fn versions_grow_with_cursors() {
        assert_eq!(version("0"), 0);
        assert_eq!(version("12"), 12);
        assert_eq!(version("0-0"), 0);
        assert!(version("1700000000000-1") > version("1700000000000-0"));
        assert!(version("1700000000001-0") > version("1700000000000-999"));
        assert!(version("1700000000001-0") > version("1700000000000-5000"));
        assert!(
            version("4102444800000-999") < 1 << 53,
            "year 2100 stays exact in JSON"
        );
    }
}
