//! Taking a batch of messages: decoded, checked, the registry caught up to the versions
//! they carry, clicks recorded and everything queued behind the frontiers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::dead_letter::Letter;
use super::schedule::{Part, Pending, Progress};
use super::store::{Candidate, ClickRecord, Mark, Tally};
use super::{retry, PendingClick, PendingConversion, Pipeline};
use crate::bus::{Delivered, Topic};
use crate::engine::dedup;
use crate::events::{ClickEvent, ConversionEvent};
use crate::metrics as m;
use crate::money;
use crate::registry::Program;
use crate::shutdown::Shutdown;

/// A decoded event and the message it came in (for a dead letter).
struct Taken<E> {
    event: E,
    msg: Delivered,
}

/// A batch's messages, decoded.
#[derive(Default)]
struct Decoded {
    clicks: Vec<Taken<ClickEvent>>,
    conversions: Vec<Taken<ConversionEvent>>,
}

impl Decoded {
    /// The newest registry version any of the events was checked against.
    fn registry_version(&self) -> u64 {
        let clicks = self.clicks.iter().map(|t| t.event.registry_version);
        let conversions = self.conversions.iter().map(|t| t.event.registry_version);
        clicks.chain(conversions).max().unwrap_or(0)
    }
}

/// A click as recorded, and the candidate to decide if it needs deciding.
struct Recorded {
    record: ClickRecord,
    candidate: Option<Candidate>,
}

/// What the pipeline has taken and not yet decided: each partition's progress, the
/// clicks and conversions that wait, and the next offset per partition after the
/// messages taken so far.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) progress: HashMap<Part, Progress>,
    pub(super) clicks: Pending<PendingClick>,
    pub(super) conversions: Pending<PendingConversion>,
    pub(super) taken: BTreeMap<Part, i64>,
}

impl Pipeline {
    /// Takes a batch of messages: decodes them, catches the registry up, records the
    /// clicks and queues what must wait for the frontiers.
    pub(super) async fn take(&mut self, messages: Vec<Delivered>, shutdown: &Shutdown) {
        let decoded = self.decode(messages, shutdown).await;
        // Decide with a registry at least as new as the one the edge used (SPEC §5.3).
        if !self.catch_up(decoded.registry_version(), shutdown).await
            || !self.take_clicks(decoded.clicks, shutdown).await
        {
            // These messages have no rows: they come back after the restart.
            self.commit_blocked = true;
            return;
        }
        self.queue_conversions(decoded.conversions, shutdown).await;
    }

    /// The messages decoded and their offsets taken; undecodable ones dead-lettered
    /// with their original bytes.
    async fn decode(&mut self, messages: Vec<Delivered>, shutdown: &Shutdown) -> Decoded {
        let mut decoded = Decoded::default();
        for msg in messages {
            let next = self
                .queue
                .taken
                .entry((msg.topic, msg.partition))
                .or_insert(msg.offset + 1);
            *next = (*next).max(msg.offset + 1);
            let reason = match msg.topic {
                Topic::Clicks => match serde_json::from_slice(&msg.payload) {
                    Ok(event) => {
                        decoded.clicks.push(Taken { event, msg });
                        continue;
                    }
                    Err(e) => format!("undecodable click: {e}"),
                },
                Topic::Conversions => match serde_json::from_slice(&msg.payload) {
                    Ok(event) => {
                        decoded.conversions.push(Taken { event, msg });
                        continue;
                    }
                    Err(e) => format!("undecodable conversion: {e}"),
                },
                Topic::Dlq | Topic::Webhooks => continue,
            };
            self.dead_letter(Letter::from(&msg), &reason, shutdown)
                .await;
        }
        decoded
    }

    /// Waits until the registry holds `wanted`, or decides that it never will; false
    /// when stopping first.
    async fn catch_up(&mut self, wanted: u64, shutdown: &Shutdown) -> bool {
        let patience = Duration::from_secs(self.config.max_wait_secs);
        let started = Instant::now();
        while wanted > self.registry.applied_version()
            && !self.registry.catch_up(wanted, Duration::from_secs(1)).await
        {
            if shutdown.is_fired() {
                return false;
            }
            if started.elapsed() < patience {
                continue;
            }
            if self.registry.store().ping().await.is_ok() {
                // The store answers but never had that version (events from another
                // registry?): decide with what there is; unknown programs dead-letter.
                tracing::warn!(
                    wanted,
                    applied = self.registry.applied_version(),
                    "registry did not reach the events' version; deciding with what it has"
                );
                break;
            }
            tracing::warn!("registry store unavailable, pausing");
            metrics::counter!(m::PIPELINE_RETRIES_TOTAL, "dependency" => "redis").increment(1);
        }
        true
    }

    /// Records the clicks (visitor index, candidates, ip tallies), emits those decided
    /// without the store and queues the candidates; false when stopping before the
    /// record was written.
    async fn take_clicks(&mut self, clicks: Vec<Taken<ClickEvent>>, shutdown: &Shutdown) -> bool {
        let mut records = Vec::with_capacity(clicks.len());
        let mut decided_now = Vec::new();
        let mut candidates = Vec::new();
        for Taken { event: c, msg } in clicks {
            let program = match self.check_click(&c) {
                Ok(program) => program,
                Err(reason) => {
                    self.dead_letter(Letter::from(&msg), &reason, shutdown)
                        .await;
                    continue;
                }
            };
            self.saw((Topic::Clicks, msg.partition), c.ts.timestamp_millis());
            let Recorded { record, candidate } = recorded(&c, &program);
            let keep = record.keep;
            records.push(record);
            match candidate {
                Some(candidate) => candidates.push((
                    (Topic::Clicks, msg.partition),
                    msg.offset,
                    PendingClick {
                        event: c,
                        candidate,
                        keep,
                    },
                )),
                None => decided_now.push(c),
            }
        }
        let state = Arc::clone(&self.state);
        let recording = Instant::now();
        if retry(shutdown, || state.record_clicks(&records))
            .await
            .is_none()
        {
            return false;
        }
        tracing::debug!(
            clicks = records.len(),
            ms = recording.elapsed().as_millis() as u64,
            "clicks recorded"
        );
        for c in decided_now {
            let verdict = dedup::precheck(&c).unwrap_or(dedup::ClickVerdict::Duplicate);
            self.out.click(c, verdict);
        }
        for (part, offset, p) in candidates {
            self.queue.clicks.insert(p.candidate.mark, part, offset, p);
        }
        true
    }

    /// Checked conversions queued in intake order behind the frontiers; others
    /// dead-lettered.
    async fn queue_conversions(
        &mut self,
        conversions: Vec<Taken<ConversionEvent>>,
        shutdown: &Shutdown,
    ) {
        for Taken { event: c, msg } in conversions {
            if let Err(reason) = self.check_conversion(&c) {
                self.dead_letter(Letter::from(&msg), &reason, shutdown)
                    .await;
                continue;
            }
            let part = (Topic::Conversions, msg.partition);
            self.saw(part, c.received_at.timestamp_millis());
            let mark = Mark::new(c.received_at, c.conversion_id);
            let pending = PendingConversion {
                event: c,
                partition: msg.partition,
                offset: msg.offset,
            };
            self.queue
                .conversions
                .insert(mark, part, msg.offset, pending);
        }
    }

    /// The click's program, or why the click cannot be decided.
    pub(super) fn check_click(&self, e: &ClickEvent) -> Result<Arc<Program>, String> {
        if e.v != crate::events::EVENT_VERSION {
            return Err(format!("unsupported event version {}", e.v));
        }
        self.registry
            .program(&e.program_id)
            .ok_or_else(|| format!("unknown program {}", e.program_id))
    }

    pub(super) fn check_conversion(&self, e: &ConversionEvent) -> Result<(), String> {
        if e.v != crate::events::EVENT_VERSION {
            return Err(format!("unsupported event version {}", e.v));
        }
        if self.registry.program(&e.program_id).is_none() {
            return Err(format!("unknown program {}", e.program_id));
        }
        if e.amount.is_sign_negative() || e.amount > money::max_amount() {
            return Err("amount out of range".into());
        }
        Ok(())
    }
}

/// What is recorded of a click of `program`, and its candidate unless a precheck
/// already decided it.
fn recorded(c: &ClickEvent, program: &Program) -> Recorded {
    // Journeys reach back `lookback_days`; a day more covers late conversions.
    let keep = Duration::from_secs(program.lookback_secs() + 86_400);
    let candidate = dedup::precheck(c).is_none().then(|| Candidate {
        fingerprint: dedup::click_fingerprint(c),
        mark: Mark::new(c.ts, c.click_id),
        window_ms: program.click_dedup_window_secs.saturating_mul(1000),
    });
    // click_spam counts every click of the partner's links from the ip_hash.
    let ip = program
        .fraud
        .max_clicks_per_ip_hour
        .map(|_| Tally::IpClicks {
            program: c.program_id.clone(),
            partner: c.partner_id.clone(),
            ip_hash: c.ip_hash.clone(),
        });
    let record = ClickRecord {
        click_id: c.click_id,
        mark: Mark::new(c.ts, c.click_id),
        visitor_id: c.visitor_id,
        keep,
        candidate: candidate.clone(),
        ip,
    };
    Recorded { record, candidate }
}
