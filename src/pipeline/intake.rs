//! Taking a batch of messages: decoded, checked, the registry caught up to the versions
//! they carry, clicks recorded and everything queued behind the frontiers.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::store::{Candidate, ClickRecord, Mark, Tally};
use super::{retry, PendingClick, PendingConversion, Pipeline};
use crate::bus::{Delivered, Topic};
use crate::engine::dedup;
use crate::events::{ClickEvent, ConversionEvent};
use crate::metrics as m;
use crate::money;
use crate::registry::Program;
use crate::shutdown::Shutdown;

impl Pipeline {
    /// Takes a batch of messages: decodes them, catches the registry up, records the
    /// clicks and queues what must wait for the frontiers.
    pub(super) async fn take(&mut self, messages: Vec<Delivered>, shutdown: &Shutdown) {
        let mut clicks = Vec::new();
        let mut conversions = Vec::new();
        for msg in messages {
            let next = self
                .taken
                .entry((msg.topic, msg.partition))
                .or_insert(msg.offset + 1);
            *next = (*next).max(msg.offset + 1);
            let reason = match msg.topic {
                Topic::Clicks => match serde_json::from_slice::<ClickEvent>(&msg.payload) {
                    Ok(c) => {
                        clicks.push((c, msg.partition, msg.offset, msg.payload));
                        continue;
                    }
                    Err(e) => format!("undecodable click: {e}"),
                },
                Topic::Conversions => {
                    match serde_json::from_slice::<ConversionEvent>(&msg.payload) {
                        Ok(c) => {
                            conversions.push((c, msg.partition, msg.offset, msg.payload));
                            continue;
                        }
                        Err(e) => format!("undecodable conversion: {e}"),
                    }
                }
                Topic::Dlq | Topic::Webhooks => continue,
            };
            // Undecodable: dead-lettered with the original bytes.
            self.dead_letter(
                &msg.topic,
                msg.partition,
                msg.offset,
                &msg.payload,
                &reason,
                shutdown,
            )
            .await;
        }
        // Decide with a registry at least as new as the one the edge used (SPEC §5.3).
        let wanted = clicks
            .iter()
            .map(|(c, ..)| c.registry_version)
            .chain(conversions.iter().map(|(c, ..)| c.registry_version))
            .max()
            .unwrap_or(0);
        let patience = Duration::from_secs(self.config.max_wait_secs);
        let started = Instant::now();
        while wanted > self.registry.applied_version()
            && !self.registry.catch_up(wanted, Duration::from_secs(1)).await
        {
            if shutdown.is_fired() {
                // These messages have no rows: they come back after the restart.
                self.commit_blocked = true;
                return;
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

        let mut records = Vec::with_capacity(clicks.len());
        let mut decided_now = Vec::new();
        let mut candidates = Vec::new();
        for (c, partition, offset, payload) in clicks {
            let program = match self.check_click(&c) {
                Ok(program) => program,
                Err(reason) => {
                    self.dead_letter(
                        &Topic::Clicks,
                        partition,
                        offset,
                        &payload,
                        &reason,
                        shutdown,
                    )
                    .await;
                    continue;
                }
            };
            self.saw((Topic::Clicks, partition), c.ts.timestamp_millis());
            // Journeys reach back `lookback_days`; a day more covers late conversions.
            let keep = Duration::from_secs(program.lookback_secs() + 86_400);
            let candidate = dedup::precheck(&c).is_none().then(|| Candidate {
                fingerprint: dedup::click_fingerprint(&c),
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
            records.push(ClickRecord {
                click_id: c.click_id,
                mark: Mark::new(c.ts, c.click_id),
                visitor_id: c.visitor_id,
                keep,
                candidate: candidate.clone(),
                ip,
            });
            match candidate {
                Some(candidate) => candidates.push((
                    (Topic::Clicks, partition),
                    offset,
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
            // Stopping with these clicks unrecorded: they come back after the restart.
            self.commit_blocked = true;
            return;
        }
        tracing::debug!(
            clicks = records.len(),
            ms = recording.elapsed().as_millis() as u64,
            "clicks recorded"
        );
        for c in decided_now {
            let verdict = dedup::precheck(&c).unwrap_or(dedup::ClickVerdict::Duplicate);
            self.emit_click(c, verdict);
        }
        for (part, offset, p) in candidates {
            self.clicks.insert(p.candidate.mark, part, offset, p);
        }

        for (c, partition, offset, payload) in conversions {
            if let Err(reason) = self.check_conversion(&c) {
                self.dead_letter(
                    &Topic::Conversions,
                    partition,
                    offset,
                    &payload,
                    &reason,
                    shutdown,
                )
                .await;
                continue;
            }
            self.saw(
                (Topic::Conversions, partition),
                c.received_at.timestamp_millis(),
            );
            let mark = Mark::new(c.received_at, c.conversion_id);
            self.conversions.insert(
                mark,
                (Topic::Conversions, partition),
                offset,
                PendingConversion {
                    event: c,
                    partition,
                    offset,
                },
            );
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
