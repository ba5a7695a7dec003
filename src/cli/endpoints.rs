//! `walhook endpoints`: list, enable, disable, ping.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;

use walhook::admin::{ping, render, reports};
use walhook::config::Config;

use super::output::{admin_connect, print_out};

#[derive(Subcommand, Debug)]
pub enum EndpointsCommand {
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

pub async fn run(cfg: &Config, command: EndpointsCommand) -> Result<ExitCode> {
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
