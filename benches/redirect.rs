//! The redirect path in process (SPEC §8): registry lookups, click id, visitor cookie,
//! query merge, IP hash, event encoding and the enqueue, without the network.
//!
//! `cargo bench --bench redirect`

fn main() {}
