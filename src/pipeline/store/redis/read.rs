//! Reads of a batch in one pass: one command per read, counts of one tally over many
//! marks answered together, windowed tallies trimmed now and then.

use std::collections::HashMap;

use redis::Value;

use super::{int, text, Cmds, RedisState};
use crate::pipeline::store::{Answer, Mark, OrderSlot, Read, StateError, StoredTouch, Tally};

/// Count reads of one tally in one call answered together ([`CountGroup`]) from this many.
const GROUP_FROM: usize = 4;
/// Most marks a [`CountGroup`] fetches per range; past it, its reads are counted one
/// by one.
const GROUP_MARKS: usize = 10_000;
/// Windowed tallies are trimmed by one read in this many.
const TRIM_ONE_IN: u128 = 16;

/// Count reads of one tally answered from one snapshot of the marks around them
/// instead of one `ZLEXCOUNT` each: a batch of conversions reads the same partners'
/// tallies thousands of times (a third of the commands of settling, measured), at
/// marks that lie close together. With `C(x)` the marks in `[from_lo, x)`, a read
/// counts `C(before) - C(from)`; the reads' befores lie in `[before_lo, before_hi]`
/// and their froms in `[from_lo, from_hi]`, so three commands give `C` at all of them:
/// `C(before_lo)`, the marks in `[before_lo, before_hi)` and those in
/// `[from_lo, from_hi)`. Marks below the settled frontier do not change while read
/// (the reads of one conversion are as of its mark), so the three need not be atomic.
pub(super) struct CountGroup {
    key: String,
    /// Indices of the group's reads, ascending.
    reads: Vec<usize>,
    from_lo: Mark,
    from_hi: Mark,
    before_lo: Mark,
    before_hi: Mark,
    /// Trim marks before this (reads of a windowed tally trim one in 16).
    trim: Option<Mark>,
}

impl CountGroup {
    /// None when the reads cannot be answered this way (a before lies below a from).
    pub(super) fn new(key: String, reads: Vec<usize>, all: &[Read]) -> Option<CountGroup> {
        let mut from = (Mark::MAX, Mark::MIN);
        let mut before = (Mark::MAX, Mark::MIN);
        let mut trims_any = false;
        let mut kind = None;
        for i in &reads {
            let Read::Count {
                tally,
                from_ms,
                before: b,
            } = &all[*i]
            else {
                return None;
            };
            let f = Mark::at(*from_ms);
            from = (from.0.min(f), from.1.max(f));
            before = (before.0.min(*b), before.1.max(*b));
            trims_any |= trims(tally, *b);
            kind = Some(tally);
        }
        // Behind the earliest read's horizon: a later read's would take marks the
        // earlier reads of a batch spanning days still count.
        let trim = kind
            .filter(|_| trims_any)
            .map(|t| Mark::at(t.horizon(before.0)));
        (before.0 >= from.0).then_some(CountGroup {
            key,
            reads,
            from_lo: from.0,
            from_hi: from.1,
            before_lo: before.0,
            before_hi: before.1,
            trim,
        })
    }

    pub(super) fn cmds(&self, pipe: &mut Cmds) {
        if let Some(h) = self.trim {
            trim_cmd(pipe, &self.key, h);
        }
        pipe.cmd("ZLEXCOUNT")
            .arg(&self.key)
            .arg(self.from_lo.bound("["))
            .arg(self.before_lo.bound("("));
        let range = |pipe: &mut Cmds, lo: Mark, hi: Mark| {
            pipe.cmd("ZRANGEBYLEX")
                .arg(&self.key)
                .arg(lo.bound("["))
                .arg(hi.bound("("))
                .arg("LIMIT")
                .arg(0)
                .arg(GROUP_MARKS);
        };
        range(pipe, self.before_lo, self.before_hi);
        if self.from_hi > self.from_lo {
            range(pipe, self.from_lo, self.from_hi);
        }
    }

    /// The counts of the group's reads, in its order, from the replies to
    /// [`CountGroup::cmds`]; None when a range held more marks than one answer takes.
    pub(super) fn answer<'a>(
        &self,
        all: &[Read],
        next: &mut impl FnMut() -> Result<&'a Value, StateError>,
    ) -> Result<Option<Vec<u64>>, StateError> {
        if self.trim.is_some() {
            next()?;
        }
        let below = int(next()?)?;
        let befores: Vec<String> = redis::from_redis_value_ref(next()?)?;
        let froms: Vec<String> = if self.from_hi > self.from_lo {
            redis::from_redis_value_ref(next()?)?
        } else {
            Vec::new()
        };
        if befores.len() >= GROUP_MARKS || froms.len() >= GROUP_MARKS {
            return Ok(None);
        }
        // Marks in [from_lo, x), for x a read's before or from.
        let upto = |marks: &[String], x: Mark| {
            let x = x.encode();
            marks.partition_point(|m| m.as_str() < x.as_str()) as u64
        };
        Ok(Some(
            self.reads
                .iter()
                .map(|i| match &all[*i] {
                    Read::Count {
                        from_ms, before, ..
                    } => {
                        let from = Mark::at(*from_ms);
                        if from >= *before {
                            return 0;
                        }
                        (below + upto(&befores, *before)).saturating_sub(upto(&froms, from))
                    }
                    _ => 0,
                })
                .collect(),
        ))
    }
}

/// The slots an order read looks at: the one asked, or all in a refund's precedence.
pub(super) fn slots(slot: Option<OrderSlot>) -> &'static [OrderSlot] {
    match slot {
        Some(s) => &OrderSlot::PRECEDENCE[s.rank()..=s.rank()],
        None => &OrderSlot::PRECEDENCE,
    }
}

/// Whether a count read of `tally` as of `before` also trims it: reads of windowed
/// tallies, one in [`TRIM_ONE_IN`] by the mark's random low bits.
pub(super) fn trims(tally: &Tally, before: Mark) -> bool {
    tally.windowed() && before.id % TRIM_ONE_IN == 0
}

/// Removes a tally's marks before `horizon`, from just after the empty member (see
/// `tally_cmds`).
pub(super) fn trim_cmd(pipe: &mut Cmds, key: &str, horizon: Mark) {
    pipe.cmd("ZREMRANGEBYLEX")
        .arg(key)
        .arg("(")
        .arg(horizon.bound("("));
}

impl RedisState {
    /// One round trip of reads. With `grouped`, count reads of a tally read
    /// [`GROUP_FROM`] times or more are answered together ([`CountGroup`]); a group
    /// whose marks do not fit one answer is left `None`, to be counted read by read.
    pub(super) async fn read_pass(
        &self,
        reads: &[Read],
        grouped: bool,
    ) -> Result<Vec<Option<Answer>>, StateError> {
        let (groups, member) = if grouped {
            self.count_groups(reads)
        } else {
            (Vec::new(), vec![None; reads.len()])
        };
        // A group's commands go where its first read's would.
        let lead = |i: usize| member[i].map(|g| (g, groups[g].reads[0] == i));
        let mut pipe = Cmds::default();
        for (i, r) in reads.iter().enumerate() {
            match lead(i) {
                Some((g, true)) => groups[g].cmds(&mut pipe),
                Some(_) => {}
                None => self.read_cmds(r, &mut pipe),
            }
        }
        let replies = self.run(pipe.0).await?;
        let mut replies = replies.iter();
        let mut next = || {
            replies
                .next()
                .ok_or_else(|| StateError("fewer replies than reads".into()))
        };
        let mut out: Vec<Option<Answer>> = vec![None; reads.len()];
        for (i, r) in reads.iter().enumerate() {
            match lead(i) {
                Some((g, true)) => {
                    let g = &groups[g];
                    if let Some(counts) = g.answer(reads, &mut next)? {
                        for (j, n) in g.reads.iter().zip(counts) {
                            out[*j] = Some(Answer::Count(n));
                        }
                    }
                }
                Some(_) => {}
                None => out[i] = Some(answer(r, &mut next)?),
            }
        }
        Ok(out)
    }

    /// The commands of one read, in the order [`answer`] takes their replies.
    fn read_cmds(&self, r: &Read, pipe: &mut Cmds) {
        match r {
            Read::ClickVisitor(click) => {
                pipe.cmd("GET").arg(self.click(*click));
            }
            Read::Claim(key) => {
                pipe.cmd("GET").arg(self.claim(key));
            }
            Read::Journey {
                program,
                visitor,
                from_ms,
                to_ms,
            } => {
                pipe.cmd("ZRANGEBYSCORE")
                    .arg(self.journey(program, *visitor))
                    .arg(*from_ms)
                    .arg(*to_ms)
                    .arg("WITHSCORES");
            }
            Read::Count {
                tally,
                from_ms,
                before,
            } => {
                let key = self.tally(tally);
                // Trimming changes no count (counts start at `from_ms`, and later
                // reads never reach behind the horizon): one read in 16, picked by
                // the mark's random low bits, keeps the sets short.
                if trims(tally, *before) {
                    trim_cmd(pipe, &key, Mark::at(tally.horizon(*before)));
                }
                pipe.cmd("ZLEXCOUNT")
                    .arg(&key)
                    .arg(Mark::at(*from_ms).bound("["))
                    .arg(before.bound("("));
            }
            Read::FirstSale {
                program, customer, ..
            } => {
                pipe.cmd("ZRANGE")
                    .arg(self.first_sale(program, customer))
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES");
            }
            Read::TierFigures(key) => {
                pipe.cmd("HVALS").arg(self.tier_figures(key));
            }
            Read::TierMoves { program, partner } => {
                pipe.cmd("HVALS").arg(self.tier_moves(program, partner));
            }
            Read::TierDone { program } => {
                pipe.cmd("ZSCORE").arg(self.tier_done(program)).arg("done");
            }
            Read::CapTotal { key, before } => {
                // The latest entry before the mark: members sort by the mark's bound.
                pipe.cmd("ZREVRANGEBYLEX")
                    .arg(self.cap(key))
                    .arg(before.bound("("))
                    .arg("-")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(1);
            }
            Read::CustomerSales {
                program,
                customer,
                before,
            } => {
                // Sales before the mark's millisecond, then those at it, whose ids
                // decide (members start with the id in hex).
                let key = self.first_sale(program, customer);
                pipe.cmd("ZCOUNT")
                    .arg(&key)
                    .arg("-inf")
                    .arg(format!("({}", before.ms));
                pipe.cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg(before.ms)
                    .arg(before.ms);
            }
            Read::Order {
                program,
                order,
                slot,
            } => {
                // One slot, or all of them to find the refund's.
                for slot in slots(*slot) {
                    pipe.cmd("GET").arg(self.order(program, order, *slot));
                    pipe.cmd("HGETALL").arg(self.refunds(program, order, *slot));
                }
            }
            Read::DueBefore { before_ms, limit } => {
                pipe.cmd("ZRANGEBYSCORE")
                    .arg(self.due())
                    .arg("-inf")
                    .arg(format!("({before_ms}"))
                    .arg("LIMIT")
                    .arg(0)
                    .arg(*limit);
            }
        }
    }

    /// The count reads to answer together (those of a tally read [`GROUP_FROM`] times
    /// or more), and each read's group.
    pub(super) fn count_groups(&self, reads: &[Read]) -> (Vec<CountGroup>, Vec<Option<usize>>) {
        let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in reads.iter().enumerate() {
            if let Read::Count { tally, .. } = r {
                by_key.entry(self.tally(tally)).or_default().push(i);
            }
        }
        let groups: Vec<CountGroup> = by_key
            .into_iter()
            .filter(|(_, idx)| idx.len() >= GROUP_FROM)
            .filter_map(|(key, idx)| CountGroup::new(key, idx, reads))
            .collect();
        let mut member = vec![None; reads.len()];
        for (g, group) in groups.iter().enumerate() {
            for i in &group.reads {
                member[*i] = Some(g);
            }
        }
        (groups, member)
    }
}

/// One read's answer from the replies to its [`RedisState::read_cmds`].
fn answer<'a>(
    r: &Read,
    next: &mut impl FnMut() -> Result<&'a Value, StateError>,
) -> Result<Answer, StateError> {
    Ok(match r {
        Read::ClickVisitor(_) | Read::Claim(_) => Answer::Text(text(next()?)?),
        Read::Journey { .. } => {
            let raw: Vec<(String, f64)> = redis::from_redis_value_ref(next()?)?;
            // Scores are integer milliseconds, well inside f64's exact range.
            Answer::Touches(
                raw.iter()
                    .filter_map(|(m, s)| StoredTouch::parse(m, *s as i64))
                    .collect(),
            )
        }
        Read::Count { tally, before, .. } => {
            if trims(tally, *before) {
                next()?;
            }
            Answer::Count(int(next()?)?)
        }
        Read::FirstSale { before, .. } => {
            let first: Vec<(String, f64)> = redis::from_redis_value_ref(next()?)?;
            Answer::Marked(first.into_iter().find_map(|(member, score)| {
                let (id, json) = member.split_at_checked(32)?;
                let mark = Mark {
                    ms: score as i64,
                    id: u128::from_str_radix(id, 16).ok()?,
                };
                (mark < *before).then(|| (mark, json.to_string()))
            }))
        }
        Read::CapTotal { .. } => {
            let latest: Vec<String> = redis::from_redis_value_ref(next()?)?;
            Answer::Marked(latest.into_iter().find_map(|member| {
                let mark = Mark::decode(member.get(..48)?)?;
                Some((mark, member.get(48..)?.to_string()))
            }))
        }
        Read::CustomerSales { before, .. } => {
            let earlier = int(next()?)?;
            let same_ms: Vec<String> = redis::from_redis_value_ref(next()?)?;
            let id = before.id_hex();
            let tied = same_ms
                .iter()
                .filter(|m| m.get(..32).is_some_and(|h| h < id.as_str()))
                .count() as u64;
            Answer::Count(earlier + tied)
        }
        Read::Order { slot, .. } => order_answer(*slot, next)?,
        Read::DueBefore { .. } | Read::TierFigures(_) | Read::TierMoves { .. } => {
            Answer::Entries(redis::from_redis_value_ref(next()?)?)
        }
        Read::TierDone { .. } => {
            let score: Option<String> = redis::from_redis_value_ref(next()?)?;
            Answer::Count(
                score
                    .and_then(|s| s.parse::<f64>().ok())
                    .map_or(0, |s| s as u64),
            )
        }
    })
}

/// An order read's answer: the first slot recorded, or, none being, the first looked
/// at (a sale's).
fn order_answer<'a>(
    slot: Option<OrderSlot>,
    next: &mut impl FnMut() -> Result<&'a Value, StateError>,
) -> Result<Answer, StateError> {
    let mut answers = Vec::with_capacity(OrderSlot::PRECEDENCE.len());
    for slot in slots(slot) {
        let record = text(next()?)?;
        let raw: Vec<(String, String)> = redis::from_redis_value_ref(next()?)?;
        let mut refunds: Vec<(Mark, String)> = raw
            .into_iter()
            .filter_map(|(m, j)| Some((Mark::decode(&m)?, j)))
            .collect();
        refunds.sort();
        answers.push(Answer::Order {
            slot: *slot,
            record,
            refunds,
        });
    }
    let at = answers
        .iter()
        .position(|a| {
            matches!(
                a,
                Answer::Order {
                    record: Some(_),
                    ..
                }
            )
        })
        .unwrap_or(0);
    Ok(answers.swap_remove(at))
}
