//! Durable registry storage behind one trait: Redis in the full stack, memory in the
//! embedded default. Every write also appends to a change log that every process's
//! cache follows, which is how a change reaches them all within a second.

use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::model::{Link, Partner, Program};

/// One registry entity, as stored and as carried in the change log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Entity {
    Program(Program),
    Partner(Partner),
    Link(Link),
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
    /// Writes (creates or replaces) an entity and logs the change.
    async fn put(&self, entity: &Entity) -> Result<(), StoreError>;
    /// Creates a link unless its code is taken; `false` when it is.
    async fn insert_link(&self, link: &Link) -> Result<bool, StoreError>;
    /// Is the store reachable?
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The embedded default's store: process memory.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    entities: std::collections::BTreeMap<(u8, String), Entity>,
    log: Vec<Entity>,
}

fn entity_key(e: &Entity) -> (u8, String) {
    match e {
        Entity::Program(p) => (0, p.id.clone()),
        Entity::Partner(p) => (1, p.id.clone()),
        Entity::Link(l) => (2, l.code.clone()),
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
            inner.log.len().to_string(),
        ))
    }

    async fn changes(&self, cursor: &str) -> Result<Changes, StoreError> {
        let inner = self.lock();
        let Ok(from) = cursor.parse::<usize>() else {
            return Ok(Changes::Reload);
        };
        if from > inner.log.len() {
            return Ok(Changes::Reload);
        }
        Ok(Changes::Entries(
            inner.log[from..].to_vec(),
            inner.log.len().to_string(),
        ))
    }

    async fn put(&self, entity: &Entity) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.entities.insert(entity_key(entity), entity.clone());
        inner.log.push(entity.clone());
        Ok(())
    }

    async fn insert_link(&self, link: &Link) -> Result<bool, StoreError> {
        let entity = Entity::Link(link.clone());
        let mut inner = self.lock();
        let key = entity_key(&entity);
        if inner.entities.contains_key(&key) {
            return Ok(false);
        }
        inner.entities.insert(key, entity.clone());
        inner.log.push(entity);
        Ok(true)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
