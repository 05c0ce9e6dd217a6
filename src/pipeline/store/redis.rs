//! Pipeline state in Redis (one server or a cluster), shared by every pipeline
//! instance. Each call is one round trip: a pipeline on one server, commands sent at
//! once on a cluster. The only script, `decide_clicks.lua`, decides a batch of clicks
//! with their journeys on one server; on a cluster it runs per click on the keys of one
//! fingerprint, which share a hash tag, and journeys are written beside it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::{Cmd, Value};
use uuid::Uuid;

use crate::kv::Redis;

use super::{
    ms, Answer, ClickRecord, Decide, Mark, OrderSlot, Read, StateError, StateStore, StoredTouch,
    Tally, Write, CLAIM_TTL, MAX_JOURNEY, MEMO_TTL, ORDER_TTL,
};

const DECIDE_CLICKS: &str = include_str!("decide_clicks.lua");
/// Clicks decided per script call.
const DECIDE_CHUNK: usize = 500;
/// Count reads of one tally in one call answered together ([`CountGroup`]) from this many.
const GROUP_FROM: usize = 4;
/// Most marks a [`CountGroup`] fetches per range; past it, its reads are counted one
/// by one.
const GROUP_MARKS: usize = 10_000;
/// Windowed tallies are trimmed by one read in this many.
const TRIM_ONE_IN: u128 = 16;
/// A key's TTL is renewed by the first write to it in this long; the TTL set is the
/// key's keep plus this, so the key outlives every write by its keep.
const RENEW_EVERY: Duration = Duration::from_secs(60);
/// Keys this process remembers renewing at once. As 128-bit digests they fit one
/// table of 2^20 slots (~18 MB); past it, renewals start over (more TTL commands,
/// never fewer).
const MAX_RENEWALS: usize = 900_000;

/// The keys this process renewed the TTL of in the current period of [`RENEW_EVERY`].
/// A tally, a fingerprint or a journey takes a write per event, and a TTL command
/// after each was a fifth of all Redis commands; one per key and period keeps the
/// same bound. The set is dropped when its period ends, so a key found in it was
/// renewed less than [`RENEW_EVERY`] ago. Forgotten whenever Redis fails, so a key a
/// lost write or a restart left without its TTL gets it at the next write.
///
/// Keys are remembered by a keyed 128-bit digest: a key string per entry cost ~100
/// bytes, and the click bench writes ~500,000 keys a minute, which overflowed a map
/// of 100,000 strings every few seconds. Two digests colliding in a period (odds
/// ~n²/2^129) would skip one renewal.
#[derive(Default)]
struct Renewals {
    hashers: (std::hash::RandomState, std::hash::RandomState),
    period: Mutex<Period>,
}

#[derive(Default)]
struct Period {
    started: Option<Instant>,
    renewed: std::collections::HashSet<u128, BuildDigest>,
}

impl Renewals {
    fn digest(&self, key: &str) -> u128 {
        use std::hash::BuildHasher;
        (u128::from(self.hashers.0.hash_one(key)) << 64) | u128::from(self.hashers.1.hash_one(key))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Period> {
        self.period.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `key` needs its TTL renewed now; if so it counts as renewed.
    fn due(&self, key: &str, now: Instant) -> bool {
        let digest = self.digest(key);
        let mut period = self.lock();
        period.roll(now);
        period.renewed.insert(digest)
    }

    /// Whether `key` needs its TTL renewed now (it does not count as renewed yet: for
    /// a script that renews only what it writes, see [`Renewals::renewed`]).
    fn pending(&self, key: &str, now: Instant) -> bool {
        let digest = self.digest(key);
        let period = self.lock();
        period.over(now) || !period.renewed.contains(&digest)
    }

    /// `key`'s TTL was renewed at `at` or after.
    fn renewed(&self, key: &str, at: Instant) {
        let digest = self.digest(key);
        let mut period = self.lock();
        period.roll(at);
        // Renewed before this period began, perhaps: not remembered, renewed again.
        if period.started.is_some_and(|s| s <= at) {
            period.renewed.insert(digest);
        }
    }

    fn forget(&self) {
        let mut period = self.lock();
        period.renewed.clear();
        period.started = None;
    }
}

impl Period {
    fn over(&self, now: Instant) -> bool {
        self.started
            .is_none_or(|t| now.saturating_duration_since(t) >= RENEW_EVERY)
    }

    /// Starts a new period if this one is over or full.
    fn roll(&mut self, now: Instant) {
        if self.over(now) || self.renewed.len() >= MAX_RENEWALS {
            self.renewed.clear();
            self.started = Some(now);
        }
    }
}

/// Digests are uniformly random already: their low bits index the table.
#[derive(Default, Clone, Copy)]
struct BuildDigest;

struct DigestHasher(u64);

impl std::hash::BuildHasher for BuildDigest {
    type Hasher = DigestHasher;
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u128s are hashed (write_u128); any other input still hashes.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

/// State in Redis.
pub struct RedisState {
    redis: Redis,
    prefix: String,
    decide: redis::Script,
    renewals: Renewals,
}

impl RedisState {
    pub fn new(redis: Redis, prefix: &str) -> Self {
        RedisState {
            redis,
            prefix: prefix.to_string(),
            decide: redis::Script::new(DECIDE_CLICKS),
            renewals: Renewals::default(),
        }
    }

    fn click(&self, id: Uuid) -> String {
        format!("{}:c:{id}", self.prefix)
    }
    fn fingerprint(&self, fp: &str, part: &str) -> String {
        format!("{}:fp:{{{fp}}}:{part}", self.prefix)
    }
    fn journey(&self, program: &str, visitor: Uuid) -> String {
        format!("{}:j:{program}:{visitor}", self.prefix)
    }
    fn memo(&self, id: Uuid) -> String {
        format!("{}:m:{id}", self.prefix)
    }
    fn claim(&self, key: &str) -> String {
        format!("{}:d:{key}", self.prefix)
    }
    fn tally(&self, t: &Tally) -> String {
        let p = &self.prefix;
        match t {
            Tally::Volume {
                program,
                partner,
                month,
            } => format!("{p}:tv:{program}:{month}:{partner}"),
            Tally::Sales { program, partner } => format!("{p}:ts:{program}:{partner}"),
            Tally::Refunds { program, partner } => format!("{p}:tr:{program}:{partner}"),
            Tally::IpClicks {
                program,
                partner,
                ip_hash,
            } => format!("{p}:ti:{program}:{partner}:{ip_hash}"),
        }
    }

    /// Adds a mark to a tally (set once) and keeps the key its keep.
    fn tally_cmds(&self, pipe: &mut Cmds, t: &Tally, mark: Mark, now: Instant) {
        let key = self.tally(t);
        // Score 0, member the mark: members sort as marks, so one ZLEXCOUNT counts
        // up to a mark, ties of a millisecond included. The empty member sorts before
        // every mark and is never trimmed: a trim cannot delete the key, so it is never
        // created again by a write whose TTL renewal this or another process skipped.
        pipe.cmd("ZADD")
            .arg(&key)
            .arg(0)
            .arg("")
            .arg(0)
            .arg(mark.encode());
        self.renew(pipe, key, t.keep(), now);
    }

    /// Renews `key`'s TTL to `keep` (and a little) unless this process did lately.
    fn renew(&self, pipe: &mut Cmds, key: String, keep: Duration, now: Instant) {
        if self.renewals.due(&key, now) {
            pipe.cmd("PEXPIRE").arg(key).arg(ms(keep + RENEW_EVERY));
        }
    }
    fn first_sale(&self, program: &str, customer: &str) -> String {
        format!("{}:fs:{program}:{customer}", self.prefix)
    }
    fn order(&self, program: &str, order: &str, slot: OrderSlot) -> String {
        format!("{}:o:{{{program}:{order}}}{}", self.prefix, slot.suffix())
    }
    fn refunds(&self, program: &str, order: &str, slot: OrderSlot) -> String {
        format!("{}:r", self.order(program, order, slot))
    }
    fn due(&self) -> String {
        format!("{}:due", self.prefix)
    }
    fn frontiers_key(&self) -> String {
        format!("{}:wm", self.prefix)
    }

    /// A Redis failure. A batch may have been cut short, or the server restarted and
    /// lost its last writes: the TTLs this process remembers setting may not be there,
    /// so renewals start over.
    fn failed(&self, e: redis::RedisError) -> StateError {
        self.renewals.forget();
        e.into()
    }

    async fn run(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, StateError> {
        self.redis.run(cmds).await.map_err(|e| self.failed(e))
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StateError> {
        self.redis.query(cmd).await.map_err(|e| self.failed(e))
    }

    /// Runs the script calls `build` makes. If the server lost its scripts (a
    /// restart), loads them and runs calls built again: what it lost with its scripts
    /// it may have lost of our TTLs, so the renewals are forgotten first and the
    /// calls renew again. Deciding twice is harmless. On a cluster SCRIPT LOAD
    /// reaches every node.
    async fn run_scripts<T>(
        &self,
        build: impl Fn() -> (Vec<Cmd>, T),
    ) -> Result<(Vec<Value>, T), StateError> {
        let (cmds, made) = build();
        match self.redis.run(cmds).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.renewals.forget();
                let _: Value = self
                    .query(redis::cmd("SCRIPT").arg("LOAD").arg(DECIDE_CLICKS))
                    .await?;
                let (cmds, made) = build();
                Ok((self.run(cmds).await?, made))
            }
            Err(e) => Err(self.failed(e)),
            Ok(r) => Ok((r, made)),
        }
    }

    /// One script call deciding `clicks`, with their journeys when `journeys`; the
    /// keys whose TTLs it may renew, for [`RedisState::decided`].
    fn decide_call(&self, clicks: &[Decide], journeys: bool, now: Instant) -> DecideCall {
        let mut cmd = redis::cmd("EVALSHA");
        let stride = if journeys { 3 } else { 2 };
        cmd.arg(self.decide.get_hash()).arg(clicks.len() * stride);
        let mut keys = Vec::with_capacity(clicks.len());
        for d in clicks {
            let fp = &d.candidate.fingerprint;
            let candidates = self.fingerprint(fp, "c");
            let journey = self.journey(&d.program_id, d.visitor_id);
            cmd.arg(&candidates).arg(self.fingerprint(fp, "p"));
            if journeys {
                cmd.arg(&journey);
            }
            keys.push((journey, candidates));
        }
        cmd.arg(MAX_JOURNEY).arg(stride);
        // A TTL to renew, or none when this process renewed the key lately.
        let ttl = |key: &str, keep: Duration| {
            if self.renewals.pending(key, now) {
                ms(keep + RENEW_EVERY).to_string()
            } else {
                String::new()
            }
        };
        for (d, (journey, candidates)) in clicks.iter().zip(&keys) {
            let c = &d.candidate;
            cmd.arg(c.mark.ms)
                .arg(c.mark.id_hex())
                .arg(c.window_ms)
                .arg(c.keep_ms())
                // No member: not a touchpoint.
                .arg(if d.touchpoint {
                    d.touch.member()
                } else {
                    String::new()
                })
                .arg(ttl(journey, d.keep))
                .arg(ttl(candidates, Duration::from_millis(c.keep_ms())));
        }
        DecideCall { cmd, keys }
    }

    /// Verdicts from a script's answer, noting the TTLs it renewed.
    fn decided(
        &self,
        call: &DecideCall,
        answer: &Value,
        now: Instant,
    ) -> Result<Vec<bool>, StateError> {
        let flags: Vec<i64> = redis::from_redis_value_ref(answer)?;
        for (f, (journey, candidates)) in flags.iter().zip(&call.keys) {
            if f & 2 != 0 {
                self.renewals.renewed(journey, now);
            }
            if f & 4 != 0 {
                self.renewals.renewed(candidates, now);
            }
        }
        Ok(flags.iter().map(|f| f & 1 == 1).collect())
    }

    /// Adds a unique click to its journey, keeping the newest MAX_JOURNEY.
    fn journey_cmds(&self, pipe: &mut Cmds, d: &Decide, now: Instant) {
        let key = self.journey(&d.program_id, d.visitor_id);
        pipe.cmd("ZADD")
            .arg(&key)
            .arg(d.touch.ts.timestamp_millis())
            .arg(d.touch.member());
        pipe.cmd("ZREMRANGEBYRANK")
            .arg(&key)
            .arg(0)
            .arg(-(MAX_JOURNEY as i64) - 1);
        self.renew(pipe, key, d.keep, now);
    }

    /// One round trip of reads. With `grouped`, count reads of a tally read
    /// [`GROUP_FROM`] times or more are answered together ([`CountGroup`]); a group
    /// whose marks do not fit one answer is left `None`, to be counted read by read.
    async fn read_pass(
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
                Some((g, true)) => {
                    groups[g].cmds(&mut pipe);
                    continue;
                }
                Some(_) => continue,
                None => {}
            }
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
                        trim_cmd(&mut pipe, &key, Mark::at(tally.horizon(*before)));
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
                    continue;
                }
                Some(_) => continue,
                None => {}
            }
            out[i] = Some(match r {
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
                Read::Order { slot, .. } => {
                    let mut answers = Vec::with_capacity(OrderSlot::PRECEDENCE.len());
                    for slot in slots(*slot) {
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
                    // The first recorded; none: the first looked at (a sale's).
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
                    answers.swap_remove(at)
                }
                Read::DueBefore { .. } => Answer::Entries(redis::from_redis_value_ref(next()?)?),
            });
        }
        Ok(out)
    }

    /// The count reads to answer together (those of a tally read [`GROUP_FROM`] times
    /// or more), and each read's group.
    fn count_groups(&self, reads: &[Read]) -> (Vec<CountGroup>, Vec<Option<usize>>) {
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

/// Count reads of one tally answered from one snapshot of the marks around them
/// instead of one `ZLEXCOUNT` each: a batch of conversions reads the same partners'
/// tallies thousands of times (a third of the commands of settling, measured), at
/// marks that lie close together. With `C(x)` the marks in `[from_lo, x)`, a read
/// counts `C(before) - C(from)`; the reads' befores lie in `[before_lo, before_hi]`
/// and their froms in `[from_lo, from_hi]`, so three commands give `C` at all of them:
/// `C(before_lo)`, the marks in `[before_lo, before_hi)` and those in
/// `[from_lo, from_hi)`. Marks below the settled frontier do not change while read
/// (the reads of one conversion are as of its mark), so the three need not be atomic.
struct CountGroup {
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
    fn new(key: String, reads: Vec<usize>, all: &[Read]) -> Option<CountGroup> {
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

    fn cmds(&self, pipe: &mut Cmds) {
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
    fn answer<'a>(
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

/// A script call deciding clicks, with each click's journey and candidate set.
struct DecideCall {
    cmd: Cmd,
    keys: Vec<(String, String)>,
}

/// Commands gathered for one round trip.
#[derive(Default)]
struct Cmds(Vec<Cmd>);

impl Cmds {
    fn cmd(&mut self, name: &str) -> &mut Cmd {
        self.0.push(redis::cmd(name));
        self.0.last_mut().expect("just pushed")
    }
}

/// Removes a tally's marks before `horizon`, from just after the empty member (see
/// `tally_cmds`).
fn trim_cmd(pipe: &mut Cmds, key: &str, horizon: Mark) {
    pipe.cmd("ZREMRANGEBYLEX")
        .arg(key)
        .arg("(")
        .arg(horizon.bound("("));
}

/// Whether a count read of `tally` as of `before` also trims it: reads of windowed
/// tallies, one in [`TRIM_ONE_IN`] by the mark's random low bits.
fn trims(tally: &Tally, before: Mark) -> bool {
    tally.windowed() && before.id % TRIM_ONE_IN == 0
}

/// The slots an order read looks at: the one asked, or all in a refund's precedence.
fn slots(slot: Option<OrderSlot>) -> &'static [OrderSlot] {
    match slot {
        Some(s) => &OrderSlot::PRECEDENCE[s.rank()..=s.rank()],
        None => &OrderSlot::PRECEDENCE,
    }
}

fn text(v: &Value) -> Result<Option<String>, StateError> {
    Ok(redis::from_redis_value_ref::<Option<String>>(v)?)
}

fn int(v: &Value) -> Result<u64, StateError> {
    Ok(redis::from_redis_value_ref::<u64>(v)?)
}

#[async_trait]
impl StateStore for RedisState {
    async fn record_clicks(&self, clicks: &[ClickRecord]) -> Result<(), StateError> {
        let mut pipe = Cmds(Vec::with_capacity(clicks.len() * 3));
        let now = Instant::now();
        for c in clicks {
            pipe.cmd("SET")
                .arg(self.click(c.click_id))
                .arg(c.visitor_id.to_string())
                .arg("PX")
                .arg(ms(c.keep));
            if let Some(cand) = &c.candidate {
                let key = self.fingerprint(&cand.fingerprint, "c");
                pipe.cmd("ZADD")
                    .arg(&key)
                    .arg("NX")
                    .arg(cand.mark.ms)
                    .arg(cand.mark.id_hex());
                self.renew(&mut pipe, key, Duration::from_millis(cand.keep_ms()), now);
            }
            if let Some(ip) = &c.ip {
                self.tally_cmds(&mut pipe, ip, c.mark, now);
            }
        }
        self.run(pipe.0).await?;
        Ok(())
    }

    async fn decide_clicks(&self, clicks: &[Decide]) -> Result<Vec<bool>, StateError> {
        if clicks.is_empty() {
            return Ok(Vec::new());
        }
        let cluster = self.redis.is_cluster();
        // One server: script calls of DECIDE_CHUNK clicks with their journeys, in one
        // round trip, none holding the server for long. A cluster: one call per click
        // on its fingerprint's slot.
        let build = || {
            let now = Instant::now();
            let calls: Vec<DecideCall> = if cluster {
                clicks
                    .chunks(1)
                    .map(|one| self.decide_call(one, false, now))
                    .collect()
            } else {
                clicks
                    .chunks(DECIDE_CHUNK)
                    .map(|chunk| self.decide_call(chunk, true, now))
                    .collect()
            };
            let cmds = calls.iter().map(|c| c.cmd.clone()).collect();
            (cmds, (calls, now))
        };
        let (answers, (calls, now)) = self.run_scripts(build).await?;
        let mut verdicts = Vec::with_capacity(clicks.len());
        for (call, answer) in calls.iter().zip(&answers) {
            verdicts.extend(self.decided(call, answer, now)?);
        }
        if verdicts.len() != clicks.len() {
            return Err(StateError(format!(
                "the click script answered {} verdicts for {} clicks",
                verdicts.len(),
                clicks.len()
            )));
        }
        if cluster {
            let mut pipe = Cmds::default();
            let now = Instant::now();
            for (d, _) in clicks
                .iter()
                .zip(&verdicts)
                .filter(|(d, unique)| **unique && d.touchpoint)
            {
                self.journey_cmds(&mut pipe, d, now);
            }
            self.run(pipe.0).await?;
        }
        Ok(verdicts)
    }

    async fn memos(&self, ids: &[Uuid]) -> Result<Vec<Option<String>>, StateError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let cmds = ids
            .iter()
            .map(|id| {
                let mut get = redis::cmd("GET");
                get.arg(self.memo(*id));
                get
            })
            .collect();
        self.run(cmds).await?.iter().map(text).collect()
    }

    async fn read(&self, reads: &[Read]) -> Result<Vec<Answer>, StateError> {
        if reads.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = self.read_pass(reads, true).await?;
        // Groups whose marks did not fit one answer are counted read by read.
        let again: Vec<usize> = (0..reads.len()).filter(|i| out[*i].is_none()).collect();
        if !again.is_empty() {
            let subset: Vec<Read> = again.iter().map(|i| reads[*i].clone()).collect();
            for (i, answer) in again.into_iter().zip(self.read_pass(&subset, false).await?) {
                out[i] = answer;
            }
        }
        out.into_iter()
            .map(|a| a.ok_or_else(|| StateError("a count read went unanswered".into())))
            .collect()
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<Option<String>>, StateError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = Cmds::default();
        let now = Instant::now();
        let mut memo_at = Vec::with_capacity(writes.len());
        for w in writes {
            memo_at.push(matches!(w, Write::Memo { .. }).then_some(pipe.0.len()));
            match w {
                Write::Memo {
                    conversion_id,
                    json,
                } => {
                    // Set once; the reply is what was there before (Redis ≥ 7.0).
                    pipe.cmd("SET")
                        .arg(self.memo(*conversion_id))
                        .arg(json)
                        .arg("NX")
                        .arg("GET")
                        .arg("PX")
                        .arg(ms(MEMO_TTL));
                }
                Write::Claim { key, holder } => {
                    pipe.cmd("SET")
                        .arg(self.claim(key))
                        .arg(holder)
                        .arg("NX")
                        .arg("PX")
                        .arg(ms(CLAIM_TTL));
                }
                Write::Tally { tally, mark } => self.tally_cmds(&mut pipe, tally, *mark, now),
                Write::FirstSale {
                    program,
                    customer,
                    mark,
                    json,
                    ttl,
                } => {
                    let key = self.first_sale(program, customer);
                    pipe.cmd("ZADD")
                        .arg(&key)
                        .arg("NX")
                        .arg(mark.ms)
                        .arg(format!("{}{json}", mark.id_hex()));
                    match ttl {
                        Some(t) => self.renew(&mut pipe, key, *t, now),
                        // A lifetime plan follows the first sale for good.
                        None => {
                            pipe.cmd("PERSIST").arg(&key);
                        }
                    }
                }
                Write::Order {
                    program,
                    order,
                    slot,
                    json,
                } => {
                    pipe.cmd("SET")
                        .arg(self.order(program, order, *slot))
                        .arg(json)
                        .arg("NX")
                        .arg("PX")
                        .arg(ms(ORDER_TTL));
                }
                Write::Refund {
                    program,
                    order,
                    slot,
                    mark,
                    json,
                } => {
                    let key = self.refunds(program, order, *slot);
                    pipe.cmd("HSET").arg(&key).arg(mark.encode()).arg(json);
                    self.renew(&mut pipe, key, ORDER_TTL, now);
                }
                Write::Due { due_ms, json } => {
                    pipe.cmd("ZADD").arg(self.due()).arg(*due_ms).arg(json);
                }
                Write::DueDone { json } => {
                    pipe.cmd("ZREM").arg(self.due()).arg(json);
                }
            }
        }
        let replies = self.run(pipe.0).await?;
        memo_at
            .into_iter()
            .map(|at| match at {
                Some(i) => text(
                    replies
                        .get(i)
                        .ok_or_else(|| StateError("fewer replies than writes".into()))?,
                ),
                None => Ok(None),
            })
            .collect()
    }

    async fn frontiers(&self) -> Result<HashMap<String, Mark>, StateError> {
        let raw: HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(self.frontiers_key()))
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| Some((k, Mark::decode(&v)?)))
            .collect())
    }

    async fn publish(&self, frontiers: &[(String, Mark)]) -> Result<(), StateError> {
        if frontiers.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.frontiers_key());
        for (k, m) in frontiers {
            cmd.arg(k).arg(m.encode());
        }
        let _: u64 = self.query(&cmd).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StateError> {
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_last_a_period_and_only_what_was_renewed_in_it() {
        let r = Renewals::default();
        let t0 = Instant::now();
        let later = |secs| t0 + Duration::from_secs(secs);
        assert!(r.due("a", t0));
        assert!(!r.due("a", later(59)));
        assert!(r.pending("b", later(1)));
        // Asked, not renewed: still pending.
        assert!(r.pending("b", later(2)));
        r.renewed("b", later(2));
        assert!(!r.pending("b", later(3)));
        // The period is over: everything is due again.
        assert!(r.pending("b", later(60)));
        assert!(r.due("a", later(60)));
        // A renewal from before the current period began is not remembered.
        r.renewed("c", later(30));
        assert!(r.pending("c", later(61)));
        r.forget();
        assert!(r.pending("a", later(61)));
        assert!(r.due("a", later(61)));
    }
}
