-- touchline ClickHouse schema, valid on ClickHouse 18.16 and on current releases.
-- `{db}` is replaced by clickhouse.database; `touchline migrate` runs each statement.
--
-- Exactly once: every row has a deterministic key derived from the event that produced
-- it, the pipeline memoizes its decisions, and a replay after a crash writes identical
-- rows. ReplacingMergeTree collapses them; every query reads with FINAL.
--
-- Event times keep their milliseconds (SPEC §6): each DateTime column `x` has a
-- `x_ms UInt16` beside it (0-999), as DateTime64 does not exist on 18.16. `migrate` adds
-- them to tables created before they existed.

CREATE DATABASE IF NOT EXISTS {db};

CREATE TABLE IF NOT EXISTS {db}.clicks
(
    click_id      UUID,
    ts            DateTime,
    ts_ms         UInt16,
    program_id    String,
    partner_id    String,
    link_code     String,
    campaign      Nullable(String),
    visitor_id    UUID,
    ip_hash       String,
    user_agent    String,
    referer       Nullable(String),
    utm_source    Nullable(String),
    utm_medium    Nullable(String),
    utm_campaign  Nullable(String),
    utm_term      Nullable(String),
    utm_content   Nullable(String),
    is_bot        UInt8,
    status        String,
    is_unique     UInt8,
    sub_ids       Array(String)
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(ts)
ORDER BY (program_id, ts, click_id);

CREATE TABLE IF NOT EXISTS {db}.conversions
(
    conversion_id      UUID,
    program_id         String,
    order_id           String,
    kind               String,
    amount             Decimal(18, 4),
    currency           String,
    occurred_at        DateTime,
    occurred_at_ms     UInt16,
    received_at        DateTime,
    received_at_ms     UInt16,
    click_id           Nullable(UUID),
    visitor_id         Nullable(UUID),
    referral_code      Nullable(String),
    customer_id        Nullable(String),
    original_order_id  Nullable(String),
    status             String,
    settled_amount     Decimal(18, 4),
    settlement_currency String,
    model              String,
    touches            UInt16
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (program_id, occurred_at, conversion_id);

CREATE TABLE IF NOT EXISTS {db}.attributions
(
    conversion_id    UUID,
    program_id       String,
    partner_id       String,
    click_id         Nullable(UUID),
    campaign         String,
    position         UInt16,
    touches          UInt16,
    model            String,
    weight           Decimal(18, 12),
    credited_amount  Decimal(18, 4),
    kind             String,
    occurred_at      DateTime,
    occurred_at_ms   UInt16,
    -- What the credit came from: click, referral_code, promo_code or first_sale.
    source           String,
    -- The conversion's customer and country (upper case; '' when none), for the
    -- cohorts and funnels of the analytics API (SPEC §9.2) without a join.
    customer_id      String,
    country          String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (program_id, conversion_id, position);

CREATE TABLE IF NOT EXISTS {db}.commissions
(
    commission_id  UUID,
    conversion_id  UUID,
    program_id     String,
    partner_id     String,
    level          UInt8,
    kind           String,
    base_amount    Decimal(18, 4),
    rate           Decimal(18, 12),
    amount         Decimal(18, 4),
    currency       String,
    status         String,
    created_at     DateTime,
    created_at_ms  UInt16,
    occurred_at    DateTime,
    occurred_at_ms UInt16,
    reason         String,
    -- The conversion's customer ('' when none), for the cohorts of SPEC §9.2.
    customer_id    String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (program_id, conversion_id, commission_id);
