//! The commission lifecycle (SPEC §5.7) as pure functions of event time:
//!
//! ```text
//! pending ──(hold_days passed in event time)──▶ approved ──(payout)──▶ paid
//!    │  └──(fraud rule)──▶ held ──(review: approve | reject)──▶ approved | rejected
//!    └──(refund reverses all of it before approval)──▶ reversed
//! ```
//!
//! Every status change is a *step* of one ledger row: its creation is step 0 and each
//! transition the next step, so the current status is the one of the highest step,
//! whatever the clocks of the processes that recorded them. The pipeline's transitions
//! (creation, approval at the end of the hold, cancellation by a refund) depend only on
//! event times compared in intake order, so a replay or a second instance records the
//! same steps; review and payouts are the only steps made by people.
//!
//! Times are milliseconds on the intake axis (`received_at`): a hold that ends at `due`
//! has ended for every conversion received at or after `due`, and a refund received
//! before `due` comes before the approval.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::commission::EarnedRow;
use super::fraud::Rule;

/// The status of a ledger row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Held,
    Approved,
    Rejected,
    Reversed,
    Paid,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Held,
        Status::Approved,
        Status::Rejected,
        Status::Reversed,
        Status::Paid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Held => "held",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Reversed => "reversed",
            Status::Paid => "paid",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Where the rows of one order stand, fixed when it is settled and remembered with the
/// order, so that its refunds and the end of its hold read the same thing on any
/// instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// The fraud rules that flagged the conversion (empty: not held).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<Rule>,
    /// When its hold period ends (ms); `None` when it was over at settlement (or the
    /// rows are held, which only a review ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<i64>,
}

impl Standing {
    /// The standing of a conversion flagged by `flags`, with a hold of `hold_days` from
    /// its `occurred_ms`, settled at `received_ms`.
    pub fn new(mut flags: Vec<Rule>, hold_days: u32, occurred_ms: i64, received_ms: i64) -> Self {
        flags.sort();
        flags.dedup();
        let due = occurred_ms.saturating_add(i64::from(hold_days) * 86_400_000);
        Standing {
            due_ms: (flags.is_empty() && due > received_ms).then_some(due),
            held: flags,
        }
    }

    /// The status the order's rows have at `ms`, before any refund cancels them.
    pub fn status_at(&self, ms: i64) -> Status {
        if !self.held.is_empty() {
            return Status::Held;
        }
        match self.due_ms {
            Some(due) if ms < due => Status::Pending,
            _ => Status::Approved,
        }
    }

    /// Why the rows have that status.
    pub fn reason_at(&self, ms: i64) -> String {
        match self.status_at(ms) {
            Status::Held => names(&self.held),
            Status::Pending => "hold period".into(),
            _ => "hold period over".into(),
        }
    }
}

/// The rules' names as a row's reason: `fast_conversion,self_referral`.
fn names(rules: &[Rule]) -> String {
    let names: Vec<&str> = rules.iter().map(|r| r.as_str()).collect();
    names.join(",")
}

/// A ledger row a lifecycle step applies to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowRef {
    /// The conversion that created the row, and the row's index among its rows.
    pub conversion_id: Uuid,
    pub index: usize,
    pub partner_id: String,
    /// 0 direct, 1.. override level; reversal rows keep the level they reverse.
    pub level: u8,
    pub reversal: bool,
    pub amount: Decimal,
}

/// The lifecycle steps settling a conversion makes (SPEC §5.7), decided with it and
/// remembered in its memo, so that a replay records the very same steps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Where an original conversion's rows stand: the fraud rules that hold them, when
    /// their hold ends.
    #[serde(default)]
    pub standing: Standing,
    /// Each row's status at creation, and why.
    #[serde(default)]
    pub created: Vec<(Status, String)>,
    /// Pending rows a refund reverses in full, which it cancels.
    #[serde(default)]
    pub cancels: Vec<RowRef>,
}

impl Lifecycle {
    /// The status row `index` was created with.
    pub fn created(&self, index: usize) -> (Status, &str) {
        self.created.get(index).map_or(
            (Status::Approved, "settled before the lifecycle"),
            |(s, r)| (*s, r.as_str()),
        )
    }
}

/// A refund booked on an order: when it was received, which conversion it was, and per
/// reversal row (in the refund's row order) the earned row it reverses and its amount.
#[derive(Debug, Clone, PartialEq)]
pub struct BookedRefund {
    pub received_ms: i64,
    pub conversion_id: Uuid,
    pub rows: Vec<(usize, Decimal)>,
}

/// What a refund received at `received_ms` does to the lifecycle of its order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RefundSteps {
    /// The status (and why) of each of the refund's reversal rows, in row order.
    pub created: Vec<(Status, String)>,
    /// Pending rows this refund reverses in full: they are cancelled.
    pub cancels: Vec<RowRef>,
}

/// The lifecycle of a refund's reversal rows `reverses` (earned row index and amount,
/// in the refund's row order) against an order whose rows stand as `standing`, with
/// the refunds booked on it before this one (in intake order) in `earlier`.
/// A reversal row has the status of what it reverses; a pending row that this refund
/// reverses in full is cancelled together with its earlier reversals.
pub fn refund_steps(
    order_id: Uuid,
    rows: &[EarnedRow],
    standing: &Standing,
    earlier: &[BookedRefund],
    received_ms: i64,
    reverses: &[(usize, Decimal)],
) -> RefundSteps {
    let base = standing.status_at(received_ms);
    let mut out = RefundSteps::default();
    for &(i, amount) in reverses {
        let Some(row) = rows.get(i) else {
            out.created.push((base, standing.reason_at(received_ms)));
            continue;
        };
        let before: Vec<(Uuid, usize, Decimal)> = earlier
            .iter()
            .flat_map(|r| {
                r.rows
                    .iter()
                    .enumerate()
                    .filter(|(_, (k, _))| *k == i)
                    .map(|(j, (_, a))| (r.conversion_id, j, *a))
            })
            .collect();
        let reversed: Decimal = before.iter().map(|(_, _, a)| *a).sum::<Decimal>() + amount;
        let in_full = !row.amount.is_zero() && row.amount + reversed == Decimal::ZERO;
        if base == Status::Pending && in_full {
            out.created
                .push((Status::Reversed, "refunded before approval".into()));
            out.cancels.push(RowRef {
                conversion_id: order_id,
                index: i,
                partner_id: row.partner_id.clone(),
                level: row.level,
                reversal: false,
                amount: row.amount,
            });
            out.cancels
                .extend(before.into_iter().map(|(conversion_id, j, a)| RowRef {
                    conversion_id,
                    index: j,
                    partner_id: row.partner_id.clone(),
                    level: row.level,
                    reversal: true,
                    amount: a,
                }));
        } else {
            out.created.push((base, standing.reason_at(received_ms)));
        }
    }
    out
}

/// The rows an order's hold approves when it ends at `due_ms`: every earned row not
/// reversed in full by refunds received before then, with the (pending) reversal rows
/// those refunds booked on it.
pub fn approvals(
    order_id: Uuid,
    rows: &[EarnedRow],
    refunds: &[BookedRefund],
    due_ms: i64,
) -> Vec<RowRef> {
    let mut out = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let mut reversals = Vec::new();
        for r in refunds.iter().filter(|r| r.received_ms < due_ms) {
            for (j, (k, a)) in r.rows.iter().enumerate() {
                if *k == i {
                    reversals.push(RowRef {
                        conversion_id: r.conversion_id,
                        index: j,
                        partner_id: row.partner_id.clone(),
                        level: row.level,
                        reversal: true,
                        amount: *a,
                    });
                }
            }
        }
        let reversed: Decimal = reversals.iter().map(|r| r.amount).sum();
        if !row.amount.is_zero() && row.amount + reversed == Decimal::ZERO {
            // Cancelled by the refund that reversed the rest of it.
            continue;
        }
        out.push(RowRef {
            conversion_id: order_id,
            index: i,
            partner_id: row.partner_id.clone(),
            level: row.level,
            reversal: false,
            amount: row.amount,
        });
        out.extend(reversals);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn earned(partner: &str, level: u8, amount: &str) -> EarnedRow {
        EarnedRow {
            partner_id: partner.into(),
            level,
            amount: d(amount),
            reversed: Decimal::ZERO,
        }
    }

    #[test]
    fn standing_follows_flags_and_the_hold() {
        let s = Standing::new(vec![], 30, 0, 1_000);
        assert_eq!(s.due_ms, Some(30 * DAY));
        assert_eq!(s.status_at(30 * DAY - 1), Status::Pending);
        assert_eq!(s.status_at(30 * DAY), Status::Approved);
        // No hold, or a hold already over when the conversion arrives: approved at once.
        assert_eq!(
            Standing::new(vec![], 0, 0, 1_000).status_at(1_000),
            Status::Approved
        );
        let late = Standing::new(vec![], 30, 0, 31 * DAY);
        assert_eq!(late.due_ms, None);
        assert_eq!(late.status_at(31 * DAY), Status::Approved);
        // Flags hold whatever the time; their names are the reason, sorted, once each.
        let held = Standing::new(
            vec![Rule::SelfReferral, Rule::FastConversion, Rule::SelfReferral],
            30,
            0,
            1,
        );
        assert_eq!(held.status_at(400 * DAY), Status::Held);
        assert_eq!(held.reason_at(0), "fast_conversion,self_referral");
        assert_eq!(held.due_ms, None);
    }

    #[test]
    fn a_partial_refund_before_approval_stays_pending_and_is_approved_with_the_row() {
        let order = Uuid::from_u128(1);
        let refund = Uuid::from_u128(2);
        // A sale of 100.00 at 20% earned 20.00 direct and 2.00 override (SPEC §5.5).
        let rows = [earned("p1", 0, "20.00"), earned("parent", 1, "2.00")];
        let standing = Standing::new(vec![], 30, 0, 0);
        // A refund of 25.00 on day 10 reverses a quarter of each row.
        let reverses = [(0, d("-5.00")), (1, d("-0.50"))];
        let steps = refund_steps(order, &rows, &standing, &[], 10 * DAY, &reverses);
        assert_eq!(
            steps.created,
            vec![
                (Status::Pending, "hold period".to_string()),
                (Status::Pending, "hold period".to_string())
            ]
        );
        assert!(steps.cancels.is_empty());
        // Day 30: both rows and both reversals are approved: 22.00 − 5.50 = 16.50 net.
        let booked = [BookedRefund {
            received_ms: 10 * DAY,
            conversion_id: refund,
            rows: reverses.to_vec(),
        }];
        let approved = approvals(order, &rows, &booked, 30 * DAY);
        let net: Decimal = approved.iter().map(|r| r.amount).sum();
        assert_eq!(approved.len(), 4);
        assert_eq!(net, d("16.50"));
        assert_eq!(
            approved
                .iter()
                .filter(|r| r.reversal)
                .map(|r| (r.conversion_id, r.index))
                .collect::<Vec<_>>(),
            vec![(refund, 0), (refund, 1)]
        );
    }

    #[test]
    fn refunds_in_full_before_approval_cancel_and_nothing_is_approved() {
        let order = Uuid::from_u128(1);
        let (r1, r2) = (Uuid::from_u128(2), Uuid::from_u128(3));
        let rows = [earned("p1", 0, "20.00")];
        let standing = Standing::new(vec![], 30, 0, 0);
        let first = BookedRefund {
            received_ms: DAY,
            conversion_id: r1,
            rows: vec![(0, d("-15.00"))],
        };
        // The second refund takes the remaining 5.00: the row and the first reversal
        // are cancelled with it.
        let steps = refund_steps(
            order,
            &rows,
            &standing,
            std::slice::from_ref(&first),
            2 * DAY,
            &[(0, d("-5.00"))],
        );
        assert_eq!(
            steps.created,
            vec![(Status::Reversed, "refunded before approval".to_string())]
        );
        assert_eq!(
            steps
                .cancels
                .iter()
                .map(|r| (r.conversion_id, r.index, r.amount))
                .collect::<Vec<_>>(),
            vec![(order, 0, d("20.00")), (r1, 0, d("-15.00"))]
        );
        let second = BookedRefund {
            received_ms: 2 * DAY,
            conversion_id: r2,
            rows: vec![(0, d("-5.00"))],
        };
        assert!(approvals(order, &rows, &[second, first], 30 * DAY).is_empty());
    }

    #[test]
    fn a_refund_after_approval_is_an_approved_negative_row() {
        let order = Uuid::from_u128(1);
        let rows = [earned("p1", 0, "20.00")];
        let standing = Standing::new(vec![], 30, 0, 0);
        // Even in full: after approval (and after a payout) it is a clawback, netted
        // in the partner's next payout.
        let steps = refund_steps(order, &rows, &standing, &[], 30 * DAY, &[(0, d("-20.00"))]);
        assert_eq!(
            steps.created,
            vec![(Status::Approved, "hold period over".to_string())]
        );
        assert!(steps.cancels.is_empty());
        // The approval at day 30 does not see a refund received at day 30 or later.
        let booked = [BookedRefund {
            received_ms: 30 * DAY,
            conversion_id: Uuid::from_u128(2),
            rows: vec![(0, d("-20.00"))],
        }];
        let approved = approvals(order, &rows, &booked, 30 * DAY);
        assert_eq!(approved.len(), 1);
        assert!(!approved[0].reversal);
    }

    #[test]
    fn reversals_of_held_rows_are_held_for_the_same_reason() {
        let rows = [earned("p1", 0, "20.00")];
        let standing = Standing::new(vec![Rule::ReviewAbove], 30, 0, 0);
        let steps = refund_steps(
            Uuid::from_u128(1),
            &rows,
            &standing,
            &[],
            DAY,
            &[(0, d("-20.00"))],
        );
        assert_eq!(
            steps.created,
            vec![(Status::Held, "review_above".to_string())]
        );
        assert!(steps.cancels.is_empty());
    }

    #[test]
    fn statuses_round_trip_their_names() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("booked"), None);
    }
}
