-- Tier moves (SPEC §10.2): one row per move of a partner, made at a period boundary by
-- the program's tier_rules (source 'auto', with the figures of the period before that
-- decided it) or by hand (source 'manual'). A move is written again after a crash or
-- by a second pipeline instance with the same key: read with FINAL. Valid on
-- ClickHouse 18.16 and current releases.

CREATE TABLE IF NOT EXISTS {db}.partner_tiers
(
    program_id       String,
    partner_id       String,
    effective_at     DateTime,
    effective_at_ms  UInt16,
    tier             String,
    previous         String,
    source           String,
    conversions      UInt64,
    revenue          Decimal(18, 4),
    commission       Decimal(18, 4)
)
ENGINE = ReplacingMergeTree()
ORDER BY (program_id, partner_id, effective_at, effective_at_ms, source);

-- What each conversion counted toward a partner's tier figures of a period: the
-- figures behind each automatic move, and a partner's progress in the current period,
-- are sums of these rows (read with FINAL: a replay writes the same row again).
CREATE TABLE IF NOT EXISTS {db}.partner_tier_figures
(
    program_id     String,
    partner_id     String,
    period         String,
    conversion_id  UUID,
    conversions    UInt64,
    revenue        Decimal(18, 4),
    commission     Decimal(18, 4)
)
ENGINE = ReplacingMergeTree()
ORDER BY (program_id, partner_id, period, conversion_id);
