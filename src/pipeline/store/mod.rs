//! Pipeline state: what settling needs to remember between events and share between
//! instances. Redis in the full stack, process memory in the embedded default, behind
//! one trait whose whole test suite runs against both (`tests` below and
//! `tests/store_redis.rs`).
//!
//! Every read is *as of* a position in intake order ([`Mark`]), and every write is an
//! idempotent change of one key (or of keys sharing one hash tag). So a decision does
//! not depend on which later events some other instance already stored, a replay that
//! writes again changes nothing, and no write needs to be atomic with another: the
//! memo of a conversion is written first (set once), and its effects are re-applied
//! from the memo whenever it is found.
//!
//! | key (`{p}` = `redis.prefix`)      | type   | TTL                      | written by |
//! |-----------------------------------|--------|--------------------------|------------|
//! | `{p}:c:{click}`                   | string | lookback + 1 day         | [`StateStore::record_clicks`]: the click's visitor |
//! | `{p}:fp:{{fp}}:c`                 | zset   | max(2 × window, 1 day)   | [`StateStore::record_clicks`]: candidate clicks (score ts ms, member click id); [`StateStore::decide_clicks`]: a unique one's score + 0.5 |
//! | `{p}:fp:{{fp}}:p`                 | string | max(2 × window, 1 day)   | [`StateStore::decide_clicks`]: progress, `ms:id:ms` (last decided candidate, newest unique click) |
//! | `{p}:j:{program}:{visitor}`       | zset   | lookback + 1 day         | [`StateStore::decide_clicks`]: unique clicks, ≤ [`MAX_JOURNEY`] |
//! | `{p}:m:{conversion}`              | string | [`MEMO_TTL`]             | [`Write::Memo`]: the decision, set once |
//! | `{p}:d:{program}:{kind}:{order}`  | string | [`CLAIM_TTL`]            | [`Write::Claim`]: the conversion holding the dedup key |
//! | `{p}:tv:{program}:{yyyymm}:{partner}` | zset | [`COUNT_TTL`]          | [`Write::Tally`] ([`Tally::Volume`]): attributed conversions (their received marks) |
//! | `{p}:ts:{program}:{partner}`      | zset   | [`RATE_KEEP`]            | [`Write::Tally`] ([`Tally::Sales`]): sales crediting the partner, when `refund_rate` is on |
//! | `{p}:tr:{program}:{partner}`      | zset   | [`RATE_KEEP`]            | [`Write::Tally`] ([`Tally::Refunds`]): first refunds of those sales |
//! | `{p}:ti:{program}:{partner}:{ip}` | zset   | [`IP_KEEP`]              | [`StateStore::record_clicks`] ([`Tally::IpClicks`]): clicks, when `click_spam` is on |
//! | `{p}:fs:{program}:{customer}`     | zset   | recurring months + 1, or none (lifetime plans, rules that read the customer) | [`Write::FirstSale`]: attributed sales (score received ms, member id hex + first-sale JSON); read first ([`Read::FirstSale`]) or counted ([`Read::CustomerSales`]) |
//! | `{p}:o:{{program:order}}{slot}`   | string | [`ORDER_TTL`]            | [`Write::Order`]: what the order's sale (slot empty), recurring payment (`:recurring`), lead (`:lead`) or signup (`:signup`) earned |
//! | `{p}:o:{{program:order}}{slot}:r` | hash   | [`ORDER_TTL`]            | [`Write::Refund`]: reversals booked on that record, by the refund's mark |
//! | `{p}:cap:{program}:{partner}:{period}` | zset | 3 days (day), 63 days (month), none (lifetime) | [`Write::CapTotal`]: running totals of direct commissions (score 0, member [`Mark::bound`] + total), the last [`CAP_ENTRIES_KEPT`] |
//! | `{p}:tf:{program}:{period}:{partner}` | hash | [`TIER_FIGURES_TTL`] | [`Write::TierFigures`]: what each conversion (field: its id) counted toward the partner's tier figures |
//! | `{p}:tm:{program}:{partner}`      | hash   | none                     | [`Write::TierMove`]: automatic tier moves (field: the boundary's ms), set once |
//! | `{p}:tb:{program}`                | string | none                     | [`Write::TierDone`]: the last boundary whose moves are done (ms) |
//! | `{p}:due`                         | zset   | none (members removed once done) | [`Write::Due`]: orders whose hold ends (score due ms, member the entry) |
//! | `{p}:wm`                          | hash   | none                     | [`StateStore::publish`]: partition frontiers |
//!
//! Tallies (`tv`, `ts`, `tr`, `ti`) hold marks (score 0, member [`Mark::encode`], so that
//! one `ZLEXCOUNT` counts as of a mark, and an empty member no trim removes) and are
//! counted as of a mark. The windowed ones
//! (`ts`, `tr`, `ti`) are read in settlement order, so a read may forget what lies
//! further behind it than the key's keep: nothing later reads that far back (the Redis
//! store trims on one read in 16, which changes no count, only the sets' length).
//!
//! A key outlives its last write by at least its TTL. The Redis store renews the TTL of
//! a tally, a fingerprint's candidates, a journey, a first sale or a refund record at
//! most once a minute per key and process, to the TTL plus that minute.
//!
//! Keys that one script or one read touches together share a hash tag (`{…}`), so the
//! layout runs on a Redis Cluster as well as on one Redis: there the Redis store decides
//! clicks one script call per click (on its fingerprint's slot) and writes journeys
//! beside it; on one server one call decides 500 clicks with their journeys.

pub mod memory;
pub mod redis;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

pub use crate::kv::StateError;
pub use memory::MemoryState;
pub use redis::RedisState;

/// How long a settled conversion's memo is kept: far longer than any replay window.
pub const MEMO_TTL: Duration = Duration::from_secs(30 * 86_400);
/// How long a conversion dedup claim is kept (SPEC §5.2: at least 400 days).
pub const CLAIM_TTL: Duration = Duration::from_secs(400 * 86_400);
/// Orders stay refundable this long.
pub const ORDER_TTL: Duration = Duration::from_secs(400 * 86_400);
/// Monthly counts are read the month after; keep them a little longer.
pub const COUNT_TTL: Duration = Duration::from_secs(70 * 86_400);
/// Most unique clicks kept per journey (more than any `max_touches`).
pub const MAX_JOURNEY: usize = 256;
/// How long the tallies of `refund_rate` keep a mark: its 30-day window and two days
/// for settlement to lag behind the newest read.
pub const RATE_KEEP: Duration = Duration::from_secs(32 * 86_400);
/// How long `click_spam`'s tally keeps a click: its hour and a day of lag.
pub const IP_KEEP: Duration = Duration::from_secs(25 * 3600);
/// Decided candidate clicks are kept at least this long behind the newest decided one,
/// so that a replay finds its verdict.
pub const MIN_FINGERPRINT_KEEP_MS: u64 = 86_400_000;

/// A position in event-time order: milliseconds, then an id (a click's or a
/// conversion's). Conversions are settled in the order of `(received_at, conversion_id)`
/// marks, candidate clicks decided in the order of `(ts, click_id)` marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mark {
    pub ms: i64,
    pub id: u128,
}

impl Mark {
    /// Before everything.
    pub const MIN: Mark = Mark { ms: 0, id: 0 };
    /// After everything.
    pub const MAX: Mark = Mark {
        ms: i64::MAX,
        id: u128::MAX,
    };

    pub fn new(t: DateTime<Utc>, id: Uuid) -> Self {
        Mark {
            ms: t.timestamp_millis().max(0),
            id: id.as_u128(),
        }
    }

    /// The first mark of millisecond `ms`.
    pub fn at(ms: i64) -> Self {
        Mark {
            ms: ms.max(0),
            id: 0,
        }
    }

    /// Fixed-width hex whose byte order is the marks' order (stored in hashes).
    pub fn encode(self) -> String {
        self.bound("")
    }

    /// `prefix` and the encoded mark: a bound of a lexicographic range (`[` or `(`).
    /// Settling encodes marks by the hundred thousand; through `format!` they took 8 %
    /// of the pipeline's time while settling (measured).
    pub fn bound(self, prefix: &str) -> String {
        let mut s = String::with_capacity(prefix.len() + 48);
        s.push_str(prefix);
        push_hex(&mut s, u128::from(self.ms as u64), 16);
        push_hex(&mut s, self.id, 32);
        s
    }

    pub fn decode(s: &str) -> Option<Self> {
        if s.len() != 48 {
            return None;
        }
        Some(Mark {
            ms: i64::from_str_radix(&s[..16], 16).ok()?,
            id: u128::from_str_radix(&s[16..], 16).ok()?,
        })
    }

    /// The id as the 32 hex characters members are stored under (same order as ids).
    pub fn id_hex(self) -> String {
        let mut s = String::with_capacity(32);
        push_hex(&mut s, self.id, 32);
        s
    }
}

/// Appends the low `digits` hex digits of `v`, most significant first, zero-padded.
fn push_hex(out: &mut String, v: u128, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(char::from(HEX[((v >> (4 * i)) & 0xf) as usize]));
    }
}

/// A click's entry in the state: its visitor, and its candidacy when it is one.
#[derive(Debug, Clone)]
pub struct ClickRecord {
    pub click_id: Uuid,
    /// `(ts, click_id)`.
    pub mark: Mark,
    pub visitor_id: Uuid,
    /// How long the click index must remember it.
    pub keep: Duration,
    pub candidate: Option<Candidate>,
    /// The [`Tally::IpClicks`] it is counted in, when its program has `click_spam`.
    pub ip: Option<Tally>,
}

/// A click whose fingerprint's window decides whether it is unique.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub fingerprint: String,
    /// `(ts, click_id)`.
    pub mark: Mark,
    pub window_ms: u64,
}

impl Candidate {
    /// How long its fingerprint's marks are kept behind the newest decided one.
    pub fn keep_ms(&self) -> u64 {
        self.window_ms
            .saturating_mul(2)
            .max(MIN_FINGERPRINT_KEEP_MS)
    }
}

/// A unique click in a journey, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTouch {
    pub click_id: Uuid,
    pub partner_id: String,
    pub campaign: String,
    pub ts: DateTime<Utc>,
}

impl StoredTouch {
    pub(crate) fn member(&self) -> String {
        format!("{}|{}|{}", self.click_id, self.partner_id, self.campaign)
    }

    pub(crate) fn parse(member: &str, ts_ms: i64) -> Option<Self> {
        let mut parts = member.splitn(3, '|');
        let click_id = Uuid::parse_str(parts.next()?).ok()?;
        let partner_id = parts.next()?.to_string();
        let campaign = parts.next().unwrap_or("").to_string();
        Some(StoredTouch {
            click_id,
            partner_id,
            campaign,
            ts: Utc.timestamp_millis_opt(ts_ms).single()?,
        })
    }
}

/// A candidate click to decide, with the journey entry it makes when unique.
#[derive(Debug, Clone)]
pub struct Decide {
    pub candidate: Candidate,
    pub program_id: String,
    pub visitor_id: Uuid,
    pub touch: StoredTouch,
    /// How long the journey must remember it.
    pub keep: Duration,
    /// Whether it joins the journey when unique (a suspicious click does not).
    pub touchpoint: bool,
}

/// A partner's running total of direct commissions in one cap period (SPEC §10.1):
/// `period` is [`crate::engine::caps::Period::key`] of the conversions it counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CapKey {
    pub program: String,
    pub partner: String,
    pub period: String,
}

impl CapKey {
    /// How long a running total is kept after its last write: its period and a margin
    /// for late events; a lifetime total for good (`None`).
    pub fn ttl(&self) -> Option<Duration> {
        match self.period.as_bytes().first() {
            Some(b'd') => Some(Duration::from_secs(3 * 86_400)),
            Some(b'm') => Some(Duration::from_secs(63 * 86_400)),
            _ => None,
        }
    }
}

/// Running totals kept per cap key: only the latest before a mark is ever read, so
/// older entries go (a forced settlement far behind is the only reader that far back).
pub const CAP_ENTRIES_KEPT: usize = 256;

/// Marks counted as of a mark: each key holds the marks (ms, id) of what it counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tally {
    /// Attributed conversions crediting the partner in month `yyyymm` (volume tiers).
    Volume {
        program: String,
        partner: String,
        month: u32,
    },
    /// Attributed sales crediting the partner directly (`refund_rate`).
    Sales { program: String, partner: String },
    /// Orders of those sales at their first refund (`refund_rate`).
    Refunds { program: String, partner: String },
    /// Clicks from one ip_hash on the partner's links (`click_spam`).
    IpClicks {
        program: String,
        partner: String,
        ip_hash: String,
    },
}

impl Tally {
    /// How long a mark is kept: the key's TTL, and for windowed tallies how far
    /// behind a read's mark marks are forgotten.
    pub fn keep(&self) -> Duration {
        match self {
            Tally::Volume { .. } => COUNT_TTL,
            Tally::Sales { .. } | Tally::Refunds { .. } => RATE_KEEP,
            Tally::IpClicks { .. } => IP_KEEP,
        }
    }

    /// Whether reads forget marks further behind them than [`Tally::keep`].
    pub fn windowed(&self) -> bool {
        !matches!(self, Tally::Volume { .. })
    }

    /// The ms below which a read at `before` forgets marks.
    pub(crate) fn horizon(&self, before: Mark) -> i64 {
        before.ms.saturating_sub(ms(self.keep()) as i64)
    }
}

/// Which record of an order id. Dedup is per kind (SPEC §5.2), so a sale, a recurring
/// payment, a lead and a signup may share an order id: each keeps its own record, and
/// the reversals booked on it. A refund reverses the first recorded in
/// [`OrderSlot::PRECEDENCE`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum OrderSlot {
    /// A sale's; also every record stored before slots existed, whatever its kind.
    #[default]
    Sale,
    Recurring,
    Lead,
    Signup,
}

impl OrderSlot {
    /// The order in which a refund looks for the record it reverses: money paid first.
    pub const PRECEDENCE: [OrderSlot; 4] = [
        OrderSlot::Sale,
        OrderSlot::Recurring,
        OrderSlot::Lead,
        OrderSlot::Signup,
    ];

    /// Appended to the record's key (a sale's is the key records always had).
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            OrderSlot::Sale => "",
            OrderSlot::Recurring => ":recurring",
            OrderSlot::Lead => ":lead",
            OrderSlot::Signup => ":signup",
        }
    }

    pub fn is_sale(&self) -> bool {
        *self == OrderSlot::Sale
    }

    /// Its place in [`OrderSlot::PRECEDENCE`].
    pub fn rank(self) -> usize {
        self as usize
    }
}

/// A read, as of what it says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Read {
    /// The visitor of a recorded click → [`Answer::Text`].
    ClickVisitor(Uuid),
    /// The conversion holding a dedup key → [`Answer::Text`].
    Claim(String),
    /// The visitor's unique clicks with `from ≤ ts ≤ to` (ms) → [`Answer::Touches`].
    Journey {
        program: String,
        visitor: Uuid,
        from_ms: i64,
        to_ms: i64,
    },
    /// Marks of the tally with `from_ms ≤ ms` and before `before` → [`Answer::Count`].
    /// A windowed tally forgets marks older than its keep behind `before`.
    Count {
        tally: Tally,
        from_ms: i64,
        before: Mark,
    },
    /// The customer's first attributed sale, if it lies before `before` →
    /// [`Answer::Marked`].
    FirstSale {
        program: String,
        customer: String,
        before: Mark,
    },
    /// How many attributed sales of the customer lie before `before` (the first sales'
    /// set, counted) → [`Answer::Count`].
    CustomerSales {
        program: String,
        customer: String,
        before: Mark,
    },
    /// The latest running total before `before`, with the mark it was written at →
    /// [`Answer::Marked`] (the total as a decimal string).
    CapTotal { key: CapKey, before: Mark },
    /// What one record of the order earned and the reversals booked on it →
    /// [`Answer::Order`]; with no slot, the record a refund reverses.
    Order {
        program: String,
        order: String,
        slot: Option<OrderSlot>,
    },
    /// Up to `limit` queued hold ends before `before_ms`, earliest first →
    /// [`Answer::Entries`].
    DueBefore { before_ms: i64, limit: usize },
    /// What each conversion counted toward the partner's figures of one tier period →
    /// [`Answer::Entries`] (any order).
    TierFigures(TierKey),
    /// The partner's automatic tier moves → [`Answer::Entries`] (any order).
    TierMoves { program: String, partner: String },
    /// The last period boundary whose tier moves are done → [`Answer::Count`] (its ms;
    /// 0 when none).
    TierDone { program: String },
}

/// A partner's figures in one tier period (SPEC §10.2): `period` is
/// [`crate::engine::tiers::Period::key`] of the period they count toward.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TierKey {
    pub program: String,
    pub partner: String,
    pub period: String,
}

/// How long a period's figures are kept after their last write: read once the period
/// ends, at most a quarter long, with a margin for a pipeline that was down.
pub const TIER_FIGURES_TTL: Duration = Duration::from_secs(200 * 86_400);

/// The answer to one [`Read`].
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Text(Option<String>),
    /// A value with the mark it was stored at.
    Marked(Option<(Mark, String)>),
    Touches(Vec<StoredTouch>),
    Count(u64),
    Order {
        slot: OrderSlot,
        record: Option<String>,
        refunds: Vec<(Mark, String)>,
    },
    Entries(Vec<String>),
}

/// An idempotent change of state.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Sets the conversion's memo unless one exists; answers the existing one.
    Memo { conversion_id: Uuid, json: String },
    /// Takes the dedup key for `holder` unless taken.
    Claim { key: String, holder: String },
    /// Adds a mark to a tally.
    Tally { tally: Tally, mark: Mark },
    /// Adds an attributed sale (at `mark`) to the customer's sales; the first one
    /// (lowest mark) is the one recurring payments follow.
    FirstSale {
        program: String,
        customer: String,
        mark: Mark,
        json: String,
        ttl: Option<Duration>,
    },
    /// Records what an order earned in its slot unless recorded.
    Order {
        program: String,
        order: String,
        slot: OrderSlot,
        json: String,
    },
    /// Books a refund's reversals (at the refund's `mark`) on the order's record in
    /// `slot`.
    Refund {
        program: String,
        order: String,
        slot: OrderSlot,
        mark: Mark,
        json: String,
    },
    /// Queues an order's hold end.
    Due { due_ms: i64, json: String },
    /// Removes a hold end whose approvals are written.
    DueDone { json: String },
    /// Records the running total after the conversion at `mark`.
    CapTotal {
        key: CapKey,
        mark: Mark,
        total: Decimal,
    },
    /// Records what one conversion counted toward a partner's tier figures.
    TierFigures {
        key: TierKey,
        conversion_id: Uuid,
        json: String,
    },
    /// Records a tier move made at `from_ms` unless one is recorded; answers the
    /// recorded one when it differs from this.
    TierMove {
        program: String,
        partner: String,
        from_ms: i64,
        json: String,
    },
    /// Marks the program's tier moves done up to the boundary at `boundary_ms` (never
    /// moves the mark back).
    TierDone { program: String, boundary_ms: i64 },
}

/// Pipeline state.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Indexes each click's visitor, adds candidates to their fingerprint and clicks to
    /// their ip tally. Idempotent per click.
    async fn record_clicks(&self, clicks: &[ClickRecord]) -> Result<(), StateError>;
    /// Decides candidates (in mark order) and adds the unique ones to their journeys: a
    /// candidate is unique when no unique click of its fingerprint lies in the window
    /// before it (SPEC §5.1); unique touchpoints join their journey. Every recorded
    /// candidate of the fingerprint up to the one
    /// asked about is decided first, in mark order, whoever recorded it, so verdicts do
    /// not depend on which instance asks first. The caller asks only once every click
    /// partition has recorded everything before these marks. Idempotent.
    async fn decide_clicks(&self, clicks: &[Decide]) -> Result<Vec<bool>, StateError>;
    /// The memos of these conversions, as stored.
    async fn memos(&self, ids: &[Uuid]) -> Result<Vec<Option<String>>, StateError>;
    /// Answers reads, one answer each, in order.
    async fn read(&self, reads: &[Read]) -> Result<Vec<Answer>, StateError>;
    /// Applies writes; for each, the memo that was there already (for
    /// [`Write::Memo`]) or `None`.
    async fn write(&self, writes: &[Write]) -> Result<Vec<Option<String>>, StateError>;
    /// Every partition frontier published.
    async fn frontiers(&self) -> Result<HashMap<String, Mark>, StateError>;
    /// Publishes partition frontiers.
    async fn publish(&self, frontiers: &[(String, Mark)]) -> Result<(), StateError>;
    /// Is the store reachable?
    async fn ping(&self) -> Result<(), StateError>;
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(any(test, feature = "testkit"))]
pub mod suite;

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_790_000_000_000;

    #[tokio::test]
    async fn memory_store_passes_the_suite() {
        suite::all(&MemoryState::new()).await;
    }

    #[test]
    fn order_slots_rank_in_precedence_with_distinct_suffixes() {
        for (i, slot) in OrderSlot::PRECEDENCE.iter().enumerate() {
            assert_eq!(slot.rank(), i);
        }
        let suffixes: std::collections::HashSet<&str> =
            OrderSlot::PRECEDENCE.iter().map(|s| s.suffix()).collect();
        assert_eq!(suffixes.len(), OrderSlot::PRECEDENCE.len());
        // A sale's record keeps the key every record had before slots.
        assert_eq!(OrderSlot::Sale.suffix(), "");
        assert_eq!(OrderSlot::default(), OrderSlot::Sale);
    }

    #[test]
    fn marks_encode_in_order() {
        let marks = [
            Mark::MIN,
            Mark { ms: 5, id: 9 },
            Mark { ms: 5, id: 10 },
            Mark { ms: 6, id: 0 },
            Mark {
                ms: T,
                id: u128::MAX,
            },
        ];
        for w in marks.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].encode() < w[1].encode());
        }
        for m in marks {
            assert_eq!(Mark::decode(&m.encode()), Some(m));
            // The same text as the formatting it replaced.
            assert_eq!(m.encode(), format!("{:016x}{:032x}", m.ms, m.id));
            assert_eq!(m.id_hex(), format!("{:032x}", m.id));
            assert_eq!(m.bound("("), format!("({:016x}{:032x}", m.ms, m.id));
        }
        let odd = Mark {
            ms: 0x0123_4567_89ab_cdef,
            id: 0xfedc_ba98_7654_3210_0f1e_2d3c_4b5a_6978,
        };
        assert_eq!(
            odd.encode(),
            "0123456789abcdeffedcba98765432100f1e2d3c4b5a6978"
        );
        assert_eq!(
            Mark::MAX.encode(),
            format!("{:016x}{:032x}", i64::MAX, u128::MAX)
        );
        assert_eq!(Mark::decode("zz"), None);
    }
}
