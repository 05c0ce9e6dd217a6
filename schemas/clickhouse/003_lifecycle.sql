-- The commission lifecycle (SPEC §5.7, §3.5): the audit trail of every ledger row and
-- the payout batches. Valid on ClickHouse 18.16 and current releases.
--
-- commission_status holds one row per step in the life of a ledger row: step 0 is its
-- creation (pending, held or approved), each transition the next step (approved at the
-- end of the hold, reversed by a refund before approval, approved or rejected by review,
-- paid by a payout). The current status of a row is that of its highest step:
--   argMax(status, step) … GROUP BY commission_id
-- A step's id is derived from (commission_id, step), so a replay writes the same row
-- again and the engine collapses it; aggregates over steps read with FINAL.

CREATE TABLE IF NOT EXISTS {db}.commission_status
(
    event_id       UUID,
    commission_id  UUID,
    conversion_id  UUID,
    program_id     String,
    partner_id     String,
    kind           String,
    amount         Decimal(18, 4),
    currency       String,
    status         String,
    step           UInt8,
    reason         String,
    actor          String,
    at             DateTime,
    at_ms          UInt16,
    payout_id      String
)
ENGINE = ReplacingMergeTree()
ORDER BY (program_id, commission_id, step);

-- One line per partner of a payout batch; the id is derived from (program, up_to), so
-- the same request again finds the same batch.
CREATE TABLE IF NOT EXISTS {db}.payouts
(
    payout_id   UUID,
    program_id  String,
    up_to       DateTime,
    partner_id  String,
    amount      Decimal(18, 4),
    currency    String,
    rows        UInt32,
    created_at  DateTime
)
ENGINE = ReplacingMergeTree()
ORDER BY (program_id, payout_id, partner_id);
