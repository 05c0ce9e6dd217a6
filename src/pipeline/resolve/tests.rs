//! Unit tests of resolution on the memory store.

use std::sync::Arc;

use rust_decimal::Decimal;
use uuid::Uuid;

use super::*;
use crate::engine::lifecycle::Status;
use crate::engine::settle::{self, ConversionStatus, Credit};
use crate::events::{ConversionEvent, ConversionKind};
use crate::pipeline::store::{Answer, Mark, Read, StateStore};
use crate::registry::{Program, Registry};
use crate::sink::rows::commission_id;

mod settle_tests {
    use super::*;
    use crate::pipeline::store::MemoryState;
    use crate::registry::{Entity, MemoryStore, RegistryStore};
    use chrono::TimeZone;
    use std::str::FromStr;
    use std::sync::Arc;

    fn sale(id: u128, currency: &str) -> ConversionEvent {
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 11, 20, 10, 0, 0)
            .unwrap();
        ConversionEvent {
            currency: currency.into(),
            referral_code: Some("alice-1".into()),
            ..crate::testkit::fixtures::conversion(id, ConversionKind::Sale, "100", at)
        }
    }

    /// A registry holding `program` (as `acme`), partner `alice` of it and her link
    /// `alice-1`, stored directly (bypassing the API's validation where a test needs to).
    pub(super) async fn registry_with(
        mut program: Program,
        alice: serde_json::Value,
    ) -> Arc<Registry> {
        let store = Arc::new(MemoryStore::new());
        program.id = "acme".into();
        store
            .put(&Entity::Program(Box::new(program)))
            .await
            .unwrap();
        store
            .put(&Entity::Partner(serde_json::from_value(alice).unwrap()))
            .await
            .unwrap();
        store
            .put(&Entity::Link(
                serde_json::from_value(serde_json::json!({"code": "alice-1", "program_id": "acme",
                    "partner_id": "alice", "destination": "https://shop.example/"}))
                .unwrap(),
            ))
            .await
            .unwrap();
        Registry::open(store).await.unwrap()
    }

    /// A program stored before today's bounds (an FX rate of 10²⁵) cannot stop the
    /// pipeline: its conversion is dead-lettered and the next one settles.
    #[tokio::test]
    async fn a_conversion_beyond_the_ledger_is_dead_lettered_and_the_rest_settles() {
        let mut program: Program =
            serde_json::from_value(crate::testkit::fixtures::unit_program_json()).unwrap();
        program.fx.insert(
            "EUR".into(),
            Decimal::from_str("10000000000000000000000000").unwrap(),
        );
        let registry = registry_with(
            program,
            serde_json::json!({"id": "alice", "program_id": "acme"}),
        )
        .await;
        let state = MemoryState::new();
        let batch: Vec<(Mark, ConversionEvent)> = [sale(1, "EUR"), sale(2, "USD")]
            .into_iter()
            .map(|e| (Mark::new(e.received_at, e.conversion_id), e))
            .collect();
        let outcomes = settle_batch(&registry, &TierBook::default(), &state, &batch)
            .await
            .unwrap();
        assert!(
            matches!(&outcomes[0], Outcome::DeadLetter(r) if r.contains("range")),
            "the EUR sale is dead-lettered"
        );
        match &outcomes[1] {
            Outcome::Settled(memo) => {
                assert_eq!(memo.decision.status, ConversionStatus::Attributed);
                assert_eq!(memo.decision.rows[0].amount, Decimal::from(15));
            }
            Outcome::DeadLetter(r) => panic!("the USD sale settles: {r}"),
        }
        // Nothing of the dead-lettered one was stored.
        assert_eq!(
            state.memos(&[Uuid::from_u128(1)]).await.unwrap(),
            vec![None]
        );
    }
}

mod lifecycle_tests {
    //! Worked examples of SPEC §5.7 and §5.8 to the cent, through the same batch
    //! settlement the pipeline runs, on the memory store.

    use super::*;
    use crate::pipeline::store::MemoryState;
    use chrono::{Duration, TimeZone, Utc};
    use std::str::FromStr;

    const ALICE_EMAIL: &str = "5f4dcc3b5aa765d61d8327deb882cf995f4dcc3b5aa765d61d8327deb882cf99";

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn t0() -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 10, 1, 12, 0, 0).unwrap()
    }

    async fn registry() -> Arc<Registry> {
        registry_with_fraud(serde_json::json!({"review_above": "500", "self_referral": true})).await
    }

    async fn registry_with_fraud(fraud: serde_json::Value) -> Arc<Registry> {
        let mut json = crate::testkit::fixtures::unit_program_json();
        json["hold_days"] = serde_json::json!(30);
        json["fraud"] = fraud;
        let mut program: Program = serde_json::from_value(json).unwrap();
        program.id = "acme".into();
        program.validate().unwrap();
        super::settle_tests::registry_with(
            program,
            serde_json::json!({"id": "alice", "program_id": "acme", "email_sha256": ALICE_EMAIL}),
        )
        .await
    }

    fn conversion(
        id: u128,
        kind: ConversionKind,
        amount: &str,
        at: chrono::DateTime<Utc>,
    ) -> ConversionEvent {
        ConversionEvent {
            referral_code: Some("alice-1".into()),
            ..crate::testkit::fixtures::conversion(id, kind, amount, at)
        }
    }

    fn refund(id: u128, of: u128, amount: &str, at: chrono::DateTime<Utc>) -> ConversionEvent {
        ConversionEvent {
            referral_code: None,
            original_order_id: Some(format!("o-{of}")),
            ..conversion(id, ConversionKind::Refund, amount, at)
        }
    }

    async fn settle(registry: &Registry, state: &MemoryState, e: ConversionEvent) -> Memo {
        let batch = vec![(Mark::new(e.received_at, e.conversion_id), e)];
        match settle_batch(registry, &TierBook::default(), state, &batch)
            .await
            .unwrap()
            .remove(0)
        {
            Outcome::Settled(memo) => *memo,
            Outcome::DeadLetter(r) => panic!("dead letter: {r}"),
        }
    }

    /// The memos of `events` settled as one batch on a fresh store.
    /// Reward rules that read the customer's history (SPEC §10.1) see it in intake
    /// order: a sale's number and months since the first sale are the same settled one
    /// by one as in one batch.
    #[tokio::test]
    async fn rules_read_the_customers_history_live_and_in_a_batch() {
        let mut json = crate::testkit::fixtures::unit_program_json();
        json["commission"]["rules"] = serde_json::json!([
            {"name": "first-sale", "when": {"field": "customer.sale_number", "op": "eq", "value": 1},
             "kinds": ["sale"], "rate": "0.30"},
            {"name": "loyal", "when": {"field": "months_since_first_sale", "op": "gte", "value": 2},
             "kinds": ["sale"], "rate": "0.20"},
            {"name": "de-launch", "when": {"field": "country", "op": "eq", "value": "DE"},
             "kinds": ["sale"], "rate": "0.25", "months": 1}]);
        let mut program: Program = serde_json::from_value(json).unwrap();
        program.id = "acme".into();
        program.validate().unwrap();
        let registry = super::settle_tests::registry_with(
            program,
            serde_json::json!({"id": "alice", "program_id": "acme"}),
        )
        .await;
        let sale = |id: u128, customer: Option<&str>, country: &str, days: i64| ConversionEvent {
            customer_id: customer.map(str::to_string),
            country: Some(country.into()),
            ..conversion(id, ConversionKind::Sale, "100", t0() + Duration::days(days))
        };
        let events = vec![
            sale(1, Some("c-1"), "US", 0),
            sale(2, Some("c-1"), "DE", 10),
            sale(3, Some("c-1"), "DE", 40),
            sale(4, Some("c-1"), "US", 70),
            sale(5, Some("c-2"), "US", 70),
            // Without a customer id nothing is known of the customer: the tier pays.
            sale(6, None, "DE", 70),
        ];
        let state = MemoryState::new();
        let mut one_by_one = Vec::new();
        for e in &events {
            one_by_one.push(settle(&registry, &state, e.clone()).await);
        }
        let paid: Vec<(String, String)> = one_by_one
            .iter()
            .map(|m| {
                let row = &m.decision.rows[0];
                (row.amount.to_string(), row.reason.clone())
            })
            .collect();
        let want = [
            ("30.00", "rule first-sale"),
            ("25.00", "rule de-launch"),
            ("15.00", ""),
            ("20.00", "rule loyal"),
            ("30.00", "rule first-sale"),
            ("15.00", ""),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, r)| (a.to_string(), r.to_string()))
            .collect();
        assert_eq!(paid, want);
        assert_eq!(settle_together(&registry, &events).await, one_by_one);
        // A batch that starts after some were stored reads the rest from the state.
        let state = MemoryState::new();
        let mut split = Vec::new();
        for e in &events[..2] {
            split.push(settle(&registry, &state, e.clone()).await);
        }
        split.extend(settle_on(&registry, &state, &events[2..]).await);
        assert_eq!(split, one_by_one);
    }

    /// Caps (SPEC §10.1) count in intake order per UTC day and month of `occurred_at`:
    /// the same settled one by one, as one batch, or split between the two.
    #[tokio::test]
    async fn caps_clip_in_intake_order_live_and_in_a_batch() {
        let mut json = crate::testkit::fixtures::unit_program_json();
        json["commission"]["caps"] = serde_json::json!([
            {"period": "day", "max": "20.00"}, {"period": "month", "max": "50"}]);
        let mut program: Program = serde_json::from_value(json).unwrap();
        program.id = "acme".into();
        program.validate().unwrap();
        let registry = super::settle_tests::registry_with(
            program,
            serde_json::json!({"id": "alice", "program_id": "acme"}),
        )
        .await;
        // Each sale of 100 earns bronze 15.00 uncapped.
        let sale = |id: u128, days: i64, minutes: i64| {
            let at = t0() + Duration::days(days) + Duration::minutes(minutes);
            conversion(id, ConversionKind::Sale, "100", at)
        };
        let events = vec![
            sale(1, 0, 0),
            sale(2, 0, 1),
            sale(3, 0, 2),
            sale(4, 1, 0),
            sale(5, 1, 1),
            sale(6, 2, 0),
            // Next month: both periods start again.
            sale(7, 31, 0),
        ];
        let state = MemoryState::new();
        let mut one_by_one = Vec::new();
        for e in &events {
            one_by_one.push(settle(&registry, &state, e.clone()).await);
        }
        let paid: Vec<String> = one_by_one
            .iter()
            .map(|m| {
                let row = &m.decision.rows[0];
                format!("{} {}", row.amount, row.reason)
                    .trim_end()
                    .to_string()
            })
            .collect();
        assert_eq!(
            paid,
            [
                "15.00",
                "5.00 capped",
                "0.00 capped",
                "15.00",
                "5.00 capped",
                // 15 + 5 + 15 + 5 = 40 of the month's 50.
                "10.00 capped",
                "15.00",
            ]
        );
        assert_eq!(settle_together(&registry, &events).await, one_by_one);
        let state = MemoryState::new();
        let mut split = Vec::new();
        for e in &events[..2] {
            split.push(settle(&registry, &state, e.clone()).await);
        }
        split.extend(settle_on(&registry, &state, &events[2..5]).await);
        for e in &events[5..] {
            split.push(settle(&registry, &state, e.clone()).await);
        }
        assert_eq!(split, one_by_one);
    }

    async fn settle_together(registry: &Registry, events: &[ConversionEvent]) -> Vec<Memo> {
        settle_on(registry, &MemoryState::new(), events).await
    }

    /// The memos of `events` settled as one batch on `state`.
    async fn settle_on(
        registry: &Registry,
        state: &MemoryState,
        events: &[ConversionEvent],
    ) -> Vec<Memo> {
        let batch: Vec<(Mark, ConversionEvent)> = events
            .iter()
            .map(|e| (Mark::new(e.received_at, e.conversion_id), e.clone()))
            .collect();
        settle_batch(registry, &TierBook::default(), state, &batch)
            .await
            .unwrap()
            .into_iter()
            .map(|o| match o {
                Outcome::Settled(m) => *m,
                Outcome::DeadLetter(r) => panic!("dead letter: {r}"),
            })
            .collect()
    }

    /// The approvals of every hold that ended before `before`, as the pipeline makes
    /// them: (commission id, amount).
    async fn approve(state: &MemoryState, before: chrono::DateTime<Utc>) -> Vec<(Uuid, Decimal)> {
        let Answer::Entries(entries) = state
            .read(&[Read::DueBefore {
                before_ms: before.timestamp_millis(),
                limit: 100,
            }])
            .await
            .unwrap()
            .remove(0)
        else {
            panic!("entries")
        };
        let rows = approvals(state, &entries).await.unwrap();
        assert!(rows.iter().all(|r| r.status == "approved" && r.step == 1));
        rows.iter().map(|r| (r.commission_id, r.amount)).collect()
    }

    fn statuses(memo: &Memo) -> Vec<(Status, String)> {
        memo.lifecycle.created.clone()
    }

    /// A unique click of `visitor` on alice's link at `ts`, recorded and decided as the
    /// pipeline does.
    async fn unique_click(
        state: &MemoryState,
        click: u128,
        visitor: Uuid,
        ts: chrono::DateTime<Utc>,
    ) {
        use crate::pipeline::store::{Candidate, ClickRecord, Decide, StoredTouch};
        let click_id = Uuid::from_u128(click);
        let mark = Mark::new(ts, click_id);
        let keep = std::time::Duration::from_secs(40 * 86_400);
        let candidate = Candidate {
            fingerprint: format!("fp-{click}"),
            mark,
            window_ms: 0,
        };
        let record = ClickRecord {
            click_id,
            mark,
            visitor_id: visitor,
            keep,
            candidate: Some(candidate.clone()),
            ip: None,
        };
        state.record_clicks(&[record]).await.unwrap();
        let decide = Decide {
            candidate,
            program_id: "acme".into(),
            visitor_id: visitor,
            touch: StoredTouch {
                click_id,
                partner_id: "alice".into(),
                campaign: String::new(),
                ts,
            },
            keep,
            touchpoint: true,
        };
        assert_eq!(state.decide_clicks(&[decide]).await.unwrap(), vec![true]);
    }

    /// SPEC §5.3, clocks: a sale naming its click is credited by it when the merchant's
    /// clock is 0.5 s or 5 min behind the edge's, settled alone (live) or in one batch
    /// with the others (a backlog); a click of the same visitor the sale does not name,
    /// just as late, is no touch.
    #[tokio::test]
    async fn a_sale_naming_its_click_counts_it_whatever_the_merchants_clock() {
        let registry = registry().await;
        let visitor = Uuid::from_u128(77);
        let mut sales = Vec::new();
        for (n, behind_ms) in [(1u128, 500i64), (2, 300_000)] {
            let click_at = t0() + Duration::hours(n as i64);
            let sale = ConversionEvent {
                click_id: Some(Uuid::from_u128(100 + n)),
                referral_code: None,
                occurred_at: click_at - Duration::milliseconds(behind_ms),
                received_at: click_at + Duration::milliseconds(200),
                ..conversion(n, ConversionKind::Sale, "100", click_at)
            };
            sales.push((click_at, sale));
        }
        let live = MemoryState::new();
        let backlog = MemoryState::new();
        for (n, (click_at, _)) in sales.iter().enumerate() {
            for state in [&live, &backlog] {
                // One visitor each: the clicks are each other's no touch.
                let visitor = Uuid::from_u128(visitor.as_u128() + n as u128);
                unique_click(state, 101 + n as u128, visitor, *click_at).await;
            }
        }
        let mut settled_live = Vec::new();
        for (_, sale) in &sales {
            settled_live.push(settle(&registry, &live, sale.clone()).await);
        }
        let events: Vec<ConversionEvent> = sales.iter().map(|(_, e)| e.clone()).collect();
        let settled_backlog = settle_on(&registry, &backlog, &events).await;
        for (n, memo) in settled_live.iter().chain(&settled_backlog).enumerate() {
            let decision = &memo.decision;
            assert_eq!(decision.status, ConversionStatus::Attributed, "sale {n}");
            let clicks: Vec<_> = decision.attributions.iter().map(|a| a.click_id).collect();
            assert_eq!(clicks, vec![sales[n % 2].1.click_id], "sale {n}");
            assert_eq!(decision.rows[0].amount, d("15.00"), "sale {n}");
        }
        assert_eq!(settled_live, settled_backlog);

        // A sale naming no click, with the same late clock: the click 0.4 s after its
        // occurred_at is not proven to have come first, and no touch.
        let state = MemoryState::new();
        let click_at = t0() + Duration::days(3);
        unique_click(&state, 300, visitor, click_at).await;
        let unnamed = ConversionEvent {
            visitor_id: Some(visitor),
            referral_code: None,
            occurred_at: click_at - Duration::milliseconds(400),
            received_at: click_at + Duration::milliseconds(200),
            ..conversion(3, ConversionKind::Sale, "100", click_at)
        };
        let memo = settle(&registry, &state, unnamed).await;
        assert_eq!(memo.decision.status, ConversionStatus::Unattributed);
    }

    /// refund_rate 0.5: a partner's new commissions are held once more than half of
    /// the sales credited to her in the 30 days before are refunded (each order counted
    /// at its first refund); one batch decides exactly what one-at-a-time does.
    #[tokio::test]
    async fn refund_rate_holds_a_partners_new_commissions_in_its_window() {
        let registry = registry_with_fraud(serde_json::json!({"refund_rate": "0.5"})).await;
        let h = |n: i64| t0() + Duration::hours(n);
        let events = vec![
            conversion(1, ConversionKind::Sale, "100", h(0)),
            conversion(2, ConversionKind::Sale, "100", h(1)),
            refund(3, 1, "10", h(2)),
            // A second refund of order 1: still one refunded sale.
            refund(4, 1, "10", h(3)),
            // 1 refunded of 2: not above half.
            conversion(5, ConversionKind::Sale, "100", h(4)),
            refund(6, 2, "100", h(5)),
            // 2 refunded of 3: above half.
            conversion(7, ConversionKind::Sale, "100", h(6)),
            // 2 of 4 (sale 7 counts, held or not): exactly half is not above it.
            conversion(8, ConversionKind::Sale, "100", h(7)),
            // 30 days on, those sales are out of the window.
            conversion(9, ConversionKind::Sale, "100", h(30 * 24 + 7)),
        ];
        let reasons = |memos: &[Memo]| -> Vec<String> {
            memos
                .iter()
                .map(|m| {
                    let held = &m.lifecycle.standing.held;
                    held.iter()
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect()
        };
        let state = MemoryState::new();
        let mut one_by_one = Vec::new();
        for e in &events {
            one_by_one.push(settle(&registry, &state, e.clone()).await);
        }
        assert_eq!(
            reasons(&one_by_one),
            ["", "", "", "", "", "", "refund_rate", "", ""]
        );
        assert_eq!(
            one_by_one
                .iter()
                .map(|m| m.first_refund)
                .collect::<Vec<_>>(),
            [false, false, true, false, false, true, false, false, false]
        );
        assert_eq!(
            statuses(&one_by_one[6]),
            vec![(Status::Held, "refund_rate".into())]
        );

        let together = settle_together(&registry, &events).await;
        assert_eq!(together, one_by_one);
    }

    #[tokio::test]
    async fn a_partial_refund_before_approval_is_approved_with_its_sale() {
        let (registry, state) = (registry().await, MemoryState::new());
        // 100.00 at bronze 15%: 15.00, pending for 30 days from occurred_at.
        let sale = settle(
            &registry,
            &state,
            conversion(1, ConversionKind::Sale, "100", t0()),
        )
        .await;
        assert_eq!(sale.decision.rows[0].amount, d("15.00"));
        assert_eq!(
            statuses(&sale),
            vec![(Status::Pending, "hold period".into())]
        );
        assert_eq!(
            sale.lifecycle.standing.due_ms,
            Some((t0() + Duration::days(30)).timestamp_millis())
        );
        // 40.00 refunded on day 10: −6.00, pending like the row it reverses.
        let r = settle(
            &registry,
            &state,
            refund(2, 1, "40", t0() + Duration::days(10)),
        )
        .await;
        assert_eq!(r.decision.rows[0].amount, d("-6.00"));
        assert_eq!(statuses(&r), vec![(Status::Pending, "hold period".into())]);
        assert!(r.lifecycle.cancels.is_empty());
        // Nothing is approved before day 30; on day 30 both rows are: 9.00 net.
        assert!(approve(&state, t0() + Duration::days(30)).await.is_empty());
        let approved = approve(
            &state,
            t0() + Duration::days(30) + Duration::milliseconds(1),
        )
        .await;
        assert_eq!(
            approved,
            vec![
                (commission_id(Uuid::from_u128(1), 0), d("15.00")),
                (commission_id(Uuid::from_u128(2), 0), d("-6.00")),
            ]
        );
        // A refund after approval is an approved negative row, netted at the next payout.
        let late = settle(
            &registry,
            &state,
            refund(3, 1, "10", t0() + Duration::days(31)),
        )
        .await;
        assert_eq!(late.decision.rows[0].amount, d("-1.50"));
        assert_eq!(
            statuses(&late),
            vec![(Status::Approved, "hold period over".into())]
        );
    }

    #[tokio::test]
    async fn refunds_in_full_before_approval_cancel_everything() {
        let (registry, state) = (registry().await, MemoryState::new());
        settle(
            &registry,
            &state,
            conversion(1, ConversionKind::Sale, "100", t0()),
        )
        .await;
        settle(
            &registry,
            &state,
            refund(2, 1, "40", t0() + Duration::days(10)),
        )
        .await;
        let rest = settle(
            &registry,
            &state,
            refund(3, 1, "60", t0() + Duration::days(20)),
        )
        .await;
        assert_eq!(rest.decision.rows[0].amount, d("-9.00"));
        assert_eq!(
            statuses(&rest),
            vec![(Status::Reversed, "refunded before approval".into())]
        );
        // The sale's row and the first refund's row are cancelled with it: 15 − 6 − 9 = 0.
        assert_eq!(
            rest.lifecycle
                .cancels
                .iter()
                .map(|c| (commission_id(c.conversion_id, c.index), c.amount))
                .collect::<Vec<_>>(),
            vec![
                (commission_id(Uuid::from_u128(1), 0), d("15.00")),
                (commission_id(Uuid::from_u128(2), 0), d("-6.00")),
            ]
        );
        // The hold ends with nothing left to approve.
        assert!(approve(&state, t0() + Duration::days(31)).await.is_empty());
    }

    /// Dedup is per kind (SPEC §5.2), so a signup and a sale may share an order id.
    /// Each keeps its own order record: a refund reverses the sale (a refund before the
    /// sale, the signup), and each hold end approves its own conversion's rows. One
    /// batch decides what one conversion at a time does.
    #[tokio::test]
    async fn a_signup_and_a_sale_sharing_an_order_id_keep_their_own_records() {
        let mut json = crate::testkit::fixtures::unit_program_json();
        json["hold_days"] = serde_json::json!(30);
        json["commission"]["signup_bounty"] = serde_json::json!("50");
        let mut program: Program = serde_json::from_value(json).unwrap();
        program.id = "acme".into();
        program.validate().unwrap();
        let registry = super::settle_tests::registry_with(
            program,
            serde_json::json!({"id": "alice", "program_id": "acme"}),
        )
        .await;
        let h = |n: i64| t0() + Duration::hours(n);
        // Refunds have order ids of their own and name the shared one.
        let shared = |e: ConversionEvent| match e.kind {
            ConversionKind::Refund => ConversionEvent {
                original_order_id: Some("shared".into()),
                ..e
            },
            _ => ConversionEvent {
                order_id: "shared".into(),
                ..e
            },
        };
        let events = vec![
            shared(conversion(1, ConversionKind::Signup, "0", h(0))),
            // Before the sale: the signup's bounty is what the order earned so far.
            shared(refund(2, 0, "0", h(1))),
            shared(conversion(3, ConversionKind::Sale, "100", h(2))),
            shared(refund(4, 0, "40", h(3))),
            shared(refund(5, 0, "60", h(4))),
        ];
        let rows = |m: &Memo| m.decision.rows.iter().map(|r| r.amount).collect::<Vec<_>>();
        let one_at_a_time = MemoryState::new();
        let mut alone = Vec::new();
        for e in events.clone() {
            alone.push(settle(&registry, &one_at_a_time, e).await);
        }
        assert_eq!(rows(&alone[0]), vec![d("50.00")]);
        assert_eq!(rows(&alone[1]), vec![d("-50.00")]);
        assert_eq!(rows(&alone[2]), vec![d("15.00")]);
        assert_eq!(rows(&alone[3]), vec![d("-6.00")]);
        assert_eq!(rows(&alone[4]), vec![d("-9.00")]);
        assert_eq!(
            approve(&one_at_a_time, t0() + Duration::days(31)).await,
            Vec::<(Uuid, Decimal)>::new(),
            "everything was refunded before its hold ended"
        );

        assert_eq!(settle_together(&registry, &events).await, alone);

        // Without the refunds, each hold end approves its own conversion's row.
        let state = MemoryState::new();
        settle(&registry, &state, events[0].clone()).await;
        settle(&registry, &state, events[2].clone()).await;
        let mut approved = approve(&state, t0() + Duration::days(31)).await;
        approved.sort();
        let mut expected = vec![
            (commission_id(Uuid::from_u128(1), 0), d("50.00")),
            (commission_id(Uuid::from_u128(3), 0), d("15.00")),
        ];
        expected.sort();
        assert_eq!(approved, expected);
    }

    #[tokio::test]
    async fn fraud_rules_hold_the_rows_with_their_names() {
        let (registry, state) = (registry().await, MemoryState::new());
        // review_above 500: a 600.00 sale is held; 500.00 is not.
        let big = settle(
            &registry,
            &state,
            conversion(1, ConversionKind::Sale, "600", t0()),
        )
        .await;
        assert_eq!(statuses(&big), vec![(Status::Held, "review_above".into())]);
        assert_eq!(
            big.decision.rows[0].amount,
            d("90.00"),
            "held rows keep their amount"
        );
        let ok = settle(
            &registry,
            &state,
            conversion(2, ConversionKind::Sale, "500", t0()),
        )
        .await;
        assert_eq!(statuses(&ok)[0].0, Status::Pending);
        // self_referral: the customer's e-mail hash is alice's own.
        let own = ConversionEvent {
            customer_email_sha256: Some(ALICE_EMAIL.into()),
            country: None,
            product_id: None,
            metadata: Default::default(),
            ..conversion(3, ConversionKind::Sale, "600", t0())
        };
        let own = settle(&registry, &state, own).await;
        assert_eq!(
            statuses(&own),
            vec![(Status::Held, "review_above,self_referral".into())]
        );
        // Held rows never reach the hold queue: only review releases them.
        assert_eq!(
            approve(&state, t0() + Duration::days(60)).await,
            vec![(commission_id(Uuid::from_u128(2), 0), d("75.00"))]
        );
        // Their refunds are held for the same reason.
        let r = settle(
            &registry,
            &state,
            refund(4, 1, "600", t0() + Duration::days(1)),
        )
        .await;
        assert_eq!(statuses(&r), vec![(Status::Held, "review_above".into())]);
    }
}

mod bounds_tests {
    //! The registry's bounds and the intake's settlement cap are chosen so that the
    //! worst case fits the ledger's columns (SPEC §7): settle it and check.

    use super::*;
    use crate::engine::settle::Directory;
    use crate::registry::Partner;
    use std::sync::Arc;

    struct Chain(Vec<Arc<Partner>>);

    impl Directory for Chain {
        type Partner = Arc<Partner>;
        fn partner(&self, id: &str) -> Option<Arc<Partner>> {
            self.0.iter().find(|p| p.id == id).cloned()
        }
    }

    #[test]
    fn the_worst_accepted_case_fits_the_ledger() {
        let mut program: Program = serde_json::from_value(serde_json::json!({
            "name": "Worst", "currency": "USD", "secret": "0123456789abcdef-secret",
            "fallback_url": "https://acme.example/",
            "fx": {"USD": "1", "KWD": "1000000"},
            "commission": {
                "tiers": {"max": "1"}, "default_tier": "max",
                "lead_bounty": "1000000000", "signup_bounty": "1000000000",
                "recurring": {"rate": "1", "months": 120},
                "volume_bonuses": [{"min_conversions": 0, "bonus": "1"}],
                "overrides": ["1", "1", "1", "1", "1"]
            }
        }))
        .unwrap();
        program.id = "worst".into();
        program.validate().unwrap();
        // p0 ← p1 ← … ← p5: five override levels above the credited partner.
        let chain = Chain(
            (0..6)
                .map(|i| {
                    Arc::new(
                        serde_json::from_value::<Partner>(serde_json::json!({
                            "id": format!("p{i}"), "program_id": "worst",
                            "parent_id": (i < 5).then(|| format!("p{}", i + 1))
                        }))
                        .unwrap(),
                    )
                })
                .collect(),
        );
        let at = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 11, 20, 10, 0, 0).unwrap();
        // The largest amount the intake lets through: amount × fx = 10^13.
        let amount = crate::money::max_settled() / Decimal::from(1_000_000);
        for (kind, currency) in [
            (ConversionKind::Sale, "KWD"),
            (ConversionKind::Lead, "USD"),
            (ConversionKind::Sale, "USD"),
        ] {
            let e = ConversionEvent {
                customer_email_sha256: None,
                country: None,
                product_id: None,
                metadata: Default::default(),
                promo_code: None,
                v: 1,
                conversion_id: Uuid::from_u128(1),
                program_id: "worst".into(),
                order_id: "o".into(),
                kind,
                amount: if currency == "USD" {
                    crate::money::max_settled()
                } else {
                    amount
                },
                currency: currency.into(),
                occurred_at: at,
                received_at: at,
                click_id: None,
                visitor_id: None,
                referral_code: None,
                customer_id: None,
                original_order_id: None,
                registry_version: 0,
            };
            let d = settle::settle(
                &program,
                &e,
                Credit::Referral("p0".into()),
                &chain,
                &|_: &str, _: u32| 1_000_000,
            )
            .unwrap();
            assert_eq!(d.rows.len(), 6, "{kind:?}: direct and five overrides");
            crate::sink::rows::fits(&e, &d).unwrap_or_else(|why| panic!("{kind:?}: {why}"));
        }
    }
}

mod corrupt_tests {
    use super::*;
    use crate::pipeline::store::{MemoryState, Write};
    use crate::registry::MemoryStore;
    use chrono::TimeZone;
    use std::sync::Arc;

    /// SPEC §5.6: a stored decision that cannot be decoded is dead-lettered, not
    /// retried forever.
    #[tokio::test]
    async fn an_undecodable_memo_is_dead_lettered() {
        let registry = Registry::open(Arc::new(MemoryStore::new())).await.unwrap();
        let state = MemoryState::new();
        let id = Uuid::from_u128(9);
        state
            .write(&[Write::Memo {
                conversion_id: id,
                json: "{not a memo".into(),
            }])
            .await
            .unwrap();
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 11, 20, 10, 0, 0)
            .unwrap();
        let e = ConversionEvent {
            conversion_id: id,
            order_id: "o".into(),
            ..crate::testkit::fixtures::conversion(0, ConversionKind::Signup, "0", at)
        };
        let outcomes = settle_batch(
            &registry,
            &TierBook::default(),
            &state,
            &[(Mark::new(at, id), e)],
        )
        .await
        .unwrap();
        assert!(matches!(&outcomes[0], Outcome::DeadLetter(r) if r.contains("undecodable memo")));
    }
}
