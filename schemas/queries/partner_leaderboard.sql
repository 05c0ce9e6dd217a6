-- Partner leaderboard for a period: who brought what and earned what.
-- Parameters: {db}, {program_id} (String), {from} and {to} (Date, inclusive).
SELECT
    partner_id,
    sum(clicks) AS clicks,
    sum(unique_clicks) AS unique_clicks,
    sum(conversions) AS conversions,
    toDecimal64(sum(revenue), 4) AS revenue,
    toDecimal64(sum(commission), 4) AS commission
FROM {db}.partner_stats_daily
WHERE program_id = {program_id} AND day >= toDate({from}) AND day <= toDate({to})
GROUP BY partner_id
ORDER BY commission DESC, partner_id ASC
