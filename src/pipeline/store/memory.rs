//! The embedded default's state: process memory, with the semantics of the Redis store
//! (the shared suite in [`super::suite`] holds both to them). What grows with traffic
//! expires as its Redis key would: the click index, fingerprints and journeys after
//! their keep, memos after [`MEMO_TTL`], swept once a minute; claims, counts, first
//! sales and orders are kept as long as in Redis.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Mutex;

use async_trait::async_trait;
use rust_decimal::Decimal;
use uuid::Uuid;

use tokio::time::{Duration, Instant};

use super::{
    Answer, CapKey, ClickRecord, Decide, Mark, OrderSlot, Read, StateError, StateStore,
    StoredTouch, Tally, TierKey, Write, CAP_ENTRIES_KEPT, MAX_JOURNEY, MEMO_TTL,
};

/// How often expired entries are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

struct Fingerprint {
    candidates: BTreeSet<Mark>,
    unique: BTreeSet<Mark>,
    done: Option<Mark>,
    expires: Instant,
}

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint {
            candidates: BTreeSet::new(),
            unique: BTreeSet::new(),
            done: None,
            expires: Instant::now(),
        }
    }
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

/// A journey and when it expires.
struct Journey {
    touches: BTreeSet<(i64, String)>,
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    /// click → (visitor, expiry)
    click_visitors: HashMap<Uuid, (Uuid, Instant)>,
    fingerprints: HashMap<String, Fingerprint>,
    journeys: HashMap<(String, Uuid), Journey>,
    /// conversion → (memo, expiry)
    memos: HashMap<Uuid, (String, Instant)>,
    claims: HashMap<String, String>,
    /// tally → (marks, expiry)
    tallies: HashMap<Tally, (Marks, Instant)>,
    first_sales: HashMap<(String, String), BTreeMap<Mark, String>>,
    cap_totals: HashMap<CapKey, BTreeMap<Mark, Decimal>>,
    /// Tier figures are read once their period ends and kept with the program (the
    /// embedded default runs a demo's months, not years).
    tier_figures: HashMap<TierKey, BTreeMap<Uuid, String>>,
    tier_moves: HashMap<(String, String), BTreeMap<i64, String>>,
    tier_done: HashMap<String, i64>,
    orders: HashMap<(String, String, OrderSlot), String>,
    refunds: HashMap<(String, String, OrderSlot), BTreeMap<Mark, String>>,
    due: BTreeSet<(i64, String)>,
    frontiers: HashMap<String, Mark>,
    last_sweep: Option<Instant>,
}

impl Inner {
    /// Drops what has expired, at most once per [`SWEEP_EVERY`].
    fn sweep(&mut self) {
        let now = Instant::now();
        if self.last_sweep.is_some_and(|t| now < t + SWEEP_EVERY) {
            return;
        }
        self.last_sweep = Some(now);
        self.click_visitors.retain(|_, (_, e)| *e > now);
        self.fingerprints.retain(|_, f| f.expires > now);
        self.journeys.retain(|_, j| j.expires > now);
        self.memos.retain(|_, (_, e)| *e > now);
        self.tallies.retain(|_, (_, e)| *e > now);
    }

    fn tally(&mut self, t: &Tally, mark: Mark) {
        let slot = self
            .tallies
            .entry(t.clone())
            .or_insert_with(|| (Marks::default(), Instant::now()));
        slot.0.insert(mark);
        slot.1 = Instant::now() + t.keep();
    }
}

/// A tally's marks, ascending and distinct. Settling counts a partner's tally as of
/// each conversion, thousands of times a batch: counted by position instead of by
/// walking a tree's range (an eighth of the embedded pipeline's time, measured).
/// Marks are added in settlement order, so an insertion is almost always an append.
#[derive(Default)]
struct Marks(VecDeque<Mark>);

impl Marks {
    fn insert(&mut self, mark: Mark) {
        let at = self.0.partition_point(|m| *m < mark);
        if self.0.get(at) != Some(&mark) {
            self.0.insert(at, mark);
        }
    }

    /// Marks in `[from, before)`.
    fn count(&self, from: Mark, before: Mark) -> u64 {
        let lo = self.0.partition_point(|m| *m < from);
        let hi = self.0.partition_point(|m| *m < before);
        hi.saturating_sub(lo) as u64
    }

    fn forget_before(&mut self, horizon: Mark) {
        let n = self.0.partition_point(|m| *m < horizon);
        self.0.drain(..n);
    }
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

impl Inner {
    /// Windowed tallies forget what lies behind their keep, as in Redis: behind the
    /// earliest read's, which a later read of a call spanning days would pass.
    fn forget_behind(&mut self, reads: &[Read]) {
        let mut earliest: HashMap<&Tally, Mark> = HashMap::new();
        for r in reads {
            if let Read::Count { tally, before, .. } = r {
                if tally.windowed() {
                    let at = earliest.entry(tally).or_insert(*before);
                    *at = (*at).min(*before);
                }
            }
        }
        for (tally, before) in earliest {
            if let Some((marks, _)) = self.tallies.get_mut(tally) {
                marks.forget_before(Mark::at(tally.horizon(before)));
            }
        }
    }

    /// One read's answer.
    fn answer(&self, r: &Read) -> Answer {
        match r {
            Read::ClickVisitor(click) => {
                Answer::Text(self.click_visitors.get(click).map(|(v, _)| v.to_string()))
            }
            Read::Claim(key) => Answer::Text(self.claims.get(key).cloned()),
            Read::Journey {
                program,
                visitor,
                from_ms,
                to_ms,
            } => Answer::Touches(
                self.journeys
                    .get(&(program.clone(), *visitor))
                    .map(|j| {
                        j.touches
                            .iter()
                            .filter(|(ts, _)| (*from_ms..=*to_ms).contains(ts))
                            .filter_map(|(ts, m)| StoredTouch::parse(m, *ts))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            Read::Count {
                tally,
                from_ms,
                before,
            } => Answer::Count(
                self.tallies
                    .get(tally)
                    .filter(|_| Mark::at(*from_ms) < *before)
                    .map(|(s, _)| s.count(Mark::at(*from_ms), *before))
                    .unwrap_or(0),
            ),
            Read::FirstSale {
                program,
                customer,
                before,
            } => Answer::Marked(
                self.first_sales
                    .get(&(program.clone(), customer.clone()))
                    .and_then(|s| s.first_key_value())
                    .filter(|(m, _)| *m < before)
                    .map(|(m, json)| (*m, json.clone())),
            ),
            Read::TierFigures(key) => Answer::Entries(
                self.tier_figures
                    .get(key)
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default(),
            ),
            Read::TierMoves { program, partner } => Answer::Entries(
                self.tier_moves
                    .get(&(program.clone(), partner.clone()))
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default(),
            ),
            Read::TierDone { program } => {
                Answer::Count(self.tier_done.get(program).map_or(0, |ms| *ms as u64))
            }
            Read::CapTotal { key, before } => Answer::Marked(
                self.cap_totals
                    .get(key)
                    .and_then(|t| t.range(..*before).next_back())
                    .map(|(m, total)| (*m, total.to_string())),
            ),
            Read::CustomerSales {
                program,
                customer,
                before,
            } => Answer::Count(
                self.first_sales
                    .get(&(program.clone(), customer.clone()))
                    .map_or(0, |s| s.range(..*before).count() as u64),
            ),
            Read::Order {
                program,
                order,
                slot,
            } => {
                let key = |slot| (program.clone(), order.clone(), slot);
                // The slot asked, or the first recorded (a refund's).
                let slot = slot.unwrap_or_else(|| {
                    OrderSlot::PRECEDENCE
                        .into_iter()
                        .find(|s| self.orders.contains_key(&key(*s)))
                        .unwrap_or_default()
                });
                Answer::Order {
                    slot,
                    record: self.orders.get(&key(slot)).cloned(),
                    refunds: self
                        .refunds
                        .get(&key(slot))
                        .map(|r| r.iter().map(|(m, j)| (*m, j.clone())).collect())
                        .unwrap_or_default(),
                }
            }
            Read::DueBefore { before_ms, limit } => Answer::Entries(
                self.due
                    .iter()
                    .take_while(|(ms, _)| ms < before_ms)
                    .take(*limit)
                    .map(|(_, j)| j.clone())
                    .collect(),
            ),
        }
    }

    /// One write applied; a memo's answer is the memo that was there before.
    fn apply(&mut self, w: &Write) -> Option<String> {
        match w {
            Write::Memo {
                conversion_id,
                json,
            } => match self.memos.get(conversion_id) {
                Some((existing, _)) => Some(existing.clone()),
                None => {
                    self.memos
                        .insert(*conversion_id, (json.clone(), Instant::now() + MEMO_TTL));
                    None
                }
            },
            Write::Claim { key, holder } => {
                self.claims
                    .entry(key.clone())
                    .or_insert_with(|| holder.clone());
                None
            }
            Write::Tally { tally, mark } => {
                self.tally(tally, *mark);
                None
            }
            Write::FirstSale {
                program,
                customer,
                mark,
                json,
                ..
            } => {
                self.first_sales
                    .entry((program.clone(), customer.clone()))
                    .or_default()
                    .entry(*mark)
                    .or_insert_with(|| json.clone());
                None
            }
            Write::Order {
                program,
                order,
                slot,
                json,
            } => {
                self.orders
                    .entry((program.clone(), order.clone(), *slot))
                    .or_insert_with(|| json.clone());
                None
            }
            Write::Refund {
                program,
                order,
                slot,
                mark,
                json,
            } => {
                self.refunds
                    .entry((program.clone(), order.clone(), *slot))
                    .or_default()
                    .insert(*mark, json.clone());
                None
            }
            Write::Due { due_ms, json } => {
                self.due.insert((*due_ms, json.clone()));
                None
            }
            Write::DueDone { json } => {
                self.due.retain(|(_, j)| j != json);
                None
            }
            Write::TierFigures {
                key,
                conversion_id,
                json,
            } => {
                self.tier_figures
                    .entry(key.clone())
                    .or_default()
                    .insert(*conversion_id, json.clone());
                None
            }
            Write::TierMove {
                program,
                partner,
                from_ms,
                json,
            } => {
                let moves = self
                    .tier_moves
                    .entry((program.clone(), partner.clone()))
                    .or_default();
                match moves.get(from_ms) {
                    // Only a different move is an answer: the same one stands.
                    Some(existing) => Some(existing.clone()).filter(|e| e != json),
                    None => {
                        moves.insert(*from_ms, json.clone());
                        None
                    }
                }
            }
            Write::TierDone {
                program,
                boundary_ms,
            } => {
                let done = self.tier_done.entry(program.clone()).or_insert(0);
                *done = (*done).max((*boundary_ms).max(0));
                None
            }
            Write::CapTotal { key, mark, total } => {
                let totals = self.cap_totals.entry(key.clone()).or_default();
                totals.entry(*mark).or_insert(*total);
                while totals.len() > CAP_ENTRIES_KEPT {
                    totals.pop_first();
                }
                None
            }
        }
    }
}

#[async_trait]
impl StateStore for MemoryState {
    async fn record_clicks(&self, clicks: &[ClickRecord]) -> Result<(), StateError> {
        let mut inner = self.lock();
        inner.sweep();
        let now = Instant::now();
        for c in clicks {
            inner
                .click_visitors
                .insert(c.click_id, (c.visitor_id, now + c.keep));
            if let Some(cand) = &c.candidate {
                let fp = inner
                    .fingerprints
                    .entry(cand.fingerprint.clone())
                    .or_default();
                fp.candidates.insert(cand.mark);
                fp.expires = now + Duration::from_millis(cand.keep_ms());
            }
            if let Some(ip) = &c.ip {
                inner.tally(ip, c.mark);
            }
        }
        Ok(())
    }

    async fn decide_clicks(&self, clicks: &[Decide]) -> Result<Vec<bool>, StateError> {
        let mut inner = self.lock();
        let mut out = Vec::with_capacity(clicks.len());
        for d in clicks {
            let c = &d.candidate;
            let now = Instant::now();
            let fp = inner.fingerprints.entry(c.fingerprint.clone()).or_default();
            let unique = fp.decide(c.mark, c.window_ms, c.keep_ms());
            fp.expires = now + Duration::from_millis(c.keep_ms());
            if unique && d.touchpoint {
                let journey = inner
                    .journeys
                    .entry((d.program_id.clone(), d.visitor_id))
                    .or_insert_with(|| Journey {
                        touches: BTreeSet::new(),
                        expires: now,
                    });
                journey
                    .touches
                    .insert((d.touch.ts.timestamp_millis(), d.touch.member()));
                while journey.touches.len() > MAX_JOURNEY {
                    journey.touches.pop_first();
                }
                journey.expires = now + d.keep;
            }
            out.push(unique);
        }
        Ok(out)
    }

    async fn memos(&self, ids: &[Uuid]) -> Result<Vec<Option<String>>, StateError> {
        let inner = self.lock();
        Ok(ids
            .iter()
            .map(|id| inner.memos.get(id).map(|(m, _)| m.clone()))
            .collect())
    }

    async fn read(&self, reads: &[Read]) -> Result<Vec<Answer>, StateError> {
        let mut inner = self.lock();
        inner.forget_behind(reads);
        Ok(reads.iter().map(|r| inner.answer(r)).collect())
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<Option<String>>, StateError> {
        let mut inner = self.lock();
        Ok(writes.iter().map(|w| inner.apply(w)).collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What grows with traffic expires as its Redis key would, so a long-running
    /// embedded process holds what the lookback needs, not everything it ever saw.
    #[tokio::test(start_paused = true)]
    async fn the_click_index_and_journeys_expire() {
        let s = MemoryState::new();
        let click = |id: u128| ClickRecord {
            click_id: Uuid::from_u128(id),
            visitor_id: Uuid::from_u128(7),
            keep: Duration::from_secs(3600),
            candidate: None,
            mark: Mark::at(0),
            ip: None,
        };
        s.record_clicks(&[click(1)]).await.unwrap();
        tokio::time::advance(Duration::from_secs(1800)).await;
        s.record_clicks(&[click(2)]).await.unwrap();
        tokio::time::advance(Duration::from_secs(2 * 3600)).await;
        // The next write sweeps: both are past their keep.
        s.record_clicks(&[click(3)]).await.unwrap();
        let inner = s.lock();
        assert_eq!(inner.click_visitors.len(), 1);
        assert!(inner.click_visitors.contains_key(&Uuid::from_u128(3)));
    }

    /// Marks count as an ordered set would, whatever the order they come in (mostly
    /// ascending, some late, some twice) and whatever is forgotten.
    #[test]
    fn marks_count_as_an_ordered_set() {
        let mut marks = Marks::default();
        let mut model = BTreeSet::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for step in 0..5_000i64 {
            // Ascending with ties of a millisecond, one in eight late by up to 50 ms.
            let late = if next(8) == 0 { next(50) as i64 } else { 0 };
            let mark = Mark {
                ms: (step - late).max(0),
                id: u128::from(next(4)),
            };
            marks.insert(mark);
            model.insert(mark);
            if step % 97 == 0 {
                let horizon = Mark::at(step - 400);
                marks.forget_before(horizon);
                model = model.split_off(&horizon);
            }
            let from = Mark::at(step - next(600) as i64);
            let before = Mark {
                ms: step - next(30) as i64,
                id: u128::from(next(4)),
            };
            let expected = if from < before {
                model.range(from..before).count() as u64
            } else {
                0
            };
            assert_eq!(marks.count(from, before), expected, "step {step}");
        }
        assert_eq!(marks.0.len(), model.len());
        assert!(marks.0.iter().zip(&model).all(|(a, b)| a == b));
    }
}
