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
//!
//! Where each step lives: 1, 6 and 7 in `memo`, 2 to 4 in `plan`, 5 in `decide` over
//! the batch's `overlay`; the state a settled conversion changes in `effects`; hold
//! ends in `holds`.

mod caps;
mod decide;
mod effects;
mod holds;
mod memo;
mod overlay;
mod plan;
#[cfg(test)]
mod tests;
mod tiers;

pub use holds::{approvals, step_row, DueEntry};
pub use memo::{Memo, Outcome};
pub use tiers::{Counted, TierBook};

use super::store::{Mark, StateError, StateStore};
use crate::events::ConversionEvent;
use crate::registry::Registry;
use plan::Plan;

/// Settles `batch` (in mark order) under the tier moves of `tiers`; one outcome per
/// conversion, in order.
pub async fn settle_batch(
    registry: &Registry,
    tiers: &TierBook,
    state: &dyn StateStore,
    batch: &[(Mark, ConversionEvent)],
) -> Result<Vec<Outcome>, StateError> {
    let mut outcomes = memo::replay(registry, state, batch).await?;
    let fresh: Vec<usize> = (0..batch.len())
        .filter(|i| outcomes[*i].is_none())
        .collect();
    if !fresh.is_empty() {
        let plan = Plan::read(registry, state, batch, fresh).await?;
        let decided = decide::in_order(registry, tiers, state, batch, &plan, &mut outcomes).await?;
        memo::stand(registry, state, batch, decided, &mut outcomes).await?;
    }
    Ok(outcomes.into_iter().flatten().collect())
}
