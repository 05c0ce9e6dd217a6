//! The registry: programs, partners and links (SPEC §3.3), durable in a
//! [`RegistryStore`] and cached in memory in every process, which follows the store's
//! change log so that a change is visible everywhere within `registry.refresh_ms`.

pub mod api_key;
mod keys;
pub mod model;
pub mod promo;
pub mod redis_store;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use crate::engine::settle::Directory;
use crate::shutdown::Shutdown;
pub use keys::{may_create, KeyUses};
pub use model::{
    Invalid, Link, LinkStatus, Partner, PartnerStatus, Program, PromoCodePriority, Webhook,
    WebhookEventType,
};
pub use promo::PromoCode;
pub use store::{version, Changes, Entity, MemoryStore, RegistryStore, StoreError};

/// Why a registry write was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A link with its destination split once, so that a redirect only merges queries.
#[derive(Debug)]
pub struct LinkEntry {
    pub link: Link,
    /// `scheme://authority/path` of the destination.
    pub base: String,
    /// The destination's own query parameters, in order.
    pub query: Vec<(String, String)>,
    /// The destination's fragment, without `#`.
    pub fragment: Option<String>,
}

impl LinkEntry {
    /// Splits the link's destination once, for every redirect after.
    pub fn new(link: Link) -> Self {
        let (rest, fragment) = match link.destination.split_once('#') {
            Some((r, f)) => (r.to_string(), Some(f.to_string())),
            None => (link.destination.clone(), None),
        };
        let (base, query) = match rest.split_once('?') {
            Some((b, q)) => (
                b.to_string(),
                form_urlencoded::parse(q.as_bytes()).into_owned().collect(),
            ),
            None => (rest, Vec::new()),
        };
        LinkEntry {
            link,
            base,
            query,
            fragment,
        }
    }
}

/// Fields a `PATCH /api/v1/partners/{id}` may change.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerPatch {
    #[serde(default)]
    pub status: Option<PartnerStatus>,
    #[serde(default, with = "double_option")]
    pub tier: Option<Option<String>>,
    /// Whether `tier_rules` move the partner; a `tier` without it pins (`false`).
    #[serde(default)]
    pub tier_auto: Option<bool>,
    #[serde(default, with = "double_option")]
    pub parent_id: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    pub name: Option<Option<String>>,
}

/// Fields a `PATCH /api/v1/links/{code}` may change.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkPatch {
    #[serde(default)]
    pub status: Option<LinkStatus>,
}

/// `null` (clear) and absent (keep) are different in a PATCH.
mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// The hasher of the registry's maps: every decision looks up each touch's partner and
/// its ancestors, every redirect its link. foldhash's quality variant with a seed per
/// process; ids are bounded and only a program's keys create them.
pub type Hasher = foldhash::quality::RandomState;

type Map<K, V> = DashMap<K, V, Hasher>;

/// The in-memory view of the registry, kept in step with the store.
pub struct Registry {
    store: Arc<dyn RegistryStore>,
    programs: Map<String, Arc<Program>>,
    partners: Map<String, Arc<Partner>>,
    links: Map<String, Arc<LinkEntry>>,
    /// program → name → endpoint
    webhooks: Map<String, std::collections::BTreeMap<String, Arc<Webhook>>>,
    /// API keys by id, and their ids by the hash of their secret (`keys.rs`).
    keys: Map<String, Arc<api_key::ApiKey>>,
    key_hashes: Map<String, String>,
    /// (program, canonical code) → promo code (SPEC §10.3).
    promo_codes: Map<(String, String), Arc<PromoCode>>,
    /// partner → its link codes, for the partner API's listing.
    partner_links: Map<String, std::collections::BTreeSet<String>>,
    cursor: tokio::sync::Mutex<String>,
    /// Version of the cursor: every change up to it is applied here.
    applied: AtomicU64,
    /// Newest version this process has seen: `applied`, or its own latest write, which
    /// it applied at once (read-your-writes) ahead of the cursor. Events carry it.
    seen: AtomicU64,
    /// Serializes this process's writes, so that its own cycle checks see each other.
    writes: tokio::sync::Mutex<()>,
}

impl Registry {
    /// Loads the whole registry from `store`.
    pub async fn open(store: Arc<dyn RegistryStore>) -> Result<Arc<Self>, StoreError> {
        let registry = Arc::new(Registry {
            store,
            programs: Map::default(),
            partners: Map::default(),
            links: Map::default(),
            webhooks: Map::default(),
            promo_codes: Map::default(),
            keys: Map::default(),
            key_hashes: Map::default(),
            partner_links: Map::default(),
            cursor: tokio::sync::Mutex::new(String::new()),
            applied: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            writes: tokio::sync::Mutex::new(()),
        });
        registry.reload().await?;
        Ok(registry)
    }

    /// The underlying store (for readiness checks).
    pub fn store(&self) -> &Arc<dyn RegistryStore> {
        &self.store
    }

    async fn reload(&self) -> Result<(), StoreError> {
        let mut cursor = self.cursor.lock().await;
        let (entities, next) = self.store.load().await?;
        // Overwrite in place, then drop what is gone: a redirect meanwhile never finds
        // a live link missing.
        let mut keep = (
            std::collections::HashSet::new(),
            std::collections::HashSet::new(),
            std::collections::HashSet::new(),
            std::collections::HashSet::new(),
            std::collections::HashSet::new(),
        );
        let mut codes = std::collections::HashSet::new();
        for e in entities {
            match &e {
                Entity::Program(p) => keep.0.insert(p.id.clone()),
                Entity::Partner(p) => keep.1.insert(p.id.clone()),
                Entity::Link(l) => keep.2.insert(l.code.clone()),
                Entity::Webhook(w) => keep.3.insert(w.key()),
                Entity::Key(k) => keep.4.insert(k.id.clone()),
                Entity::PromoCode(c) => codes.insert(c.key()),
            };
            self.apply(e);
        }
        self.programs.retain(|k, _| keep.0.contains(k));
        self.partners.retain(|k, _| keep.1.contains(k));
        self.links.retain(|k, _| keep.2.contains(k));
        for mut codes in self.partner_links.iter_mut() {
            codes.value_mut().retain(|c| keep.2.contains(c));
        }
        self.keys.retain(|k, _| keep.4.contains(k));
        self.promo_codes.retain(|k, _| codes.contains(k));
        self.key_hashes.retain(|_, id| keep.4.contains(id));
        for mut hooks in self.webhooks.iter_mut() {
            let program = hooks.key().clone();
            hooks
                .value_mut()
                .retain(|name, _| keep.3.contains(&Webhook::key_of(&program, name)));
        }
        self.webhooks.retain(|_, hooks| !hooks.is_empty());
        self.advance(&next);
        *cursor = next;
        Ok(())
    }

    /// Records that every change up to `cursor` is applied.
    fn advance(&self, cursor: &str) {
        let v = version(cursor);
        self.applied.fetch_max(v, Ordering::SeqCst);
        self.seen.fetch_max(v, Ordering::SeqCst);
    }

    /// The newest registry version this process answers with: what the edge stamps on
    /// its events (`registry_version`).
    pub fn version(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }

    /// The version up to which every change is applied here.
    pub fn applied_version(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    /// Pulls changes until every change up to `wanted` is applied; `false` when the
    /// store does not get there within `patience` (it is unreachable, or the version
    /// names a change this store never had).
    pub async fn catch_up(&self, wanted: u64, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        let mut pause = Duration::from_millis(5);
        while self.applied_version() < wanted {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "registry refresh failed while catching up");
            }
            if self.applied_version() >= wanted {
                break;
            }
            if tokio::time::Instant::now() + pause > deadline {
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        true
    }

    /// Pulls the changes since the last refresh.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let changes = {
            let cursor = self.cursor.lock().await;
            self.store.changes(&cursor).await?
        };
        match changes {
            Changes::Reload => self.reload().await,
            Changes::Entries(entities, next) => {
                let mut cursor = self.cursor.lock().await;
                let n = entities.len();
                for e in entities {
                    self.apply(e);
                }
                self.advance(&next);
                *cursor = next;
                if n > 0 {
                    metrics::counter!(crate::metrics::REGISTRY_CHANGES_TOTAL).increment(n as u64);
                }
                Ok(())
            }
        }
    }

    /// Follows the store until shutdown.
    pub fn spawn_follower(self: &Arc<Self>, every: Duration, mut shutdown: Shutdown) {
        use futures_util::FutureExt;
        let registry = Arc::clone(self);
        let follow = async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tick.tick() => {
                        if let Err(e) = registry.refresh().await {
                            metrics::counter!(crate::metrics::REGISTRY_REFRESH_ERRORS_TOTAL).increment(1);
                            tracing::warn!(error = %e, "registry refresh failed");
                        }
                    }
                }
            }
        };
        tokio::spawn(async move {
            if std::panic::AssertUnwindSafe(follow)
                .catch_unwind()
                .await
                .is_err()
            {
                // A process whose registry silently stopped following would serve and
                // settle with stale partners forever behind green health checks.
                tracing::error!("the registry follower panicked; exiting");
                std::process::exit(1);
            }
        });
    }

    fn apply(&self, entity: Entity) {
        match entity {
            Entity::Program(p) => {
                self.programs.insert(p.id.clone(), Arc::new(*p));
            }
            Entity::Partner(p) => {
                self.partners.insert(p.id.clone(), Arc::new(p));
            }
            Entity::Link(l) => {
                self.partner_links
                    .entry(l.partner_id.clone())
                    .or_default()
                    .insert(l.code.clone());
                self.links
                    .insert(l.code.clone(), Arc::new(LinkEntry::new(l)));
            }
            Entity::PromoCode(c) => {
                self.promo_codes.insert(c.key(), Arc::new(c));
            }
            Entity::Key(k) => {
                self.key_hashes.insert(k.hash.clone(), k.id.clone());
                self.keys.insert(k.id.clone(), Arc::new(k));
            }
            Entity::Webhook(w) if w.deleted => {
                if let Some(mut hooks) = self.webhooks.get_mut(&w.program_id) {
                    hooks.remove(&w.name);
                }
            }
            Entity::Webhook(w) => {
                self.webhooks
                    .entry(w.program_id.clone())
                    .or_default()
                    .insert(w.name.clone(), Arc::new(w));
            }
        }
    }

    /// The program's webhook endpoints, by name.
    pub fn webhooks(&self, program_id: &str) -> Vec<Arc<Webhook>> {
        self.webhooks
            .get(program_id)
            .map(|h| h.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether any endpoint of the program subscribes to `event`: the pipeline and the
    /// ledger publish only such events to the outbox.
    pub fn subscribed(&self, program_id: &str, event: WebhookEventType) -> bool {
        self.webhooks
            .get(program_id)
            .is_some_and(|h| h.values().any(|w| w.events.contains(&event)))
    }

    /// Creates or replaces a program's webhook endpoint; `true` when it is new.
    pub async fn put_webhook(
        &self,
        program_id: &str,
        name: &str,
        mut webhook: Webhook,
    ) -> Result<bool, RegistryError> {
        webhook.program_id = program_id.to_string();
        webhook.name = name.to_string();
        webhook.deleted = false;
        webhook.validate()?;
        let _w = self.writes.lock().await;
        self.refresh().await?;
        if self.program(program_id).is_none() {
            return Err(RegistryError::NotFound("program"));
        }
        let created = !self
            .webhooks
            .get(program_id)
            .is_some_and(|h| h.contains_key(name));
        if let Some(partner) = webhook.partner_id.as_deref().filter(|_| created) {
            let held = self
                .webhooks(program_id)
                .iter()
                .filter(|w| w.partner_id.as_deref() == Some(partner))
                .count();
            if held >= model::MAX_POSTBACKS {
                return Err(RegistryError::Conflict(format!(
                    "a partner has at most {} postbacks",
                    model::MAX_POSTBACKS
                )));
            }
        }
        self.put(Entity::Webhook(webhook)).await?;
        Ok(created)
    }

    /// Removes a program's webhook endpoint: its events are no longer published, and
    /// those waiting for it are given up.
    pub async fn delete_webhook(&self, program_id: &str, name: &str) -> Result<(), RegistryError> {
        let _w = self.writes.lock().await;
        self.refresh().await?;
        let existing = self
            .webhooks(program_id)
            .into_iter()
            .find(|w| w.name == name)
            .ok_or(RegistryError::NotFound("webhook"))?;
        let mut tombstone = (*existing).clone();
        tombstone.deleted = true;
        self.put(Entity::Webhook(tombstone)).await
    }

    pub fn program(&self, id: &str) -> Option<Arc<Program>> {
        self.programs.get(id).map(|e| Arc::clone(e.value()))
    }

    pub fn partner(&self, id: &str) -> Option<Arc<Partner>> {
        self.partners.get(id).map(|e| Arc::clone(e.value()))
    }

    pub fn link(&self, code: &str) -> Option<Arc<LinkEntry>> {
        self.links.get(code).map(|e| Arc::clone(e.value()))
    }

    /// Every program, by id.
    pub fn programs(&self) -> Vec<Arc<Program>> {
        let mut all: Vec<Arc<Program>> = self
            .programs
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// The partners of `program_id`, by id (a walk over every partner: for the rare
    /// reader, such as the tier moves at a period boundary).
    pub fn partners_of(&self, program_id: &str) -> Vec<Arc<Partner>> {
        let mut all: Vec<Arc<Partner>> = self
            .partners
            .iter()
            .filter(|e| e.value().program_id == program_id)
            .map(|e| Arc::clone(e.value()))
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Number of programs, partners and links cached.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.programs.len(), self.partners.len(), self.links.len())
    }

    async fn put(&self, entity: Entity) -> Result<(), RegistryError> {
        let at = self.store.put(&entity).await?;
        // Read-your-writes in this process without waiting for the follower.
        self.apply(entity);
        self.seen.fetch_max(version(&at), Ordering::SeqCst);
        Ok(())
    }

    /// Creates or replaces a program; `true` when it is new.
    pub async fn put_program(&self, id: &str, mut program: Program) -> Result<bool, RegistryError> {
        program.id = id.to_string();
        program.validate()?;
        let _w = self.writes.lock().await;
        self.refresh().await?;
        let created = self.program(id).is_none();
        self.put(Entity::Program(Box::new(program))).await?;
        Ok(created)
    }

    /// Creates or replaces a partner; `true` when it is new.
    pub async fn put_partner(&self, id: &str, mut partner: Partner) -> Result<bool, RegistryError> {
        partner.id = id.to_string();
        partner.validate()?;
        let _w = self.writes.lock().await;
        self.refresh().await?;
        if let Some(existing) = self.partner(id) {
            if existing.program_id != partner.program_id {
                return Err(
                    Invalid::new("program_id", "a partner cannot move to another program").into(),
                );
            }
        }
        self.check_partner(&partner)?;
        let existing = self.partner(id);
        partner.record_tier(existing.as_deref(), chrono::Utc::now());
        self.put(Entity::Partner(partner)).await?;
        Ok(existing.is_none())
    }

    /// Changes a partner's status, tier, parent or name.
    pub async fn patch_partner(
        &self,
        id: &str,
        patch: PartnerPatch,
    ) -> Result<Arc<Partner>, RegistryError> {
        let _w = self.writes.lock().await;
        self.refresh().await?;
        let before = self.partner(id).ok_or(RegistryError::NotFound("partner"))?;
        let mut partner = (*before).clone();
        if let Some(s) = patch.status {
            partner.status = s;
        }
        if let Some(t) = patch.tier {
            // A tier set by hand holds until automatic moves are turned on again.
            partner.tier = t;
            partner.tier_auto = false;
        }
        if let Some(auto) = patch.tier_auto {
            partner.tier_auto = auto;
        }
        if let Some(p) = patch.parent_id {
            partner.parent_id = p;
        }
        if let Some(n) = patch.name {
            partner.name = n;
        }
        partner.validate()?;
        self.check_partner(&partner)?;
        partner.record_tier(Some(&before), chrono::Utc::now());
        self.put(Entity::Partner(partner)).await?;
        Ok(self.partner(id).expect("just written"))
    }

    fn check_partner(&self, partner: &Partner) -> Result<(), RegistryError> {
        let program = self
            .program(&partner.program_id)
            .ok_or_else(|| Invalid::new("program_id", "no such program"))?;
        if let Some(tier) = &partner.tier {
            if !program.commission.tiers.contains_key(tier) {
                return Err(
                    Invalid::new("tier", "is not a tier of the program's commission plan").into(),
                );
            }
        }
        if let Some(parent_id) = &partner.parent_id {
            let parent = self
                .partner(parent_id)
                .ok_or_else(|| Invalid::new("parent_id", "no such partner in the program"))?;
            if parent.program_id != partner.program_id {
                return Err(Invalid::new("parent_id", "no such partner in the program").into());
            }
            // Walk up from the parent: meeting this partner again would close a cycle.
            let mut next = Some(parent_id.clone());
            let mut steps = 0;
            while let Some(id) = next {
                if id == partner.id {
                    return Err(RegistryError::Conflict(format!(
                        "parent_id {parent_id} would make a cycle of parents"
                    )));
                }
                steps += 1;
                if steps > self.partners.len() + 1 {
                    return Err(RegistryError::Conflict(
                        "the parent chain already has a cycle".into(),
                    ));
                }
                next = self.partner(&id).and_then(|p| p.parent_id.clone());
            }
        }
        Ok(())
    }

    /// Creates a link, generating a code when none is given.
    pub async fn create_link(&self, mut link: Link) -> Result<Arc<LinkEntry>, RegistryError> {
        let generated = link.code.is_empty();
        if generated {
            link.code = generate_code();
        }
        link.validate()?;
        self.refresh().await?;
        let program = self
            .program(&link.program_id)
            .ok_or_else(|| Invalid::new("program_id", "no such program"))?;
        let partner = self
            .partner(&link.partner_id)
            .ok_or_else(|| Invalid::new("partner_id", "no such partner in the program"))?;
        if partner.program_id != program.id {
            // Worded as for a missing partner: a key of one program learns nothing of
            // another's partners.
            return Err(Invalid::new("partner_id", "no such partner in the program").into());
        }
        // A generated code can collide (62^8 codes); try a few fresh ones.
        for _ in 0..5 {
            if let Some(at) = self.store.insert_link(&link).await? {
                let code = link.code.clone();
                self.apply(Entity::Link(link));
                self.seen.fetch_max(version(&at), Ordering::SeqCst);
                return Ok(self.link(&code).expect("just written"));
            }
            if !generated {
                return Err(RegistryError::Conflict(format!(
                    "link code {} is taken",
                    link.code
                )));
            }
            link.code = generate_code();
        }
        Err(RegistryError::Conflict(
            "could not find a free link code".into(),
        ))
    }

    /// Changes a link's status.
    pub async fn patch_link(
        &self,
        code: &str,
        patch: LinkPatch,
    ) -> Result<Arc<LinkEntry>, RegistryError> {
        let _w = self.writes.lock().await;
        self.refresh().await?;
        let mut link = self
            .link(code)
            .ok_or(RegistryError::NotFound("link"))?
            .link
            .clone();
        if let Some(s) = patch.status {
            link.status = s;
        }
        self.put(Entity::Link(link)).await?;
        Ok(self.link(code).expect("just written"))
    }
}

impl Directory for Registry {
    type Partner = Arc<Partner>;
    fn partner(&self, id: &str) -> Option<Arc<Partner>> {
        Registry::partner(self, id)
    }
}

/// Eight random base62 characters from a v4 UUID's randomness.
fn generate_code() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut n = uuid::Uuid::new_v4().as_u128();
    (0..8)
        .map(|_| {
            let c = ALPHABET[(n % 62) as usize] as char;
            n /= 62;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn registry() -> Arc<Registry> {
        Registry::open(Arc::new(MemoryStore::new())).await.unwrap()
    }

    fn program() -> Program {
        serde_json::from_value(crate::testkit::fixtures::unit_program_json()).unwrap()
    }

    fn partner(program: &str, parent: Option<&str>) -> Partner {
        Partner {
            parent_id: parent.map(str::to_string),
            ..crate::testkit::fixtures::partner(program)
        }
    }

    #[tokio::test]
    async fn parent_cycles_are_refused() {
        let r = registry().await;
        r.put_program("acme", program()).await.unwrap();
        r.put_partner("a", partner("acme", None)).await.unwrap();
        r.put_partner("b", partner("acme", Some("a")))
            .await
            .unwrap();
        r.put_partner("c", partner("acme", Some("b")))
            .await
            .unwrap();
        let err = r
            .put_partner("a", partner("acme", Some("c")))
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Conflict(_)), "{err}");
        let err = r
            .patch_partner(
                "a",
                PartnerPatch {
                    parent_id: Some(Some("b".into())),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Conflict(_)), "{err}");
        // Unknown parent and self-parent are field errors.
        let err = r
            .put_partner("d", partner("acme", Some("zz")))
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Invalid(ref i) if i.field == "parent_id"));
        let err = r
            .put_partner("d", partner("acme", Some("d")))
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Invalid(ref i) if i.field == "parent_id"));
    }

    #[tokio::test]
    async fn links_get_codes_and_codes_are_unique() {
        let r = registry().await;
        r.put_program("acme", program()).await.unwrap();
        r.put_partner("a", partner("acme", None)).await.unwrap();
        let link = Link {
            code: String::new(),
            program_id: "acme".into(),
            partner_id: "a".into(),
            destination: "https://shop.example/p?ref=1#top".into(),
            campaign: None,
            utm_source: Some("partner".into()),
            utm_medium: None,
            utm_campaign: None,
            utm_term: None,
            utm_content: None,
            sub_ids: Vec::new(),
            status: LinkStatus::Active,
        };
        let made = r.create_link(link.clone()).await.unwrap();
        assert_eq!(made.link.code.len(), 8);
        assert_eq!(made.base, "https://shop.example/p");
        assert_eq!(made.query, vec![("ref".to_string(), "1".to_string())]);
        assert_eq!(made.fragment.as_deref(), Some("top"));
        let mut fixed = link.clone();
        fixed.code = "spring-sale".into();
        r.create_link(fixed.clone()).await.unwrap();
        assert!(matches!(
            r.create_link(fixed).await,
            Err(RegistryError::Conflict(_))
        ));
    }

    #[tokio::test]
    async fn a_second_cache_follows_the_store() {
        let store: Arc<dyn RegistryStore> = Arc::new(MemoryStore::new());
        let writer = Registry::open(Arc::clone(&store)).await.unwrap();
        let reader = Registry::open(store).await.unwrap();
        writer.put_program("acme", program()).await.unwrap();
        assert!(reader.program("acme").is_none());
        reader.refresh().await.unwrap();
        assert_eq!(reader.program("acme").unwrap().name, "Acme partners");
    }
}
