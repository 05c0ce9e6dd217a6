-- Outgoing webhooks (SPEC §3.6): every delivery attempt of an event to an endpoint.
-- Valid on ClickHouse 18.16 and current releases.
--
-- A failed attempt is a row keyed by its attempt number; the final row of an event
-- (acknowledged, or given_up after 24 hours) has seq 0. An event acknowledged again after
-- a crash (at least once: the receiver answered, the process died before dropping the
-- event from its queue) collapses to one row under FINAL:
--   SELECT event_id, count() FROM webhook_deliveries FINAL
--   WHERE outcome = 'acknowledged' GROUP BY event_id
-- No partitioning: rows of one key must meet in one part to be collapsed.

CREATE TABLE IF NOT EXISTS {db}.webhook_deliveries
(
    program_id       String,
    endpoint         String,
    event_id         UUID,
    event_type       String,
    partner_id       String,
    outcome          String,
    seq              UInt32,
    attempt          UInt32,
    status_code      UInt16,
    error            String,
    duration_ms      UInt32,
    url              String,
    attempted_at     DateTime,
    attempted_at_ms  UInt16
)
ENGINE = ReplacingMergeTree()
ORDER BY (program_id, endpoint, event_id, outcome, seq);
