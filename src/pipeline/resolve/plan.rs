//! Steps 2 to 4: what a batch's fresh conversions read before any of them is decided,
//! each read once for the whole batch: claims, click visitors, first sales and orders;
//! journeys; the tallies of the partners they may credit.

use std::collections::HashMap;
use std::sync::Arc;

use rust_decimal::Decimal;
use uuid::Uuid;

use super::caps;
use crate::engine::attribution::Touch;
use crate::engine::dedup;
use crate::engine::fraud::REFUND_RATE_WINDOW_MS;
use crate::engine::journey;
use crate::engine::rewards;
use crate::engine::settle::{self, FirstSale};
use crate::events::{ConversionEvent, ConversionKind};
use crate::pipeline::store::{
    Answer, CapKey, Mark, Read, StateError, StateStore, StoredTouch, Tally,
};
use crate::registry::{Program, Registry};

/// Where the answers of one conversion's first reads are.
struct Asked {
    claim: usize,
    visitor: Option<usize>,
    first_sale: Option<usize>,
    /// The customer's attributed sales before it, for rules that read them.
    customer_sales: Option<usize>,
    order: Option<usize>,
}

/// What a batch's fresh conversions read, as of each one's mark. The `k`-th entry of
/// each list is that of `fresh[k]`, the index of a conversion in the batch.
pub(super) struct Plan {
    pub(super) fresh: Vec<usize>,
    asked: Vec<Asked>,
    answers: Vec<Answer>,
    /// Each conversion's program, looked up once (None: deleted since intake).
    pub(super) programs: Vec<Option<Arc<Program>>>,
    /// Who each conversion would credit, before counts and overlays.
    pub(super) selected: Vec<Vec<StoredTouch>>,
    counts_of: Vec<Vec<(Read, usize)>>,
    counts: Vec<Answer>,
}

impl Plan {
    /// Reads what the conversions `fresh` of `batch` need: three round trips.
    pub(super) async fn read(
        registry: &Registry,
        state: &dyn StateStore,
        batch: &[(Mark, ConversionEvent)],
        fresh: Vec<usize>,
    ) -> Result<Plan, StateError> {
        let programs: Vec<Option<Arc<Program>>> = fresh
            .iter()
            .map(|&i| registry.program(&batch[i].1.program_id))
            .collect();
        let (reads, asked) = first_reads(batch, &fresh, &programs);
        let answers = state.read(&reads).await?;
        let mut plan = Plan {
            fresh,
            asked,
            answers,
            programs,
            selected: Vec::new(),
            counts_of: Vec::new(),
            counts: Vec::new(),
        };
        plan.read_journeys(registry, state, batch).await?;
        plan.read_tallies(registry, state, batch).await?;
        Ok(plan)
    }

    fn text(&self, i: usize) -> Option<String> {
        match &self.answers[i] {
            Answer::Text(t) => t.clone(),
            _ => None,
        }
    }

    /// The stored holder of the `k`-th conversion's key.
    pub(super) fn holder(&self, k: usize) -> Option<Uuid> {
        self.text(self.asked[k].claim)
            .and_then(|h| Uuid::parse_str(&h).ok())
    }

    /// How many attributed sales of the customer the stored state holds before the
    /// `k`-th conversion's mark (asked only for rules that read the customer).
    pub(super) fn customer_sales(&self, k: usize) -> u64 {
        match self.asked[k].customer_sales.map(|r| &self.answers[r]) {
            Some(Answer::Count(n)) => *n,
            _ => 0,
        }
    }

    /// The stored first sale of the customer of a recurring payment (or of a sale whose
    /// program's rules read the customer), before its mark.
    pub(super) fn first_sale(&self, k: usize) -> Option<(Mark, FirstSale)> {
        match self.asked[k].first_sale.map(|r| &self.answers[r]) {
            Some(Answer::Marked(Some((m, j)))) => {
                serde_json::from_str::<FirstSale>(j).ok().map(|f| (*m, f))
            }
            _ => None,
        }
    }

    /// The stored order a refund reverses.
    pub(super) fn order(&self, k: usize) -> Option<&Answer> {
        self.asked[k].order.map(|r| &self.answers[r])
    }

    /// The tallies read for the `k`-th conversion.
    pub(super) fn counts(&self, k: usize) -> HashMap<Read, u64> {
        self.counts_of[k]
            .iter()
            .filter(|(read, _)| matches!(read, Read::Count { .. }))
            .map(|(read, r)| {
                let n = match self.counts[*r] {
                    Answer::Count(n) => n,
                    _ => 0,
                };
                (read.clone(), n)
            })
            .collect()
    }

    /// The running totals of caps read for the `k`-th conversion, with their marks.
    pub(super) fn cap_totals(&self, k: usize) -> HashMap<CapKey, Option<(Mark, Decimal)>> {
        self.counts_of[k]
            .iter()
            .filter_map(|(read, r)| match read {
                Read::CapTotal { key, .. } => Some((key.clone(), caps::answer(&self.counts[*r]))),
                _ => None,
            })
            .collect()
    }

    /// Step 3: journeys of the visitors of sales, leads and signups, and the touches
    /// each would credit.
    async fn read_journeys(
        &mut self,
        registry: &Registry,
        state: &dyn StateStore,
        batch: &[(Mark, ConversionEvent)],
    ) -> Result<(), StateError> {
        let mut reads = Vec::new();
        let mut journey_of: Vec<Option<usize>> = Vec::with_capacity(self.fresh.len());
        for (k, &i) in self.fresh.iter().enumerate() {
            let e = &batch[i].1;
            let visitor = match self.asked[k].visitor {
                Some(r) => self.text(r).and_then(|v| Uuid::parse_str(&v).ok()),
                None => None,
            }
            .or(e.visitor_id);
            journey_of.push(
                match (e.kind.is_journey_kind(), visitor, &self.programs[k]) {
                    (true, Some(visitor), Some(program)) => {
                        reads.push(journey_read(e, program, visitor));
                        Some(reads.len() - 1)
                    }
                    _ => None,
                },
            );
        }
        let journeys = state.read(&reads).await?;
        self.selected = Vec::with_capacity(self.fresh.len());
        for (k, &i) in self.fresh.iter().enumerate() {
            let touches = match journey_of[k].map(|j| &journeys[j]) {
                Some(Answer::Touches(t)) => t.clone(),
                _ => Vec::new(),
            };
            self.selected.push(match &self.programs[k] {
                Some(program) => select(registry, program, &batch[i].1, touches),
                None => Vec::new(),
            });
        }
        Ok(())
    }

    /// Step 4: tallies as of each conversion: last month's counts of the partners sales
    /// may credit, the refund rates and the cap totals of the partners it may credit.
    async fn read_tallies(
        &mut self,
        registry: &Registry,
        state: &dyn StateStore,
        batch: &[(Mark, ConversionEvent)],
    ) -> Result<(), StateError> {
        let mut reads = Vec::new();
        let mut counts_of = Vec::with_capacity(self.fresh.len());
        for (k, &i) in self.fresh.iter().enumerate() {
            let mut mine = Vec::new();
            for read in self.tallies_of(registry, k, &batch[i]) {
                reads.push(read.clone());
                mine.push((read, reads.len() - 1));
            }
            counts_of.push(mine);
        }
        self.counts = state.read(&reads).await?;
        self.counts_of = counts_of;
        Ok(())
    }

    /// The tallies the `k`-th conversion reads.
    fn tallies_of(
        &self,
        registry: &Registry,
        k: usize,
        (mark, e): &(Mark, ConversionEvent),
    ) -> Vec<Read> {
        let mut tallies = Vec::new();
        let Some(program) = self.programs[k].as_deref() else {
            return tallies;
        };
        let mut partners: Vec<String> = self.selected[k]
            .iter()
            .map(|t| t.partner_id.clone())
            .collect();
        if partners.is_empty() {
            partners.extend(referral_partner(registry, program, e));
        }
        // A promo code may take the credit whatever the journey: its partner too.
        partners.extend(promo_partner(registry, program, e));
        partners.sort();
        partners.dedup();
        if e.kind == ConversionKind::Sale {
            tallies.extend(partners.iter().map(|p| volume_read(e, p, *mark)));
        }
        if program.fraud.refund_rate.is_some() && e.kind != ConversionKind::Refund {
            // A recurring payment's partners are its first sale's: those stored are read
            // now, one of this batch later (see `decide`).
            if let Some((_, f)) = self
                .first_sale(k)
                .filter(|_| e.kind == ConversionKind::Recurring)
            {
                partners.extend(f.shares.into_iter().map(|(p, _)| p));
            }
            for p in &partners {
                tallies.extend(rate_reads(e, p, *mark));
            }
        }
        if !program.commission.caps.is_empty() && e.kind != ConversionKind::Refund {
            if let Some((_, f)) = self
                .first_sale(k)
                .filter(|_| e.kind == ConversionKind::Recurring)
            {
                partners.extend(f.shares.into_iter().map(|(p, _)| p));
            }
            partners.sort();
            partners.dedup();
            tallies.extend(caps::reads(program, e, &partners, *mark));
        }
        tallies
    }
}

/// Step 2: each fresh conversion's claim, click visitor, first sale and order, every
/// distinct read once; for programs whose rules read the customer, a sale's first sale
/// too and the customer's sales so far.
fn first_reads(
    batch: &[(Mark, ConversionEvent)],
    fresh: &[usize],
    programs: &[Option<Arc<Program>>],
) -> (Vec<Read>, Vec<Asked>) {
    let mut reads = Vec::new();
    let mut at = HashMap::new();
    let mut ask = |read: Read| -> usize {
        *at.entry(read.clone()).or_insert_with(|| {
            reads.push(read);
            reads.len() - 1
        })
    };
    let mut asked = Vec::with_capacity(fresh.len());
    for (&i, program) in fresh.iter().zip(programs) {
        let (mark, e) = &batch[i];
        let key = dedup::conversion_key(&e.program_id, e.kind.as_str(), &e.order_id);
        let reads_customer = program
            .as_deref()
            .is_some_and(|p| rewards::read_customer(&p.commission.rules));
        let customer = match (e.kind, &e.customer_id) {
            (ConversionKind::Recurring, Some(c)) => Some((c, reads_customer)),
            (ConversionKind::Sale, Some(c)) if reads_customer => Some((c, true)),
            _ => None,
        };
        asked.push(Asked {
            claim: ask(Read::Claim(key)),
            visitor: match (e.kind.is_journey_kind(), e.click_id) {
                (true, Some(c)) => Some(ask(Read::ClickVisitor(c))),
                _ => None,
            },
            first_sale: customer.map(|(c, _)| {
                ask(Read::FirstSale {
                    program: e.program_id.clone(),
                    customer: c.clone(),
                    before: *mark,
                })
            }),
            customer_sales: customer.filter(|(_, count)| *count).map(|(c, _)| {
                ask(Read::CustomerSales {
                    program: e.program_id.clone(),
                    customer: c.clone(),
                    before: *mark,
                })
            }),
            order: match (e.kind, &e.original_order_id) {
                (ConversionKind::Refund, Some(o)) => Some(ask(Read::Order {
                    program: e.program_id.clone(),
                    order: o.clone(),
                    slot: None,
                })),
                _ => None,
            },
        });
    }
    (reads, asked)
}

/// The visitor's unique clicks within the program's lookback before the conversion.
fn journey_read(e: &ConversionEvent, program: &Program, visitor: Uuid) -> Read {
    Read::Journey {
        program: e.program_id.clone(),
        visitor,
        from_ms: (e.occurred_at - chrono::Duration::days(i64::from(program.lookback_days)))
            .timestamp_millis(),
        to_ms: journey_end(e),
    }
}

/// The last instant a conversion's journey reaches: its `occurred_at`, but never past
/// its `received_at`: a click after the conversion was reported did not lead to it, and
/// clicks up to `received_at` are exactly those scheduling waits for. A conversion
/// that names its click reads up to `received_at`, where that click still counts
/// (SPEC §5.3, clocks).
pub(super) fn journey_end(e: &ConversionEvent) -> i64 {
    match e.click_id {
        Some(_) => e.received_at.timestamp_millis(),
        None => e.occurred_at.min(e.received_at).timestamp_millis(),
    }
}

/// The touchpoints of a conversion among the visitor's unique clicks.
pub(super) fn select(
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
    let named = e.click_id.map(|click_id| journey::Named {
        click_id,
        until: e.received_at,
    });
    let chosen = journey::select(
        engine,
        end,
        named,
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
pub(super) fn referral_partner(
    registry: &Registry,
    program: &Program,
    e: &ConversionEvent,
) -> Option<String> {
    let link = registry.link(e.referral_code.as_deref()?)?;
    (link.link.program_id == program.id && settle::is_active(registry, &link.link.partner_id))
        .then(|| link.link.partner_id.clone())
}

/// The active partner of the conversion's promo code, when the program has the code
/// (SPEC §10.3; any case) and the conversion is a sale, lead or signup.
pub(super) fn promo_partner(
    registry: &Registry,
    program: &Program,
    e: &ConversionEvent,
) -> Option<String> {
    if !e.kind.is_journey_kind() {
        return None;
    }
    let code = registry.promo_code(&program.id, e.promo_code.as_deref()?)?;
    settle::is_active(registry, &code.partner_id).then(|| code.partner_id.clone())
}

/// The partner's conversions in the month before the conversion's, as of its mark.
pub(super) fn volume_read(e: &ConversionEvent, partner: &str, mark: Mark) -> Read {
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
pub(super) fn rate_reads(e: &ConversionEvent, partner: &str, mark: Mark) -> [Read; 2] {
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
