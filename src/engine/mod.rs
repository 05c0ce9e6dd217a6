//! The pure core of touchline: who is credited and what they earn (SPEC §5.1–§5.5).
//!
//! Nothing in this module does I/O. State it needs (dedup marks, journeys, monthly
//! counts, a customer's first sale, an order's ledger rows) is handed in by the caller,
//! which reads it from the stores of [`crate::pipeline::store`]. What it needs of the
//! registry comes through the traits of [`rules`].

pub mod attribution;
pub mod caps;
pub mod commission;
pub mod conditions;
pub mod dedup;
pub mod fraud;
pub mod journey;
pub mod lifecycle;
pub mod rewards;
pub mod rounding;
pub mod rules;
pub mod settle;
pub mod tiers;

pub use attribution::{AttributionModel, Touch, Weights};
pub use commission::{CommissionPlan, LedgerKind, LedgerRow};
pub use fraud::FraudRules;
pub use lifecycle::{Standing, Status};
pub use rules::{Directory, PartnerRules, ProgramRules};

/// Arithmetic beyond `Decimal`'s range: the conversion cannot be settled. The registry's
/// bounds keep accepted programs away from it; the engine checks anyway, so that no
/// stored program or hand-made event can panic the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("arithmetic beyond the decimal range")]
pub struct Overflow;

/// `a × b`, checked.
pub(crate) fn mul(
    a: rust_decimal::Decimal,
    b: rust_decimal::Decimal,
) -> Result<rust_decimal::Decimal, Overflow> {
    a.checked_mul(b).ok_or(Overflow)
}

/// `a + b`, checked.
pub(crate) fn add(
    a: rust_decimal::Decimal,
    b: rust_decimal::Decimal,
) -> Result<rust_decimal::Decimal, Overflow> {
    a.checked_add(b).ok_or(Overflow)
}
