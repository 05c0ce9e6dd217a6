//! The `touchline` binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use touchline::config::{Config, LogFormat};

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
        Command::Demo { .. } => None,
        Command::Edge { config } | Command::Pipeline { config } | Command::Migrate { config } => {
            Some(config.clone())
        }
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
            Command::Migrate { .. } => touchline::app::run_migrate(config).await,
            Command::Demo {
                visitors,
                seed,
                data_dir,
                concurrency,
            } => {
                touchline::demo::run(touchline::demo::DemoOptions {
                    visitors,
                    seed,
                    data_dir,
                    concurrency,
                })
                .await
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
