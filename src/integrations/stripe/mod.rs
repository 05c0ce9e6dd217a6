//! Stripe's webhook deliveries as conversions (SPEC §11.1).
//!
//! Each mapped event becomes one conversion item, exactly as `POST /api/v1/conversions`
//! takes one, so the edge checks it with the same rules and bounds (SPEC §7):
//!
//! | Stripe event | conversion |
//! |---|---|
//! | `checkout.session.completed`, `checkout.session.async_payment_succeeded` (paid) | `sale` of `amount_total`, or `signup` when it is 0 |
//! | `invoice.paid`, `billing_reason` `subscription_create` or no subscription | `sale` of `amount_paid` |
//! | `invoice.paid`, later invoices of a subscription | `recurring` of `amount_paid` |
//! | `charge.refunded` | `refund` of the newly refunded amount |
//!
//! Order ids come from Stripe's own ids, so that the conversion key of SPEC §5.2 makes
//! a redelivered event a `duplicate` that earns nothing, and so that the two events of
//! one subscription checkout (the session and its first invoice) are one sale whichever
//! Stripe delivers first: a session in `payment` mode is the order of its payment
//! intent, in `subscription` mode the order of its first invoice; a refund names the
//! charge's invoice, else its payment intent. Event time is the event's `created`.

mod amount;
mod envelope;
mod map;

pub use amount::{decimal_of_minor, minor_exponent};
pub use envelope::{Envelope, EnvelopeError};
pub use map::{map, Mapped};

/// The header Stripe signs its deliveries with.
pub const SIGNATURE_HEADER: &str = "stripe-signature";

/// Stripe's own tolerance for a delivery's timestamp.
pub const TOLERANCE_SECS: u64 = 300;

/// The event types this intake maps, and `other` for the rest (a bounded metric label).
pub fn type_label(kind: &str) -> &'static str {
    match kind {
        "checkout.session.completed" => "checkout.session.completed",
        "checkout.session.async_payment_succeeded" => "checkout.session.async_payment_succeeded",
        "invoice.paid" => "invoice.paid",
        "charge.refunded" => "charge.refunded",
        _ => "other",
    }
}
