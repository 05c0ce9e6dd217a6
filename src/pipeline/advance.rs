//! One step of the frontiers: candidate clicks decided in `(ts, click_id)` order, then
//! conversions settled in intake order, then this instance's frontiers published.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::resolve::Outcome;
use super::schedule::{Part, Progress, View};
use super::store::{Answer, Decide, Mark, Read, StateError, StateStore, StoredTouch, Tally};
use super::{resolve, retry, schedule, store, PendingClick, Pipeline, SETTLE_CHUNK};
use crate::bus::Topic;
use crate::engine::dedup;
use crate::engine::fraud::{Rule, CLICK_SPAM_WINDOW_MS};
use crate::events::ConversionEvent;
use crate::metrics as m;
use crate::registry::Registry;
use crate::shutdown::Shutdown;

/// `click_spam` (SPEC §5.8): which of these candidate clicks come past their program's
/// limit of clicks from one ip_hash on one partner's links within the hour up to them,
/// counting every click recorded before each (all are: the clicks are released).
pub(super) async fn click_spam(
    registry: &Registry,
    state: &dyn StateStore,
    clicks: &[(Mark, PendingClick)],
) -> Result<Vec<bool>, StateError> {
    let mut reads = Vec::new();
    let mut asked = Vec::with_capacity(clicks.len());
    for (mark, p) in clicks {
        let c = &p.event;
        let program = registry
            .program(&c.program_id)
            .filter(|p| p.fraud.max_clicks_per_ip_hour.is_some());
        asked.push(program.map(|program| {
            reads.push(Read::Count {
                tally: Tally::IpClicks {
                    program: c.program_id.clone(),
                    partner: c.partner_id.clone(),
                    ip_hash: c.ip_hash.clone(),
                },
                from_ms: mark.ms - CLICK_SPAM_WINDOW_MS + 1,
                before: *mark,
            });
            (reads.len() - 1, program)
        }));
    }
    if reads.is_empty() {
        return Ok(vec![false; clicks.len()]);
    }
    let answers = state.read(&reads).await?;
    Ok(asked
        .iter()
        .map(|a| match a {
            Some((i, program)) => {
                matches!(answers[*i], Answer::Count(n) if program.fraud.click_spam(n))
            }
            None => false,
        })
        .collect())
}

impl Pipeline {
    /// The bounds of this moment (see [`schedule`]).
    pub(super) fn bounds(
        &self,
        all: &[Part],
        owned: &[(Part, bool)],
        published: &HashMap<String, Mark>,
        drain: bool,
    ) -> schedule::Bounds {
        let now_ms = self.now().timestamp_millis();
        let grace_ms =
            i64::try_from(self.config.late_grace_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let mine: HashMap<Part, (Mark, Option<Mark>, Option<Mark>)> = owned
            .iter()
            .map(|&(part, at_end)| {
                let progress = Progress {
                    at_end,
                    ..self.progress.get(&part).copied().unwrap_or_default()
                };
                (
                    part,
                    (
                        progress.read_frontier(now_ms, grace_ms),
                        self.clicks.first_of(part),
                        self.conversions.first_of(part),
                    ),
                )
            })
            .collect();
        let mut bounds = View {
            all,
            names: (&self.click_topic, &self.conversion_topic),
            owned: &mine,
            published,
        }
        .bounds();
        if drain {
            bounds.decide_below = Mark::MAX;
            bounds.settle_below = Mark::MAX;
        }
        bounds
    }

    /// Decides the clicks and settles the conversions the frontiers release, then
    /// publishes this instance's frontiers. `drain`: release everything.
    pub(super) async fn advance(
        &mut self,
        all: Vec<Part>,
        owned: Vec<(Part, bool)>,
        drain: bool,
        shutdown: &Shutdown,
    ) -> bool {
        let state = Arc::clone(&self.state);
        let round = Instant::now();
        let Some(published) = retry(shutdown, || state.frontiers()).await else {
            return false;
        };
        let max_wait = Duration::from_secs(
            self.config
                .late_grace_secs
                .saturating_add(self.config.max_wait_secs),
        );

        // Candidate clicks, in mark order.
        let bounds = self.bounds(&all, &owned, &published, drain);
        // At most a poll's worth at once: rows, memory and round trips stay bounded, and
        // writes and commits keep coming during a long backlog.
        let limit = self.config.poll_batch;
        let released = self.clicks.release(
            bounds.decide_below,
            max_wait,
            self.config.max_pending,
            limit,
        );
        let mut more = released.items.len() == limit;
        let released_clicks = released.items.len();
        if !released.items.is_empty() {
            let registry = &self.registry;
            let Some(suspicious) =
                retry(shutdown, || click_spam(registry, &*state, &released.items)).await
            else {
                self.commit_blocked = true;
                return false;
            };
            let decides: Vec<Decide> = released
                .items
                .iter()
                .zip(&suspicious)
                .map(|((_, p), suspicious)| Decide {
                    candidate: p.candidate.clone(),
                    program_id: p.event.program_id.clone(),
                    visitor_id: p.event.visitor_id,
                    touch: StoredTouch {
                        click_id: p.event.click_id,
                        partner_id: p.event.partner_id.clone(),
                        campaign: p.event.campaign.clone().unwrap_or_default(),
                        ts: p.event.ts,
                    },
                    keep: p.keep,
                    touchpoint: !suspicious,
                })
                .collect();
            let Some(verdicts) = retry(shutdown, || state.decide_clicks(&decides)).await else {
                self.commit_blocked = true;
                return false;
            };
            for (((_, p), unique), suspicious) in
                released.items.into_iter().zip(verdicts).zip(suspicious)
            {
                let verdict = if suspicious {
                    metrics::counter!(m::PIPELINE_FRAUD_FLAGS_TOTAL, "rule" => Rule::ClickSpam.as_str())
                        .increment(1);
                    dedup::ClickVerdict::Suspicious
                } else if unique {
                    dedup::ClickVerdict::Unique
                } else {
                    dedup::ClickVerdict::Duplicate
                };
                self.emit_click(p.event, verdict);
            }
        }

        let clicks_done = round.elapsed();
        let clicks_decided = released_clicks;

        // Conversions, in intake order.
        let bounds = self.bounds(&all, &owned, &published, drain);
        let released = self.conversions.release(
            bounds.settle_below,
            max_wait,
            self.config.max_pending,
            limit,
        );
        more |= released.items.len() == limit;
        if released.forced > 0 && !drain {
            metrics::counter!(m::PIPELINE_FORCED_SETTLEMENTS_TOTAL)
                .increment(released.forced as u64);
            tracing::warn!(
                forced = released.forced,
                "settled conversions before every partition released them"
            );
        }
        let mut items = released.items;
        let conversions_settled = items.len();
        while !items.is_empty() {
            let rest = items.split_off(items.len().min(SETTLE_CHUNK));
            let chunk = std::mem::replace(&mut items, rest);
            let batch: Vec<(Mark, ConversionEvent)> = chunk
                .iter()
                .map(|(mark, p)| (*mark, p.event.clone()))
                .collect();
            let registry = Arc::clone(&self.registry);
            let Some(outcomes) = retry(shutdown, || {
                resolve::settle_batch(&registry, &*state, &batch)
            })
            .await
            else {
                self.commit_blocked = true;
                return false;
            };
            for ((_, p), outcome) in chunk.into_iter().zip(outcomes) {
                match outcome {
                    Outcome::Settled(memo) => self.emit_conversion(&p.event, &memo),
                    Outcome::DeadLetter(reason) => {
                        let payload = serde_json::to_vec(&p.event).unwrap_or_default();
                        self.dead_letter(
                            &Topic::Conversions,
                            p.partition,
                            p.offset,
                            &payload,
                            &reason,
                            shutdown,
                        )
                        .await;
                    }
                }
            }
        }
        metrics::gauge!(m::PIPELINE_PENDING).set(self.conversions.len() as f64);
        metrics::gauge!(m::PIPELINE_PENDING_CLICKS).set(self.clicks.len() as f64);

        // What this instance now vouches for.
        let bounds = self.bounds(&all, &owned, &published, false);
        if retry(shutdown, || state.publish(&bounds.publish))
            .await
            .is_none()
        {
            // Unpublished frontiers only hold others back a little longer.
            tracing::warn!("stopping before the frontiers were published");
            return more;
        }

        // Holds that ended before everything settled everywhere: approve their rows.
        // Every instance may approve the same order; the steps are identical rows.
        let before_ms = bounds.settled_everywhere.ms.saturating_add(1);
        let read = [store::Read::DueBefore { before_ms, limit }];
        if let Some(answers) = retry(shutdown, || state.read(&read)).await {
            if let Some(store::Answer::Entries(entries)) = answers.into_iter().next() {
                let full = entries.len() == limit;
                let fresh: Vec<String> = entries
                    .into_iter()
                    .filter(|e| {
                        !self.due_done.contains(e)
                            && !self.flight.as_ref().is_some_and(|f| f.due.contains(e))
                    })
                    .collect();
                // Ends already approved wait for the write; only new ones call for more.
                more |= full && !fresh.is_empty();
                if let Some(rows) = retry(shutdown, || resolve::approvals(&*state, &fresh)).await {
                    metrics::counter!(m::PIPELINE_LIFECYCLE_STEPS_TOTAL, "status" => "approved")
                        .increment(rows.len() as u64);
                    self.outbox.steps(&self.registry, &rows);
                    self.rows.statuses.extend(rows);
                    self.due_done.extend(fresh);
                }
            }
        }
        tracing::debug!(
            clicks_decided,
            clicks_ms = clicks_done.as_millis() as u64,
            conversions_settled,
            conversions_ms = (round.elapsed() - clicks_done).as_millis() as u64,
            pending_clicks = self.clicks.len(),
            pending_conversions = self.conversions.len(),
            "advanced"
        );
        more
    }
}
