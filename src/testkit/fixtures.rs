//! The programs tests and benches start from, in one place: the program of SPEC §3.3
//! as the admin API receives it, and the variant the unit tests settle against.

use serde_json::{json, Value};

use crate::engine::commission::example_plan;

/// The conversion signing secret of every fixture program.
pub const SECRET: &str = "0123456789abcdef-test-secret";

/// The program of SPEC §3.3: last touch, the example plan of §5.5, three currencies.
pub fn program_json() -> Value {
    json!({
        "name": "Acme partners", "currency": "USD", "secret": SECRET,
        "fallback_url": "https://acme.example/", "lookback_days": 30,
        "attribution": {"model": "last_touch"},
        "click_dedup_window_secs": 3600, "max_touches": 32,
        "fx": {"USD": "1", "EUR": "1.0837", "JPY": "0.006571"},
        "commission": example_plan()
    })
}

/// The unit tests' program: the same, with time decay (a half-life of a week) and a
/// single bronze tier at 15 %, so that one touch's share and rate read at a glance.
pub fn unit_program_json() -> Value {
    let mut p = program_json();
    p["attribution"] = json!({"model": "time_decay", "half_life_days": "7"});
    p["commission"] = json!({"tiers": {"bronze": "0.15"}, "default_tier": "bronze"});
    p
}
