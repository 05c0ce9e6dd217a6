//! The embedded default's sink: one `{table}.jsonl` per table under `sink.data_dir`, in
//! `JSONEachRow` that ClickHouse loads as it is
//! (`clickhouse-client -q "INSERT INTO touchline.clicks FORMAT JSONEachRow" < clicks.jsonl`).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;

use super::{Batch, DeliveryLog, DeliveryRow, Sink, SinkError, TABLES};
use crate::metrics as m;

/// Appends rows to JSONEachRow files.
pub struct FileSink {
    dir: PathBuf,
    files: Arc<Mutex<Vec<File>>>,
    /// `webhook_deliveries.jsonl`, opened at the first delivery.
    deliveries: Arc<Mutex<Option<File>>>,
    /// `api_audit.jsonl`, opened at the first audited write.
    audits: Arc<Mutex<Option<File>>>,
}

impl FileSink {
    /// Opens (creating) `{dir}/{table}.jsonl` for every table.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let files = TABLES
            .iter()
            .map(|t| {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(format!("{t}.jsonl")))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(FileSink {
            dir: dir.to_path_buf(),
            files: Arc::new(Mutex::new(files)),
            deliveries: Arc::new(Mutex::new(None)),
            audits: Arc::new(Mutex::new(None)),
        })
    }

    /// The audit trail, payout lines and disputes written so far (SPEC §3.5), for the
    /// ledger's index.
    pub fn ledger_rows(&self) -> std::io::Result<Batch> {
        load_ledger(&self.dir)
    }

    /// Each ledger row's reason where it has one (`rule {name}`, `capped`): the
    /// ledger's index shows it beside the row's status.
    pub fn earned_reasons(&self) -> std::io::Result<Vec<(uuid::Uuid, String)>> {
        #[derive(serde::Deserialize)]
        struct Reason {
            commission_id: uuid::Uuid,
            #[serde(default)]
            reason: String,
        }
        let mut out = Vec::new();
        read_lines(&self.path("commissions"), |r: Reason| {
            if !r.reason.is_empty() {
                out.push((r.commission_id, r.reason));
            }
        })?;
        Ok(out)
    }

    /// The file of `table`.
    pub fn path(&self, table: &str) -> PathBuf {
        self.dir.join(format!("{table}.jsonl"))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Rows as JSONEachRow lines.
fn encode<T: Serialize>(rows: &[T]) -> Result<Vec<u8>, SinkError> {
    let mut out = Vec::with_capacity(rows.len() * 256);
    for row in rows {
        serde_json::to_writer(&mut out, row).map_err(|e| SinkError::Fatal(e.to_string()))?;
        out.push(b'\n');
    }
    Ok(out)
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        let encoded = [
            ("clicks", batch.clicks.len(), encode(&batch.clicks)?),
            (
                "conversions",
                batch.conversions.len(),
                encode(&batch.conversions)?,
            ),
            (
                "attributions",
                batch.attributions.len(),
                encode(&batch.attributions)?,
            ),
            (
                "commissions",
                batch.commissions.len(),
                encode(&batch.commissions)?,
            ),
            (
                "commission_status",
                batch.statuses.len(),
                encode(&batch.statuses)?,
            ),
            ("payouts", batch.payouts.len(), encode(&batch.payouts)?),
            ("disputes", batch.disputes.len(), encode(&batch.disputes)?),
            ("partner_tiers", batch.tiers.len(), encode(&batch.tiers)?),
            (
                "partner_tier_figures",
                batch.tier_figures.len(),
                encode(&batch.tier_figures)?,
            ),
        ];
        let files = Arc::clone(&self.files);
        // Writing and fsync block: off the runtime's threads.
        tokio::task::spawn_blocking(move || {
            let mut files = files.lock().unwrap_or_else(|e| e.into_inner());
            for (file, (table, rows, bytes)) in files.iter_mut().zip(encoded) {
                if rows == 0 {
                    continue;
                }
                let io = |e: std::io::Error| SinkError::Transient(format!("{table}.jsonl: {e}"));
                file.write_all(&bytes).map_err(io)?;
                file.sync_data().map_err(io)?;
                metrics::counter!(m::SINK_ROWS_TOTAL, "table" => table).increment(rows as u64);
            }
            Ok(())
        })
        .await
        .map_err(|e| SinkError::Transient(format!("file writer: {e}")))?
    }

    async fn ping(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Appends rows to `{table}.jsonl`, opening it into `slot` at the first write, and
/// syncs it before returning.
async fn append_lazily<T: Serialize>(
    slot: &Arc<Mutex<Option<File>>>,
    path: PathBuf,
    table: &'static str,
    rows: &[T],
) -> Result<(), SinkError> {
    if rows.is_empty() {
        return Ok(());
    }
    let (bytes, n, file) = (encode(rows)?, rows.len(), Arc::clone(slot));
    tokio::task::spawn_blocking(move || {
        let io = |e: std::io::Error| SinkError::Transient(format!("{}: {e}", path.display()));
        let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
        if file.is_none() {
            *file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io)?,
            );
        }
        let f = file.as_mut().expect("opened above");
        f.write_all(&bytes).map_err(io)?;
        f.sync_data().map_err(io)?;
        metrics::counter!(m::SINK_ROWS_TOTAL, "table" => table).increment(n as u64);
        Ok(())
    })
    .await
    .map_err(|e| SinkError::Transient(format!("file writer: {e}")))?
}

#[async_trait]
impl DeliveryLog for FileSink {
    async fn record(&self, rows: &[DeliveryRow]) -> Result<(), SinkError> {
        let path = self.path("webhook_deliveries");
        append_lazily(&self.deliveries, path, "webhook_deliveries", rows).await
    }
}

#[async_trait]
impl super::AuditLog for FileSink {
    async fn audit(&self, rows: &[super::AuditRow]) -> Result<(), SinkError> {
        append_lazily(&self.audits, self.path("api_audit"), "api_audit", rows).await
    }
}

/// One row of `partner_stats_daily`, as the view in ClickHouse computes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PartnerDay {
    pub day: String,
    pub program_id: String,
    pub partner_id: String,
    pub clicks: u64,
    pub unique_clicks: u64,
    pub bot_clicks: u64,
    pub conversions: u64,
    #[serde(serialize_with = "json_number")]
    pub revenue: rust_decimal::Decimal,
    #[serde(serialize_with = "json_number")]
    pub commission: rust_decimal::Decimal,
}

fn json_number<S: serde::Serializer>(d: &rust_decimal::Decimal, s: S) -> Result<S::Ok, S::Error> {
    let mut r = *d;
    r.rescale(4);
    serde_json::value::RawValue::from_string(r.to_string())
        .map_err(serde::ser::Error::custom)?
        .serialize(s)
}

/// Reads decimals from their JSON text, never through a float.
pub(crate) fn decimal_from_raw<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<rust_decimal::Decimal, D::Error> {
    let raw: &serde_json::value::RawValue = serde::Deserialize::deserialize(d)?;
    raw.get().parse().map_err(serde::de::Error::custom)
}

#[derive(serde::Deserialize)]
struct ClickLine {
    click_id: String,
    ts: String,
    program_id: String,
    partner_id: String,
    is_bot: u8,
    is_unique: u8,
}

#[derive(serde::Deserialize)]
struct AttributionLine {
    conversion_id: String,
    position: u16,
    program_id: String,
    partner_id: String,
    #[serde(deserialize_with = "decimal_from_raw")]
    weight: rust_decimal::Decimal,
    #[serde(deserialize_with = "decimal_from_raw")]
    credited_amount: rust_decimal::Decimal,
    occurred_at: String,
}

#[derive(serde::Deserialize)]
struct StatusLine {
    event_id: uuid::Uuid,
    commission_id: uuid::Uuid,
    conversion_id: uuid::Uuid,
    program_id: String,
    partner_id: String,
    kind: String,
    #[serde(deserialize_with = "decimal_from_raw")]
    amount: rust_decimal::Decimal,
    currency: String,
    status: String,
    step: u8,
    reason: String,
    actor: String,
    at: String,
    at_ms: u16,
    payout_id: String,
}

#[derive(serde::Deserialize)]
struct PayoutLine {
    payout_id: uuid::Uuid,
    program_id: String,
    up_to: String,
    partner_id: String,
    #[serde(deserialize_with = "decimal_from_raw")]
    amount: rust_decimal::Decimal,
    currency: String,
    rows: u32,
    created_at: String,
}

/// `YYYY-MM-DD hh:mm:ss` (UTC), as the rows write it.
pub(crate) fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc())
}

/// The audit trail, payouts and disputes the files under `dir` hold.
// Long on purpose: one block per file, replayed in the order the tables collapse.
fn load_ledger(dir: &Path) -> std::io::Result<Batch> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut batch = Batch::default();
    let mut lines = Vec::new();
    read_lines(&dir.join("commission_status.jsonl"), |l: StatusLine| {
        lines.push(l)
    })?;
    for l in lines {
        let status = crate::engine::Status::parse(&l.status)
            .ok_or_else(|| bad("commission_status.jsonl: unknown status"))?;
        let kind = crate::engine::LedgerKind::parse(&l.kind)
            .ok_or_else(|| bad("commission_status.jsonl: unknown kind"))?
            .as_str();
        let at = parse_time(&l.at).ok_or_else(|| bad("commission_status.jsonl: bad time"))?
            + chrono::Duration::milliseconds(i64::from(l.at_ms));
        let key = super::RowKey {
            commission_id: l.commission_id,
            conversion_id: l.conversion_id,
            program_id: &l.program_id,
            partner_id: &l.partner_id,
            kind,
            amount: l.amount,
            currency: &l.currency,
        };
        let step = super::Step {
            step: l.step,
            status,
            reason: &l.reason,
            actor: &l.actor,
            at,
        };
        let mut row = super::StatusRow::step(&key, step);
        row.event_id = l.event_id;
        row.payout_id = l.payout_id;
        batch.statuses.push(row);
    }
    let mut payouts = Vec::new();
    read_lines(&dir.join("payouts.jsonl"), |l: PayoutLine| payouts.push(l))?;
    for l in payouts {
        batch.payouts.push(super::PayoutRow {
            payout_id: l.payout_id,
            program_id: l.program_id,
            up_to: parse_time(&l.up_to).ok_or_else(|| bad("payouts.jsonl: bad time"))?,
            partner_id: l.partner_id,
            amount: l.amount,
            currency: l.currency,
            rows: l.rows,
            created_at: parse_time(&l.created_at).ok_or_else(|| bad("payouts.jsonl: bad time"))?,
        });
    }
    let mut disputes = Vec::new();
    read_lines(&dir.join("disputes.jsonl"), |l: DisputeLine| {
        disputes.push(l)
    })?;
    for l in disputes {
        let time = |t: &str, ms: u16| {
            parse_time(t)
                .map(|t| t + chrono::Duration::milliseconds(i64::from(ms)))
                .ok_or_else(|| bad("disputes.jsonl: bad time"))
        };
        batch.disputes.push(super::DisputeRow {
            opened_at: time(&l.opened_at, l.opened_at_ms)?,
            at: time(&l.at, l.at_ms)?,
            dispute_id: l.dispute_id,
            version: l.version,
            program_id: l.program_id,
            partner_id: l.partner_id,
            commission_id: l.commission_id,
            order_id: l.order_id,
            claimed_amount: l.claimed_amount,
            currency: l.currency,
            message: l.message,
            status: l.status,
            amount: l.amount,
            adjustment_id: l.adjustment_id,
            note: l.note,
            actor: l.actor,
            opened_at_ms: l.opened_at_ms,
            at_ms: l.at_ms,
        });
    }
    load_tiers(dir, &mut batch)?;
    Ok(batch)
}

/// The tier moves and tier figures the files hold (SPEC §10.2).
fn load_tiers(dir: &Path, batch: &mut Batch) -> std::io::Result<()> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut moves = Vec::new();
    read_lines(&dir.join("partner_tiers.jsonl"), |l: TierLine| {
        moves.push(l)
    })?;
    for l in moves {
        let effective_at = parse_time(&l.effective_at)
            .ok_or_else(|| bad("partner_tiers.jsonl: bad time"))?
            + chrono::Duration::milliseconds(i64::from(l.effective_at_ms));
        batch.tiers.push(super::TierRow {
            source: if l.source == "manual" {
                "manual"
            } else {
                "auto"
            },
            program_id: l.program_id,
            partner_id: l.partner_id,
            effective_at,
            effective_at_ms: l.effective_at_ms,
            tier: l.tier,
            previous: l.previous,
            conversions: l.conversions,
            revenue: l.revenue,
            commission: l.commission,
        });
    }
    read_lines(
        &dir.join("partner_tier_figures.jsonl"),
        |l: TierFigureLine| {
            batch.tier_figures.push(super::TierFigureRow {
                program_id: l.program_id,
                partner_id: l.partner_id,
                period: l.period,
                conversion_id: l.conversion_id,
                conversions: l.conversions,
                revenue: l.revenue,
                commission: l.commission,
            })
        },
    )
}

#[derive(serde::Deserialize)]
struct TierLine {
    program_id: String,
    partner_id: String,
    effective_at: String,
    effective_at_ms: u16,
    tier: String,
    previous: String,
    source: String,
    conversions: u64,
    #[serde(deserialize_with = "decimal_from_raw")]
    revenue: rust_decimal::Decimal,
    #[serde(deserialize_with = "decimal_from_raw")]
    commission: rust_decimal::Decimal,
}

#[derive(serde::Deserialize)]
struct TierFigureLine {
    program_id: String,
    partner_id: String,
    period: String,
    conversion_id: uuid::Uuid,
    conversions: u64,
    #[serde(deserialize_with = "decimal_from_raw")]
    revenue: rust_decimal::Decimal,
    #[serde(deserialize_with = "decimal_from_raw")]
    commission: rust_decimal::Decimal,
}

#[derive(serde::Deserialize)]
struct DisputeLine {
    dispute_id: uuid::Uuid,
    version: u32,
    program_id: String,
    partner_id: String,
    commission_id: String,
    order_id: String,
    claimed_amount: String,
    currency: String,
    message: String,
    status: String,
    #[serde(deserialize_with = "decimal_from_raw")]
    amount: rust_decimal::Decimal,
    adjustment_id: String,
    note: String,
    actor: String,
    opened_at: String,
    opened_at_ms: u16,
    at: String,
    at_ms: u16,
}

#[derive(serde::Deserialize)]
struct CommissionLine {
    commission_id: String,
    program_id: String,
    partner_id: String,
    #[serde(deserialize_with = "decimal_from_raw")]
    amount: rust_decimal::Decimal,
    occurred_at: String,
}

pub(crate) fn read_lines<T: serde::de::DeserializeOwned>(
    path: &Path,
    mut each: impl FnMut(T),
) -> std::io::Result<()> {
    use std::io::BufRead;
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        each(row);
    }
    Ok(())
}

/// `partner_stats_daily` computed from the table files under `dir`, rows deduplicated by
/// their ids as `FINAL` does, sorted by day, program and partner.
pub fn partner_stats(dir: &Path) -> std::io::Result<Vec<PartnerDay>> {
    use std::collections::{BTreeMap, HashSet};
    let mut days: BTreeMap<(String, String, String), PartnerDay> = BTreeMap::new();
    let mut day_of = |ts: &str, program: &str, partner: &str| -> (String, String, String) {
        let key = (
            ts.get(..10).unwrap_or(ts).to_string(),
            program.to_string(),
            partner.to_string(),
        );
        days.entry(key.clone()).or_insert_with(|| PartnerDay {
            day: key.0.clone(),
            program_id: key.1.clone(),
            partner_id: key.2.clone(),
            ..PartnerDay::default()
        });
        key
    };
    let mut clicks: BTreeMap<String, ClickLine> = BTreeMap::new();
    read_lines(&dir.join("clicks.jsonl"), |c: ClickLine| {
        clicks.entry(c.click_id.clone()).or_insert(c);
    })?;
    let mut attributions: BTreeMap<(String, u16), AttributionLine> = BTreeMap::new();
    read_lines(&dir.join("attributions.jsonl"), |a: AttributionLine| {
        attributions
            .entry((a.conversion_id.clone(), a.position))
            .or_insert(a);
    })?;
    let mut commissions: BTreeMap<String, CommissionLine> = BTreeMap::new();
    read_lines(&dir.join("commissions.jsonl"), |c: CommissionLine| {
        commissions.entry(c.commission_id.clone()).or_insert(c);
    })?;

    let mut updates: Vec<((String, String, String), Update)> = Vec::new();
    for c in clicks.values() {
        updates.push((
            day_of(&c.ts, &c.program_id, &c.partner_id),
            Update::Click(c.is_unique, c.is_bot),
        ));
    }
    let mut converted = HashSet::new();
    for a in attributions
        .values()
        .filter(|a| a.weight > rust_decimal::Decimal::ZERO)
    {
        let key = day_of(&a.occurred_at, &a.program_id, &a.partner_id);
        let first = converted.insert((key.clone(), a.conversion_id.clone()));
        updates.push((key, Update::Credit(first, a.credited_amount)));
    }
    for c in commissions.values() {
        updates.push((
            day_of(&c.occurred_at, &c.program_id, &c.partner_id),
            Update::Commission(c.amount),
        ));
    }
    for (key, update) in updates {
        let d = days.get_mut(&key).expect("day_of made the entry");
        match update {
            Update::Click(unique, bot) => {
                d.clicks += 1;
                d.unique_clicks += u64::from(unique);
                d.bot_clicks += u64::from(bot);
            }
            Update::Credit(new_conversion, amount) => {
                d.conversions += u64::from(new_conversion);
                d.revenue += amount;
            }
            Update::Commission(amount) => d.commission += amount,
        }
    }
    Ok(days.into_values().collect())
}

/// One contribution to a partner's day.
enum Update {
    Click(u8, u8),
    Credit(bool, rust_decimal::Decimal),
    Commission(rust_decimal::Decimal),
}

/// Writes `partner_stats_daily.jsonl` from the table files under `dir` (replacing it).
pub fn write_partner_stats(dir: &Path) -> std::io::Result<Vec<PartnerDay>> {
    let stats = partner_stats(dir)?;
    let tmp = dir.join("partner_stats_daily.jsonl.tmp");
    {
        let mut w = BufWriter::new(File::create(&tmp)?);
        for row in &stats {
            serde_json::to_writer(&mut w, row).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
    }
    std::fs::rename(&tmp, dir.join("partner_stats_daily.jsonl"))?;
    Ok(stats)
}
