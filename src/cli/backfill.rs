//! `walhook backfill`: ask the running process for a backfill, list the
//! backfills, cancel one.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};

use walhook::admin::backfill::{self, Queued};
use walhook::admin::dbs::Dbs;
use walhook::admin::render;
use walhook::config::Config;
use walhook::ledger::backfills::BackfillRequest;

use super::output::{admin_connect, print_out};

/// `walhook backfill SLUG [options]`, or one of its subcommands.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BackfillArgs {
    #[command(subcommand)]
    pub command: Option<BackfillCommand>,
    /// The object whose existing rows to send (its slug).
    #[arg(required = true)]
    pub slug: Option<String>,
    /// Only to this endpoint (else to every endpoint subscribed to the events).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Only the rows matching this SQL condition on the table (`stage = 'won'`).
    #[arg(long = "where", value_name = "SQL")]
    pub where_sql: Option<String>,
    /// Send the rows as `{slug}.create` events instead of `{slug}.backfill`.
    #[arg(long = "as", value_enum, value_name = "create")]
    pub as_kind: Option<SendAs>,
    /// Rows per second at most.
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What `--as` accepts.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SendAs {
    Create,
}

#[derive(Subcommand, Debug)]
pub enum BackfillCommand {
    /// Backfills, newest first, with their progress.
    List {
        /// At most this many.
        #[arg(long, default_value_t = backfill::LIST_LIMIT)]
        limit: i64,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Stop a queued or running backfill (rows already sent stay sent).
    Cancel {
        /// The backfill id (`walhook backfill list`).
        id: i64,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cfg: &Config, args: BackfillArgs) -> Result<ExitCode> {
    match args.command {
        Some(BackfillCommand::List { limit, json }) => {
            let client = admin_connect(cfg).await?;
            let list = backfill::list(cfg, &client, limit).await?;
            print_out(json, &list, |l| render::backfills(l))?;
        }
        Some(BackfillCommand::Cancel { id, json }) => {
            let client = admin_connect(cfg).await?;
            let b = backfill::cancel(cfg, &client, id).await?;
            print_out(json, &b, |b| {
                format!(
                    "backfill {} cancelled after {} rows; the running process stops before its next chunk\n",
                    b.id, b.rows_sent
                )
            })?;
        }
        None => {
            let req = BackfillRequest {
                // clap requires SLUG when no subcommand is given.
                slug: args.slug.unwrap_or_default(),
                endpoint: args.endpoint,
                where_sql: args.where_sql,
                as_create: matches!(args.as_kind, Some(SendAs::Create)),
                rate: args.rate,
            };
            let dbs = Dbs::connect(cfg, "walhook backfill").await?;
            let queued = backfill::queue(cfg, dbs.source(), dbs.ledger(), &req).await?;
            print_out(args.json, &queued, queued_text)?;
            if !queued.capturing && !args.json {
                eprintln!(
                    "walhook: warning: no process is reading the replication slot `{}` now; the backfill starts when `walhook run` does",
                    cfg.source.slot
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn queued_text(q: &Queued) -> String {
    let b = &q.backfill;
    let to = b
        .endpoint
        .as_deref()
        .map(|e| format!("endpoint {e}"))
        .unwrap_or_else(|| "every subscribed endpoint".to_string());
    let rate = b
        .rate
        .map(|r| format!(", at most {r} rows/s"))
        .unwrap_or_default();
    format!(
        "backfill {} queued: the rows of `{}` as {} to {to}{rate}.\n\
         The running `walhook run` sends them; `walhook backfill list` shows progress, `walhook backfill cancel {}` stops it.\n",
        b.id, b.slug, q.event, b.id
    )
}
