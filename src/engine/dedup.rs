//! Dedup decisions (SPEC §5.1, §5.2). The stores keep the marks; these functions decide.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::events::{ClickEvent, ClickStatus};

/// Fingerprint of a click (SPEC §5.1): program, link, hashed IP and user agent, as 32
/// hex characters (128 bits of SHA-256: stable across versions and processes).
pub fn click_fingerprint(click: &ClickEvent) -> String {
    let mut h = Sha256::new();
    // Length-prefixed fields, so that ("ab","c") and ("a","bc") differ.
    for field in [
        click.program_id.as_str(),
        click.link_code.as_str(),
        click.ip_hash.as_str(),
        click.user_agent.as_str(),
    ] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// Why a click is, or is not, a unique click.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClickVerdict {
    /// A unique click: counted as such and a touchpoint.
    Unique,
    /// A unique click with the same fingerprint lies in the preceding window.
    Duplicate,
    /// Flagged as a bot at the edge: never unique, never a touchpoint.
    Bot,
    /// Paused or banned link or partner.
    Inactive,
    /// Past the program's `click_spam` limit (SPEC §5.8): never unique, never a
    /// touchpoint.
    Suspicious,
}

impl ClickVerdict {
    /// Label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ClickVerdict::Unique => "unique",
            ClickVerdict::Duplicate => "duplicate",
            ClickVerdict::Bot => "bot",
            ClickVerdict::Inactive => "inactive",
            ClickVerdict::Suspicious => "suspicious",
        }
    }
}

/// The verdict that needs no state: bots and inactive clicks are never unique.
/// `None` means the click is a candidate and the window decides.
pub fn precheck(click: &ClickEvent) -> Option<ClickVerdict> {
    if click.is_bot {
        Some(ClickVerdict::Bot)
    } else if click.status != ClickStatus::Ok {
        Some(ClickVerdict::Inactive)
    } else {
        None
    }
}

/// Does a unique click at `previous` fall in the window preceding `ts`, i.e.
/// `ts − window < previous ≤ ts`?
pub fn in_preceding_window(previous: DateTime<Utc>, ts: DateTime<Utc>, window_secs: u64) -> bool {
    let window_ms = i64::try_from(window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let delta = ts.timestamp_millis() - previous.timestamp_millis();
    (0..window_ms).contains(&delta)
}

/// Decides a candidate click against the unique clicks of its fingerprint.
pub fn decide_click(
    ts: DateTime<Utc>,
    previous_unique: impl IntoIterator<Item = DateTime<Utc>>,
    window_secs: u64,
) -> ClickVerdict {
    if previous_unique
        .into_iter()
        .any(|p| in_preceding_window(p, ts, window_secs))
    {
        ClickVerdict::Duplicate
    } else {
        ClickVerdict::Unique
    }
}

/// Key of a conversion's dedup mark (SPEC §5.2): (program, kind, order id). Program ids
/// and kinds never contain `:`, so the order id, last, cannot make two keys collide.
pub fn conversion_key(program_id: &str, kind: &str, order_id: &str) -> String {
    // Pushed rather than formatted: once per conversion, and `format!` was a twentieth
    // of a decision's time.
    let mut key = String::with_capacity(program_id.len() + kind.len() + order_id.len() + 2);
    for (i, part) in [program_id, kind, order_id].into_iter().enumerate() {
        if i > 0 {
            key.push(':');
        }
        key.push_str(part);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap() + Duration::seconds(secs)
    }

    #[test]
    fn window_is_half_open_toward_the_past() {
        assert_eq!(decide_click(t(100), [], 3600), ClickVerdict::Unique);
        assert_eq!(
            decide_click(t(100), [t(100)], 3600),
            ClickVerdict::Duplicate
        );
        assert_eq!(
            decide_click(t(3699), [t(100)], 3600),
            ClickVerdict::Duplicate
        );
        // exactly one window later: unique again
        assert_eq!(decide_click(t(3700), [t(100)], 3600), ClickVerdict::Unique);
        // a later unique click does not make an earlier one a duplicate
        assert_eq!(decide_click(t(50), [t(100)], 3600), ClickVerdict::Unique);
        // a zero window never deduplicates
        assert_eq!(decide_click(t(100), [t(100)], 0), ClickVerdict::Unique);
    }

    #[test]
    fn fingerprints_separate_fields() {
        let base: ClickEvent = serde_json::from_value(serde_json::json!({
            "v": 1, "click_id": "0193a3b2-7c4e-7000-8000-000000000001",
            "ts": "2026-11-20T10:15:00.000Z", "program_id": "acme", "partner_id": "p",
            "link_code": "ab", "campaign": null,
            "visitor_id": "0193a3b2-7c4e-4000-8000-000000000001", "ip_hash": "c",
            "user_agent": "ua", "referer": null, "utm_source": null, "utm_medium": null,
            "utm_campaign": null, "utm_term": null, "utm_content": null,
            "is_bot": false, "status": "ok"
        }))
        .unwrap();
        let mut other = base.clone();
        other.link_code = "a".into();
        other.ip_hash = "bc".into();
        assert_ne!(click_fingerprint(&base), click_fingerprint(&other));
        let mut same = base.clone();
        same.click_id = uuid::Uuid::now_v7();
        same.visitor_id = uuid::Uuid::new_v4();
        assert_eq!(click_fingerprint(&base), click_fingerprint(&same));
        assert_eq!(click_fingerprint(&base).len(), 32);
    }
}
