//! The embedded default's state: process memory, with the semantics of the Redis store
//! (the shared suite in [`super::suite`] holds both to them). Nothing expires here but
//! fingerprints, which are trimmed as in Redis, and journeys, which are capped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Mutex;

use async_trait::async_trait;
use uuid::Uuid;

use super::{
    Answer, ClickRecord, Decide, Mark, Read, StateError, StateStore, StoredTouch, Write,
    MAX_JOURNEY,
};

#[derive(Default)]
struct Fingerprint {
    candidates: BTreeSet<Mark>,
    unique: BTreeSet<Mark>,
    done: Option<Mark>,
}

impl Fingerprint {
    /// Decides every candidate up to `target` in mark order; `target`'s verdict.
    fn decide(&mut self, target: Mark, window_ms: u64, keep_ms: u64) -> bool {
        if self.done.is_some_and(|d| target <= d) {
            return self.unique.contains(&target);
        }
        let from = match self.done {
            Some(d) => Bound::Excluded(d),
            None => Bound::Unbounded,
        };
        let window = i64::try_from(window_ms).unwrap_or(i64::MAX);
        let pending: Vec<Mark> = self
            .candidates
            .range((from, Bound::Included(target)))
            .copied()
            .collect();
        for m in pending {
            let lower = m.ms.saturating_sub(window);
            // A unique click at ts in (ts − window, ts] makes a duplicate; every unique
            // one so far precedes `m` in mark order.
            let shadowed = window > 0
                && self
                    .unique
                    .range(Mark::at(lower.saturating_add(1))..)
                    .next()
                    .is_some();
            if !shadowed {
                self.unique.insert(m);
            }
            self.done = Some(m);
        }
        if let Some(done) = self.done {
            let horizon = Mark::at(done.ms.saturating_sub(i64::try_from(keep_ms).unwrap_or(0)));
            self.candidates = self.candidates.split_off(&horizon);
            self.unique = self.unique.split_off(&horizon);
        }
        self.unique.contains(&target)
    }
}

#[derive(Default)]
struct Inner {
    click_visitors: HashMap<Uuid, Uuid>,
    fingerprints: HashMap<String, Fingerprint>,
    journeys: HashMap<(String, Uuid), BTreeSet<(i64, String)>>,
    memos: HashMap<Uuid, String>,
    claims: HashMap<String, String>,
    counts: HashMap<(String, String, u32), BTreeSet<Mark>>,
    first_sales: HashMap<(String, String), BTreeMap<Mark, String>>,
    orders: HashMap<(String, String), Option<String>>,
    refunds: HashMap<(String, String), BTreeMap<Mark, String>>,
    frontiers: HashMap<String, Mark>,
}

/// Pipeline state in process memory.
#[derive(Default)]
pub struct MemoryState {
    inner: Mutex<Inner>,
}

impl MemoryState {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every operation leaves the maps consistent before it could panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl StateStore for MemoryState {
    async fn record_clicks(&self, clicks: &[ClickRecord]) -> Result<(), StateError> {
        let mut inner = self.lock();
        for c in clicks {
            inner.click_visitors.insert(c.click_id, c.visitor_id);
            if let Some(cand) = &c.candidate {
                inner
                    .fingerprints
                    .entry(cand.fingerprint.clone())
                    .or_default()
                    .candidates
                    .insert(cand.mark);
            }
        }
        Ok(())
    }

    async fn decide_clicks(&self, clicks: &[Decide]) -> Result<Vec<bool>, StateError> {
        let mut inner = self.lock();
        let mut out = Vec::with_capacity(clicks.len());
        for d in clicks {
            let c = &d.candidate;
            let unique = inner
                .fingerprints
                .entry(c.fingerprint.clone())
                .or_default()
                .decide(c.mark, c.window_ms, c.keep_ms());
            if unique {
                let journey = inner
                    .journeys
                    .entry((d.program_id.clone(), d.visitor_id))
                    .or_default();
                journey.insert((d.touch.ts.timestamp_millis(), d.touch.member()));
                while journey.len() > MAX_JOURNEY {
                    journey.pop_first();
                }
            }
            out.push(unique);
        }
        Ok(out)
    }

    async fn memos(&self, ids: &[Uuid]) -> Result<Vec<Option<String>>, StateError> {
        let inner = self.lock();
        Ok(ids.iter().map(|id| inner.memos.get(id).cloned()).collect())
    }

    async fn read(&self, reads: &[Read]) -> Result<Vec<Answer>, StateError> {
        let inner = self.lock();
        Ok(reads
            .iter()
            .map(|r| match r {
                Read::ClickVisitor(click) => {
                    Answer::Text(inner.click_visitors.get(click).map(Uuid::to_string))
                }
                Read::Claim(key) => Answer::Text(inner.claims.get(key).cloned()),
                Read::Journey {
                    program,
                    visitor,
                    from_ms,
                    to_ms,
                } => Answer::Touches(
                    inner
                        .journeys
                        .get(&(program.clone(), *visitor))
                        .map(|j| {
                            j.iter()
                                .filter(|(ts, _)| (*from_ms..=*to_ms).contains(ts))
                                .filter_map(|(ts, m)| StoredTouch::parse(m, *ts))
                                .collect()
                        })
                        .unwrap_or_default(),
                ),
                Read::CountBefore {
                    program,
                    partner,
                    month,
                    before,
                } => Answer::Count(
                    inner
                        .counts
                        .get(&(program.clone(), partner.clone(), *month))
                        .map(|s| s.range(..*before).count() as u64)
                        .unwrap_or(0),
                ),
                Read::FirstSale {
                    program,
                    customer,
                    before,
                } => Answer::Marked(
                    inner
                        .first_sales
                        .get(&(program.clone(), customer.clone()))
                        .and_then(|s| s.first_key_value())
                        .filter(|(m, _)| *m < before)
                        .map(|(m, json)| (*m, json.clone())),
                ),
                Read::Order { program, order } => {
                    let key = (program.clone(), order.clone());
                    Answer::Order {
                        record: inner.orders.get(&key).cloned().flatten(),
                        refunds: inner
                            .refunds
                            .get(&key)
                            .map(|r| r.iter().map(|(m, j)| (*m, j.clone())).collect())
                            .unwrap_or_default(),
                    }
                }
            })
            .collect())
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<Option<String>>, StateError> {
        let mut inner = self.lock();
        Ok(writes
            .iter()
            .map(|w| match w {
                Write::Memo {
                    conversion_id,
                    json,
                } => match inner.memos.get(conversion_id) {
                    Some(existing) => Some(existing.clone()),
                    None => {
                        inner.memos.insert(*conversion_id, json.clone());
                        None
                    }
                },
                Write::Claim { key, holder } => {
                    inner
                        .claims
                        .entry(key.clone())
                        .or_insert_with(|| holder.clone());
                    None
                }
                Write::Count {
                    program,
                    partner,
                    month,
                    mark,
                } => {
                    inner
                        .counts
                        .entry((program.clone(), partner.clone(), *month))
                        .or_default()
                        .insert(*mark);
                    None
                }
                Write::FirstSale {
                    program,
                    customer,
                    mark,
                    json,
                    ..
                } => {
                    inner
                        .first_sales
                        .entry((program.clone(), customer.clone()))
                        .or_default()
                        .entry(*mark)
                        .or_insert_with(|| json.clone());
                    None
                }
                Write::Order {
                    program,
                    order,
                    json,
                } => {
                    let slot = inner
                        .orders
                        .entry((program.clone(), order.clone()))
                        .or_default();
                    if slot.is_none() {
                        *slot = Some(json.clone());
                    }
                    None
                }
                Write::Refund {
                    program,
                    order,
                    mark,
                    json,
                } => {
                    inner
                        .refunds
                        .entry((program.clone(), order.clone()))
                        .or_default()
                        .insert(*mark, json.clone());
                    None
                }
            })
            .collect())
    }

    async fn frontiers(&self) -> Result<HashMap<String, Mark>, StateError> {
        Ok(self.lock().frontiers.clone())
    }

    async fn publish(&self, frontiers: &[(String, Mark)]) -> Result<(), StateError> {
        let mut inner = self.lock();
        for (k, m) in frontiers {
            inner.frontiers.insert(k.clone(), *m);
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StateError> {
        Ok(())
    }
}
