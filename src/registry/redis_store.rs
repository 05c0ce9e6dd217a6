//! The registry in Redis: one hash of entities (`{prefix}:reg:entities`) and a capped
//! stream of changes (`{prefix}:reg:log`). A Lua script writes both at once, so a
//! follower never sees a change the hash does not have, or the reverse.

use async_trait::async_trait;
use redis::streams::StreamRangeReply;

use crate::kv::Redis;

use super::model::Link;
use super::store::{Changes, Entity, RegistryStore, StoreError};

const PUT_SCRIPT: &str = r"
if ARGV[3] == '1' then
  if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return '' end
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[2])
";

/// Changes kept in the log; a follower further behind than this reloads everything.
const LOG_LEN: u64 = 100_000;
/// Changes read per poll.
const BATCH: usize = 10_000;

/// Registry store over Redis.
pub struct RedisStore {
    conn: Redis,
    entities_key: String,
    log_key: String,
    lock_prefix: String,
    /// Hash of key id → when it was last used (ms); no log, not configuration.
    uses_key: String,
    put: redis::Script,
    unlock: redis::Script,
}

/// Deletes a lock only if the caller's token still holds it.
const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

impl RedisStore {
    /// Connects; `prefix` namespaces every key. On a cluster the two keys the write
    /// script touches share a hash tag.
    pub async fn connect(conn: Redis, prefix: &str) -> Result<Self, StoreError> {
        let reg = if conn.is_cluster() { "{reg}" } else { "reg" };
        let store = RedisStore {
            conn,
            entities_key: format!("{prefix}:{reg}:entities"),
            log_key: format!("{prefix}:{reg}:log"),
            lock_prefix: format!("{prefix}:lock:"),
            uses_key: format!("{prefix}:reg:key_uses"),
            put: redis::Script::new(PUT_SCRIPT),
            unlock: redis::Script::new(UNLOCK_SCRIPT),
        };
        store.ping().await?;
        Ok(store)
    }

    /// The change's stream id; `None` when `only_new` and the entity exists.
    async fn write(&self, entity: &Entity, only_new: bool) -> Result<Option<String>, StoreError> {
        let json = serde_json::to_string(entity).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let id: String = self
            .put
            .key(&self.entities_key)
            .key(&self.log_key)
            .arg(field(entity))
            .arg(json)
            .arg(if only_new { "1" } else { "0" })
            .arg(LOG_LEN)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok((!id.is_empty()).then_some(id))
    }

    async fn last_id(&self) -> Result<String, StoreError> {
        let reply: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.log_key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(reply
            .ids
            .first()
            .map(|s| s.id.clone())
            .unwrap_or_else(|| "0-0".into()))
    }
}

fn field(entity: &Entity) -> String {
    match entity {
        Entity::Program(p) => format!("program:{}", p.id),
        Entity::Partner(p) => format!("partner:{}", p.id),
        Entity::Link(l) => format!("link:{}", l.code),
        Entity::Webhook(w) => format!("webhook:{}", w.key()),
        Entity::Key(k) => format!("key:{}", k.id),
        Entity::PromoCode(c) => format!(
            "promo_code:{}:{}",
            c.program_id,
            super::promo::PromoCode::canonical(&c.code)
        ),
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Stream ids `ms-seq` compare as pairs of numbers, not as strings.
fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

fn decode(json: &str) -> Result<Entity, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[async_trait]
impl RegistryStore for RedisStore {
    async fn load(&self) -> Result<(Vec<Entity>, String), StoreError> {
        // Cursor first: a change between the two reads is then replayed on top of the
        // snapshot, which is harmless because applying an entity is idempotent.
        let cursor = self.last_id().await?;
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&self.entities_key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let entities = all
            .iter()
            .map(|(_, json)| decode(json))
            .collect::<Result<_, _>>()?;
        Ok((entities, cursor))
    }

    async fn changes(&self, cursor: &str) -> Result<Changes, StoreError> {
        let first: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.log_key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if let Some(first) = first.ids.first() {
            if parse_id(&first.id) > parse_id(cursor) {
                return Ok(Changes::Reload);
            }
        }
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.log_key)
            .arg(format!("({cursor}"))
            .arg("+")
            .arg("COUNT")
            .arg(BATCH)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let next = reply
            .ids
            .last()
            .map(|s| s.id.clone())
            .unwrap_or_else(|| cursor.to_string());
        let mut entities = Vec::with_capacity(reply.ids.len());
        for entry in &reply.ids {
            let json: String = entry.get("e").ok_or_else(|| {
                StoreError::Corrupt(format!("log entry {} has no entity", entry.id))
            })?;
            entities.push(decode(&json)?);
        }
        Ok(Changes::Entries(entities, next))
    }

    async fn put(&self, entity: &Entity) -> Result<String, StoreError> {
        self.write(entity, false)
            .await?
            .ok_or_else(|| StoreError::Corrupt("the registry script wrote nothing".into()))
    }

    async fn insert_link(&self, link: &Link) -> Result<Option<String>, StoreError> {
        self.write(&Entity::Link(link.clone()), true).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn try_lock(
        &self,
        name: &str,
        token: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let taken: Option<String> = redis::cmd("SET")
            .arg(format!("{}{name}", self.lock_prefix))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(taken.is_some())
    }

    async fn unlock(&self, name: &str, token: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .unlock
            .key(format!("{}{name}", self.lock_prefix))
            .arg(token)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn note_key_use(&self, id: &str, at_ms: i64) -> Result<(), StoreError> {
        // Processes record at most once a minute per key: the last writer wins, which
        // is within that minute of the true last use.
        let _: i64 = redis::cmd("HSET")
            .arg(&self.uses_key)
            .arg(id)
            .arg(at_ms)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn key_uses(&self, ids: &[String]) -> Result<Vec<Option<i64>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        redis::cmd("HMGET")
            .arg(&self.uses_key)
            .arg(ids)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_id;

    #[test]
    fn stream_ids_compare_numerically() {
        assert!(parse_id("10-0") > parse_id("9-5"));
        assert!(parse_id("10-10") > parse_id("10-9"));
        assert_eq!(parse_id("0-0"), (0, 0));
    }
}
