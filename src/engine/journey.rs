//! Journeys (SPEC §5.3): which unique clicks of a visitor are a conversion's touchpoints.

use chrono::{DateTime, Duration, Utc};

use uuid::Uuid;

use super::attribution::Touch;

/// The click a conversion names, and the instant up to which it counts: the
/// conversion's `received_at` (SPEC §5.3, clocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Named {
    pub click_id: Uuid,
    pub until: DateTime<Utc>,
}

/// Selects the touchpoints of a conversion at `occurred_at` from the visitor's unique
/// clicks in the program (any order, any time): those with `ts` in
/// `[occurred_at − lookback, occurred_at]` whose partner is active, at most
/// `max_touches` of the most recent, ordered by `(ts, click_id)`. The click the
/// conversion names proved it came first: it counts up to `named.until`, however far
/// behind the merchant's clock put `occurred_at`.
pub fn select(
    mut clicks: Vec<Touch>,
    occurred_at: DateTime<Utc>,
    named: Option<Named>,
    lookback_days: u32,
    max_touches: u32,
    is_active: impl Fn(&str) -> bool,
) -> Vec<Touch> {
    let from = occurred_at - Duration::days(i64::from(lookback_days));
    let end_of = |t: &Touch| match named {
        Some(n) if n.click_id == t.click_id => n.until.max(occurred_at),
        _ => occurred_at,
    };
    clicks.retain(|t| t.ts >= from && t.ts <= end_of(t) && is_active(&t.partner_id));
    clicks.sort_by_key(|t| (t.ts, t.click_id));
    clicks.dedup_by(|a, b| a.click_id == b.click_id);
    let max = max_touches as usize;
    if clicks.len() > max {
        clicks.drain(..clicks.len() - max);
    }
    clicks
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn conv() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap()
    }

    fn touch(id: u128, partner: &str, secs_before: i64) -> Touch {
        Touch {
            click_id: Uuid::from_u128(id),
            partner_id: partner.into(),
            ts: conv() - Duration::seconds(secs_before),
        }
    }

    fn ids(t: &[Touch]) -> Vec<u128> {
        t.iter().map(|t| t.click_id.as_u128()).collect()
    }

    #[test]
    fn window_edges_are_inclusive() {
        let day = 86_400;
        let clicks = vec![
            touch(1, "a", 30 * day + 1), // just outside 30 days
            touch(2, "a", 30 * day),     // exactly at the edge: in
            touch(3, "b", 0),            // at the conversion: in
            touch(4, "b", -1),           // after the conversion: out
        ];
        assert_eq!(
            ids(&select(clicks, conv(), None, 30, 32, |_| true)),
            vec![2, 3]
        );
    }

    #[test]
    fn ordered_by_time_then_click_id_and_capped_to_most_recent() {
        let clicks = vec![
            touch(9, "a", 10),
            touch(3, "a", 10),
            touch(5, "b", 20),
            touch(7, "c", 5),
        ];
        assert_eq!(
            ids(&select(clicks.clone(), conv(), None, 30, 32, |_| true)),
            vec![5, 3, 9, 7]
        );
        assert_eq!(
            ids(&select(clicks, conv(), None, 30, 2, |_| true)),
            vec![9, 7]
        );
    }

    #[test]
    fn inactive_partners_are_dropped_and_duplicates_collapse() {
        let clicks = vec![touch(1, "a", 10), touch(2, "banned", 5), touch(1, "a", 10)];
        assert_eq!(
            ids(&select(clicks, conv(), None, 30, 32, |p| p != "banned")),
            vec![1]
        );
    }

    #[test]
    fn the_named_click_counts_up_to_received_at_and_no_other_does() {
        // The merchant stamps whole seconds: the click it names is 0.4 s "after" the
        // sale, another click 0.2 s after it is not the one the sale proves.
        let named = Named {
            click_id: Uuid::from_u128(1),
            until: conv() + Duration::seconds(5),
        };
        let clicks = [
            touch(1, "a", 0),
            Touch {
                ts: conv() + Duration::milliseconds(400),
                ..touch(1, "a", 0)
            },
            Touch {
                ts: conv() + Duration::milliseconds(600),
                ..touch(2, "b", 0)
            },
        ];
        let late = vec![clicks[1].clone(), clicks[2].clone()];
        assert_eq!(
            ids(&select(late.clone(), conv(), Some(named), 30, 32, |_| true)),
            vec![1]
        );
        assert!(select(late.clone(), conv(), None, 30, 32, |_| true).is_empty());
        // Not past received_at: a click after the conversion was reported did not lead to it.
        let early = Named {
            until: conv() + Duration::milliseconds(300),
            ..named
        };
        assert!(select(late, conv(), Some(early), 30, 32, |_| true).is_empty());
        // Five minutes behind, the same.
        let behind = Touch {
            ts: conv() + Duration::minutes(5),
            ..touch(1, "a", 0)
        };
        let named = Named {
            until: conv() + Duration::minutes(5),
            ..named
        };
        assert_eq!(
            ids(&select(vec![behind], conv(), Some(named), 30, 32, |_| true)),
            vec![1]
        );
        assert_eq!(
            ids(&select(
                vec![clicks[0].clone()],
                conv(),
                Some(named),
                30,
                32,
                |_| true
            )),
            vec![1]
        );
    }
}
