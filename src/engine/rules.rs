//! What the engine needs to know of a program and its partners, as traits the registry
//! implements: the engine depends on nothing above it, and its tests and benches can
//! settle against plain values.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::attribution::AttributionModel;
use super::commission::CommissionPlan;
use super::tiers::HeldTier;

/// A program's settlement rules.
pub trait ProgramRules {
    /// Settlement currency (ISO 4217).
    fn currency(&self) -> &str;
    /// Program-currency units per unit of `currency`, when the program accepts it.
    fn fx_rate(&self, currency: &str) -> Option<Decimal>;
    fn attribution(&self) -> &AttributionModel;
    fn commission(&self) -> &CommissionPlan;
}

/// A partner as settlement sees it.
pub trait PartnerRules {
    /// A tier of the program's plan; `None`: the plan's default tier.
    fn tier(&self) -> Option<&str>;
    /// The tier the registry held at `t` (SPEC §10.2); without a history, the tier.
    fn held_at(&self, _t: DateTime<Utc>) -> HeldTier<'_> {
        HeldTier {
            tier: self.tier(),
            since: None,
            pinned: false,
        }
    }
    /// The partner that earns overrides on this one's commissions.
    fn parent_id(&self) -> Option<&str>;
    /// Credited at all (paused and banned partners are not).
    fn is_active(&self) -> bool;
}

impl<T: PartnerRules + ?Sized> PartnerRules for Arc<T> {
    fn tier(&self) -> Option<&str> {
        (**self).tier()
    }
    fn held_at(&self, t: DateTime<Utc>) -> HeldTier<'_> {
        (**self).held_at(t)
    }
    fn parent_id(&self) -> Option<&str> {
        (**self).parent_id()
    }
    fn is_active(&self) -> bool {
        (**self).is_active()
    }
}

/// The partners as settlement sees them at settlement time.
pub trait Directory {
    type Partner: PartnerRules;
    fn partner(&self, id: &str) -> Option<Self::Partner>;
}

impl<P: PartnerRules + Clone, S: BuildHasher> Directory for HashMap<String, P, S> {
    type Partner = P;
    fn partner(&self, id: &str) -> Option<P> {
        self.get(id).cloned()
    }
}

/// Is the partner known and active right now?
pub fn is_active(directory: &impl Directory, partner_id: &str) -> bool {
    directory.partner(partner_id).is_some_and(|p| p.is_active())
}
