//! Scheduling (SPEC §5 "Determinism"): when a candidate click may be decided and a
//! conversion settled, so that every table comes out as if one process had taken clicks
//! in `(ts, click_id)` order and settled conversions one at a time in intake order
//! `(received_at, conversion_id)`, whatever the partitioning, the instances, the read
//! order, a backlog, a replay or a crash.
//!
//! Every partition has frontiers, [`Mark`]s that all instances share through the state
//! store, each owner publishing its own partitions':
//! - a click partition's *recorded* frontier: every click on it before the mark is
//!   recorded (its fingerprint knows it), and every click still to come lies after it;
//! - its *decided* frontier: every candidate before it is decided and in its journey;
//! - a conversion partition's *settled* frontier: every conversion on it before the
//!   mark is settled (memo and effects stored), and every one still to come lies after.
//!
//! "Still to come lies after" rests on the read position: a partition read up to event
//! time `t` will bring nothing before `t − late_grace` (the edge's buffer and clock skew
//! stay within the grace); one read to its end brings nothing before `now − late_grace`.
//! A candidate click is decided once every click partition's recorded frontier is past
//! it; a conversion is settled once every click partition's decided frontier is past its
//! `received_at` and every conversion partition's settled frontier is past its mark.
//! A published frontier stays true forever, so a new owner starts from it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::bus::Topic;
use crate::pipeline::store::Mark;

/// A partition of one of the pipeline's topics.
pub type Part = (Topic, i32);

/// The three kinds of frontier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Recorded,
    Decided,
    Settled,
}

/// The state-store field of a partition's frontier: `{topic name}/{partition}/{r|d|s}`.
pub fn field(topic_name: &str, partition: i32, kind: Kind) -> String {
    let k = match kind {
        Kind::Recorded => "r",
        Kind::Decided => "d",
        Kind::Settled => "s",
    };
    format!("{topic_name}/{partition}/{k}")
}

/// What this instance knows of a partition it owns.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Latest event time read on it (ms).
    pub latest_ms: Option<i64>,
    /// Read to its end, as far as the bus knows.
    pub at_end: bool,
}

impl Progress {
    /// Everything still to come on the partition lies at or after this mark.
    pub fn read_frontier(&self, now_ms: i64, grace_ms: i64) -> Mark {
        let latest = if self.at_end {
            Some(self.latest_ms.unwrap_or(now_ms).max(now_ms))
        } else {
            self.latest_ms
        };
        latest.map_or(Mark::MIN, |ms| Mark::at(ms.saturating_sub(grace_ms)))
    }
}

/// The release bounds of one round, and the values to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    /// Candidate clicks before it may be decided.
    pub decide_below: Mark,
    /// Conversions before it may be settled.
    pub settle_below: Mark,
    /// Every conversion before it is settled, on every partition: hold periods that end
    /// before it are over (SPEC §5.7).
    pub settled_everywhere: Mark,
    /// This instance's partitions' frontiers.
    pub publish: Vec<(String, Mark)>,
}

/// Everything the bounds depend on.
pub struct View<'a> {
    /// Every partition of both topics.
    pub all: &'a [Part],
    /// Topic names (clicks, conversions), for the store's fields.
    pub names: (&'a str, &'a str),
    /// This instance's partitions: read frontier, earliest pending candidate click and
    /// earliest pending conversion.
    pub owned: &'a HashMap<Part, (Mark, Option<Mark>, Option<Mark>)>,
    /// What every owner published.
    pub published: &'a HashMap<String, Mark>,
}

impl View<'_> {
    /// Computes the bounds. A partition nobody has published yet holds everything back.
    pub fn bounds(&self) -> Bounds {
        let mut recorded = Mark::MAX;
        let mut decided = Mark::MAX;
        let mut settled = Mark::MAX;
        let mut everywhere = Mark::MAX;
        let mut publish = Vec::new();
        for &(topic, partition) in self.all {
            let name = match topic {
                Topic::Clicks => self.names.0,
                _ => self.names.1,
            };
            let published = |kind| -> Mark {
                self.published
                    .get(&field(name, partition, kind))
                    .copied()
                    .unwrap_or(Mark::MIN)
            };
            let own = self.owned.get(&(topic, partition));
            match topic {
                Topic::Clicks => {
                    let (r, d) = match own {
                        Some(&(read, pending_click, _)) => {
                            let r = published(Kind::Recorded).max(read);
                            let d = published(Kind::Decided)
                                .max(pending_click.map_or(read, |p| p.min(read)));
                            publish.push((field(name, partition, Kind::Recorded), r));
                            publish.push((field(name, partition, Kind::Decided), d));
                            (r, d)
                        }
                        None => (published(Kind::Recorded), published(Kind::Decided)),
                    };
                    recorded = recorded.min(r);
                    decided = decided.min(d);
                }
                Topic::Conversions => {
                    let (s, done) = match own {
                        Some(&(read, _, pending_conversion)) => {
                            let settled_here = published(Kind::Settled);
                            let done =
                                settled_here.max(pending_conversion.map_or(read, |p| p.min(read)));
                            publish.push((field(name, partition, Kind::Settled), done));
                            // Own pending conversions are settled here, in mark order:
                            // only what is still to come on the partition holds back.
                            (settled_here.max(read), done)
                        }
                        None => (published(Kind::Settled), published(Kind::Settled)),
                    };
                    settled = settled.min(s);
                    everywhere = everywhere.min(done);
                }
                Topic::Dlq | Topic::Webhooks => {}
            }
        }
        Bounds {
            decide_below: recorded,
            // Every click up to received_at must be decided: marks of that millisecond
            // and before.
            settle_below: settled.min(Mark::at(decided.ms)),
            settled_everywhere: everywhere,
            publish,
        }
    }
}

struct Item<T> {
    value: T,
    part: Part,
    offset: i64,
}

/// Items waiting for their bound, in mark order, with what a commit and the bounds need
/// to know about them per partition.
pub struct Pending<T> {
    items: BTreeMap<Mark, Item<T>>,
    by_part: HashMap<Part, BTreeSet<Mark>>,
    /// Offsets of the pending items per partition (offset → items at it), so that the
    /// commit position is found without a scan of everything pending.
    offsets: HashMap<Part, BTreeMap<i64, u32>>,
    /// Insertion order with the time of insertion, to find who waited too long.
    arrivals: VecDeque<(Instant, Mark)>,
    /// Everything up to this mark has waited too long (or follows what has).
    overdue: Option<Mark>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            items: BTreeMap::new(),
            by_part: HashMap::new(),
            offsets: HashMap::new(),
            arrivals: VecDeque::new(),
            overdue: None,
        }
    }
}

/// What [`Pending::release`] let go.
pub struct Released<T> {
    pub items: Vec<(Mark, T)>,
    /// How many of them left before their bound (waited too long, or past the bound on
    /// pending items).
    pub forced: usize,
}

impl<T> Pending<T> {
    pub fn insert(&mut self, mark: Mark, part: Part, offset: i64, value: T) {
        let item = Item {
            value,
            part,
            offset,
        };
        match self.items.insert(mark, item) {
            None => {
                self.by_part.entry(part).or_default().insert(mark);
                self.arrivals.push_back((Instant::now(), mark));
            }
            // The same event again (a replay): it waits at its newer offset.
            Some(old) => self.forget_offset(old.part, old.offset),
        }
        *self
            .offsets
            .entry(part)
            .or_default()
            .entry(offset)
            .or_default() += 1;
    }

    fn forget_offset(&mut self, part: Part, offset: i64) {
        if let Some(at) = self.offsets.get_mut(&part) {
            if let Some(n) = at.get_mut(&offset) {
                *n -= 1;
                if *n == 0 {
                    at.remove(&offset);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The earliest pending mark of a partition.
    pub fn first_of(&self, part: Part) -> Option<Mark> {
        self.by_part.get(&part).and_then(|s| s.first().copied())
    }

    /// The lowest offset pending on a partition: commits stop there.
    pub fn first_offset_of(&self, part: Part) -> Option<i64> {
        self.offsets
            .get(&part)?
            .first_key_value()
            .map(|(offset, _)| *offset)
    }

    /// Releases, in mark order and at most `limit` at once, everything before `below`,
    /// then everything up to the latest mark that has waited `max_wait`, then the
    /// earliest until at most `max_len` wait.
    pub fn release(
        &mut self,
        below: Mark,
        max_wait: Duration,
        max_len: usize,
        limit: usize,
    ) -> Released<T> {
        while let Some(&(since, mark)) = self.arrivals.front() {
            if !self.items.contains_key(&mark) {
                self.arrivals.pop_front();
                continue;
            }
            if since.elapsed() < max_wait {
                break;
            }
            self.overdue = self.overdue.max(Some(mark));
            self.arrivals.pop_front();
        }
        let mut items = Vec::new();
        let mut forced = 0;
        while items.len() < limit {
            let Some((&mark, _)) = self.items.first_key_value() else {
                break;
            };
            let in_bound = mark < below;
            let overdue = self.overdue.is_some_and(|u| mark <= u);
            let over = self.items.len() > max_len;
            if !(in_bound || overdue || over) {
                break;
            }
            if !in_bound {
                forced += 1;
            }
            let item = self.items.remove(&mark).expect("first key exists");
            if let Some(set) = self.by_part.get_mut(&item.part) {
                set.remove(&mark);
            }
            self.forget_offset(item.part, item.offset);
            items.push((mark, item.value));
        }
        if self.arrivals.len() > 2 * self.items.len() + 1024 {
            // Released marks linger in `arrivals` until they reach its front.
            let items = &self.items;
            self.arrivals.retain(|(_, m)| items.contains_key(m));
        }
        Released { items, forced }
    }

    /// Forgets everything (partitions moved to another instance).
    pub fn clear(&mut self) {
        self.items.clear();
        self.by_part.clear();
        self.offsets.clear();
        self.arrivals.clear();
        self.overdue = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: (&str, &str) = ("clicks", "conversions");

    const C0: Part = (Topic::Clicks, 0);
    const C1: Part = (Topic::Clicks, 1);
    const V0: Part = (Topic::Conversions, 0);
    const V1: Part = (Topic::Conversions, 1);

    #[test]
    fn read_frontiers_lag_by_the_grace_and_reach_now_at_the_end() {
        let p = Progress {
            latest_ms: Some(10_000),
            at_end: false,
        };
        assert_eq!(p.read_frontier(50_000, 1_000), Mark::at(9_000));
        let p = Progress {
            latest_ms: Some(10_000),
            at_end: true,
        };
        assert_eq!(p.read_frontier(50_000, 1_000), Mark::at(49_000));
        assert_eq!(Progress::default().read_frontier(50_000, 1_000), Mark::MIN);
    }

    #[test]
    fn one_instance_owning_everything_releases_by_its_own_progress() {
        let all = [C0, C1, V0, V1];
        let owned = HashMap::from([
            (C0, (Mark::at(100), Some(Mark::at(40)), None)),
            (C1, (Mark::at(80), None, None)),
            (V0, (Mark::at(90), None, Some(Mark::at(10)))),
            (V1, (Mark::at(70), None, None)),
        ]);
        let published = HashMap::new();
        let b = View {
            all: &all,
            names: NAMES,
            owned: &owned,
            published: &published,
        }
        .bounds();
        // Clicks: decided once every click partition recorded past them.
        assert_eq!(b.decide_below, Mark::at(80));
        // Conversions: the pending click at 40 holds back everything received from 40.
        assert_eq!(b.settle_below, Mark::at(40));
        assert!(b
            .publish
            .contains(&("conversions/0/s".to_string(), Mark::at(10))));
        assert!(b
            .publish
            .contains(&("clicks/0/d".to_string(), Mark::at(40))));
    }

    #[test]
    fn other_owners_hold_back_until_they_publish_and_published_frontiers_stay() {
        let all = [C0, C1, V0, V1];
        let owned = HashMap::from([
            (C0, (Mark::at(100), None, None)),
            (V0, (Mark::at(100), None, None)),
        ]);
        let mut published = HashMap::new();
        let view = |published: &HashMap<String, Mark>| {
            View {
                all: &all,
                names: NAMES,
                owned: &owned,
                published,
            }
            .bounds()
        };
        // Nobody published C1 and V1 yet.
        let b = view(&published);
        assert_eq!((b.decide_below, b.settle_below), (Mark::MIN, Mark::MIN));
        published.insert("clicks/1/r".into(), Mark::at(60));
        published.insert("clicks/1/d".into(), Mark::at(50));
        published.insert("conversions/1/s".into(), Mark { ms: 30, id: 7 });
        let b = view(&published);
        assert_eq!(b.decide_below, Mark::at(60));
        assert_eq!(b.settle_below, Mark { ms: 30, id: 7 });
        // An own partition never publishes less than was published for it.
        published.insert("clicks/0/r".into(), Mark::at(500));
        let b = view(&published);
        assert!(b
            .publish
            .contains(&("clicks/0/r".to_string(), Mark::at(500))));
    }

    #[test]
    fn pending_releases_in_mark_order_and_forces_what_waited_too_long() {
        let mut p: Pending<&str> = Pending::default();
        p.insert(Mark::at(30), V0, 3, "c");
        p.insert(Mark::at(10), V1, 1, "a");
        p.insert(Mark::at(20), V0, 2, "b");
        assert_eq!(p.first_of(V0), Some(Mark::at(20)));
        assert_eq!(p.first_offset_of(V0), Some(2));
        let r = p.release(Mark::at(25), Duration::from_secs(60), 10, 1);
        assert_eq!(
            r.items.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            vec!["a"]
        );
        let r = p.release(Mark::at(25), Duration::from_secs(60), 10, 10);
        assert_eq!(
            r.items.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            vec!["b"]
        );
        assert_eq!(r.forced, 0);
        // Over the length bound: the earliest goes, counted as forced.
        p.insert(Mark::at(40), V1, 4, "d");
        let r = p.release(Mark::MIN, Duration::from_secs(60), 1, 10);
        assert_eq!(
            r.items.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            vec!["c"]
        );
        assert_eq!(r.forced, 1);
        // Waited too long: released whatever the bound.
        let r = p.release(Mark::MIN, Duration::ZERO, 10, 10);
        assert_eq!(
            r.items.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            vec!["d"]
        );
        assert_eq!(r.forced, 1);
        assert!(p.is_empty());
        assert_eq!(p.first_offset_of(V0), None);
    }

    #[test]
    fn commits_stop_at_the_lowest_pending_offset() {
        let mut p: Pending<&str> = Pending::default();
        // Offsets need not follow marks.
        p.insert(Mark::at(10), V0, 7, "a");
        p.insert(Mark::at(20), V0, 5, "b");
        p.insert(Mark::at(30), V0, 9, "c");
        assert_eq!(p.first_offset_of(V0), Some(5));
        assert_eq!(p.first_offset_of(V1), None);
        // The same event read again (a replay): it waits at its newer offset.
        p.insert(Mark::at(20), V0, 12, "b");
        assert_eq!(p.len(), 3);
        assert_eq!(p.first_offset_of(V0), Some(7));
        let r = p.release(Mark::at(15), Duration::from_secs(60), 10, 10);
        assert_eq!(r.items.len(), 1);
        assert_eq!(p.first_offset_of(V0), Some(9));
        let r = p.release(Mark::MAX, Duration::from_secs(60), 10, 10);
        assert_eq!(r.items.len(), 2);
        assert_eq!(p.first_offset_of(V0), None);
        p.insert(Mark::at(40), V0, 13, "d");
        p.clear();
        assert_eq!(p.first_offset_of(V0), None);
    }
}
