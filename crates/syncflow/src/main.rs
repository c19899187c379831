//! The `syncflow` binary: command-line parsing and wiring only. Behaviour lives in
//! the library crates.

mod config;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use syncflow_server::{router, ApiTokens, AppState};
use syncflow_store::Store;

use crate::config::Config;

#[derive(Parser)]
#[command(name = "syncflow", version, about = "Two-way data sync hub")]
struct Cli {
    /// Configuration file (see `syncflow init`).
    #[arg(long, short, global = true, env = "SYNCFLOW_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, env = "SYNCFLOW_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub: HTTP API over the catalog (SQLite ./syncflow.db by default).
    Serve(ServeArgs),
    /// Write a commented starter configuration file.
    Init {
        /// Where to write it.
        #[arg(default_value = "syncflow.toml")]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// `sqlite:PATH`, a file path, or `postgres://…`.
    #[arg(long, env = "SYNCFLOW_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "SYNCFLOW_LISTEN")]
    listen: Option<String>,
    /// Comma-separated bearer tokens for /v1/*.
    #[arg(long, env = "SYNCFLOW_API_TOKENS", hide_env_values = true)]
    api_tokens: Option<String>,
    /// Allow listening on a non-loopback address without API tokens.
    #[arg(long)]
    insecure_no_auth: bool,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_DATABASE: &str = "sqlite:syncflow.db";

fn main() -> Result<()> {
    let cli = Cli::parse();
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let log_format = match (cli.log_format, config.server.log_format.as_deref()) {
        (Some(f), _) => f,
        (None, Some("json")) => LogFormat::Json,
        (None, Some("text") | None) => LogFormat::Text,
        (None, Some(other)) => bail!("log_format must be \"text\" or \"json\", not {other:?}"),
    };
    init_logging(log_format);
    match cli.command {
        Command::Init { path, force } => init(&path, force),
        Command::Serve(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve(args, config))
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn init(path: &PathBuf, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!("{} already exists (use --force to overwrite)", path.display());
    }
    std::fs::write(path, config::STARTER).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}; start the hub with: syncflow serve --config {}", path.display(), path.display());
    Ok(())
}

async fn serve(args: ServeArgs, config: Config) -> Result<()> {
    let listen = args.listen.or(config.server.listen).unwrap_or_else(|| DEFAULT_LISTEN.into());
    let addr: SocketAddr =
        listen.parse().with_context(|| format!("--listen {listen:?} is not an address like 127.0.0.1:8080"))?;
    let tokens = match args.api_tokens {
        Some(list) => ApiTokens::parse(&list),
        None => ApiTokens::parse(&config.server.api_tokens.join(",")),
    };
    if !addr.ip().is_loopback() && tokens.is_empty() && !args.insecure_no_auth {
        bail!(
            "refusing to listen on {addr} without API tokens: set SYNCFLOW_API_TOKENS \
             (or api_tokens in the config), or pass --insecure-no-auth"
        );
    }
    let database_url = args.database_url.or(config.server.database_url).unwrap_or_else(|| DEFAULT_DATABASE.into());

    let store = Store::open(&database_url)
        .await
        .with_context(|| format!("opening database {}", syncflow_store::redact(&database_url)))?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(
        listen = %bound,
        database = store.backend_name(),
        auth = if tokens.is_empty() { "off" } else { "bearer" },
        "syncflow serving"
    );
    let app = router(AppState::new(store.clone(), tokens));
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
    tracing::info!("in-flight requests finished; closing the database");
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM; axum then stops accepting and drains requests.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
