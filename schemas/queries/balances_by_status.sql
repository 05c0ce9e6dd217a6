-- Balances per partner by status (SPEC §3.5, §5.7): what each partner has pending, held,
-- approved (unpaid, clawbacks netted), paid, rejected and reversed, from the audit trail.
-- A row's current status is that of its highest step; steps written twice (a replay)
-- are identical, so argMax reads them once without FINAL.
-- Parameters: {db}, {program_id} (String).
SELECT
    partner_id,
    status,
    count() AS rows,
    toDecimal64(sum(amount), 4) AS amount
FROM
(
    SELECT
        commission_id,
        argMax(partner_id, step) AS partner_id,
        argMax(status, step) AS status,
        argMax(amount, step) AS amount
    FROM {db}.commission_status
    WHERE program_id = {program_id}
    GROUP BY commission_id
)
GROUP BY partner_id, status
ORDER BY partner_id ASC, status ASC
