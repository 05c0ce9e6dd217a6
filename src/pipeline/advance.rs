//! One step of the frontiers: candidate clicks decided in `(ts, click_id)` order, then
//! conversions settled in intake order, then this instance's frontiers published.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::dead_letter::Letter;
use super::resolve::Outcome;
use super::schedule::{Part, Progress, View};
use super::store::{Answer, Decide, Mark, Read, StateError, StateStore, StoredTouch, Tally};
use super::{
    resolve, retry, schedule, store, PendingClick, PendingConversion, Pipeline, SETTLE_CHUNK,
};
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

/// What the frontiers are computed from in one step.
pub(super) struct Frame<'a> {
    pub all: &'a [Part],
    pub owned: &'a [(Part, bool)],
    pub published: &'a HashMap<String, Mark>,
    /// Release everything (stopping with nothing to come back for).
    pub drain: bool,
}

/// How much a step released, and whether it stopped at its limit (more is waiting).
#[derive(Default, Clone, Copy)]
struct Released {
    count: usize,
    more: bool,
}

impl Pipeline {
    /// The bounds of this moment (see [`schedule`]).
    pub(super) fn bounds(&self, frame: &Frame<'_>) -> schedule::Bounds {
        let now_ms = self.now().timestamp_millis();
        let grace_ms =
            i64::try_from(self.config.late_grace_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let mine: HashMap<Part, (Mark, Option<Mark>, Option<Mark>)> = frame
            .owned
            .iter()
            .map(|&(part, at_end)| {
                let progress = Progress {
                    at_end,
                    ..self.queue.progress.get(&part).copied().unwrap_or_default()
                };
                (
                    part,
                    (
                        progress.read_frontier(now_ms, grace_ms),
                        self.queue.clicks.first_of(part),
                        self.queue.conversions.first_of(part),
                    ),
                )
            })
            .collect();
        let mut bounds = View {
            all: frame.all,
            names: (&self.click_topic, &self.conversion_topic),
            owned: &mine,
            published: frame.published,
        }
        .bounds();
        if frame.drain {
            bounds.decide_below = Mark::MAX;
            bounds.settle_below = Mark::MAX;
        }
        bounds
    }

    /// Decides the clicks and settles the conversions the frontiers release, then
    /// publishes this instance's frontiers and approves the holds that ended.
    /// `drain`: release everything. True when more is waiting.
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
        let frame = Frame {
            all: &all,
            owned: &owned,
            published: &published,
            drain,
        };
        let Some(clicks) = self.decide_clicks(&frame, shutdown).await else {
            return self.block();
        };
        let clicks_done = round.elapsed();
        let Some(conversions) = self.settle_conversions(&frame, shutdown).await else {
            return self.block();
        };
        metrics::gauge!(m::PIPELINE_PENDING).set(self.queue.conversions.len() as f64);
        metrics::gauge!(m::PIPELINE_PENDING_CLICKS).set(self.queue.clicks.len() as f64);

        // What this instance now vouches for.
        let bounds = self.bounds(&Frame {
            drain: false,
            ..frame
        });
        let mut more = clicks.more || conversions.more;
        if retry(shutdown, || state.publish(&bounds.publish))
            .await
            .is_none()
        {
            // Unpublished frontiers only hold others back a little longer.
            tracing::warn!("stopping before the frontiers were published");
            return more;
        }
        // Boundaries no conversion crossed yet (a quiet program's month ends too).
        if self
            .move_tiers(bounds.settled_everywhere, false, shutdown)
            .await
            .is_none()
        {
            return more;
        }
        more |= self.approve_due(&bounds, shutdown).await;
        tracing::debug!(
            clicks_decided = clicks.count,
            clicks_ms = clicks_done.as_millis() as u64,
            conversions_settled = conversions.count,
            conversions_ms = (round.elapsed() - clicks_done).as_millis() as u64,
            pending_clicks = self.queue.clicks.len(),
            pending_conversions = self.queue.conversions.len(),
            "advanced"
        );
        more
    }

    /// Stopping left taken work without its rows: nothing more is committed.
    fn block(&mut self) -> bool {
        self.commit_blocked = true;
        false
    }

    /// How long a click or conversion may wait for the frontiers before it is forced.
    fn max_wait(&self) -> Duration {
        Duration::from_secs(
            self.config
                .late_grace_secs
                .saturating_add(self.config.max_wait_secs),
        )
    }

    /// Candidate clicks the frontiers release, decided in mark order; `None` when
    /// stopping before they were.
    async fn decide_clicks(&mut self, frame: &Frame<'_>, shutdown: &Shutdown) -> Option<Released> {
        let bounds = self.bounds(frame);
        // At most a poll's worth at once: rows, memory and round trips stay bounded, and
        // writes and commits keep coming during a long backlog.
        let limit = self.config.poll_batch;
        let released = self.queue.clicks.release(
            bounds.decide_below,
            self.max_wait(),
            self.config.max_pending,
            limit,
        );
        let done = Released {
            count: released.items.len(),
            more: released.items.len() == limit,
        };
        if released.items.is_empty() {
            return Some(done);
        }
        let state = Arc::clone(&self.state);
        let registry = &self.registry;
        let suspicious = retry(shutdown, || click_spam(registry, &*state, &released.items)).await?;
        let decides: Vec<Decide> = released
            .items
            .iter()
            .zip(&suspicious)
            .map(|((_, p), suspicious)| decide_of(p, !suspicious))
            .collect();
        let verdicts = retry(shutdown, || state.decide_clicks(&decides)).await?;
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
            self.out.click(p.event, verdict);
        }
        Some(done)
    }

    /// Conversions the frontiers release, settled in intake order in chunks; `None`
    /// when stopping before they were.
    async fn settle_conversions(
        &mut self,
        frame: &Frame<'_>,
        shutdown: &Shutdown,
    ) -> Option<Released> {
        let bounds = self.bounds(frame);
        let limit = self.config.poll_batch;
        let released = self.queue.conversions.release(
            bounds.settle_below,
            self.max_wait(),
            self.config.max_pending,
            limit,
        );
        if released.forced > 0 && !frame.drain {
            metrics::counter!(m::PIPELINE_FORCED_SETTLEMENTS_TOTAL)
                .increment(released.forced as u64);
            tracing::warn!(
                forced = released.forced,
                "settled conversions before every partition released them"
            );
        }
        let mut items = released.items;
        let done = Released {
            count: items.len(),
            more: items.len() == limit,
        };
        while let Some((first, _)) = items.first() {
            // A chunk never spans a month's start, where tier periods begin: the moves
            // made there come after what was taken in before it, and before the rest.
            self.move_tiers(*first, true, shutdown).await?;
            let next_month = crate::engine::tiers::Period::Month
                .next(chrono::DateTime::from_timestamp_millis(first.ms).unwrap_or_default())
                .timestamp_millis();
            let end = items
                .iter()
                .take(SETTLE_CHUNK)
                .position(|(m, _)| m.ms >= next_month)
                .unwrap_or(items.len().min(SETTLE_CHUNK));
            let rest = items.split_off(end);
            let chunk = std::mem::replace(&mut items, rest);
            self.settle_chunk(chunk, shutdown).await?;
        }
        Some(done)
    }

    /// One state round trip's worth of conversions: settled, then emitted or
    /// dead-lettered.
    async fn settle_chunk(
        &mut self,
        chunk: Vec<(Mark, PendingConversion)>,
        shutdown: &Shutdown,
    ) -> Option<()> {
        let batch: Vec<(Mark, ConversionEvent)> = chunk
            .iter()
            .map(|(mark, p)| (*mark, p.event.clone()))
            .collect();
        let state = Arc::clone(&self.state);
        let registry = Arc::clone(&self.registry);
        let book = &self.tiers.book;
        let outcomes = retry(shutdown, || {
            resolve::settle_batch(&registry, book, &*state, &batch)
        })
        .await?;
        for ((_, p), outcome) in chunk.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Settled(memo) => self.out.conversion(&self.registry, &p.event, &memo),
                Outcome::DeadLetter(reason) => {
                    let payload = serde_json::to_vec(&p.event).unwrap_or_default();
                    let letter = Letter {
                        topic: Topic::Conversions,
                        partition: p.partition,
                        offset: p.offset,
                        payload: &payload,
                    };
                    self.dead_letter(letter, &reason, shutdown).await;
                }
            }
        }
        Some(())
    }

    /// Holds that ended before everything settled everywhere: their rows approved.
    /// Every instance may approve the same order; the steps are identical rows. True
    /// when more ends are waiting.
    async fn approve_due(&mut self, bounds: &schedule::Bounds, shutdown: &Shutdown) -> bool {
        let state = Arc::clone(&self.state);
        let limit = self.config.poll_batch;
        let before_ms = bounds.settled_everywhere.ms.saturating_add(1);
        let read = [store::Read::DueBefore { before_ms, limit }];
        let Some(answers) = retry(shutdown, || state.read(&read)).await else {
            return false;
        };
        let Some(store::Answer::Entries(entries)) = answers.into_iter().next() else {
            return false;
        };
        let full = entries.len() == limit;
        let fresh: Vec<String> = entries
            .into_iter()
            .filter(|e| {
                !self.out.due_done.contains(e)
                    && !self
                        .write
                        .flight
                        .as_ref()
                        .is_some_and(|f| f.due.contains(e))
            })
            .collect();
        // Ends already approved wait for the write; only new ones call for more.
        let more = full && !fresh.is_empty();
        if let Some(rows) = retry(shutdown, || resolve::approvals(&*state, &fresh)).await {
            metrics::counter!(m::PIPELINE_LIFECYCLE_STEPS_TOTAL, "status" => "approved")
                .increment(rows.len() as u64);
            self.out.outbox.steps(&self.registry, &rows);
            self.out.rows.statuses.extend(rows);
            self.out.due_done.extend(fresh);
        }
        more
    }
}

/// What the state store is asked to decide of a candidate click.
fn decide_of(p: &PendingClick, touchpoint: bool) -> Decide {
    Decide {
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
        touchpoint,
    }
}
