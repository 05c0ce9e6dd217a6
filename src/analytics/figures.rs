//! The figures every report is made of, as both backends add them up, and the ratios
//! derived from them.

use rust_decimal::{Decimal, RoundingStrategy};

use crate::engine::Status;

/// Figures of one group (a program, a bucket, a partner, a campaign…). Amounts are in
/// the program's currency, exact sums of the ledger's rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    pub clicks: u64,
    pub unique_clicks: u64,
    pub bot_clicks: u64,
    /// Attributed conversions by kind (a conversion shared by partners counts once in
    /// a program's figures, and once for each partner it credits).
    pub leads: u64,
    pub signups: u64,
    pub sales: u64,
    pub recurring: u64,
    /// Credited revenue of sales and recurring payments.
    pub revenue: Decimal,
    /// Commission by the rows' current status, in [`Status::ALL`]'s order.
    pub commission: [Decimal; 6],
}

impl Figures {
    /// Adds the commission of a row in `status`.
    pub fn add_commission(&mut self, status: Status, amount: Decimal) {
        let i = Status::ALL.iter().position(|s| *s == status).unwrap_or(0);
        self.commission[i] += amount;
    }

    pub fn commission_in(&self, status: Status) -> Decimal {
        let i = Status::ALL.iter().position(|s| *s == status).unwrap_or(0);
        self.commission[i]
    }

    /// Commission net of reversals, rejected rows left out: what the partners earn.
    pub fn commission(&self) -> Decimal {
        Status::ALL
            .iter()
            .zip(self.commission)
            .filter(|(s, _)| **s != Status::Rejected)
            .map(|(_, a)| a)
            .sum()
    }

    pub fn conversions(&self) -> u64 {
        self.leads + self.signups + self.sales + self.recurring
    }

    /// Sales per unique click, four decimals; `None` without unique clicks.
    pub fn conversion_rate(&self) -> Option<Decimal> {
        ratio(Decimal::from(self.sales), self.unique_clicks)
    }

    /// Earnings per (unique) click: commission per unique click, four decimals.
    pub fn epc(&self) -> Option<Decimal> {
        ratio(self.commission(), self.unique_clicks)
    }
}

/// `n / d` to four decimals, half to even; `None` when `d` is 0.
pub fn ratio(n: Decimal, d: u64) -> Option<Decimal> {
    (d > 0).then(|| {
        let mut r =
            (n / Decimal::from(d)).round_dp_with_strategy(4, RoundingStrategy::MidpointNearestEven);
        // Always four decimals: "1.0000", not "1".
        r.rescale(4);
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn commission_leaves_rejected_rows_out_and_nets_reversals() {
        let mut f = Figures::default();
        f.add_commission(Status::Pending, d("10.00"));
        f.add_commission(Status::Reversed, d("5.00"));
        f.add_commission(Status::Reversed, d("-5.00"));
        f.add_commission(Status::Rejected, d("7.00"));
        f.add_commission(Status::Paid, d("2.50"));
        assert_eq!(f.commission(), d("12.50"));
        assert_eq!(f.commission_in(Status::Rejected), d("7.00"));
    }

    #[test]
    fn ratios_round_half_to_even_and_need_a_click() {
        let f = Figures {
            unique_clicks: 3,
            sales: 1,
            ..Figures::default()
        };
        assert_eq!(f.conversion_rate(), Some(d("0.3333")));
        assert_eq!(ratio(d("0.00005"), 1), Some(d("0.0000")));
        assert_eq!(ratio(d("0.00015"), 1), Some(d("0.0002")));
        assert_eq!(Figures::default().epc(), None);
        assert_eq!(ratio(d("5"), 5).unwrap().to_string(), "1.0000");
        let money = crate::money::at_minor_units;
        assert_eq!(money(d("12.5"), 2).to_string(), "12.50");
        assert_eq!(money(d("1.005"), 2).to_string(), "1.00");
    }
}
