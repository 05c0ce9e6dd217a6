//! touchline: a stream processor for referral and affiliate tracking.
//!
//! The data's path, one module per stage: [`edge`] (HTTP redirects and intake) →
//! [`bus`] (Kafka or in-process) → [`pipeline`] (dedup, journeys, attribution,
//! commission, using the pure [`engine`]) → [`sink`] (ClickHouse or JSONEachRow files).
//! [`integrations`] maps what other systems send (Stripe) to the edge's events;
//! [`registry`] holds programs, partners and links; [`ledger`] and [`analytics`] read
//! back what the sink wrote for the API; [`config`] and [`metrics`] serve all.

pub mod access;
pub mod analytics;
pub mod app;
pub mod bus;
pub mod config;
pub mod edge;
pub mod engine;
pub mod events;
pub mod http;
pub mod integrations;
pub mod kv;
pub mod ledger;
pub mod metrics;
pub mod money;
pub mod outbox;
pub mod pipeline;
pub mod registry;
pub mod retry;
pub mod rng;
pub mod shutdown;
pub mod signature;
pub mod sink;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod webhooks;

/// Every binary that links touchline allocates with mimalloc: the pipeline and the edge
/// allocate per event on several threads, where glibc's malloc spent about half of the
/// pipeline's CPU (docs/BENCHMARKS.md, "Where the time goes"). Not in the library's own
/// unit tests: they link this crate a second time (the `testkit` dev-dependency), whose
/// allocator serves them.
#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
