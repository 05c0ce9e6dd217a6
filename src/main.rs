//! The `touchline` binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use touchline::config::{Config, LogFormat};

mod tools;

#[derive(Parser)]
#[command(
    name = "touchline",
    version,
    about = "Referral tracking, attribution and exact partner commissions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Edge and pipeline in one process (the embedded default without --config).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The HTTP edge alone.
    Edge {
        #[arg(long)]
        config: PathBuf,
    },
    /// The consumer pipeline alone; start several with one group to scale out.
    Pipeline {
        #[arg(long)]
        config: PathBuf,
    },
    /// Webhook delivery alone (SPEC §3.6); start several with one group to share it.
    Webhooks {
        #[arg(long)]
        config: PathBuf,
    },
    /// Create or upgrade the ClickHouse database and the Kafka topics (idempotent).
    Migrate {
        #[arg(long)]
        config: PathBuf,
    },
    /// The embedded default end to end: seed, traffic through the edge, summary.
    Demo {
        /// Visitors to simulate.
        #[arg(long, default_value_t = 1500)]
        visitors: usize,
        /// Seed of the generated traffic.
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// Where the JSONEachRow files go.
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// Visitors browsing at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Open-loop load: clicks and signed conversions at a fixed rate against an edge.
    Loadgen {
        /// Base URL of the edge, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        target: String,
        /// Requests per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds to run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Link code the clicks follow.
        #[arg(long, default_value = "loadgen")]
        code: String,
        /// Percentage of requests that are signed sale conversions.
        #[arg(long, default_value_t = 0)]
        conversion_percent: u64,
        /// Program of the conversions.
        #[arg(long, default_value = "loadgen")]
        program: String,
        /// Signing secret of that program.
        #[arg(long, default_value = "loadgen-signing-secret-0001")]
        secret: String,
        /// Most requests outstanding at once; beyond it requests are skipped and counted.
        #[arg(long, default_value_t = 256)]
        max_in_flight: usize,
        /// Create program, partner and link first with this admin token.
        #[arg(long)]
        setup_admin_token: Option<String>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn init_logs(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn load(path: Option<&PathBuf>) -> Result<Config, ExitCode> {
    Config::from_env(path.map(PathBuf::as_path)).map_err(|e| {
        eprintln!("touchline: {e}");
        ExitCode::from(2)
    })
}

// Long on purpose: one arm per command of the CLI, each a call into the library.
fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let config_path = match &cli.command {
        Command::Serve { config } => config.clone(),
        Command::Demo { .. } | Command::Loadgen { .. } => None,
        Command::Edge { config }
        | Command::Pipeline { config }
        | Command::Webhooks { config }
        | Command::Migrate { config } => Some(config.clone()),
    };
    let mut config = match load(config_path.as_ref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if matches!(cli.command, Command::Demo { .. })
        && std::env::var_os("TOUCHLINE__LOG__LEVEL").is_none()
    {
        // The demo talks to a person: its own output, warnings only.
        config.log.level = "warn".into();
    }
    if let Command::Loadgen { duration, rate, .. } = &cli.command {
        if !duration.is_finite() || *duration <= 0.0 || *rate == 0 {
            eprintln!("touchline: --duration must be positive seconds and --rate at least 1");
            return ExitCode::from(2);
        }
    }
    init_logs(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("touchline: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let (trigger, shutdown) = touchline::shutdown::channel();
        touchline::shutdown::on_signals(trigger);
        match cli.command {
            Command::Serve { .. } => touchline::app::run_serve(config, shutdown, None).await,
            Command::Edge { .. } => touchline::app::run_edge(config, shutdown).await,
            Command::Pipeline { .. } => touchline::app::run_pipeline(config, shutdown).await,
            Command::Webhooks { .. } => touchline::app::run_webhooks(config, shutdown).await,
            Command::Migrate { .. } => touchline::app::run_migrate(config).await,
            Command::Demo {
                visitors,
                seed,
                data_dir,
                concurrency,
            } => {
                tools::demo::run(tools::demo::DemoOptions {
                    visitors,
                    seed,
                    data_dir,
                    concurrency,
                })
                .await
            }
            Command::Loadgen {
                target,
                rate,
                duration,
                code,
                conversion_percent,
                program,
                secret,
                max_in_flight,
                setup_admin_token,
                seed,
                json,
            } => {
                let report = tools::loadgen::run(tools::loadgen::LoadOptions {
                    target: target.trim_end_matches('/').to_string(),
                    rate,
                    duration: std::time::Duration::from_secs_f64(duration),
                    code,
                    conversion_percent: conversion_percent.min(100),
                    program,
                    secret,
                    max_in_flight,
                    setup_token: setup_admin_token,
                    seed,
                })
                .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", report.text());
                }
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            eprintln!("touchline: {e:#}");
            ExitCode::FAILURE
        }
    }
}
