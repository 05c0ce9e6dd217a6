use super::*;

fn q(partner: &str) -> QueueId {
    QueueId {
        program_id: "acme".into(),
        endpoint: "crm".into(),
        partner_id: partner.into(),
    }
}

fn event(n: u128) -> Parked {
    Parked {
        parked_ms: 0,
        event_id: Uuid::from_u128(n),
        event_type: "commission.created".into(),
        body: format!("{{\"n\":{n}}}").into_bytes(),
    }
}

/// Order per queue, replays skipped, leases, lost claims, retries, the backlog.
pub async fn run(store: &dyn DeliveryQueue) {
    let t0 = 1_000_000;
    let items = vec![
        (q("alice"), event(1)),
        (q("bob"), event(2)),
        (q("alice"), event(3)),
    ];
    assert_eq!(store.park(&items, t0).await.unwrap(), 3);
    // A replay of the same events parks nothing.
    assert_eq!(store.park(&items, t0 + 5).await.unwrap(), 0);
    let backlog = store.backlog().await.unwrap();
    assert_eq!(backlog.oldest_parked_ms, Some(t0));
    assert_eq!(backlog.queues, 2);

    // Two due queues, each with its head; nothing left to claim under the lease.
    let mut claims = store.claim(t0 + 10, 1_000, 10).await.unwrap();
    claims.sort_by(|a, b| a.queue.cmp(&b.queue));
    assert_eq!(claims.len(), 2);
    assert_eq!(claims[0].queue, q("alice"));
    assert_eq!(claims[0].head.event_id, Uuid::from_u128(1));
    assert_eq!(claims[0].head.parked_ms, t0);
    assert_eq!(claims[0].head.body, b"{\"n\":1}");
    assert_eq!(claims[0].head.event_type, "commission.created");
    assert_eq!(claims[0].attempts, 0);
    assert!(store.claim(t0 + 20, 1_000, 10).await.unwrap().is_empty());

    // alice: a failed attempt, retried later; the head stays.
    assert!(store.again(&claims[0], t0 + 500, 1).await.unwrap());
    assert!(store.claim(t0 + 499, 1_000, 10).await.unwrap().is_empty());
    let retry = store.claim(t0 + 500, 1_000, 10).await.unwrap();
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].head.event_id, Uuid::from_u128(1));
    assert_eq!(retry[0].attempts, 1);
    // The old claim is spent.
    assert!(!store.done(&claims[0], t0 + 500).await.unwrap());

    // bob's claim runs out; another worker takes the queue; the first one's ending
    // is refused, the second one's counts.
    let taken = store.claim(t0 + 1_011, 1_000, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].queue, q("bob"));
    assert!(!store.done(&claims[1], t0 + 1_011).await.unwrap());
    assert!(store.done(&taken[0], t0 + 1_012).await.unwrap());

    // alice acknowledged: the next event in order, due at once.
    assert!(store.done(&retry[0], t0 + 600).await.unwrap());
    let next = store.claim(t0 + 600, 1_000, 10).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].head.event_id, Uuid::from_u128(3));
    assert_eq!(next[0].attempts, 0, "attempts count per event");
    assert_eq!(
        store.backlog().await.unwrap(),
        Backlog {
            oldest_parked_ms: Some(t0),
            queues: 1
        }
    );
    assert!(store.done(&next[0], t0 + 700).await.unwrap());
    assert_eq!(store.backlog().await.unwrap(), Backlog::default());
    assert!(store
        .claim(t0 + 10_000, 1_000, 10)
        .await
        .unwrap()
        .is_empty());

    // Still known: published again later, not parked again.
    assert_eq!(store.park(&items[..1], t0 + 20_000).await.unwrap(), 0);
    // Another endpoint is another queue and another marker.
    let other = QueueId {
        endpoint: "erp".into(),
        ..q("alice")
    };
    assert_eq!(
        store
            .park(&[(other.clone(), event(1))], t0 + 20_000)
            .await
            .unwrap(),
        1
    );
    let c = store.claim(t0 + 20_000, 1_000, 10).await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].queue, other);
    assert_eq!(c[0].head.parked_ms, t0 + 20_000);
    assert!(store.done(&c[0], t0 + 20_001).await.unwrap());
}
