//! The command line: what each command accepts (clap) and, per area, how it
//! turns library results into output and library errors into one actionable
//! paragraph. The only room with `anyhow`.

mod backfill;
mod deliveries;
mod endpoints;
mod init;
mod lifecycle;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use walhook::admin::reports;
use walhook::config::{Config, Secret};

pub use deliveries::DeliveriesCommand;
pub use endpoints::EndpointsCommand;
pub use output::report;

/// The config file when neither --config nor WALHOOK_CONFIG names one.
pub const DEFAULT_CONFIG: &str = "walhook.toml";

#[derive(Parser, Debug)]
#[command(
    name = "walhook",
    version,
    about = "PostgreSQL row changes as signed webhooks"
)]
pub struct Cli {
    /// Config file.
    #[arg(
        long,
        global = true,
        env = "WALHOOK_CONFIG",
        default_value = DEFAULT_CONFIG
    )]
    pub config: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
    /// Write a starter config: the database's tables as [[objects]], one
    /// endpoint with a fresh secret read from the environment.
    Init {
        /// The database whose tables to list (default: DATABASE_URL; neither
        /// writes a config without tables).
        #[arg(long, value_name = "URL", value_parser = parse_secret, hide_env_values = true)]
        database_url: Option<Secret>,
        /// Replace an existing config file.
        #[arg(long)]
        force: bool,
    },
    /// Create the ledger schema, publication, slot and replica identity (idempotent).
    Setup {
        /// Print the SQL instead of running it (for a DBA).
        #[arg(long)]
        print_sql: bool,
        /// With --print-sql: the role walhook runs as (default: the user of source.url).
        #[arg(long, requires = "print_sql")]
        role: Option<String>,
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
    /// Endpoint state; enable, disable or ping one; add, update, remove or
    /// rotate the secret of endpoints made at runtime.
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
    /// Send the rows a table already holds as events (`SLUG.backfill`), run by
    /// `walhook run`; `backfill list` shows progress, `backfill cancel ID` stops one.
    Backfill(backfill::BackfillArgs),
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

/// Wraps a secret at once, so `Debug` of the parsed command line cannot show it.
fn parse_secret(s: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(s))
}

fn load_config(path: &std::path::Path) -> Result<Config> {
    require_config(path)?;
    Ok(Config::load(path)?)
}

/// A missing config file is said once, with the command that writes one.
fn require_config(path: &std::path::Path) -> Result<()> {
    if let Err(e) = std::fs::metadata(path)
        && e.kind() == std::io::ErrorKind::NotFound
    {
        bail!(
            "there is no config file {}: `walhook init` writes a starter one (or give the path of yours with --config)",
            path.display()
        );
    }
    Ok(())
}

/// Runs one parsed command.
pub async fn dispatch_command(cli: Cli) -> Result<ExitCode> {
    let path = cli.config;
    match cli.command {
        Command::Demo => lifecycle::demo().await,
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
            lifecycle::listen(opts).await
        }
        Command::Setup { print_sql, role } => {
            lifecycle::setup(&load_config(&path)?, print_sql, role.as_deref()).await
        }
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
            lifecycle::run(load_config(&path)?, roles).await
        }
        Command::Check { json } => {
            require_config(&path)?;
            lifecycle::check(&path, json).await
        }
        Command::Init {
            database_url,
            force,
        } => init::run(&path, database_url.map(|u| u.expose().to_string()), force).await,
        Command::Backfill(args) => backfill::run(&load_config(&path)?, args).await,
        Command::Status { json } => {
            let cfg = load_config(&path)?;
            let dbs = walhook::admin::dbs::Dbs::connect(&cfg, "walhook admin").await?;
            let status = reports::Reports::new(&cfg)
                .status(dbs.source(), dbs.ledger())
                .await?;
            output::print_out(json, &status, walhook::admin::render::status)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Prune {
            older_than,
            dry_run,
            json,
        } => {
            let cfg = load_config(&path)?;
            let dbs = walhook::admin::dbs::Dbs::connect(&cfg, "walhook prune").await?;
            let report = walhook::admin::prune::prune(&cfg, &dbs, older_than, dry_run).await?;
            output::print_out(json, &report, walhook::admin::render::pruned)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Deliveries { command } => deliveries::run(&load_config(&path)?, command).await,
        Command::Endpoints { command } => {
            endpoints::run(&load_config(&path)?, &path, command).await
        }
        Command::Teardown { drop_ledger, yes } => {
            lifecycle::teardown(&load_config(&path)?, drop_ledger, yes).await
        }
    }
}
