-- Click → unique click → conversion funnel per partner and campaign for a period.
-- Conversions are those the partner's touches of that campaign were credited with.
-- Parameters: {db}, {program_id} (String), {from} and {to} (Date, inclusive).
SELECT
    partner_id,
    campaign,
    sum(clicks) AS clicks,
    sum(unique_clicks) AS unique_clicks,
    sum(conversions) AS conversions,
    toDecimal64(sum(revenue), 4) AS revenue
FROM
(
    SELECT partner_id, ifNull(campaign, '') AS campaign,
           count() AS clicks, sum(is_unique) AS unique_clicks,
           toUInt64(0) AS conversions, toDecimal64(0, 4) AS revenue
    FROM {db}.clicks FINAL
    WHERE program_id = {program_id} AND toDate(ts) >= toDate({from}) AND toDate(ts) <= toDate({to})
    GROUP BY partner_id, campaign
    UNION ALL
    SELECT partner_id, campaign,
           toUInt64(0) AS clicks, toUInt64(0) AS unique_clicks,
           uniqExact(conversion_id) AS conversions, toDecimal64(sum(credited_amount), 4) AS revenue
    FROM {db}.attributions FINAL
    WHERE program_id = {program_id} AND weight > 0
      AND toDate(occurred_at) >= toDate({from}) AND toDate(occurred_at) <= toDate({to})
    GROUP BY partner_id, campaign
)
GROUP BY partner_id, campaign
ORDER BY partner_id, campaign
