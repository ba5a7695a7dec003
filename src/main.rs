//! The `walhook` command line. The only place with `anyhow`: each command
//! turns library errors into one actionable paragraph and a non-zero exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use walhook::admin::dbs::{self, Dbs};
use walhook::admin::{check, ping, render, reports};
use walhook::config::{Config, Secret};
use walhook::source::setup;

#[derive(Parser, Debug)]
#[command(
    name = "walhook",
    version,
    about = "PostgreSQL row changes as signed webhooks"
)]
struct Cli {
    /// Config file.
    #[arg(
        long,
        global = true,
        env = "WALHOOK_CONFIG",
        default_value = "walhook.toml"
    )]
    config: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A self-contained tour: throwaway PostgreSQL, demo tables, an in-process
    /// receiver that verifies signatures, and every event printed as delivered.
    Demo,
    /// A local webhook receiver for development: prints each request and
    /// whether its signatures verify.
    Listen {
        /// Port on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 8787)]
        port: u16,
        /// Secret to verify with; repeat it during a rotation. A `whsec_` secret
        /// also checks the Standard Webhooks headers.
        #[arg(long = "secret", env = walhook::devtools::listen::SECRET_ENV, hide_env_values = true,
              required = true, value_parser = parse_secret)]
        secrets: Vec<Secret>,
        /// Prefix of walhook's headers (`delivery.header_prefix`).
        #[arg(long, default_value = "x-superleap")]
        header_prefix: String,
        /// Require the Standard Webhooks headers on every request.
        #[arg(long)]
        standard_webhooks: bool,
        /// Status to answer with (e.g. 500 to make walhook retry).
        #[arg(long, default_value_t = 200)]
        status: u16,
    },
    /// Create the ledger schema, publication, slot and replica identity (idempotent).
    Setup {
        /// Print the SQL instead of running it (for a DBA).
        #[arg(long)]
        print_sql: bool,
    },
    /// The daemon: capture + dispatch + admin until SIGINT/SIGTERM.
    Run {
        /// Do not read the replication slot in this process.
        #[arg(long)]
        no_capture: bool,
        /// Do not send deliveries from this process.
        #[arg(long)]
        no_dispatch: bool,
        /// Do not serve the admin HTTP API.
        #[arg(long)]
        no_admin: bool,
    },
    /// Doctor: config, database, wal_level, privileges, publication, replica
    /// identity, slot and lag, ledger, endpoints. Non-zero exit if any check fails.
    Check {
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Slot lag, events captured, deliveries by state, endpoints and their state.
    Status {
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List, inspect and retry deliveries.
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// Endpoint state; enable, disable or ping one.
    Endpoints {
        #[command(subcommand)]
        command: EndpointsCommand,
    },
    /// Remove old history from the ledger now (`walhook run` does it every
    /// minute): succeeded deliveries and unreferenced events older than
    /// `ledger.retention`, disabled ones older than `ledger.retention_failed`.
    Prune {
        /// Prune succeeded history older than this instead of `ledger.retention` (`12h`, `3d`).
        #[arg(long, value_parser = walhook::config::duration_from_str)]
        older_than: Option<std::time::Duration>,
        /// Count what would go; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Drop the slot and publication (Postgres stops retaining WAL for walhook).
    Teardown {
        /// Also drop the ledger schema with every event and delivery.
        #[arg(long)]
        drop_ledger: bool,
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
enum DeliveriesCommand {
    /// Deliveries, newest first.
    List {
        /// pending, retrying, succeeded or disabled.
        #[arg(long)]
        status: Option<String>,
        /// An event name (`lead.create`), a filter (`lead.*`, `*.delete`) or an event id.
        #[arg(long)]
        event: Option<String>,
        /// An endpoint id.
        #[arg(long)]
        endpoint: Option<String>,
        /// Created since: a duration back from now (`90m`, `2d`), an RFC 3339 time or a date.
        #[arg(long)]
        since: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = reports::DEFAULT_LIMIT)]
        limit: i64,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// One delivery with every attempt; an event id shows every delivery of that event.
    Show {
        /// A delivery id, or an event id.
        id: String,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Put a delivery (or every failed one) back in the queue with a fresh retry cycle.
    Retry {
        /// The delivery id.
        #[arg(conflicts_with = "all_failed")]
        id: Option<i64>,
        /// Every retrying and disabled delivery.
        #[arg(long)]
        all_failed: bool,
        /// With --all-failed: only this endpoint's.
        #[arg(long, requires = "all_failed")]
        endpoint: Option<String>,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum EndpointsCommand {
    /// Every endpoint with its state and deliveries by state.
    List {
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Enable an endpoint (its queued deliveries are sent again).
    Enable {
        id: String,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Disable an endpoint as a whole (deliveries queue up until it is enabled).
    Disable {
        id: String,
        /// Recorded and shown in `endpoints list`.
        #[arg(long, default_value = "disabled by hand (walhook endpoints disable)")]
        reason: String,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Send a signed `walhook.ping` event to the endpoint now (not recorded in the ledger).
    Ping {
        id: String,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// Wraps a secret at once, so `Debug` of the parsed command line cannot show it.
fn parse_secret(s: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(s))
}

/// pgwire-replication logs every session that ends with an error at ERROR
/// level, which for a standby is once a second for the normal "slot in use"
/// state; walhook logs those errors itself, at the level they deserve.
const QUIET_REPLICATION_WORKER: &str = "pgwire_replication::client::tokio_client=off";

fn init_tracing(format: LogFormat, default_filter: &str) {
    let from_env = std::env::var(tracing_subscriber::EnvFilter::DEFAULT_ENV).ok();
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Unless RUST_LOG asks for the crate's own logs.
    if !from_env.is_some_and(|f| f.contains("pgwire_replication"))
        && let Ok(d) = QUIET_REPLICATION_WORKER.parse()
    {
        filter = filter.add_directive(d);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo and listen print a readable stream on stdout: keep logs quiet.
    let default_filter = match cli.command {
        Command::Demo | Command::Listen { .. } => "warn",
        _ => "info,tokio_postgres=warn",
    };
    init_tracing(cli.log_format, default_filter);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walhook: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch_command(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("walhook: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated, each said once: a cause whose
/// text is already there is left out, and so is tokio-postgres' own error
/// for what the server sent ("db error: ..."), which [`walhook::pg::DbError`]
/// has already put as the server said it (message, SQLSTATE, hint).
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let server_said = cause
            .downcast_ref::<tokio_postgres::Error>()
            .is_some_and(|pg| pg.as_db_error().is_some())
            || cause.is::<tokio_postgres::error::DbError>();
        let text = cause.to_string();
        if server_said || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn load_config(path: &std::path::Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

async fn dispatch_command(cli: Cli) -> Result<ExitCode> {
    let path = cli.config;
    match cli.command {
        Command::Demo => demo().await,
        Command::Listen {
            port,
            secrets,
            header_prefix,
            standard_webhooks,
            status,
        } => {
            let opts = walhook::devtools::listen::ListenOptions {
                port,
                secrets,
                header_prefix,
                standard_webhooks,
                status,
            };
            listen(opts).await
        }
        Command::Setup { print_sql } => setup(&load_config(&path)?, print_sql).await,
        Command::Run {
            no_capture,
            no_dispatch,
            no_admin,
        } => {
            let roles = walhook::Roles {
                capture: !no_capture,
                dispatch: !no_dispatch,
                admin: !no_admin,
            };
            run(load_config(&path)?, roles).await
        }
        Command::Check { json } => check(&path, json).await,
        Command::Status { json } => {
            let cfg = load_config(&path)?;
            let dbs = Dbs::connect(&cfg, "walhook admin").await?;
            let status = reports::Reports::new(&cfg)
                .status(dbs.source(), dbs.ledger())
                .await?;
            print_out(json, &status, render::status)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Prune {
            older_than,
            dry_run,
            json,
        } => {
            let cfg = load_config(&path)?;
            let dbs = Dbs::connect(&cfg, "walhook prune").await?;
            let report = walhook::admin::prune::prune(&cfg, &dbs, older_than, dry_run).await?;
            print_out(json, &report, render::pruned)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Deliveries { command } => deliveries_command(&load_config(&path)?, command).await,
        Command::Endpoints { command } => endpoints_command(&load_config(&path)?, command).await,
        Command::Teardown { drop_ledger, yes } => {
            teardown(&load_config(&path)?, drop_ledger, yes).await
        }
    }
}

async fn demo() -> Result<ExitCode> {
    use walhook::devtools::{demo, listen};
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone(), None)?;
    match demo::run(listen::Printer::stdout(), shutdown).await? {
        demo::Outcome::Completed(_) => Ok(ExitCode::SUCCESS),
        // The shell convention for "ended by SIGINT".
        demo::Outcome::Interrupted => Ok(ExitCode::from(130)),
    }
}

async fn listen(opts: walhook::devtools::listen::ListenOptions) -> Result<ExitCode> {
    use walhook::devtools::listen;
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone(), None)?;
    listen::run(opts, listen::Printer::stdout(), shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

async fn setup(cfg: &Config, print_sql: bool) -> Result<ExitCode> {
    if print_sql {
        for stmt in setup::plan_sql(cfg) {
            println!("{stmt}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let dbs = Dbs::connect(cfg, "walhook setup").await?;
    let steps = setup::run(dbs.source(), dbs.ledger(), cfg).await?;
    let changed = steps.iter().filter(|s| s.changed).count();
    for s in &steps {
        println!("{} {}", if s.changed { "+" } else { "=" }, s.what);
    }
    if changed == 0 {
        println!("nothing to change: walhook is already set up");
    } else {
        println!("setup done: {changed} change(s)");
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(cfg: Config, roles: walhook::Roles) -> Result<ExitCode> {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone(), Some(STOP_DEADLINE))?;
    walhook::run(Arc::new(cfg), roles, shutdown).await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn check(path: &std::path::Path, json: bool) -> Result<ExitCode> {
    let report = match Config::load(path) {
        Ok(cfg) => check::run(&cfg, &path.display().to_string()).await,
        Err(e) => check::CheckReport::config_error(&e.to_string()),
    };
    print_out(json, &report, render::checks)?;
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn teardown(cfg: &Config, drop_ledger: bool, yes: bool) -> Result<ExitCode> {
    if !yes {
        let ledger = if drop_ledger {
            " and the whole ledger"
        } else {
            ""
        };
        bail!(
            "teardown drops the replication slot {} and publication {}{ledger}; run again with --yes to confirm",
            cfg.source.slot,
            cfg.source.publication,
        );
    }
    use walhook::source::teardown;
    // The slot first: it is what makes Postgres retain WAL.
    let source = dbs::connect_source(cfg, "walhook teardown").await?;
    for line in teardown::run(&source, cfg).await? {
        println!("{line}");
    }
    let schema = &cfg.ledger.schema;
    if drop_ledger {
        let ledger = dbs::connect_ledger(cfg, "walhook teardown").await?;
        println!("{}", teardown::drop_ledger(&ledger, schema).await?);
    } else {
        println!("= ledger schema {schema} kept (use --drop-ledger to drop it)");
    }
    Ok(ExitCode::SUCCESS)
}

/// JSON (pretty, on stdout) or the human rendering.
fn print_out<T: serde::Serialize>(json: bool, value: &T, human: fn(&T) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", human(value));
    }
    Ok(())
}

/// The ledger's database, where every delivery and endpoint command works.
async fn admin_connect(cfg: &Config) -> Result<tokio_postgres::Client> {
    Ok(dbs::connect_ledger(cfg, "walhook admin").await?)
}

async fn deliveries_command(cfg: &Config, command: DeliveriesCommand) -> Result<ExitCode> {
    let reports = reports::Reports::new(cfg);
    match command {
        DeliveriesCommand::List {
            status,
            event,
            endpoint,
            since,
            limit,
            json,
        } => {
            let filter = reports::DeliveryFilter {
                status: status.as_deref().map(str::parse).transpose()?,
                event,
                endpoint,
                since: since
                    .as_deref()
                    .map(|s| reports::parse_since(s, std::time::SystemTime::now()))
                    .transpose()?,
                before: None,
                limit: Some(limit),
            };
            let client = admin_connect(cfg).await?;
            let list = reports.list_deliveries(&client, &filter).await?;
            print_out(json, &list, |l| render::deliveries(l))?;
        }
        DeliveriesCommand::Show { id, json } => {
            let client = admin_connect(cfg).await?;
            let shown = reports.show(&client, &id).await?;
            print_out(json, &shown, render::shown)?;
        }
        DeliveriesCommand::Retry {
            id,
            all_failed,
            endpoint,
            json,
        } => retry_deliveries(&reports, cfg, id, all_failed, endpoint, json).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn retry_deliveries(
    reports: &reports::Reports<'_>,
    cfg: &Config,
    id: Option<i64>,
    all_failed: bool,
    endpoint: Option<String>,
    json: bool,
) -> Result<()> {
    let client = admin_connect(cfg).await?;
    if all_failed {
        let out = reports
            .retry_all_failed(&client, endpoint.as_deref())
            .await?;
        print_out(json, &out, |o| {
            format!(
                "{} failed deliveries queued again{}\n",
                o.requeued,
                o.endpoint
                    .as_deref()
                    .map(|e| format!(" for endpoint {e}"))
                    .unwrap_or_default()
            )
        })?;
    } else {
        let id = id.context(
            "give the id of the delivery to retry (`walhook deliveries list` shows them), or --all-failed [--endpoint E] to re-queue every retrying and disabled delivery",
        )?;
        let out = reports.retry(&client, id).await?;
        print_out(json, &out, |o| {
            format!(
                "delivery {} ({}) queued again; a running `walhook run` sends it now\n",
                o.delivery_id,
                o.previous_status.as_str()
            )
        })?;
    }
    Ok(())
}

async fn endpoints_command(cfg: &Config, command: EndpointsCommand) -> Result<ExitCode> {
    let reports = reports::Reports::new(cfg);
    match command {
        EndpointsCommand::List { json } => {
            let client = admin_connect(cfg).await?;
            let list = reports.endpoints(&client).await?;
            print_out(json, &list, |l| render::endpoints(l))?;
        }
        EndpointsCommand::Enable { id, json } => {
            let client = admin_connect(cfg).await?;
            let out = reports.set_endpoint_enabled(&client, &id, true, "").await?;
            print_out(json, &out, toggled)?;
        }
        EndpointsCommand::Disable { id, reason, json } => {
            let client = admin_connect(cfg).await?;
            let out = reports
                .set_endpoint_enabled(&client, &id, false, &reason)
                .await?;
            print_out(json, &out, toggled)?;
        }
        EndpointsCommand::Ping { id, json } => {
            let out = ping::ping(cfg, &id).await?;
            print_out(json, &out, render::ping)?;
            if !out.ok {
                bail!(
                    "endpoint {} did not accept the ping ({}). Check that the receiver is up at {}, answers 2xx within the endpoint's timeout, and verifies signatures with the configured secret.",
                    out.endpoint,
                    render::clean(&out.outcome),
                    out.target
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn toggled(t: &reports::EndpointToggle) -> String {
    let state = if t.enabled { "enabled" } else { "disabled" };
    if t.changed {
        format!("endpoint {} {state}\n", t.endpoint)
    } else {
        format!("endpoint {} was already {state}\n", t.endpoint)
    }
}

/// How long a graceful stop may take before the process exits anyway (a
/// frozen database must not keep walhook from stopping). Nothing is lost: the
/// slot is acknowledged only past what is resolved.
const STOP_DEADLINE: std::time::Duration = std::time::Duration::from_millis(4_500);

/// The first SIGTERM or SIGINT starts a graceful stop (for `run`, bounded by
/// `deadline`); a second one exits at once.
fn spawn_signal_handler(
    shutdown: CancellationToken,
    deadline: Option<std::time::Duration>,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping gracefully"),
            _ = int.recv() => tracing::info!("SIGINT: stopping gracefully"),
        }
        shutdown.cancel();
        if let Some(deadline) = deadline {
            std::thread::spawn(move || {
                std::thread::sleep(deadline);
                eprintln!(
                    "walhook: the graceful stop did not finish within {deadline:?} (is the database answering?); exiting. Nothing is lost: what was not acknowledged is sent again after the restart."
                );
                std::process::exit(1);
            });
        }
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("walhook: second signal: exiting now");
        std::process::exit(130);
    });
    Ok(())
}
