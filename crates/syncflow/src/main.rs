//! The `syncflow` binary: command-line parsing and wiring only. Behaviour lives in
//! the library crates.

mod backfill;
mod config;
mod demo;
mod ops;
mod prune;
mod reconcile;
mod sandbox;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use syncflow_engine::{Engine, RetentionSettings, SystemConfig};
use syncflow_server::{router, ApiTokens, AppState, Clients};
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
    /// List deliveries from the transaction table (newest first, as the API).
    Deliveries {
        #[command(flatten)]
        db: DbArgs,
        /// Only this status: pending, in_flight, delivered, retrying, dead, skipped.
        #[arg(long)]
        status: Option<String>,
        /// Only this system.
        #[arg(long)]
        system: Option<String>,
        /// Only this record.
        #[arg(long)]
        record: Option<String>,
        /// Show at most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// `desc` (newest first) or `asc` (oldest first).
        #[arg(long, value_enum, default_value_t = ops::Order::Desc)]
        order: ops::Order,
    },
    /// Everything that happened to one record: its changes, deliveries to each
    /// system (attempts, remarks), inward events and conflicts, in time order.
    History {
        #[command(flatten)]
        db: DbArgs,
        /// The record's hub id (`cust_…`, `invc_…`).
        id: String,
        /// Its entity, when the id's prefix does not say.
        #[arg(long)]
        entity: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put a system's dead deliveries back in the queue.
    Replay {
        #[command(flatten)]
        db: DbArgs,
        /// The system whose dead letters to replay.
        #[arg(long)]
        system: String,
    },
    /// Run a sandbox stand-in of an external system as a process (loopback only).
    #[command(subcommand)]
    Sandbox(sandbox::Sandbox),
    /// Run the hub with sandbox systems and sample data, and print what to try.
    Demo {
        /// Address of the hub's API.
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: String,
    },
    /// Link or import the records a system already has, and push the hub's
    /// records it lacks (resumable; rerun to continue after an interruption).
    Backfill {
        #[command(flatten)]
        db: DbArgs,
        /// The `[[systems]]` name to backfill (a two-way system: stripe, salesforce).
        #[arg(long)]
        system: String,
        /// Which way: `import` (system → hub), `export` (hub → system) or `both`.
        #[arg(long, value_enum, default_value_t = backfill::Way::Both)]
        direction: backfill::Way,
        /// Start from the beginning instead of where the last run stopped.
        #[arg(long)]
        restart: bool,
        /// Export: return once the records are enqueued, without waiting for the
        /// hub to deliver them.
        #[arg(long)]
        no_wait: bool,
    },
    /// Compare a system with the hub: records missing on either side, fields that
    /// drifted, orphan links, duplicates (exit status 1 when drift is left).
    Reconcile {
        #[command(flatten)]
        db: DbArgs,
        /// The `[[systems]]` name to reconcile (a two-way system).
        #[arg(long)]
        system: String,
        /// Only this entity (default: the system's entities).
        #[arg(long)]
        entity: Option<String>,
        /// Heal what is found through ordinary deliveries and inward applies.
        #[arg(long)]
        repair: bool,
    },
    /// Run one retention pass now: prune settled inbox events, finished
    /// deliveries and passed change-log rows older than an age (as `serve` does
    /// with the `retention` setting), and print what each table lost.
    Prune {
        #[command(flatten)]
        db: DbArgs,
        /// Age to prune after (`7d`, `36h`, `90m`).
        #[arg(long)]
        older_than: String,
        /// Rows one transaction looks at.
        #[arg(long, default_value_t = syncflow_store::retention::DEFAULT_BATCH)]
        batch: usize,
    },
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
struct DbArgs {
    /// `sqlite:PATH`, a file path, or `postgres://…`.
    #[arg(long, env = "SYNCFLOW_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

impl DbArgs {
    fn url(&self, config: &Config) -> String {
        let url =
            self.database_url.clone().or(config.server.database_url.clone()).unwrap_or_else(|| DEFAULT_DATABASE.into());
        config::remember_password(&url);
        url
    }

    /// Opens (creating and migrating if needed) the hub's database: for `serve`.
    async fn open(self, config: &Config) -> Result<Store> {
        let url = self.url(config);
        Store::open(&url).await.with_context(|| format!("opening database {}", syncflow_store::redact(&url)))
    }

    /// Opens an existing hub database, for commands that read one: a SQLite file
    /// that does not exist is an error, never a new empty database.
    async fn open_existing(self, config: &Config) -> Result<Store> {
        let url = self.url(config);
        if let Some(path) = sqlite_path(&url) {
            if !std::path::Path::new(path).exists() {
                bail!(
                    "no hub database at {path}: this command reads an existing hub and will not create one. \
                     Name the hub's database with --database-url (or SYNCFLOW_DATABASE_URL, or database_url \
                     in the --config file); `syncflow serve` creates it"
                );
            }
        }
        Store::open(&url).await.with_context(|| format!("opening database {}", syncflow_store::redact(&url)))
    }
}

/// The file a SQLite URL names (`None` for PostgreSQL and in-memory databases).
fn sqlite_path(url: &str) -> Option<&str> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return None;
    }
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty() && !path.starts_with(":memory:")).then_some(path)
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    db: DbArgs,
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

/// Environment variables the binary reads itself; their values are never shown.
const OWN_ENV: &[&str] =
    &["SYNCFLOW_API_TOKENS", "SYNCFLOW_DATABASE_URL", "SYNCFLOW_LISTEN", "SYNCFLOW_LOG_FORMAT", "SYNCFLOW_CONFIG"];

/// Runs the command; any error is printed with every value from the environment
/// or under a secret key blanked out (see `config::scrub`).
fn main() -> ExitCode {
    for name in OWN_ENV {
        if let Ok(value) = std::env::var(name) {
            config::remember(&value);
            value.split(',').for_each(config::remember);
        }
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprint!("{}", config::scrub(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", config::scrub(&format!("{e:?}")));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let config_loaded = cli.config.is_some();
    let log_format = match (cli.log_format, config.server.log_format.as_deref()) {
        (Some(f), _) => f,
        (None, Some("json")) => LogFormat::Json,
        (None, Some("text") | None) => LogFormat::Text,
        (None, Some(other)) => bail!("log_format must be \"text\" or \"json\", not {other:?}"),
    };
    init_logging(log_format);
    match cli.command {
        Command::Init { path, force } => init(&path, force),
        command => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(async move {
                match command {
                    Command::Serve(args) => serve(args, config, None).await,
                    Command::Demo { listen } => demo::run(listen, config).await,
                    Command::Sandbox(which) => sandbox::run(which).await,
                    Command::Deliveries { db, status, system, record, limit, order } => {
                        let store = db.open_existing(&config).await?;
                        if let Some(name) = &system {
                            ops::known_system(&store, &config, name).await?;
                        }
                        ops::deliveries(store, status, system, record, limit, order).await
                    }
                    Command::Replay { db, system } => {
                        let store = db.open_existing(&config).await?;
                        ops::known_system(&store, &config, &system).await?;
                        ops::replay(store, &system).await
                    }
                    Command::History { db, id, entity, json } => {
                        ops::history(db.open_existing(&config).await?, &id, entity.as_deref(), json).await
                    }
                    Command::Backfill { db, system, direction, restart, no_wait } => {
                        if !config_loaded {
                            bail!(
                                "no config file loaded (--config): backfill needs the [[systems]] block \
                                 named `{system}` (its kind and credentials)"
                            );
                        }
                        let store = db.open_existing(&config).await?;
                        ops::known_system(&store, &config, &system).await?;
                        backfill::run(store, &config, &system, direction, restart, !no_wait).await
                    }
                    Command::Reconcile { db, system, entity, repair } => {
                        if !config_loaded {
                            bail!("no config file loaded (--config): reconcile needs the [[systems]] block `{system}`");
                        }
                        let store = db.open_existing(&config).await?;
                        ops::known_system(&store, &config, &system).await?;
                        reconcile::run(store, &config, &system, entity.as_deref(), repair).await
                    }
                    Command::Prune { db, older_than, batch } => {
                        let store = db.open_existing(&config).await?;
                        prune::run(store, &config, config_loaded, &older_than, batch).await
                    }
                    Command::Init { .. } => unreachable!("handled above"),
                }
            })
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

/// Runs the hub until SIGINT/SIGTERM. `ready` learns the bound address.
async fn serve(args: ServeArgs, config: Config, ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>) -> Result<()> {
    let listen = args.listen.or(config.server.listen.clone()).unwrap_or_else(|| DEFAULT_LISTEN.into());
    let addr: SocketAddr =
        listen.parse().with_context(|| format!("--listen {listen:?} is not an address like 127.0.0.1:8080"))?;
    let tokens = match args.api_tokens {
        Some(list) => {
            list.split(',').for_each(config::remember);
            ApiTokens::parse(&list)
        }
        None => ApiTokens::parse(&config.server.api_tokens.join(",")),
    };
    let clients =
        Clients::new(config.clients.iter().map(|c| c.to_spec()).collect(), &tokens).context("in [[clients]]")?;
    if !addr.ip().is_loopback() && tokens.is_empty() && !clients.has_tokens() && !args.insecure_no_auth {
        bail!(
            "refusing to listen on {addr} without API tokens: set SYNCFLOW_API_TOKENS \
             (or api_tokens in the config), or pass --insecure-no-auth"
        );
    }
    let systems = config
        .systems
        .iter()
        .cloned()
        .map(SystemConfig::from_table)
        .collect::<Result<Vec<_>, _>>()
        .context("in [[systems]]")?;
    let retention = RetentionSettings { age: config.retention_age()?, ..Default::default() };
    let store = args.db.open(&config).await?;
    let engine =
        Arc::new(Engine::new(store.clone(), systems.clone()).context("in [[systems]]")?.with_retention(retention));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    let auth = if tokens.is_empty() && !clients.has_tokens() { "off" } else { "bearer" };
    tracing::info!(
        listen = %bound,
        database = store.backend_name(),
        auth,
        sync_clients = config.clients.len(),
        "syncflow serving"
    );
    for s in &systems {
        tracing::info!(system = %s.name, kind = %s.kind, entities = ?s.entities, "delivering to system");
    }
    let notify_task = store.spawn_listener();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut engine_tasks = engine.spawn(stopped);
    let state = AppState::new(store.clone(), tokens)
        .with_systems(systems)
        .with_clients(clients)
        .with_pipelines(engine.pipelines());
    let app = router(state.clone());
    if let Some(ready) = ready {
        let _ = ready.send(bound);
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            // Event streams and long-polls never end by themselves: close them so
            // draining ends.
            state.begin_shutdown();
        })
        .await?;
    tracing::info!("in-flight requests finished; stopping delivery workers");
    let _ = stop.send(true);
    while engine_tasks.join_next().await.is_some() {}
    if let Some(t) = notify_task {
        t.abort();
    }
    tracing::info!("closing the database");
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
