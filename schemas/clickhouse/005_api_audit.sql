-- Every write made through the keyed API (SPEC §9): when, by which key (`admin` for
-- the operator token), the key's role and tenant, the route template and the answer.
-- Valid on ClickHouse 18.16 and current releases. Rows are only ever appended.

CREATE TABLE IF NOT EXISTS {db}.api_audit
(
    at          DateTime,
    at_ms       UInt16,
    key_id      String,
    role        String,
    program_id  String,
    partner_id  String,
    method      String,
    route       String,
    status      UInt16
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(at)
ORDER BY (program_id, at, key_id);
