-- Daily partner statistics, always exact: a view over the deduplicated tables rather
-- than a materialized view, because a materialized view counts every inserted block,
-- replays included, and is not atomic with its source table (SPEC §2).
-- Sums of Decimal(18,4) are Decimal(38,4) on 18.16, hence the casts.

CREATE VIEW IF NOT EXISTS {db}.partner_stats_daily AS
SELECT
    day,
    program_id,
    partner_id,
    sum(clicks) AS clicks,
    sum(unique_clicks) AS unique_clicks,
    sum(bot_clicks) AS bot_clicks,
    sum(conversions) AS conversions,
    toDecimal64(sum(revenue), 4) AS revenue,
    toDecimal64(sum(commission), 4) AS commission
FROM
(
    SELECT toDate(ts) AS day, program_id, partner_id,
           count() AS clicks, sum(is_unique) AS unique_clicks, sum(is_bot) AS bot_clicks,
           toUInt64(0) AS conversions, toDecimal64(0, 4) AS revenue, toDecimal64(0, 4) AS commission
    FROM {db}.clicks FINAL
    GROUP BY day, program_id, partner_id
    UNION ALL
    SELECT toDate(occurred_at) AS day, program_id, partner_id,
           toUInt64(0) AS clicks, toUInt64(0) AS unique_clicks, toUInt64(0) AS bot_clicks,
           uniqExact(conversion_id) AS conversions, toDecimal64(sum(credited_amount), 4) AS revenue,
           toDecimal64(0, 4) AS commission
    FROM {db}.attributions FINAL
    WHERE weight > 0
    GROUP BY day, program_id, partner_id
    UNION ALL
    SELECT toDate(occurred_at) AS day, program_id, partner_id,
           toUInt64(0) AS clicks, toUInt64(0) AS unique_clicks, toUInt64(0) AS bot_clicks,
           toUInt64(0) AS conversions, toDecimal64(0, 4) AS revenue, toDecimal64(sum(amount), 4) AS commission
    FROM {db}.commissions FINAL
    GROUP BY day, program_id, partner_id
)
GROUP BY day, program_id, partner_id;
