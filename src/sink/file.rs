//! The embedded default's sink: one `{table}.jsonl` per table under `sink.data_dir`, in
//! `JSONEachRow` that ClickHouse loads as it is
//! (`clickhouse-client -q "INSERT INTO touchline.clicks FORMAT JSONEachRow" < clicks.jsonl`).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use serde::Serialize;

use super::{Batch, Sink, SinkError, TABLES};
use crate::metrics as m;

/// Appends rows to JSONEachRow files.
pub struct FileSink {
    dir: PathBuf,
    files: Mutex<Vec<File>>,
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
            files: Mutex::new(files),
        })
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

fn append<T: Serialize>(file: &mut File, table: &'static str, rows: &[T]) -> Result<(), SinkError> {
    if rows.is_empty() {
        return Ok(());
    }
    let io = |e: std::io::Error| SinkError::Transient(format!("{table}.jsonl: {e}"));
    let mut w = BufWriter::new(&mut *file);
    for row in rows {
        serde_json::to_writer(&mut w, row).map_err(|e| SinkError::Fatal(e.to_string()))?;
        w.write_all(b"\n").map_err(io)?;
    }
    w.flush().map_err(io)?;
    drop(w);
    file.sync_data().map_err(io)?;
    metrics::counter!(m::SINK_ROWS_TOTAL, "table" => table).increment(rows.len() as u64);
    Ok(())
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        append(&mut files[0], "clicks", &batch.clicks)?;
        append(&mut files[1], "conversions", &batch.conversions)?;
        append(&mut files[2], "attributions", &batch.attributions)?;
        append(&mut files[3], "commissions", &batch.commissions)
    }

    async fn ping(&self) -> Result<(), SinkError> {
        Ok(())
    }
}
