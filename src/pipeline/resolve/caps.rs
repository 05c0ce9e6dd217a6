//! Caps (SPEC §10.1) in resolution: the running totals a conversion reads for each
//! partner it may credit, as of its mark (stored or settled earlier in the batch), and
//! the totals its direct rows leave, remembered in its memo and written as effects.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::engine::caps::Period;
use crate::engine::settle::Decision;
use crate::events::ConversionEvent;
use crate::pipeline::store::{Answer, CapKey, Mark, Read};
use crate::registry::Program;

/// A partner's running total in one cap period after a conversion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapTotal {
    pub key: CapKey,
    pub total: Decimal,
}

/// A total as a conversion reads it: its key, the cap's period, the amount.
pub(super) type Total = (CapKey, Period, Decimal);

/// The partner's total in `period` among `totals` (0 when it has none): a short list,
/// searched without building a key.
pub(super) fn total_of(totals: &[Total], partner: &str, period: Period) -> Decimal {
    totals
        .iter()
        .find(|(k, p, _)| *p == period && k.partner == partner)
        .map_or(Decimal::ZERO, |(_, _, t)| *t)
}

/// The key of `partner`'s total in the `period` the conversion falls in.
pub(super) fn key(e: &ConversionEvent, partner: &str, period: Period) -> CapKey {
    CapKey {
        program: e.program_id.clone(),
        partner: partner.to_string(),
        period: period.key(e.occurred_at),
    }
}

/// The running totals a conversion at `mark` reads for `partners`.
pub(super) fn reads(
    program: &Program,
    e: &ConversionEvent,
    partners: &[String],
    mark: Mark,
) -> Vec<Read> {
    let caps = &program.commission.caps;
    partners
        .iter()
        .flat_map(|p| caps.iter().map(move |c| key(e, p, c.period)))
        .map(|key| Read::CapTotal { key, before: mark })
        .collect()
}

/// A [`Read::CapTotal`]'s answer: the latest total before the mark, with its mark.
pub(super) fn answer(a: &Answer) -> Option<(Mark, Decimal)> {
    match a {
        Answer::Marked(Some((m, total))) => total.parse().ok().map(|t| (*m, t)),
        _ => None,
    }
}

/// Of a stored and a batch total, the later one.
pub(super) fn later(a: Option<(Mark, Decimal)>, b: Option<(Mark, Decimal)>) -> Decimal {
    match (a, b) {
        (Some(a), Some(b)) => {
            if a.0 >= b.0 {
                a.1
            } else {
                b.1
            }
        }
        (a, b) => a.or(b).map_or(Decimal::ZERO, |(_, t)| t),
    }
}

/// The totals a decision leaves: each directly credited partner's, in each cap's
/// period, after what its direct rows earned (nothing for rows that earned nothing).
pub(super) fn after(
    program: &Program,
    e: &ConversionEvent,
    d: &Decision,
    totals: &[Total],
) -> Vec<CapTotal> {
    let caps = &program.commission.caps;
    let mut out = Vec::new();
    let earned = d
        .rows
        .iter()
        .filter(|r| r.level == 0 && r.amount > Decimal::ZERO);
    for row in earned {
        for cap in caps {
            let before = total_of(totals, &row.partner_id, cap.period);
            out.push(CapTotal {
                key: key(e, &row.partner_id, cap.period),
                total: before + row.amount,
            });
        }
    }
    out
}
