//! Who may call what (SPEC §9): API keys with a scope, the caller a request
//! authenticates as, request budgets per key, and the address rules that keep
//! endpoints registered by tenants out of the operator's network.
//!
//! The edge's route table (`edge::routes`) says which roles each route takes and how
//! it finds the tenant of the resource it touches; this module knows nothing of routes.

pub mod budget;
pub mod principal;
pub mod ssrf;

/// Keys are stored in the registry, which owns their model; here for the callers.
pub use crate::registry::api_key as keys;
pub use budget::Budgets;
pub use keys::{ApiKey, KeyScope};
pub use principal::{Principal, Role};
