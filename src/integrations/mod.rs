//! What other systems send, turned into touchline's own events (SPEC §11): Stripe's
//! webhook deliveries ([`stripe`]). The edge verifies and publishes; this module only
//! maps, so that every mapping is a pure function a unit test can read.

pub mod stripe;
