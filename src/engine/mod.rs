//! The pure core of touchline: who is credited and what they earn (SPEC §5.1–§5.5).
//!
//! Nothing in this module does I/O. State it needs (dedup marks, journeys, monthly
//! counts, a customer's first sale, an order's ledger rows) is handed in by the caller,
//! which reads it from the stores of [`crate::pipeline::state`].

pub mod attribution;
pub mod commission;
pub mod dedup;
pub mod journey;
pub mod rounding;
pub mod rules;
pub mod settle;

pub use attribution::{AttributionModel, Touch, Weights};
pub use commission::{CommissionPlan, LedgerKind, LedgerRow};
pub use rules::{Directory, PartnerRules, ProgramRules};
