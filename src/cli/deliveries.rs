//! `walhook deliveries`: list, show and retry.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use walhook::admin::{render, reports};
use walhook::config::Config;

use super::output::{admin_connect, print_out};

#[derive(Subcommand, Debug)]
pub enum DeliveriesCommand {
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

pub async fn run(cfg: &Config, command: DeliveriesCommand) -> Result<ExitCode> {
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
