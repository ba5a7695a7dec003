//! `walhook deliveries`: list, show, retry and resend.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use walhook::admin::requeue::RetryRequest;
use walhook::admin::{render, reports};
use walhook::config::Config;

use super::output::{admin_connect, print_out};

#[derive(Subcommand, Debug)]
pub enum DeliveriesCommand {
    /// Deliveries, newest first.
    List {
        /// pending, retrying, held (pending or retrying for a disabled endpoint), succeeded or disabled.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        select: Selection,
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
    /// Put failed deliveries back in the queue with a fresh retry cycle: one
    /// by id, or every retrying and disabled one the flags select (AND).
    /// Succeeded deliveries are never re-queued by retry; `deliveries
    /// resend` sends an event again on purpose.
    Retry(RetryArgs),
    /// Send a past event again to an endpoint (e.g. a new one): a new
    /// delivery, due now, with a fresh retry cycle. The event's body must be
    /// in the ledger (`[ledger] keep_bodies = "all"` keeps every one).
    Resend {
        /// The event id (`walhook deliveries list` shows them).
        event_id: String,
        /// The endpoint to send it to.
        #[arg(long)]
        endpoint: String,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// Which deliveries: the flags `list` and `retry` share.
#[derive(Args, Debug)]
pub struct Selection {
    /// An event name (`lead.create`), a filter (`lead.*`, `*.delete`) or an event id.
    #[arg(long)]
    event: Option<String>,
    /// An endpoint id.
    #[arg(long)]
    endpoint: Option<String>,
    /// Created since: a duration back from now (`90m`, `2d`), an RFC 3339 time or a date.
    #[arg(long)]
    since: Option<String>,
    /// Created before: the same forms as --since.
    #[arg(long)]
    until: Option<String>,
}

/// The flags of `deliveries retry`.
#[derive(Args, Debug)]
pub struct RetryArgs {
    /// The delivery id.
    #[arg(conflicts_with_all = ["all_failed", "status", "event", "endpoint", "since", "until", "dry_run"])]
    id: Option<i64>,
    /// Every retrying and disabled delivery (the flags below narrow it).
    #[arg(long)]
    all_failed: bool,
    /// retrying or disabled (default: both).
    #[arg(long)]
    status: Option<String>,
    #[command(flatten)]
    select: Selection,
    /// Count what would be re-queued; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(cfg: &Config, command: DeliveriesCommand) -> Result<ExitCode> {
    let reports = reports::Reports::new(cfg);
    match command {
        DeliveriesCommand::List {
            status,
            select,
            limit,
            json,
        } => {
            let now = std::time::SystemTime::now();
            let time = |what, s: Option<String>| {
                s.as_deref()
                    .map(|s| reports::parse_time(what, s, now))
                    .transpose()
            };
            let filter = reports::DeliveryFilter {
                status: status.as_deref().map(str::parse).transpose()?,
                event: select.event,
                endpoint: select.endpoint,
                since: time("since", select.since)?,
                until: time("until", select.until)?,
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
        DeliveriesCommand::Retry(args) => retry_deliveries(&reports, cfg, args).await?,
        DeliveriesCommand::Resend {
            event_id,
            endpoint,
            json,
        } => {
            let client = admin_connect(cfg).await?;
            let out = reports.resend(&client, &event_id, &endpoint).await?;
            print_out(json, &out, render::resent)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn retry_deliveries(
    reports: &reports::Reports<'_>,
    cfg: &Config,
    a: RetryArgs,
) -> Result<()> {
    let sel = a.select;
    let filtered = a.status.is_some()
        || sel.event.is_some()
        || sel.endpoint.is_some()
        || sel.since.is_some()
        || sel.until.is_some();
    if let Some(id) = a.id {
        let client = admin_connect(cfg).await?;
        let out = reports.retry(&client, id).await?;
        return print_out(a.json, &out, |o| {
            format!(
                "delivery {} ({}) queued again; a running `walhook run` sends it now\n",
                o.delivery_id,
                o.previous_status.as_str()
            )
        });
    }
    if !a.all_failed && !filtered {
        bail!(
            "give the id of the delivery to retry (`walhook deliveries list` shows them), or choose failed deliveries with --all-failed, --status, --event, --endpoint, --since or --until (--dry-run counts them first)"
        );
    }
    let req = RetryRequest {
        status: a.status,
        event: sel.event,
        endpoint: sel.endpoint,
        since: sel.since,
        until: sel.until,
        dry_run: a.dry_run,
    };
    let client = admin_connect(cfg).await?;
    let out = reports.requeue(&client, &req).await?;
    print_out(a.json, &out, render::requeued)
}
