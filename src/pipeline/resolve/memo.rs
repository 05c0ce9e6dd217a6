//! What a settled conversion is remembered by (its memo), and the steps that read and
//! set memos: replay first, set once last.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use super::caps::CapTotal;
use super::effects::effects;
pub use super::tiers::Counted;
use crate::engine::lifecycle::Lifecycle;
use crate::engine::settle::Decision;
use crate::events::ConversionEvent;
use crate::pipeline::store::{Mark, OrderSlot, StateError, StateStore, Write};
use crate::registry::Registry;

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
    /// The cap totals its direct rows leave (SPEC §10.1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<CapTotal>,
    /// What it counts toward its partners' tier figures (SPEC §10.2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Counted>,
}

/// What became of one conversion of a batch.
pub enum Outcome {
    Settled(Box<Memo>),
    /// It cannot be settled (arithmetic beyond the ledger's range) or its stored memo
    /// cannot be decoded: it goes to the dead-letter topic with this reason.
    DeadLetter(String),
}

impl Memo {
    /// A memo that credits nobody.
    pub(super) fn uncredited(decision: Decision) -> Memo {
        Memo {
            decision,
            campaigns: Vec::new(),
            lifecycle: Lifecycle::default(),
            first_refund: false,
            reversed: OrderSlot::Sale,
            caps: Vec::new(),
            tiers: Vec::new(),
        }
    }
}

/// Step 1: a conversion settled before (a replay) keeps its memo, whose effects are
/// applied again (idempotent) before anything is read. One outcome per conversion of
/// the batch; `None` for those still to decide.
pub(super) async fn replay(
    registry: &Registry,
    state: &dyn StateStore,
    batch: &[(Mark, ConversionEvent)],
) -> Result<Vec<Option<Outcome>>, StateError> {
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
    Ok(outcomes)
}

/// Steps 6 and 7: the memos decided, set once (a memo already there wins: another
/// instance settled it meanwhile, and its decision is the one written), then the
/// effects of the memos that stand.
pub(super) async fn stand(
    registry: &Registry,
    state: &dyn StateStore,
    batch: &[(Mark, ConversionEvent)],
    decided: Vec<(usize, Memo)>,
    outcomes: &mut [Option<Outcome>],
) -> Result<(), StateError> {
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
    let mut writes = Vec::new();
    for ((i, memo), existing) in decided.into_iter().zip(existing) {
        let (mark, e) = &batch[i];
        let memo = match existing {
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
    Ok(())
}
