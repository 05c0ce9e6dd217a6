//! Outgoing webhooks (SPEC §3.6): delivery of the outbox's events to the program's
//! endpoints and the partners' postbacks, from queues per endpoint and partner. The
//! events themselves are made with the ledger (`crate::outbox`).

pub mod delivery;
pub mod queue;

pub use crate::outbox::{Outbox, WebhookEvent, WEBHOOK_EVENT_VERSION};
