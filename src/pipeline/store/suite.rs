//! One test suite for every [`StateStore`]: the memory store runs it in unit tests,
//! the Redis store against a real Redis in `tests/store_redis.rs`. Not for use
//! outside tests: it asserts.

use super::*;

fn cand(fp: &str, ms: i64, id: u128, window_ms: u64) -> Candidate {
    Candidate {
        fingerprint: fp.into(),
        mark: Mark { ms, id },
        window_ms,
    }
}

fn decide(c: &Candidate) -> Decide {
    Decide {
        candidate: c.clone(),
        program_id: "acme".into(),
        visitor_id: Uuid::from_u128(7),
        touch: StoredTouch {
            click_id: Uuid::from_u128(c.mark.id),
            partner_id: "p".into(),
            campaign: "spring".into(),
            ts: Utc.timestamp_millis_opt(c.mark.ms).unwrap(),
        },
        keep: Duration::from_secs(3600),
        touchpoint: true,
    }
}

fn decide_all(cs: &[&Candidate]) -> Vec<Decide> {
    cs.iter().map(|c| decide(c)).collect()
}

fn record(c: &Candidate) -> ClickRecord {
    ClickRecord {
        click_id: Uuid::from_u128(c.mark.id),
        visitor_id: Uuid::from_u128(7),
        keep: Duration::from_secs(3600),
        candidate: Some(c.clone()),
        mark: c.mark,
        ip: None,
    }
}

const T: i64 = 1_790_000_000_000;

/// Verdicts follow mark order whichever candidate is asked about first.
pub async fn clicks_decide_in_mark_order(s: &dyn StateStore) {
    let w = 60_000;
    let a = cand("f", T, 1, w);
    let b = cand("f", T + 10_000, 2, w); // inside a's window: duplicate
    let c = cand("f", T + 61_000, 3, w); // past a's window: unique
    let d = cand("f", T + 61_000, 4, w); // same ms as c, later id: duplicate
    s.record_clicks(&[record(&c), record(&a), record(&d), record(&b)])
        .await
        .unwrap();
    // Asked about the last first: everything before it is decided on the way.
    assert_eq!(
        s.decide_clicks(&decide_all(&[&d])).await.unwrap(),
        vec![false]
    );
    assert_eq!(
        s.decide_clicks(&decide_all(&[&b, &a, &c])).await.unwrap(),
        vec![false, true, true]
    );
    // Replays answer the same.
    assert_eq!(
        s.decide_clicks(&decide_all(&[&a, &b, &c, &d]))
            .await
            .unwrap(),
        vec![true, false, true, false]
    );
    // The unique ones, and only they, joined the visitor's journey.
    let journey = s
        .read(&[Read::Journey {
            program: "acme".into(),
            visitor: Uuid::from_u128(7),
            from_ms: T - 1,
            to_ms: T + 100_000,
        }])
        .await
        .unwrap();
    assert_eq!(
        journey,
        vec![Answer::Touches(vec![decide(&a).touch, decide(&c).touch])]
    );
    assert_eq!(
        s.read(&[Read::ClickVisitor(Uuid::from_u128(3))])
            .await
            .unwrap(),
        vec![Answer::Text(Some(Uuid::from_u128(7).to_string()))]
    );
}

/// Journeys: idempotent adds, ranges by time, capped at the newest.
pub async fn journeys(s: &dyn StateStore) {
    let click = |id: u128, ms: i64| {
        let c = cand(&format!("j{id}"), ms, id, 0);
        let mut d = decide(&c);
        d.visitor_id = Uuid::from_u128(9);
        (c, d)
    };
    let (c1, d1) = click(101, T);
    let (c2, d2) = click(102, T + 5);
    s.record_clicks(&[record(&c1), record(&c2)]).await.unwrap();
    s.decide_clicks(&[d1.clone(), d2, d1.clone()])
        .await
        .unwrap();
    let got = s
        .read(&[Read::Journey {
            program: "acme".into(),
            visitor: Uuid::from_u128(9),
            from_ms: T,
            to_ms: T + 4,
        }])
        .await
        .unwrap();
    assert_eq!(got, vec![Answer::Touches(vec![d1.touch])]);
    // More than MAX_JOURNEY unique clicks: the newest are kept.
    let many: Vec<(Candidate, Decide)> = (0..MAX_JOURNEY as u128 + 4)
        .map(|i| click(1000 + i, T + 10 + i as i64))
        .collect();
    let records: Vec<ClickRecord> = many.iter().map(|(c, _)| record(c)).collect();
    s.record_clicks(&records).await.unwrap();
    let decides: Vec<Decide> = many.iter().map(|(_, d)| d.clone()).collect();
    s.decide_clicks(&decides).await.unwrap();
    let got = s
        .read(&[Read::Journey {
            program: "acme".into(),
            visitor: Uuid::from_u128(9),
            from_ms: 0,
            to_ms: i64::MAX / 2,
        }])
        .await
        .unwrap();
    let Answer::Touches(t) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(t.len(), MAX_JOURNEY);
    assert_eq!(
        t.last().unwrap().click_id,
        Uuid::from_u128(1000 + MAX_JOURNEY as u128 + 3)
    );
}

/// Memos are set once; counts, first sales and refunds read as of a mark.
pub async fn conversions_read_as_of_a_mark(s: &dyn StateStore) {
    let id = Uuid::from_u128(5);
    let first = s
        .write(&[Write::Memo {
            conversion_id: id,
            json: "one".into(),
        }])
        .await
        .unwrap();
    assert_eq!(first, vec![None]);
    let again = s
        .write(&[Write::Memo {
            conversion_id: id,
            json: "two".into(),
        }])
        .await
        .unwrap();
    assert_eq!(again, vec![Some("one".to_string())]);
    assert_eq!(
        s.memos(&[id, Uuid::from_u128(6)]).await.unwrap(),
        vec![Some("one".to_string()), None]
    );

    let volume = Tally::Volume {
        program: "acme".into(),
        partner: "p".into(),
        month: 202610,
    };
    let count = |ms: i64, id: u128| Write::Tally {
        tally: volume.clone(),
        mark: Mark { ms, id },
    };
    s.write(&[count(T, 2), count(T, 4), count(T + 1, 1), count(T, 2)])
        .await
        .unwrap();
    let before = |ms: i64, id: u128| Read::Count {
        tally: volume.clone(),
        from_ms: 0,
        before: Mark { ms, id },
    };
    assert_eq!(
        s.read(&[before(T, 3), before(T, 2), before(T + 5, 0), before(T, 0)])
            .await
            .unwrap(),
        vec![
            Answer::Count(1),
            Answer::Count(0),
            Answer::Count(3),
            Answer::Count(0)
        ]
    );

    let sale = |ms: i64, id: u128, json: &str| Write::FirstSale {
        program: "acme".into(),
        customer: "c".into(),
        mark: Mark { ms, id },
        json: json.into(),
        ttl: None,
    };
    // The later sale is stored first: the earlier one still wins.
    s.write(&[sale(T + 10, 1, "late"), sale(T, 9, "early")])
        .await
        .unwrap();
    let first_before = |ms: i64| Read::FirstSale {
        program: "acme".into(),
        customer: "c".into(),
        before: Mark::at(ms),
    };
    assert_eq!(
        s.read(&[first_before(T + 100), first_before(T)])
            .await
            .unwrap(),
        vec![
            Answer::Marked(Some((Mark { ms: T, id: 9 }, "early".into()))),
            Answer::Marked(None)
        ]
    );
    // Counted as of a mark: by time, then by id within one millisecond.
    s.write(&[sale(T, 3, "same ms, lower id")]).await.unwrap();
    let sales_before = |ms: i64, id: u128| Read::CustomerSales {
        program: "acme".into(),
        customer: "c".into(),
        before: Mark { ms, id },
    };
    assert_eq!(
        s.read(&[
            sales_before(T, 0),
            sales_before(T, 4),
            sales_before(T, 10),
            sales_before(T + 10, 1),
            sales_before(T + 11, 0),
        ])
        .await
        .unwrap(),
        vec![
            Answer::Count(0),
            Answer::Count(1),
            Answer::Count(2),
            Answer::Count(2),
            Answer::Count(3)
        ]
    );

    // Cap totals: the latest entry before a mark, whatever the order of writes.
    let cap = CapKey {
        program: "acme".into(),
        partner: "alice".into(),
        period: "d20261207".into(),
    };
    let total = |ms: i64, id: u128, t: &str| Write::CapTotal {
        key: cap.clone(),
        mark: Mark { ms, id },
        total: t.parse().unwrap(),
    };
    s.write(&[
        total(T + 5, 2, "30.00"),
        total(T, 7, "10.50"),
        total(T + 5, 1, "20.00"),
    ])
    .await
    .unwrap();
    let latest = |ms: i64, id: u128| Read::CapTotal {
        key: cap.clone(),
        before: Mark { ms, id },
    };
    assert_eq!(
        s.read(&[
            latest(T, 7),
            latest(T, 8),
            latest(T + 5, 2),
            latest(T + 6, 0)
        ])
        .await
        .unwrap(),
        vec![
            Answer::Marked(None),
            Answer::Marked(Some((Mark { ms: T, id: 7 }, "10.50".into()))),
            Answer::Marked(Some((Mark { ms: T + 5, id: 1 }, "20.00".into()))),
            Answer::Marked(Some((Mark { ms: T + 5, id: 2 }, "30.00".into()))),
        ]
    );

    let order = |slot| Read::Order {
        program: "acme".into(),
        order: "o-1".into(),
        slot,
    };
    let record = |slot, json: &str| Write::Order {
        program: "acme".into(),
        order: "o-1".into(),
        slot,
        json: json.into(),
    };
    let refund = |slot, ms: i64, json: &str| Write::Refund {
        program: "acme".into(),
        order: "o-1".into(),
        slot,
        mark: Mark { ms, id: 1 },
        json: json.into(),
    };
    // Nothing recorded: a refund finds no record, in a sale's slot.
    assert_eq!(
        s.read(&[order(None)]).await.unwrap(),
        vec![Answer::Order {
            slot: OrderSlot::Sale,
            record: None,
            refunds: Vec::new()
        }]
    );
    s.write(&[
        record(OrderSlot::Signup, "signed up"),
        refund(OrderSlot::Signup, T, "of the signup"),
    ])
    .await
    .unwrap();
    // Only a signup: a refund reverses it.
    assert_eq!(
        s.read(&[order(None)]).await.unwrap(),
        vec![Answer::Order {
            slot: OrderSlot::Signup,
            record: Some("signed up".into()),
            refunds: vec![(Mark { ms: T, id: 1 }, "of the signup".into())]
        }]
    );
    s.write(&[
        record(OrderSlot::Sale, "earned"),
        record(OrderSlot::Sale, "ignored"),
        refund(OrderSlot::Sale, T + 2, "second"),
        refund(OrderSlot::Sale, T + 1, "first"),
        Write::Claim {
            key: "acme:sale:o-1".into(),
            holder: "x".into(),
        },
        Write::Claim {
            key: "acme:sale:o-1".into(),
            holder: "y".into(),
        },
    ])
    .await
    .unwrap();
    let payment = Answer::Order {
        slot: OrderSlot::Sale,
        record: Some("earned".into()),
        refunds: vec![
            (Mark { ms: T + 1, id: 1 }, "first".into()),
            (Mark { ms: T + 2, id: 1 }, "second".into()),
        ],
    };
    // The payment comes first; each slot keeps its own record and reversals.
    assert_eq!(
        s.read(&[
            order(None),
            order(Some(OrderSlot::Sale)),
            order(Some(OrderSlot::Signup)),
            order(Some(OrderSlot::Lead)),
            Read::Claim("acme:sale:o-1".into())
        ])
        .await
        .unwrap(),
        vec![
            payment.clone(),
            payment,
            Answer::Order {
                slot: OrderSlot::Signup,
                record: Some("signed up".into()),
                refunds: vec![(Mark { ms: T, id: 1 }, "of the signup".into())]
            },
            Answer::Order {
                slot: OrderSlot::Lead,
                record: None,
                refunds: Vec::new()
            },
            Answer::Text(Some("x".into()))
        ]
    );
}

/// Windowed tallies: counted from a bound, forgetting what lies behind their keep;
/// a suspicious click is not a touchpoint; clicks are counted in their ip tally.
pub async fn tallies_count_in_windows(s: &dyn StateStore) {
    let sales = Tally::Sales {
        program: "acme".into(),
        partner: "q".into(),
    };
    let keep = ms(sales.keep()) as i64;
    let at = |ms: i64, id: u128| Write::Tally {
        tally: sales.clone(),
        mark: Mark { ms, id },
    };
    // Ids are unique in a tally (conversions', clicks').
    s.write(&[at(T - 10, 1), at(T, 2), at(T, 4), at(T + 5, 5), at(T, 2)])
        .await
        .unwrap();
    let count = |from_ms: i64, ms: i64, id: u128| Read::Count {
        tally: sales.clone(),
        from_ms,
        before: Mark { ms, id },
    };
    assert_eq!(
        s.read(&[
            count(T - 10, T, 3),
            count(T - 9, T, 3),
            count(T, T + 5, 0),
            count(T + 6, T + 5, 0),
            count(0, T + 6, 0)
        ])
        .await
        .unwrap(),
        vec![
            Answer::Count(2),
            Answer::Count(1),
            Answer::Count(2),
            Answer::Count(0),
            Answer::Count(4)
        ]
    );
    // A read far ahead forgets marks further behind it than the keep.
    s.read(&[count(0, T + keep - 1, 0)]).await.unwrap();
    assert_eq!(
        s.read(&[count(0, T + 6, 0)]).await.unwrap(),
        vec![Answer::Count(3)]
    );

    let ip = Tally::IpClicks {
        program: "acme".into(),
        partner: "q".into(),
        ip_hash: "abc".into(),
    };
    let spam = cand("spam", T, 77, 0);
    let mut rec = record(&spam);
    rec.visitor_id = Uuid::from_u128(70);
    rec.ip = Some(ip.clone());
    s.record_clicks(&[rec]).await.unwrap();
    let mut d = decide(&spam);
    d.visitor_id = Uuid::from_u128(70);
    d.touchpoint = false;
    assert_eq!(s.decide_clicks(&[d]).await.unwrap(), vec![true]);
    assert_eq!(
        s.read(&[
            Read::Journey {
                program: "acme".into(),
                visitor: Uuid::from_u128(70),
                from_ms: 0,
                to_ms: T + 1,
            },
            Read::Count {
                tally: ip.clone(),
                from_ms: T - 3_599_999,
                before: Mark { ms: T, id: 78 },
            },
            Read::Count {
                tally: ip,
                from_ms: T - 3_599_999,
                before: Mark { ms: T, id: 77 },
            }
        ])
        .await
        .unwrap(),
        vec![Answer::Touches(vec![]), Answer::Count(1), Answer::Count(0)]
    );
}

/// Many counts of a few tallies in one call (a batch's), as the stores answer
/// them together, equal the counts read one at a time and the marks' own count:
/// ties within a millisecond, empty windows, more marks than one answer takes,
/// and a call spanning days whose later reads' trims must not take marks its
/// earlier reads count.
pub async fn counts_in_one_call(s: &dyn StateStore) {
    const DAY: i64 = 86_400_000;
    let window = 30 * DAY;
    let sales = Tally::Sales {
        program: "calls".into(),
        partner: "p".into(),
    };
    let volume = Tally::Volume {
        program: "calls".into(),
        partner: "p".into(),
        month: 202609,
    };
    let dense = Tally::Refunds {
        program: "calls".into(),
        partner: "p".into(),
    };
    // Sales: one mark every 7 hours for 40 days, and three in one millisecond.
    let mut sales_marks: Vec<Mark> = (0..137)
        .map(|k| Mark {
            ms: T - 40 * DAY + k * 7 * 3_600_000,
            id: 1_000 + k as u128,
        })
        .collect();
    sales_marks.extend((1..=3).map(|id| Mark {
        ms: T,
        id: id * 16 + 1,
    }));
    let volume_marks: Vec<Mark> = (0..50).map(|k| Mark { ms: T + k, id: 7 }).collect();
    // More marks in a millisecond range than a store fetches at once.
    let dense_marks: Vec<Mark> = (0..10_050u128)
        .map(|k| Mark {
            ms: T + 1,
            id: k + 1,
        })
        .collect();
    let mut writes = Vec::new();
    for (tally, marks) in [
        (&sales, &sales_marks),
        (&volume, &volume_marks),
        (&dense, &dense_marks),
    ] {
        writes.extend(marks.iter().map(|m| Write::Tally {
            tally: tally.clone(),
            mark: *m,
        }));
    }
    s.write(&writes).await.unwrap();

    let windowed = |ms: i64, id: u128| Read::Count {
        tally: sales.clone(),
        from_ms: ms - window,
        before: Mark { ms, id },
    };
    let mut reads = vec![
        windowed(T, 0),
        windowed(T, 17),
        windowed(T, 18),
        windowed(T, 49),
        windowed(T - 20 * DAY, 5),
        windowed(T - 50 * DAY, 3),
        windowed(T + 3 * DAY, 32),
    ];
    reads.extend([0, 1, 2, 25, 49, 50, 60].map(|k| Read::Count {
        tally: volume.clone(),
        from_ms: 0,
        before: Mark { ms: T + k, id: 7 },
    }));
    reads.extend(
        [
            (T, 0),
            (T + 1, 1),
            (T + 1, 5_000),
            (T + 1, 10_051),
            (T + 2, 0),
        ]
        .map(|(ms, id)| Read::Count {
            tally: dense.clone(),
            from_ms: ms - window,
            before: Mark { ms, id },
        }),
    );
    let expected: Vec<Answer> = reads
        .iter()
        .map(|r| {
            let Read::Count {
                tally,
                from_ms,
                before,
            } = r
            else {
                unreachable!()
            };
            let marks = match tally {
                Tally::Sales { .. } => &sales_marks,
                Tally::Volume { .. } => &volume_marks,
                _ => &dense_marks,
            };
            Answer::Count(
                marks
                    .iter()
                    .filter(|m| m.ms >= *from_ms && *m < before)
                    .count() as u64,
            )
        })
        .collect();
    assert_eq!(s.read(&reads).await.unwrap(), expected, "in one call");
    // One at a time in mark order, as settlement reads (a read may forget what
    // lies further behind it than the keep).
    let mut one_by_one: Vec<(&Read, &Answer)> = reads.iter().zip(&expected).collect();
    one_by_one.sort_by_key(|(r, _)| match r {
        Read::Count { before, .. } => *before,
        _ => Mark::MIN,
    });
    for (r, want) in one_by_one {
        assert_eq!(
            &s.read(std::slice::from_ref(r)).await.unwrap()[0],
            want,
            "{r:?}"
        );
    }
}

/// Frontiers: published values read back.
pub async fn frontiers(s: &dyn StateStore) {
    s.publish(&[("a/0/s".into(), Mark { ms: T, id: 3 })])
        .await
        .unwrap();
    s.publish(&[("a/1/s".into(), Mark::at(T))]).await.unwrap();
    let got = s.frontiers().await.unwrap();
    assert_eq!(got.get("a/0/s"), Some(&Mark { ms: T, id: 3 }));
    assert_eq!(got.get("a/1/s"), Some(&Mark::at(T)));
}

/// Hold ends: queued idempotently, read earliest first below a bound, removed.
pub async fn due_queue(s: &dyn StateStore) {
    let due = |ms: i64, json: &str| Write::Due {
        due_ms: ms,
        json: json.into(),
    };
    s.write(&[
        due(T + 2, "b"),
        due(T + 1, "a"),
        due(T + 3, "c"),
        due(T + 1, "a"),
    ])
    .await
    .unwrap();
    let read = |before_ms, limit| async move {
        s.read(&[Read::DueBefore { before_ms, limit }])
            .await
            .unwrap()
    };
    assert_eq!(
        read(T + 3, 10).await,
        vec![Answer::Entries(vec!["a".into(), "b".into()])]
    );
    assert_eq!(
        read(T + 9, 1).await,
        vec![Answer::Entries(vec!["a".into()])]
    );
    s.write(&[Write::DueDone { json: "a".into() }])
        .await
        .unwrap();
    assert_eq!(
        read(T + 9, 10).await,
        vec![Answer::Entries(vec!["b".into(), "c".into()])]
    );
    s.write(&[
        Write::DueDone { json: "b".into() },
        Write::DueDone { json: "c".into() },
    ])
    .await
    .unwrap();
    assert_eq!(read(i64::MAX, 10).await, vec![Answer::Entries(vec![])]);
}

/// The whole suite.
pub async fn all(s: &dyn StateStore) {
    clicks_decide_in_mark_order(s).await;
    journeys(s).await;
    conversions_read_as_of_a_mark(s).await;
    due_queue(s).await;
    tallies_count_in_windows(s).await;
    counts_in_one_call(s).await;
    frontiers(s).await;
    tier_state(s).await;
    s.ping().await.unwrap();
}

/// Tier figures gather one entry per conversion (written again, still one); a tier move
/// is set once and a second, different one answers the first; the done mark only
/// moves forward.
async fn tier_state(s: &dyn StateStore) {
    let key = TierKey {
        program: "acme".into(),
        partner: "alice".into(),
        period: "m202611".into(),
    };
    let figure = |id: u128, json: &str| Write::TierFigures {
        key: key.clone(),
        conversion_id: Uuid::from_u128(id),
        json: json.into(),
    };
    let w = s
        .write(&[figure(1, "a"), figure(2, "b"), figure(1, "a")])
        .await
        .unwrap();
    assert_eq!(w, vec![None, None, None]);
    let mv = |from_ms: i64, json: &str| Write::TierMove {
        program: "acme".into(),
        partner: "alice".into(),
        from_ms,
        json: json.into(),
    };
    let done = |boundary_ms| Write::TierDone {
        program: "acme".into(),
        boundary_ms,
    };
    let answers = s
        .write(&[
            mv(T, "gold"),
            mv(T, "gold"),
            mv(T, "silver"),
            mv(T + 1, "x"),
            done(T + 9),
            done(T),
        ])
        .await
        .unwrap();
    assert_eq!(
        answers,
        vec![None, None, Some("gold".into()), None, None, None]
    );
    let reads = [
        Read::TierFigures(key.clone()),
        Read::TierMoves {
            program: "acme".into(),
            partner: "alice".into(),
        },
        Read::TierDone {
            program: "acme".into(),
        },
        Read::TierDone {
            program: "other".into(),
        },
        Read::TierMoves {
            program: "acme".into(),
            partner: "bob".into(),
        },
    ];
    let mut got = s.read(&reads).await.unwrap();
    for a in &mut got {
        if let Answer::Entries(e) = a {
            e.sort();
        }
    }
    assert_eq!(
        got,
        vec![
            Answer::Entries(vec!["a".into(), "b".into()]),
            Answer::Entries(vec!["gold".into(), "x".into()]),
            Answer::Count((T + 9) as u64),
            Answer::Count(0),
            Answer::Entries(vec![]),
        ]
    );
}
