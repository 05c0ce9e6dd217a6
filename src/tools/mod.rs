//! The binary's own tools: `touchline demo` (the embedded default end to end) and
//! `touchline loadgen` (an open-loop load generator). Built on the library's public
//! API only, and kept out of it.

pub mod demo;
pub mod loadgen;
