//! Counter increments of a round, added to the recorder once per series ([`Counts`]).

use std::collections::HashMap;

/// Counter increments gathered over a round and added once per series: every click
/// and conversion bumps two to eight labelled counters, and each `counter!` is a
/// lookup in the recorder's registry (3 % of settling's time, measured). The series
/// are few; a round is a fraction of a second.
#[derive(Default)]
pub(super) struct Counts(HashMap<Series, u64>);

/// A counter's name and up to two labels (unused ones empty).
type Series = (&'static str, [(&'static str, &'static str); 2]);

impl Counts {
    /// `n` more on the series `name` with `labels` (an empty key: no label).
    pub(super) fn add<const L: usize>(
        &mut self,
        name: &'static str,
        labels: [(&'static str, &'static str); L],
        n: u64,
    ) {
        const { assert!(L <= 2, "a series has at most two labels") };
        let mut series = [("", ""); 2];
        for (slot, label) in series.iter_mut().zip(labels) {
            *slot = label;
        }
        *self.0.entry((name, series)).or_default() += n;
    }

    pub(super) fn flush(&mut self) {
        for ((name, labels), n) in self.0.drain() {
            let labels: Vec<metrics::Label> = labels
                .iter()
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| metrics::Label::new(*k, *v))
                .collect();
            metrics::counter!(name, labels).increment(n);
        }
    }
}
