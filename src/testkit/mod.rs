//! What tests and benches share, compiled only for them (`cfg(test)` or the `testkit`
//! feature, which the crate's dev-dependency on itself turns on): a deterministic
//! synthetic stream with its registry, and the fixture programs.

pub mod fixtures;
pub mod synthetic;
