//! Resolution: who a released batch of conversions credits and what state it changes,
//! settled in mark order with a few round trips for the whole batch:
//!
//! 1. memos: a conversion settled before (a replay) keeps its decision, and its
//!    effects are applied again (idempotent) before anything is read;
//! 2. claims, click visitors, first sales and orders;
//! 3. journeys;
//! 4. last month's counts of the partners the journeys credit;
//! 5. decisions, one at a time in mark order, each seeing what the earlier ones of the
//!    batch changed (an overlay on what was read, which is as of its own mark);
//! 6. memos, set once (a memo already there wins: its decision is the one written);
//! 7. effects.
//!
//! Every read is as of the conversion's mark and every write idempotent, so a crash
//! between any two steps, or two instances settling one conversion, end in the same
//! state and rows (see [`super::store`]).

use std::collections::HashMap;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::store::{
    Answer, Mark, OrderSlot, Read, StateError, StateStore, StoredTouch, Tally, Write,
};
use crate::engine::attribution::Touch;
use crate::engine::dedup;
use crate::engine::fraud::{Rule, REFUND_RATE_WINDOW_MS};
use crate::engine::journey;
use crate::engine::lifecycle::{self, BookedRefund, Lifecycle, RowRef, Standing, Status};
use crate::engine::settle::{self, ConversionStatus, Credit, Decision, FirstSale, OrderRecord};
use crate::engine::LedgerKind;
use crate::events::{ConversionEvent, ConversionKind};
use crate::registry::{Program, Registry};
use crate::sink::rows::{commission_id, RowKey, StatusRow, Step};

/// A settled conversion as remembered: the decision, its touches' campaigns and the
/// lifecycle of its rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memo {
    pub decision: Decision,
    pub campaigns: Vec<String>,
    /// Memos written before the lifecycle existed have none: their rows read approved.
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// A refund that is the first booked on its order: `refund_rate` counts it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub first_refund: bool,
    /// Which record of its order a refund reversed: the sale's unless no sale has that
    /// order id (see [`OrderSlot::PRECEDENCE`]).
    #[serde(default, skip_serializing_if = "OrderSlot::is_sale")]
    pub reversed: OrderSlot,
}

/// An order whose hold ends at `due_ms`, queued until the settled frontier passes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DueEntry {
    pub due_ms: i64,
    pub conversion_id: Uuid,
    pub program_id: String,
    pub order_id: String,
    pub currency: String,
    /// The conversion's record of the order (absent: a sale's, as in entries queued
    /// before slots existed).
    #[serde(default, skip_serializing_if = "OrderSlot::is_sale")]
    pub slot: OrderSlot,
}

/// The reversals a refund booked on its order: earned row index and (negative) amount.
type Booked = Vec<(usize, Decimal)>;

/// What became of one conversion of a batch.
pub enum Outcome {
    Settled(Box<Memo>),
    /// It cannot be settled (arithmetic beyond the ledger's range) or its stored memo
    /// cannot be decoded: it goes to the dead-letter topic with this reason.
    DeadLetter(String),
}

/// State of one order while a batch is resolved.
#[derive(Clone, Default)]
struct OrderState {
    /// The record a refund reverses; its reversals are in `refunds`.
    slot: OrderSlot,
    record: Option<OrderRecord>,
    /// Refunds booked, with their marks.
    refunds: Vec<(Mark, Booked)>,
}

impl OrderState {
    /// The refunds booked before `mark`.
    fn before(&self, mark: Mark) -> Vec<BookedRefund> {
        self.refunds
            .iter()
            .filter(|(m, _)| *m < mark)
            .map(|(m, booked)| BookedRefund {
                received_ms: m.ms,
                conversion_id: Uuid::from_u128(m.id),
                rows: booked.clone(),
            })
            .collect()
    }

    /// The order as a refund at `mark` sees it: what refunds before it took back.
    fn as_of(&self, mark: Mark) -> Option<OrderRecord> {
        let mut record = self.record.clone()?;
        for (m, booked) in &self.refunds {
            if *m < mark {
                for (i, amount) in booked {
                    if let Some(row) = record.rows.get_mut(*i) {
                        row.reversed += *amount;
                    }
                }
            }
        }
        Some(record)
    }
}

/// Settles `batch` (in mark order); one outcome per conversion, in order.
pub async fn settle_batch(
    registry: &Registry,
    state: &dyn StateStore,
    batch: &[(Mark, ConversionEvent)],
) -> Result<Vec<Outcome>, StateError> {
    // 1. Memos.
    let ids: Vec<Uuid> = batch.iter().map(|(_, e)| e.conversion_id).collect();
    let stored = state.memos(&ids).await?;
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
    let mut replayed = Vec::new();
    for ((mark, e), raw) in batch.iter().zip(stored) {
        outcomes.push(raw.map(|raw| match serde_json::from_str::<Memo>(&raw) {
            Ok(memo) => {
                replayed.extend(effects(registry, *mark, e, &memo));
                Outcome::Settled(Box::new(memo))
            }
            Err(err) => Outcome::DeadLetter(format!("undecodable memo: {err}")),
        }));
    }
    state.write(&replayed).await?;
    let fresh: Vec<usize> = (0..batch.len())
        .filter(|i| outcomes[*i].is_none())
        .collect();
    if fresh.is_empty() {
        return Ok(outcomes.into_iter().flatten().collect());
    }

    // 2. Claims, click visitors, first sales, orders.
    let mut reads = Vec::new();
    let mut at = HashMap::new();
    let mut ask = |reads: &mut Vec<Read>, read: Read| -> usize {
        *at.entry(read.clone()).or_insert_with(|| {
            reads.push(read);
            reads.len() - 1
        })
    };
    struct Asked {
        claim: usize,
        visitor: Option<usize>,
        first_sale: Option<usize>,
        order: Option<usize>,
    }
    let mut asked = Vec::with_capacity(fresh.len());
    for &i in &fresh {
        let (mark, e) = &batch[i];
        let key = dedup::conversion_key(&e.program_id, e.kind.as_str(), &e.order_id);
        asked.push(Asked {
            claim: ask(&mut reads, Read::Claim(key)),
            visitor: match (e.kind.is_journey_kind(), e.click_id) {
                (true, Some(c)) => Some(ask(&mut reads, Read::ClickVisitor(c))),
                _ => None,
            },
            first_sale: match (e.kind, &e.customer_id) {
                (ConversionKind::Recurring, Some(c)) => Some(ask(
                    &mut reads,
                    Read::FirstSale {
                        program: e.program_id.clone(),
                        customer: c.clone(),
                        before: *mark,
                    },
                )),
                _ => None,
            },
            order: match (e.kind, &e.original_order_id) {
                (ConversionKind::Refund, Some(o)) => Some(ask(
                    &mut reads,
                    Read::Order {
                        program: e.program_id.clone(),
                        order: o.clone(),
                        slot: None,
                    },
                )),
                _ => None,
            },
        });
    }
    let answers = state.read(&reads).await?;
    let text = |i: usize| match &answers[i] {
        Answer::Text(t) => t.clone(),
        _ => None,
    };

    // Each conversion's program, looked up once (None: deleted since intake).
    let programs: Vec<Option<Arc<Program>>> = fresh
        .iter()
        .map(|&i| registry.program(&batch[i].1.program_id))
        .collect();

    // 3. Journeys of the visitors of sales, leads and signups.
    let mut journey_reads = Vec::new();
    let mut journey_of: Vec<Option<usize>> = Vec::with_capacity(fresh.len());
    for (k, &i) in fresh.iter().enumerate() {
        let e = &batch[i].1;
        let program = programs[k].as_deref();
        let visitor = match asked[k].visitor {
            Some(r) => text(r).and_then(|v| Uuid::parse_str(&v).ok()),
            None => None,
        }
        .or(e.visitor_id);
        journey_of.push(match (e.kind.is_journey_kind(), visitor, program) {
            (true, Some(visitor), Some(program)) => {
                journey_reads.push(Read::Journey {
                    program: e.program_id.clone(),
                    visitor,
                    from_ms: (e.occurred_at
                        - chrono::Duration::days(i64::from(program.lookback_days)))
                    .timestamp_millis(),
                    to_ms: journey_end(e),
                });
                Some(journey_reads.len() - 1)
            }
            _ => None,
        });
    }
    let journeys = state.read(&journey_reads).await?;

    // Who each conversion would credit, before counts and overlays.
    let mut selected: Vec<Vec<StoredTouch>> = Vec::with_capacity(fresh.len());
    for (k, &i) in fresh.iter().enumerate() {
        let e = &batch[i].1;
        let touches = match journey_of[k].map(|j| &journeys[j]) {
            Some(Answer::Touches(t)) => t.clone(),
            _ => Vec::new(),
        };
        selected.push(match &programs[k] {
            Some(program) => select(registry, program, e, touches),
            None => Vec::new(),
        });
    }

    // 4. Tallies as of each conversion: last month's counts of the partners sales may
    //    credit, and the refund rates of the partners it may credit.
    let mut count_reads = Vec::new();
    let mut counts_of: Vec<Vec<(Read, usize)>> = Vec::with_capacity(fresh.len());
    for (k, &i) in fresh.iter().enumerate() {
        let (mark, e) = &batch[i];
        let mut mine = Vec::new();
        let Some(program) = programs[k].as_deref() else {
            counts_of.push(mine);
            continue;
        };
        let mut partners: Vec<String> = selected[k].iter().map(|t| t.partner_id.clone()).collect();
        if partners.is_empty() {
            partners.extend(referral_partner(registry, program, e));
        }
        partners.sort();
        partners.dedup();
        let mut tallies = Vec::new();
        if e.kind == ConversionKind::Sale {
            tallies.extend(partners.iter().map(|p| volume_read(e, p, *mark)));
        }
        if program.fraud.refund_rate.is_some() && e.kind != ConversionKind::Refund {
            // A recurring payment's partners are its first sale's: those stored are read
            // now, one of this batch later (rate_reads below).
            if let Some(Answer::Marked(Some((_, j)))) = asked[k].first_sale.map(|r| &answers[r]) {
                if let Ok(f) = serde_json::from_str::<FirstSale>(j) {
                    partners.extend(f.shares.into_iter().map(|(p, _)| p));
                }
            }
            for p in &partners {
                tallies.extend(rate_reads(e, p, *mark));
            }
        }
        for read in tallies {
            count_reads.push(read.clone());
            mine.push((read, count_reads.len() - 1));
        }
        counts_of.push(mine);
    }
    let counts = state.read(&count_reads).await?;

    // 5. Decisions in mark order, over an overlay of what the batch changed.
    let mut claims: HashMap<String, Uuid> = HashMap::new();
    let mut tallied: HashMap<Tally, Vec<Mark>> = HashMap::new();
    let mut first_sales: HashMap<(String, String), (Mark, FirstSale)> = HashMap::new();
    // The stored orders refunds reverse, before this batch's conversions add theirs
    // (the overlay keeps to the order of slots: a sale's record comes before a lead's).
    let mut orders: HashMap<(String, String), OrderState> = HashMap::new();
    for (k, &i) in fresh.iter().enumerate() {
        let e = &batch[i].1;
        let (Some(original), Some(r)) = (&e.original_order_id, asked[k].order) else {
            continue;
        };
        if let Answer::Order {
            slot,
            record,
            refunds,
        } = &answers[r]
        {
            orders
                .entry((e.program_id.clone(), original.clone()))
                .or_insert_with(|| OrderState {
                    slot: *slot,
                    record: record.as_deref().and_then(|j| serde_json::from_str(j).ok()),
                    refunds: refunds
                        .iter()
                        .filter_map(|(m, j)| Some((*m, serde_json::from_str(j).ok()?)))
                        .collect(),
                });
        }
    }
    let mut decided: Vec<(usize, Memo)> = Vec::with_capacity(fresh.len());
    for (k, &i) in fresh.iter().enumerate() {
        let (mark, e) = &batch[i];
        let memo: Result<Memo, String> = match programs[k].as_deref() {
            None => Ok(Memo {
                decision: Decision::uncredited(ConversionStatus::Unattributed, Decimal::ZERO, ""),
                campaigns: Vec::new(),
                lifecycle: Lifecycle::default(),
                first_refund: false,
                reversed: OrderSlot::Sale,
            }),
            Some(program) => {
                let key = dedup::conversion_key(&e.program_id, e.kind.as_str(), &e.order_id);
                let holder = text(asked[k].claim)
                    .and_then(|h| Uuid::parse_str(&h).ok())
                    .or_else(|| claims.get(&key).copied());
                if holder.is_some_and(|h| h != e.conversion_id) {
                    match program
                        .fx
                        .get(&e.currency)
                        .map(|r| e.amount.checked_mul(*r))
                    {
                        Some(None) => Err(OUT_OF_RANGE.to_string()),
                        settled => Ok(Memo {
                            decision: Decision::uncredited(
                                ConversionStatus::Duplicate,
                                settled.flatten().unwrap_or_default(),
                                &program.currency,
                            ),
                            campaigns: Vec::new(),
                            lifecycle: Lifecycle::default(),
                            first_refund: false,
                            reversed: OrderSlot::Sale,
                        }),
                    }
                } else {
                    let order_key = e
                        .original_order_id
                        .as_ref()
                        .map(|o| (e.program_id.clone(), o.clone()));
                    let order_state = order_key.as_ref().and_then(|ok| orders.get(ok));
                    let order = order_state.and_then(|o| o.as_of(*mark));
                    let earlier = order_state.map_or_else(Vec::new, |o| o.before(*mark));
                    let first_sale = match (e.kind, &e.customer_id) {
                        (ConversionKind::Recurring, Some(c)) => {
                            let stored = match asked[k].first_sale.map(|r| &answers[r]) {
                                Some(Answer::Marked(Some((m, j)))) => {
                                    serde_json::from_str::<FirstSale>(j).ok().map(|f| (*m, f))
                                }
                                _ => None,
                            };
                            let in_batch = first_sales
                                .get(&(e.program_id.clone(), c.clone()))
                                .filter(|(m, _)| m < mark)
                                .cloned();
                            // The earlier of the stored first sale and this batch's.
                            match (stored, in_batch) {
                                (Some(a), Some(b)) => Some(if a.0 <= b.0 { a.1 } else { b.1 }),
                                (a, b) => a.or(b).map(|(_, f)| f),
                            }
                        }
                        _ => None,
                    };
                    // Tallies read in step 4, and any a first sale of this batch adds.
                    let mut stored: HashMap<Read, u64> = counts_of[k]
                        .iter()
                        .map(|(read, r)| {
                            let n = match counts[*r] {
                                Answer::Count(n) => n,
                                _ => 0,
                            };
                            (read.clone(), n)
                        })
                        .collect();
                    let rate_partners: Vec<String> = match (&first_sale, program.fraud.refund_rate)
                    {
                        (Some(f), Some(_)) => f.shares.iter().map(|(p, _)| p.clone()).collect(),
                        _ => Vec::new(),
                    };
                    let missing: Vec<Read> = rate_partners
                        .iter()
                        .flat_map(|p| rate_reads(e, p, *mark))
                        .filter(|r| !stored.contains_key(r))
                        .collect();
                    if !missing.is_empty() {
                        for (read, answer) in missing.iter().zip(state.read(&missing).await?) {
                            if let Answer::Count(n) = answer {
                                stored.insert(read.clone(), n);
                            }
                        }
                    }
                    // Stored as of the mark, plus what this batch added before it.
                    let count = |read: &Read| -> u64 {
                        let Read::Count {
                            tally,
                            from_ms,
                            before,
                        } = read
                        else {
                            return 0;
                        };
                        let batch = tallied.get(tally).map_or(0, |marks| {
                            marks
                                .iter()
                                .filter(|m| m.ms >= *from_ms && *m < before)
                                .count() as u64
                        });
                        stored.get(read).copied().unwrap_or(0) + batch
                    };
                    decide(
                        registry,
                        program,
                        e,
                        &selected[k],
                        first_sale.as_ref(),
                        order
                            .as_ref()
                            .zip(order_state)
                            .map(|(o, state)| (o, earlier.as_slice(), state.slot)),
                        &AsOf { mark: *mark, count },
                    )
                    .inspect(|memo| {
                        // The overlay: what later conversions of the batch must see.
                        claims.insert(key, e.conversion_id);
                        overlay(
                            program,
                            e,
                            *mark,
                            memo,
                            &mut tallied,
                            &mut first_sales,
                            &mut orders,
                        );
                    })
                }
            }
        };
        match memo {
            Ok(memo) => decided.push((i, memo)),
            // Nothing of it is stored or seen by later conversions.
            Err(reason) => outcomes[i] = Some(Outcome::DeadLetter(reason)),
        }
    }

    // 6. Memos, set once.
    let memo_writes = decided
        .iter()
        .map(|(i, memo)| {
            Ok(Write::Memo {
                conversion_id: batch[*i].1.conversion_id,
                json: serde_json::to_string(memo).map_err(|e| StateError(e.to_string()))?,
            })
        })
        .collect::<Result<Vec<_>, StateError>>()?;
    let existing = state.write(&memo_writes).await?;

    // 7. Effects of the memos that stand.
    let mut writes = Vec::new();
    for ((i, memo), existing) in decided.into_iter().zip(existing) {
        let (mark, e) = &batch[i];
        let memo = match existing {
            // Settled meanwhile by another instance: its decision is the one.
            Some(raw) => match serde_json::from_str::<Memo>(&raw) {
                Ok(m) => m,
                Err(err) => {
                    outcomes[i] = Some(Outcome::DeadLetter(format!("undecodable memo: {err}")));
                    continue;
                }
            },
            None => memo,
        };
        writes.extend(effects(registry, *mark, e, &memo));
        outcomes[i] = Some(Outcome::Settled(Box::new(memo)));
    }
    state.write(&writes).await?;
    Ok(outcomes.into_iter().flatten().collect())
}

/// The approvals of queued hold ends (`Write::Due` members) whose time has come: for
/// each order, every row not reversed in full before its hold ended, with the pending
/// reversals booked on it (SPEC §5.7). Steps of rows created pending, so step 1.
/// Undecodable entries approve nothing (they are removed with the rest).
pub async fn approvals(
    state: &dyn StateStore,
    entries: &[String],
) -> Result<Vec<StatusRow>, StateError> {
    let due: Vec<DueEntry> = entries
        .iter()
        .filter_map(|j| match serde_json::from_str(j) {
            Ok(e) => Some(e),
            Err(err) => {
                tracing::error!(error = %err, entry = %j, "undecodable hold end, skipped");
                None
            }
        })
        .collect();
    let reads: Vec<Read> = due
        .iter()
        .map(|d| Read::Order {
            program: d.program_id.clone(),
            order: d.order_id.clone(),
            slot: Some(d.slot),
        })
        .collect();
    let answers = state.read(&reads).await?;
    let mut rows = Vec::new();
    for (d, answer) in due.iter().zip(answers) {
        let Answer::Order {
            record, refunds, ..
        } = answer
        else {
            continue;
        };
        let Some(record) = record.and_then(|j| serde_json::from_str::<OrderRecord>(&j).ok()) else {
            tracing::error!(order = %d.order_id, "hold end of an order not recorded, skipped");
            continue;
        };
        if record.conversion_id != d.conversion_id {
            // Stored before each kind kept its own record: another conversion's rows.
            tracing::error!(order = %d.order_id, conversion = %d.conversion_id,
                "hold end of a conversion whose order record is another's, skipped");
            continue;
        }
        let booked: Vec<BookedRefund> = refunds
            .iter()
            .filter_map(|(m, j)| {
                Some(BookedRefund {
                    received_ms: m.ms,
                    conversion_id: Uuid::from_u128(m.id),
                    rows: serde_json::from_str(j).ok()?,
                })
            })
            .collect();
        let at = chrono::DateTime::from_timestamp_millis(d.due_ms).unwrap_or_default();
        for r in lifecycle::approvals(record.conversion_id, &record.rows, &booked, d.due_ms) {
            rows.push(step_row(
                &r,
                &d.program_id,
                &d.currency,
                1,
                Status::Approved,
                "hold period over",
                at,
            ));
        }
    }
    Ok(rows)
}

/// A pipeline step of a ledger row.
pub fn step_row(
    r: &RowRef,
    program_id: &str,
    currency: &str,
    step: u8,
    status: Status,
    reason: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> StatusRow {
    let kind = match (r.reversal, r.level) {
        (true, _) => LedgerKind::Reversal,
        (false, 0) => LedgerKind::Direct,
        (false, _) => LedgerKind::Override,
    };
    let row = RowKey {
        commission_id: commission_id(r.conversion_id, r.index),
        conversion_id: r.conversion_id,
        program_id,
        partner_id: &r.partner_id,
        kind: kind.as_str(),
        amount: r.amount,
        currency,
    };
    let step = Step {
        step,
        status,
        reason,
        actor: "pipeline",
        at,
    };
    StatusRow::step(&row, step)
}

/// The last instant a conversion's journey reaches: its `occurred_at`, but never past
/// its `received_at`: a click after the conversion was reported did not lead to it, and
/// clicks up to `received_at` are exactly those scheduling waits for.
fn journey_end(e: &ConversionEvent) -> i64 {
    e.occurred_at.min(e.received_at).timestamp_millis()
}

/// The touchpoints of a conversion among the visitor's unique clicks.
fn select(
    registry: &Registry,
    program: &Program,
    e: &ConversionEvent,
    touches: Vec<StoredTouch>,
) -> Vec<StoredTouch> {
    let engine: Vec<Touch> = touches
        .iter()
        .map(|t| Touch {
            click_id: t.click_id,
            partner_id: t.partner_id.clone(),
            ts: t.ts,
        })
        .collect();
    let end = e.occurred_at.min(e.received_at);
    let chosen = journey::select(
        engine,
        end,
        program.lookback_days,
        program.max_touches,
        |p| settle::is_active(registry, p),
    );
    chosen
        .into_iter()
        .filter_map(|t| touches.iter().find(|s| s.click_id == t.click_id).cloned())
        .collect()
}

/// The active partner of the conversion's referral code, in its program.
fn referral_partner(registry: &Registry, program: &Program, e: &ConversionEvent) -> Option<String> {
    let link = registry.link(e.referral_code.as_deref()?)?;
    (link.link.program_id == program.id && settle::is_active(registry, &link.link.partner_id))
        .then(|| link.link.partner_id.clone())
}

const OUT_OF_RANGE: &str = "amounts beyond the ledger's range";

/// The decision for an original (not duplicate) conversion; an error when its amounts
/// do not fit the ledger (the registry's bounds keep that from happening; this is the
/// net under them).
fn decide(
    registry: &Registry,
    program: &Program,
    e: &ConversionEvent,
    selected: &[StoredTouch],
    first_sale: Option<&FirstSale>,
    order: Option<(&OrderRecord, &[BookedRefund], OrderSlot)>,
    as_of: &AsOf<impl Fn(&Read) -> u64>,
) -> Result<Memo, String> {
    let mut campaigns = Vec::new();
    let credit = match e.kind {
        ConversionKind::Sale | ConversionKind::Lead | ConversionKind::Signup => {
            if !selected.is_empty() {
                campaigns = selected.iter().map(|t| t.campaign.clone()).collect();
                Credit::Journey(
                    selected
                        .iter()
                        .map(|t| Touch {
                            click_id: t.click_id,
                            partner_id: t.partner_id.clone(),
                            ts: t.ts,
                        })
                        .collect(),
                )
            } else if let Some(partner) = referral_partner(registry, program, e) {
                campaigns = vec![e
                    .referral_code
                    .as_deref()
                    .and_then(|c| registry.link(c))
                    .and_then(|l| l.link.campaign.clone())
                    .unwrap_or_default()];
                Credit::Referral(partner)
            } else {
                Credit::None
            }
        }
        ConversionKind::Recurring => match first_sale {
            Some(f) => {
                campaigns = f.campaigns.clone();
                Credit::Recurring(f)
            }
            None => Credit::None,
        },
        ConversionKind::Refund => order
            .map(|(o, _, _)| Credit::Refund(o))
            .unwrap_or(Credit::None),
    };
    let last_touch_ms = match &credit {
        Credit::Journey(touches) => touches.iter().map(|t| t.ts.timestamp_millis()).max(),
        _ => None,
    };
    let decision = settle::settle(program, e, credit, registry, |p, _| as_of.volume(e, p))
        .map_err(|why| format!("{OUT_OF_RANGE}: {why}"))?;
    // Within Decimal's range is not yet within the ledger's columns.
    crate::sink::rows::fits(e, &decision).map_err(|why| format!("{OUT_OF_RANGE}: {why}"))?;
    let lifecycle = match (e.kind, order) {
        (ConversionKind::Refund, Some((order, earlier, _))) => {
            let reverses: Vec<(usize, Decimal)> = decision
                .reverses
                .iter()
                .zip(&decision.rows)
                .map(|(i, r)| (*i, r.amount))
                .collect();
            let steps = lifecycle::refund_steps(
                order.conversion_id,
                &order.rows,
                &order.standing,
                earlier,
                e.received_at.timestamp_millis(),
                &reverses,
            );
            Lifecycle {
                standing: Standing::default(),
                created: steps.created,
                cancels: steps.cancels,
            }
        }
        _ if decision.rows.is_empty() => Lifecycle::default(),
        _ => {
            let flags = flags(registry, program, e, &decision, last_touch_ms, |p| {
                as_of.refund_rate(program, e, p)
            });
            let standing = Standing::new(
                flags,
                program.hold_days,
                e.occurred_at.timestamp_millis(),
                e.received_at.timestamp_millis(),
            );
            let at = e.received_at.timestamp_millis();
            let created =
                vec![(standing.status_at(at), standing.reason_at(at)); decision.rows.len()];
            Lifecycle {
                standing,
                created,
                cancels: Vec::new(),
            }
        }
    };
    let first_refund = e.kind == ConversionKind::Refund
        && !decision.rows.is_empty()
        && order.is_some_and(|(_, earlier, _)| earlier.is_empty());
    Ok(Memo {
        decision,
        campaigns,
        lifecycle,
        first_refund,
        reversed: match (e.kind, order) {
            (ConversionKind::Refund, Some((_, _, slot))) => slot,
            _ => OrderSlot::Sale,
        },
    })
}

/// The tallies as a conversion at `mark` sees them (`count` answers [`Read::Count`]s).
struct AsOf<F> {
    mark: Mark,
    count: F,
}

impl<F: Fn(&Read) -> u64> AsOf<F> {
    /// The partner's conversions in the month before the conversion's (volume tiers).
    fn volume(&self, e: &ConversionEvent, partner: &str) -> u64 {
        (self.count)(&volume_read(e, partner, self.mark))
    }

    /// Whether the partner's refunded share of recent sales is above the program's rate.
    fn refund_rate(&self, program: &Program, e: &ConversionEvent, partner: &str) -> bool {
        let [sales, refunds] = rate_reads(e, partner, self.mark);
        program
            .fraud
            .refund_rate((self.count)(&sales), (self.count)(&refunds))
    }
}

/// The partners a decision credits directly (its level-0 rows), each once.
fn direct_partners(d: &Decision) -> Vec<String> {
    let mut out: Vec<String> = d
        .rows
        .iter()
        .filter(|r| r.level == 0)
        .map(|r| r.partner_id.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The partner's conversions in the month before the conversion's, as of its mark.
fn volume_read(e: &ConversionEvent, partner: &str, mark: Mark) -> Read {
    Read::Count {
        tally: Tally::Volume {
            program: e.program_id.clone(),
            partner: partner.to_string(),
            month: settle::previous_month(e.occurred_at),
        },
        from_ms: 0,
        before: mark,
    }
}

/// The partner's sales and first refunds in the 30 days before the mark.
fn rate_reads(e: &ConversionEvent, partner: &str, mark: Mark) -> [Read; 2] {
    let from_ms = mark.ms.saturating_sub(REFUND_RATE_WINDOW_MS);
    let read = |tally| Read::Count {
        tally,
        from_ms,
        before: mark,
    };
    [
        read(Tally::Sales {
            program: e.program_id.clone(),
            partner: partner.to_string(),
        }),
        read(Tally::Refunds {
            program: e.program_id.clone(),
            partner: partner.to_string(),
        }),
    ]
}

/// The tallies a settled conversion adds to (at its mark): volumes of the partners of
/// an attributed sale, lead or signup; with `refund_rate` on, the sales and first
/// refunds of the partners credited directly.
fn tallies(program: Option<&Program>, e: &ConversionEvent, memo: &Memo) -> Vec<Tally> {
    let d = &memo.decision;
    let mut out = Vec::new();
    if d.status != ConversionStatus::Attributed {
        return out;
    }
    if e.kind.is_journey_kind() {
        let month = settle::month_of(e.occurred_at);
        out.extend(d.shares().into_iter().map(|(partner, _)| Tally::Volume {
            program: e.program_id.clone(),
            partner,
            month,
        }));
    }
    if program.is_some_and(|p| p.fraud.refund_rate.is_some()) {
        let rate = match e.kind {
            ConversionKind::Sale => Some(true),
            ConversionKind::Refund if memo.first_refund => Some(false),
            _ => None,
        };
        if let Some(sale) = rate {
            out.extend(direct_partners(d).into_iter().map(|partner| {
                let program = e.program_id.clone();
                if sale {
                    Tally::Sales { program, partner }
                } else {
                    Tally::Refunds { program, partner }
                }
            }));
        }
    }
    out
}

/// The fraud rules (SPEC §5.8) a conversion that earns commissions trips.
fn flags(
    registry: &Registry,
    program: &Program,
    e: &ConversionEvent,
    d: &Decision,
    last_touch_ms: Option<i64>,
    refund_rate: impl Fn(&str) -> bool,
) -> Vec<String> {
    let rules = &program.fraud;
    let mut out = Vec::new();
    if e.kind.is_journey_kind()
        && rules.fast_conversion(last_touch_ms, e.occurred_at.timestamp_millis())
    {
        out.push(Rule::FastConversion.as_str().to_string());
    }
    if rules.self_referral {
        let partners: Vec<Option<String>> = d
            .rows
            .iter()
            .filter(|r| r.level == 0)
            .map(|r| {
                registry
                    .partner(&r.partner_id)
                    .and_then(|p| p.email_sha256.clone())
            })
            .collect();
        if rules.self_referral(
            e.customer_email_sha256.as_deref(),
            partners.iter().map(|p| p.as_deref()),
        ) {
            out.push(Rule::SelfReferral.as_str().to_string());
        }
    }
    if e.kind == ConversionKind::Sale && rules.review_above(d.settled_amount) {
        out.push(Rule::ReviewAbove.as_str().to_string());
    }
    if rules.refund_rate.is_some() && direct_partners(d).iter().any(|p| refund_rate(p)) {
        out.push(Rule::RefundRate.as_str().to_string());
    }
    out
}

/// Records in the batch overlay what `memo` changes for later conversions.
fn overlay(
    program: &Program,
    e: &ConversionEvent,
    mark: Mark,
    memo: &Memo,
    tallied: &mut HashMap<Tally, Vec<Mark>>,
    first_sales: &mut HashMap<(String, String), (Mark, FirstSale)>,
    orders: &mut HashMap<(String, String), OrderState>,
) {
    let d = &memo.decision;
    if d.status == ConversionStatus::Duplicate {
        return;
    }
    if let Some(slot) = order_slot(e.kind) {
        let state = orders
            .entry((e.program_id.clone(), e.order_id.clone()))
            .or_insert_with(|| OrderState {
                slot,
                ..OrderState::default()
            });
        // Each slot keeps its first record; refunds reverse the first slot recorded.
        if state.record.is_none() || slot.rank() < state.slot.rank() {
            if state.slot != slot {
                // Reversals booked on another slot's record are not this one's.
                state.refunds.clear();
            }
            state.slot = slot;
            state.record = Some(order_record(e, memo));
        }
    }
    for tally in tallies(Some(program), e, memo) {
        tallied.entry(tally).or_default().push(mark);
    }
    if d.status != ConversionStatus::Attributed {
        return;
    }
    if let (ConversionKind::Sale, Some(customer)) = (e.kind, &e.customer_id) {
        let slot = first_sales.entry((e.program_id.clone(), customer.clone()));
        let first = first_sale(e, memo);
        slot.and_modify(|(m, f)| {
            if mark < *m {
                (*m, *f) = (mark, first.clone());
            }
        })
        .or_insert((mark, first));
    }
    if let (ConversionKind::Refund, Some(original)) = (e.kind, &e.original_order_id) {
        if !d.rows.is_empty() {
            orders
                .entry((e.program_id.clone(), original.clone()))
                .or_default()
                .refunds
                .push((mark, booked(d)));
        }
    }
}

/// The record of its order a conversion keeps (refunds keep none).
fn order_slot(kind: ConversionKind) -> Option<OrderSlot> {
    match kind {
        ConversionKind::Sale => Some(OrderSlot::Sale),
        ConversionKind::Recurring => Some(OrderSlot::Recurring),
        ConversionKind::Lead => Some(OrderSlot::Lead),
        ConversionKind::Signup => Some(OrderSlot::Signup),
        ConversionKind::Refund => None,
    }
}

fn order_record(e: &ConversionEvent, memo: &Memo) -> OrderRecord {
    let d = &memo.decision;
    OrderRecord {
        conversion_id: e.conversion_id,
        settled_amount: d.settled_amount,
        rows: d.earned_rows(),
        standing: memo.lifecycle.standing.clone(),
    }
}

fn booked(d: &Decision) -> Booked {
    d.reverses
        .iter()
        .zip(&d.rows)
        .map(|(i, r)| (*i, r.amount))
        .collect()
}

fn first_sale(e: &ConversionEvent, memo: &Memo) -> FirstSale {
    let d = &memo.decision;
    let shares = d.shares();
    let campaigns = shares
        .iter()
        .map(|(p, _)| heaviest_campaign(memo, p))
        .collect();
    FirstSale {
        conversion_id: e.conversion_id,
        occurred_at: e.occurred_at,
        model: d.model.clone(),
        shares,
        campaigns,
    }
}

/// The campaign of the partner's heaviest touch (the latest among equals).
fn heaviest_campaign(memo: &Memo, partner: &str) -> String {
    memo.decision
        .attributions
        .iter()
        .zip(&memo.campaigns)
        .filter(|(a, _)| a.partner_id == partner)
        .max_by(|(a, _), (b, _)| a.weight.cmp(&b.weight).then(a.position.cmp(&b.position)))
        .map(|(_, c)| c.clone())
        .unwrap_or_default()
}

/// The state changes a settled conversion implies, all idempotent.
fn effects(registry: &Registry, mark: Mark, e: &ConversionEvent, memo: &Memo) -> Vec<Write> {
    let d = &memo.decision;
    let mut out = Vec::new();
    if d.status == ConversionStatus::Duplicate {
        return out;
    }
    out.push(Write::Claim {
        key: dedup::conversion_key(&e.program_id, e.kind.as_str(), &e.order_id),
        holder: e.conversion_id.to_string(),
    });
    if let Some(slot) = order_slot(e.kind) {
        // Every settled order is recorded, earning or not: its refunds find it.
        if let Ok(json) = serde_json::to_string(&order_record(e, memo)) {
            out.push(Write::Order {
                program: e.program_id.clone(),
                order: e.order_id.clone(),
                slot,
                json,
            });
        }
        // Its hold ends in event time; the pipeline approves it once every conversion
        // received before then is settled.
        if let Some(due_ms) = memo
            .lifecycle
            .standing
            .due_ms
            .filter(|_| !d.rows.is_empty())
        {
            let entry = DueEntry {
                due_ms,
                conversion_id: e.conversion_id,
                program_id: e.program_id.clone(),
                order_id: e.order_id.clone(),
                currency: d.currency.clone(),
                slot,
            };
            if let Ok(json) = serde_json::to_string(&entry) {
                out.push(Write::Due { due_ms, json });
            }
        }
    }
    let program = registry.program(&e.program_id);
    out.extend(
        tallies(program.as_deref(), e, memo)
            .into_iter()
            .map(|tally| Write::Tally { tally, mark }),
    );
    if d.status != ConversionStatus::Attributed {
        return out;
    }
    if let (ConversionKind::Sale, Some(customer)) = (e.kind, &e.customer_id) {
        // Lifetime plans need the first sale for good; others until the term ends.
        let ttl = program
            .as_deref()
            .and_then(|p| p.commission.recurring.months)
            .map(|m| std::time::Duration::from_secs(u64::from(m + 1) * 31 * 86_400));
        if let Ok(json) = serde_json::to_string(&first_sale(e, memo)) {
            out.push(Write::FirstSale {
                program: e.program_id.clone(),
                customer: customer.clone(),
                mark,
                json,
                ttl,
            });
        }
    }
    if let (ConversionKind::Refund, Some(original)) = (e.kind, &e.original_order_id) {
        if !d.rows.is_empty() {
            if let Ok(json) = serde_json::to_string(&booked(d)) {
                out.push(Write::Refund {
                    program: e.program_id.clone(),
                    order: original.clone(),
                    slot: memo.reversed,
                    mark,
                    json,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::store::MemoryState;
    use crate::registry::{Entity, MemoryStore, RegistryStore};
    use chrono::TimeZone;
    use std::str::FromStr;
    use std::sync::Arc;

    fn sale(id: u128, currency: &str) -> ConversionEvent {
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 11, 20, 10, 0, 0)
            .unwrap();
        ConversionEvent {
            v: 1,
            conversion_id: Uuid::from_u128(id),
            program_id: "acme".into(),
            order_id: format!("o-{id}"),
            kind: ConversionKind::Sale,
            amount: Decimal::from(100),
            currency: currency.into(),
            occurred_at: at,
            received_at: at,
            click_id: None,
            visitor_id: None,
            referral_code: Some("alice-1".into()),
            customer_id: None,
            original_order_id: None,
            registry_version: 0,
            customer_email_sha256: None,
        }
    }

    /// A registry holding `program` (as `acme`), partner `alice` of it and her link
    /// `alice-1`, stored directly (bypassing the API's validation where a test needs to).
    pub(super) async fn registry_with(
        mut program: Program,
        alice: serde_json::Value,
    ) -> Arc<Registry> {
        let store = Arc::new(MemoryStore::new());
        program.id = "acme".into();
        store.put(&Entity::Program(program)).await.unwrap();
        store
            .put(&Entity::Partner(serde_json::from_value(alice).unwrap()))
            .await
            .unwrap();
        store
            .put(&Entity::Link(
                serde_json::from_value(serde_json::json!({"code": "alice-1", "program_id": "acme",
                    "partner_id": "alice", "destination": "https://shop.example/"}))
                .unwrap(),
            ))
            .await
            .unwrap();
        Registry::open(store).await.unwrap()
    }

    /// A program stored before today's bounds (an FX rate of 10²⁵) cannot stop the
    /// pipeline: its conversion is dead-lettered and the next one settles.
    #[tokio::test]
    async fn a_conversion_beyond_the_ledger_is_dead_lettered_and_the_rest_settles() {
        let mut program: Program =
            serde_json::from_value(crate::registry::model::tests_support::program_json()).unwrap();
        program.fx.insert(
            "EUR".into(),
            Decimal::from_str("10000000000000000000000000").unwrap(),
        );
        let registry = registry_with(
            program,
            serde_json::json!({"id": "alice", "program_id": "acme"}),
        )
        .await;
        let state = MemoryState::new();
        let batch: Vec<(Mark, ConversionEvent)> = [sale(1, "EUR"), sale(2, "USD")]
            .into_iter()
            .map(|e| (Mark::new(e.received_at, e.conversion_id), e))
            .collect();
        let outcomes = settle_batch(&registry, &state, &batch).await.unwrap();
        assert!(
            matches!(&outcomes[0], Outcome::DeadLetter(r) if r.contains("range")),
            "the EUR sale is dead-lettered"
        );
        match &outcomes[1] {
            Outcome::Settled(memo) => {
                assert_eq!(memo.decision.status, ConversionStatus::Attributed);
                assert_eq!(memo.decision.rows[0].amount, Decimal::from(15));
            }
            Outcome::DeadLetter(r) => panic!("the USD sale settles: {r}"),
        }
        // Nothing of the dead-lettered one was stored.
        assert_eq!(
            state.memos(&[Uuid::from_u128(1)]).await.unwrap(),
            vec![None]
        );
    }
}

#[cfg(test)]
mod lifecycle_tests {
    //! Worked examples of SPEC §5.7 and §5.8 to the cent, through the same batch
    //! settlement the pipeline runs, on the memory store.

    use super::*;
    use crate::pipeline::store::MemoryState;
    use chrono::{Duration, TimeZone, Utc};
    use std::str::FromStr;

    const ALICE_EMAIL: &str = "5f4dcc3b5aa765d61d8327deb882cf995f4dcc3b5aa765d61d8327deb882cf99";

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn t0() -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 10, 1, 12, 0, 0).unwrap()
    }

    async fn registry() -> Arc<Registry> {
        registry_with_fraud(serde_json::json!({"review_above": "500", "self_referral": true})).await
    }

    async fn registry_with_fraud(fraud: serde_json::Value) -> Arc<Registry> {
        let mut json = crate::registry::model::tests_support::program_json();
        json["hold_days"] = serde_json::json!(30);
        json["fraud"] = fraud;
        let mut program: Program = serde_json::from_value(json).unwrap();
        program.id = "acme".into();
        program.validate().unwrap();
        super::tests::registry_with(
            program,
            serde_json::json!({"id": "alice", "program_id": "acme", "email_sha256": ALICE_EMAIL}),
        )
        .await
    }

    fn conversion(
        id: u128,
        kind: ConversionKind,
        amount: &str,
        at: chrono::DateTime<Utc>,
    ) -> ConversionEvent {
        ConversionEvent {
            v: 1,
            conversion_id: Uuid::from_u128(id),
            program_id: "acme".into(),
            order_id: format!("o-{id}"),
            kind,
            amount: d(amount),
            currency: "USD".into(),
            occurred_at: at,
            received_at: at,
            click_id: None,
            visitor_id: None,
            referral_code: Some("alice-1".into()),
            customer_id: None,
            original_order_id: None,
            registry_version: 0,
            customer_email_sha256: None,
        }
    }

    fn refund(id: u128, of: u128, amount: &str, at: chrono::DateTime<Utc>) -> ConversionEvent {
        ConversionEvent {
            referral_code: None,
            original_order_id: Some(format!("o-{of}")),
            ..conversion(id, ConversionKind::Refund, amount, at)
        }
    }

    async fn settle(registry: &Registry, state: &MemoryState, e: ConversionEvent) -> Memo {
        let batch = vec![(Mark::new(e.received_at, e.conversion_id), e)];
        match settle_batch(registry, state, &batch)
            .await
            .unwrap()
            .remove(0)
        {
            Outcome::Settled(memo) => *memo,
            Outcome::DeadLetter(r) => panic!("dead letter: {r}"),
        }
    }

    /// The memos of `events` settled as one batch on a fresh store.
    async fn settle_together(registry: &Registry, events: &[ConversionEvent]) -> Vec<Memo> {
        let batch: Vec<(Mark, ConversionEvent)> = events
            .iter()
            .map(|e| (Mark::new(e.received_at, e.conversion_id), e.clone()))
            .collect();
        settle_batch(registry, &MemoryState::new(), &batch)
            .await
            .unwrap()
            .into_iter()
            .map(|o| match o {
                Outcome::Settled(m) => *m,
                Outcome::DeadLetter(r) => panic!("dead letter: {r}"),
            })
            .collect()
    }

    /// The approvals of every hold that ended before `before`, as the pipeline makes
    /// them: (commission id, amount).
    async fn approve(state: &MemoryState, before: chrono::DateTime<Utc>) -> Vec<(Uuid, Decimal)> {
        let Answer::Entries(entries) = state
            .read(&[Read::DueBefore {
                before_ms: before.timestamp_millis(),
                limit: 100,
            }])
            .await
            .unwrap()
            .remove(0)
        else {
            panic!("entries")
        };
        let rows = approvals(state, &entries).await.unwrap();
        assert!(rows.iter().all(|r| r.status == "approved" && r.step == 1));
        rows.iter().map(|r| (r.commission_id, r.amount)).collect()
    }

    fn statuses(memo: &Memo) -> Vec<(Status, String)> {
        memo.lifecycle.created.clone()
    }

    /// refund_rate 0.5: a partner's new commissions are held once more than half of
    /// the sales credited to her in the 30 days before are refunded (each order counted
    /// at its first refund); one batch decides exactly what one-at-a-time does.
    #[tokio::test]
    async fn refund_rate_holds_a_partners_new_commissions_in_its_window() {
        let registry = registry_with_fraud(serde_json::json!({"refund_rate": "0.5"})).await;
        let h = |n: i64| t0() + Duration::hours(n);
        let events = vec![
            conversion(1, ConversionKind::Sale, "100", h(0)),
            conversion(2, ConversionKind::Sale, "100", h(1)),
            refund(3, 1, "10", h(2)),
            // A second refund of order 1: still one refunded sale.
            refund(4, 1, "10", h(3)),
            // 1 refunded of 2: not above half.
            conversion(5, ConversionKind::Sale, "100", h(4)),
            refund(6, 2, "100", h(5)),
            // 2 refunded of 3: above half.
            conversion(7, ConversionKind::Sale, "100", h(6)),
            // 2 of 4 (sale 7 counts, held or not): exactly half is not above it.
            conversion(8, ConversionKind::Sale, "100", h(7)),
            // 30 days on, those sales are out of the window.
            conversion(9, ConversionKind::Sale, "100", h(30 * 24 + 7)),
        ];
        let reasons = |memos: &[Memo]| -> Vec<String> {
            memos
                .iter()
                .map(|m| m.lifecycle.standing.held.join(","))
                .collect()
        };
        let state = MemoryState::new();
        let mut one_by_one = Vec::new();
        for e in &events {
            one_by_one.push(settle(&registry, &state, e.clone()).await);
        }
        assert_eq!(
            reasons(&one_by_one),
            ["", "", "", "", "", "", "refund_rate", "", ""]
        );
        assert_eq!(
            one_by_one
                .iter()
                .map(|m| m.first_refund)
                .collect::<Vec<_>>(),
            [false, false, true, false, false, true, false, false, false]
        );
        assert_eq!(
            statuses(&one_by_one[6]),
            vec![(Status::Held, "refund_rate".into())]
        );

        let together = settle_together(&registry, &events).await;
        assert_eq!(together, one_by_one);
    }

    #[tokio::test]
    async fn a_partial_refund_before_approval_is_approved_with_its_sale() {
        let (registry, state) = (registry().await, MemoryState::new());
        // 100.00 at bronze 15%: 15.00, pending for 30 days from occurred_at.
        let sale = settle(
            &registry,
            &state,
            conversion(1, ConversionKind::Sale, "100", t0()),
        )
        .await;
        assert_eq!(sale.decision.rows[0].amount, d("15.00"));
        assert_eq!(
            statuses(&sale),
            vec![(Status::Pending, "hold period".into())]
        );
        assert_eq!(
            sale.lifecycle.standing.due_ms,
            Some((t0() + Duration::days(30)).timestamp_millis())
        );
        // 40.00 refunded on day 10: −6.00, pending like the row it reverses.
        let r = settle(
            &registry,
            &state,
            refund(2, 1, "40", t0() + Duration::days(10)),
        )
        .await;
        assert_eq!(r.decision.rows[0].amount, d("-6.00"));
        assert_eq!(statuses(&r), vec![(Status::Pending, "hold period".into())]);
        assert!(r.lifecycle.cancels.is_empty());
        // Nothing is approved before day 30; on day 30 both rows are: 9.00 net.
        assert!(approve(&state, t0() + Duration::days(30)).await.is_empty());
        let approved = approve(
            &state,
            t0() + Duration::days(30) + Duration::milliseconds(1),
        )
        .await;
        assert_eq!(
            approved,
            vec![
                (commission_id(Uuid::from_u128(1), 0), d("15.00")),
                (commission_id(Uuid::from_u128(2), 0), d("-6.00")),
            ]
        );
        // A refund after approval is an approved negative row, netted at the next payout.
        let late = settle(
            &registry,
            &state,
            refund(3, 1, "10", t0() + Duration::days(31)),
        )
        .await;
        assert_eq!(late.decision.rows[0].amount, d("-1.50"));
        assert_eq!(
            statuses(&late),
            vec![(Status::Approved, "hold period over".into())]
        );
    }

    #[tokio::test]
    async fn refunds_in_full_before_approval_cancel_everything() {
        let (registry, state) = (registry().await, MemoryState::new());
        settle(
            &registry,
            &state,
            conversion(1, ConversionKind::Sale, "100", t0()),
        )
        .await;
        settle(
            &registry,
            &state,
            refund(2, 1, "40", t0() + Duration::days(10)),
        )
        .await;
        let rest = settle(
            &registry,
            &state,
            refund(3, 1, "60", t0() + Duration::days(20)),
        )
        .await;
        assert_eq!(rest.decision.rows[0].amount, d("-9.00"));
        assert_eq!(
            statuses(&rest),
            vec![(Status::Reversed, "refunded before approval".into())]
        );
        // The sale's row and the first refund's row are cancelled with it: 15 − 6 − 9 = 0.
        assert_eq!(
            rest.lifecycle
                .cancels
                .iter()
                .map(|c| (commission_id(c.conversion_id, c.index), c.amount))
                .collect::<Vec<_>>(),
            vec![
                (commission_id(Uuid::from_u128(1), 0), d("15.00")),
                (commission_id(Uuid::from_u128(2), 0), d("-6.00")),
            ]
        );
        // The hold ends with nothing left to approve.
        assert!(approve(&state, t0() + Duration::days(31)).await.is_empty());
    }

    /// Dedup is per kind (SPEC §5.2), so a signup and a sale may share an order id.
    /// Each keeps its own order record: a refund reverses the sale (a refund before the
    /// sale, the signup), and each hold end approves its own conversion's rows. One
    /// batch decides what one conversion at a time does.
    #[tokio::test]
    async fn a_signup_and_a_sale_sharing_an_order_id_keep_their_own_records() {
        let mut json = crate::registry::model::tests_support::program_json();
        json["hold_days"] = serde_json::json!(30);
        json["commission"]["signup_bounty"] = serde_json::json!("50");
        let mut program: Program = serde_json::from_value(json).unwrap();
        program.id = "acme".into();
        program.validate().unwrap();
        let registry = super::tests::registry_with(
            program,
            serde_json::json!({"id": "alice", "program_id": "acme"}),
        )
        .await;
        let h = |n: i64| t0() + Duration::hours(n);
        // Refunds have order ids of their own and name the shared one.
        let shared = |e: ConversionEvent| match e.kind {
            ConversionKind::Refund => ConversionEvent {
                original_order_id: Some("shared".into()),
                ..e
            },
            _ => ConversionEvent {
                order_id: "shared".into(),
                ..e
            },
        };
        let events = vec![
            shared(conversion(1, ConversionKind::Signup, "0", h(0))),
            // Before the sale: the signup's bounty is what the order earned so far.
            shared(refund(2, 0, "0", h(1))),
            shared(conversion(3, ConversionKind::Sale, "100", h(2))),
            shared(refund(4, 0, "40", h(3))),
            shared(refund(5, 0, "60", h(4))),
        ];
        let rows = |m: &Memo| m.decision.rows.iter().map(|r| r.amount).collect::<Vec<_>>();
        let one_at_a_time = MemoryState::new();
        let mut alone = Vec::new();
        for e in events.clone() {
            alone.push(settle(&registry, &one_at_a_time, e).await);
        }
        assert_eq!(rows(&alone[0]), vec![d("50.00")]);
        assert_eq!(rows(&alone[1]), vec![d("-50.00")]);
        assert_eq!(rows(&alone[2]), vec![d("15.00")]);
        assert_eq!(rows(&alone[3]), vec![d("-6.00")]);
        assert_eq!(rows(&alone[4]), vec![d("-9.00")]);
        assert_eq!(
            approve(&one_at_a_time, t0() + Duration::days(31)).await,
            Vec::<(Uuid, Decimal)>::new(),
            "everything was refunded before its hold ended"
        );

        assert_eq!(settle_together(&registry, &events).await, alone);

        // Without the refunds, each hold end approves its own conversion's row.
        let state = MemoryState::new();
        settle(&registry, &state, events[0].clone()).await;
        settle(&registry, &state, events[2].clone()).await;
        let mut approved = approve(&state, t0() + Duration::days(31)).await;
        approved.sort();
        let mut expected = vec![
            (commission_id(Uuid::from_u128(1), 0), d("50.00")),
            (commission_id(Uuid::from_u128(3), 0), d("15.00")),
        ];
        expected.sort();
        assert_eq!(approved, expected);
    }

    #[tokio::test]
    async fn fraud_rules_hold_the_rows_with_their_names() {
        let (registry, state) = (registry().await, MemoryState::new());
        // review_above 500: a 600.00 sale is held; 500.00 is not.
        let big = settle(
            &registry,
            &state,
            conversion(1, ConversionKind::Sale, "600", t0()),
        )
        .await;
        assert_eq!(statuses(&big), vec![(Status::Held, "review_above".into())]);
        assert_eq!(
            big.decision.rows[0].amount,
            d("90.00"),
            "held rows keep their amount"
        );
        let ok = settle(
            &registry,
            &state,
            conversion(2, ConversionKind::Sale, "500", t0()),
        )
        .await;
        assert_eq!(statuses(&ok)[0].0, Status::Pending);
        // self_referral: the customer's e-mail hash is alice's own.
        let own = ConversionEvent {
            customer_email_sha256: Some(ALICE_EMAIL.into()),
            ..conversion(3, ConversionKind::Sale, "600", t0())
        };
        let own = settle(&registry, &state, own).await;
        assert_eq!(
            statuses(&own),
            vec![(Status::Held, "review_above,self_referral".into())]
        );
        // Held rows never reach the hold queue: only review releases them.
        assert_eq!(
            approve(&state, t0() + Duration::days(60)).await,
            vec![(commission_id(Uuid::from_u128(2), 0), d("75.00"))]
        );
        // Their refunds are held for the same reason.
        let r = settle(
            &registry,
            &state,
            refund(4, 1, "600", t0() + Duration::days(1)),
        )
        .await;
        assert_eq!(statuses(&r), vec![(Status::Held, "review_above".into())]);
    }
}

#[cfg(test)]
mod bounds_tests {
    //! The registry's bounds and the intake's settlement cap are chosen so that the
    //! worst case fits the ledger's columns (SPEC §7): settle it and check.

    use super::*;
    use crate::engine::settle::Directory;
    use crate::registry::Partner;
    use std::sync::Arc;

    struct Chain(Vec<Arc<Partner>>);

    impl Directory for Chain {
        type Partner = Arc<Partner>;
        fn partner(&self, id: &str) -> Option<Arc<Partner>> {
            self.0.iter().find(|p| p.id == id).cloned()
        }
    }

    #[test]
    fn the_worst_accepted_case_fits_the_ledger() {
        let mut program: Program = serde_json::from_value(serde_json::json!({
            "name": "Worst", "currency": "USD", "secret": "0123456789abcdef-secret",
            "fallback_url": "https://acme.example/",
            "fx": {"USD": "1", "KWD": "1000000"},
            "commission": {
                "tiers": {"max": "1"}, "default_tier": "max",
                "lead_bounty": "1000000000", "signup_bounty": "1000000000",
                "recurring": {"rate": "1", "months": 120},
                "volume_bonuses": [{"min_conversions": 0, "bonus": "1"}],
                "overrides": ["1", "1", "1", "1", "1"]
            }
        }))
        .unwrap();
        program.id = "worst".into();
        program.validate().unwrap();
        // p0 ← p1 ← … ← p5: five override levels above the credited partner.
        let chain = Chain(
            (0..6)
                .map(|i| {
                    Arc::new(
                        serde_json::from_value::<Partner>(serde_json::json!({
                            "id": format!("p{i}"), "program_id": "worst",
                            "parent_id": (i < 5).then(|| format!("p{}", i + 1))
                        }))
                        .unwrap(),
                    )
                })
                .collect(),
        );
        let at = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 11, 20, 10, 0, 0).unwrap();
        // The largest amount the intake lets through: amount × fx = 10^13.
        let amount = crate::money::max_settled() / Decimal::from(1_000_000);
        for (kind, currency) in [
            (ConversionKind::Sale, "KWD"),
            (ConversionKind::Lead, "USD"),
            (ConversionKind::Sale, "USD"),
        ] {
            let e = ConversionEvent {
                customer_email_sha256: None,
                v: 1,
                conversion_id: Uuid::from_u128(1),
                program_id: "worst".into(),
                order_id: "o".into(),
                kind,
                amount: if currency == "USD" {
                    crate::money::max_settled()
                } else {
                    amount
                },
                currency: currency.into(),
                occurred_at: at,
                received_at: at,
                click_id: None,
                visitor_id: None,
                referral_code: None,
                customer_id: None,
                original_order_id: None,
                registry_version: 0,
            };
            let d = settle::settle(
                &program,
                &e,
                Credit::Referral("p0".into()),
                &chain,
                |_, _| 1_000_000,
            )
            .unwrap();
            assert_eq!(d.rows.len(), 6, "{kind:?}: direct and five overrides");
            crate::sink::rows::fits(&e, &d).unwrap_or_else(|why| panic!("{kind:?}: {why}"));
        }
    }
}

#[cfg(test)]
mod corrupt_tests {
    use super::*;
    use crate::pipeline::store::{MemoryState, Write};
    use crate::registry::MemoryStore;
    use chrono::TimeZone;
    use std::sync::Arc;

    /// SPEC §5.6: a stored decision that cannot be decoded is dead-lettered, not
    /// retried forever.
    #[tokio::test]
    async fn an_undecodable_memo_is_dead_lettered() {
        let registry = Registry::open(Arc::new(MemoryStore::new())).await.unwrap();
        let state = MemoryState::new();
        let id = Uuid::from_u128(9);
        state
            .write(&[Write::Memo {
                conversion_id: id,
                json: "{not a memo".into(),
            }])
            .await
            .unwrap();
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 11, 20, 10, 0, 0)
            .unwrap();
        let e = ConversionEvent {
            customer_email_sha256: None,
            v: 1,
            conversion_id: id,
            program_id: "acme".into(),
            order_id: "o".into(),
            kind: ConversionKind::Signup,
            amount: Decimal::ZERO,
            currency: "USD".into(),
            occurred_at: at,
            received_at: at,
            click_id: None,
            visitor_id: None,
            referral_code: None,
            customer_id: None,
            original_order_id: None,
            registry_version: 0,
        };
        let outcomes = settle_batch(&registry, &state, &[(Mark::new(at, id), e)])
            .await
            .unwrap();
        assert!(matches!(&outcomes[0], Outcome::DeadLetter(r) if r.contains("undecodable memo")));
    }
}
