-- Tier figures per partner and period (SPEC §10.2): the figures behind each automatic
-- move (those of the period before it, in partner_tiers) and each partner's progress in
-- the current period, summed from what every conversion counted toward them. The
-- period of a conversion is that of the later of its occurred_at and received_at.
-- Parameters: {db}, {program_id} (String).
SELECT
    partner_id,
    period,
    sum(conversions) AS conversions,
    toDecimal64(sum(revenue), 4) AS revenue,
    toDecimal64(sum(commission), 4) AS commission
FROM {db}.partner_tier_figures FINAL
WHERE program_id = {program_id}
GROUP BY partner_id, period
ORDER BY partner_id, period
