-- Revenue (settled, refunds subtracted, duplicates excluded) and commission by day.
-- Parameters: {db}, {program_id} (String), {from} and {to} (Date, inclusive).
SELECT
    day,
    toDecimal64(sum(revenue), 4) AS revenue,
    toDecimal64(sum(commission), 4) AS commission
FROM
(
    SELECT toDate(occurred_at) AS day,
           toDecimal64(sum(if(kind = 'refund', -settled_amount, settled_amount)), 4) AS revenue,
           toDecimal64(0, 4) AS commission
    FROM {db}.conversions FINAL
    WHERE program_id = {program_id} AND status != 'duplicate' AND kind IN ('sale', 'recurring', 'refund')
      AND toDate(occurred_at) >= toDate({from}) AND toDate(occurred_at) <= toDate({to})
    GROUP BY day
    UNION ALL
    SELECT toDate(occurred_at) AS day, toDecimal64(0, 4) AS revenue, toDecimal64(sum(amount), 4) AS commission
    FROM {db}.commissions FINAL
    WHERE program_id = {program_id}
      AND toDate(occurred_at) >= toDate({from}) AND toDate(occurred_at) <= toDate({to})
    GROUP BY day
)
GROUP BY day
ORDER BY day
