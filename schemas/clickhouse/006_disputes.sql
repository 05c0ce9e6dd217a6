-- Disputes and inquiries (SPEC §9.1): a partner disputes a ledger row, or asks about an
-- order it says it referred; the program accepts (booking one `adjustment` ledger row)
-- or rejects. One row per version of a dispute; the current one is the highest
-- `version` (read with FINAL). Valid on ClickHouse 18.16 and current releases.

CREATE TABLE IF NOT EXISTS {db}.disputes
(
    dispute_id      UUID,
    version         UInt32,
    program_id      String,
    partner_id      String,
    commission_id   String,
    order_id        String,
    claimed_amount  String,
    currency        String,
    message         String,
    status          String,
    amount          Decimal(18, 4),
    adjustment_id   String,
    note            String,
    actor           String,
    opened_at       DateTime,
    opened_at_ms    UInt16,
    at              DateTime,
    at_ms           UInt16
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (program_id, dispute_id);
