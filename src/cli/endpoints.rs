//! `walhook endpoints`: list, enable, disable, ping; add, update, remove and
//! rotate the secret of endpoints made at runtime (straight on the ledger,
//! with the key from `admin.secrets_key_env`).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Subcommand;

use walhook::admin::subscriptions::{
    AddRequest, Removed, RuntimeView, SubsError, Subscriptions, UpdateRequest, WithSecret,
};
use walhook::admin::{ping, render, reports};
use walhook::config::{Config, EndpointConfig, duration_from_str};

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
    /// Add an endpoint at runtime (kept in the ledger; running processes pick
    /// it up). Prints its new `whsec_` secret once.
    Add {
        id: String,
        /// https://..., or http:// on a loopback host.
        #[arg(long)]
        url: String,
        /// Event filters, comma-separated (`*`, `lead.*`, `*.create`, `lead.update`). Default `*`.
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        /// Signature schemes, comma-separated. Default `superleap,standard-webhooks`.
        #[arg(long, value_delimiter = ',')]
        signing: Option<Vec<String>>,
        /// Per-attempt timeout (`10s`). Default 10s.
        #[arg(long, value_parser = duration_from_str)]
        timeout: Option<Duration>,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Change an endpoint made at runtime (what is not given stays).
    Update {
        id: String,
        #[arg(long)]
        url: Option<String>,
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        #[arg(long, value_delimiter = ',')]
        signing: Option<Vec<String>>,
        #[arg(long, value_parser = duration_from_str)]
        timeout: Option<Duration>,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove an endpoint made at runtime; its open deliveries are disabled.
    Remove {
        id: String,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// A new secret for an endpoint made at runtime, printed once; the old one
    /// keeps signing alongside for `--keep-old`.
    RotateSecret {
        id: String,
        /// How long the old secret still signs (`24h`; `0s`: not at all). Default 24h.
        #[arg(long, value_parser = duration_from_str)]
        keep_old: Option<Duration>,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cfg: &Config, path: &Path, command: EndpointsCommand) -> Result<ExitCode> {
    let reports = reports::Reports::new(cfg);
    let command = match runtime(cfg, path, command).await? {
        None => return Ok(ExitCode::SUCCESS),
        Some(other) => other,
    };
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
            let out = match runtime_endpoint(cfg, &id).await? {
                Some(ep) => {
                    let http = walhook::dispatch::http::build_client()?;
                    ping::ping_with(cfg, &ep, &http, std::time::SystemTime::now()).await?
                }
                None => ping::ping(cfg, &id).await?,
            };
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
        EndpointsCommand::Add { .. }
        | EndpointsCommand::Update { .. }
        | EndpointsCommand::Remove { .. }
        | EndpointsCommand::RotateSecret { .. } => unreachable!("handled by `runtime`"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Runtime endpoint `id` with its secrets opened; `None` when `id` is a
/// config endpoint or no endpoint at all.
async fn runtime_endpoint(cfg: &Config, id: &str) -> Result<Option<EndpointConfig>> {
    if cfg.endpoint(id).is_some() {
        return Ok(None);
    }
    let client = admin_connect(cfg).await?;
    match Subscriptions::new(cfg).endpoint_config(&client, id).await {
        Err(SubsError::NotFound(_)) => Ok(None),
        other => Ok(Some(other?)),
    }
}

/// Runs the commands on runtime endpoints; hands the others back.
async fn runtime(
    cfg: &Config,
    path: &Path,
    command: EndpointsCommand,
) -> Result<Option<EndpointsCommand>> {
    let subs = Subscriptions::new(cfg);
    // A config endpoint is refused naming the file it is in.
    let in_file = |e: SubsError| match e {
        SubsError::FromConfig(_) => anyhow::anyhow!("{}: {e}", path.display()),
        other => other.into(),
    };
    match command {
        EndpointsCommand::Add {
            id,
            url,
            events,
            signing,
            timeout,
            json,
        } => {
            let mut client = admin_connect(cfg).await?;
            let req = AddRequest {
                id,
                url,
                events,
                signing,
                timeout,
            };
            let out = subs.add(&mut client, req).await.map_err(in_file)?;
            print_out(json, &out, |w| with_secret(w, "added"))?;
        }
        EndpointsCommand::Update {
            id,
            url,
            events,
            signing,
            timeout,
            json,
        } => {
            let mut client = admin_connect(cfg).await?;
            let req = UpdateRequest {
                url,
                events,
                signing,
                timeout,
            };
            let out = subs.update(&mut client, &id, req).await.map_err(in_file)?;
            print_out(json, &out, |v| {
                format!("endpoint {} updated\n{}", v.id, view(v))
            })?;
        }
        EndpointsCommand::Remove { id, json } => {
            let mut client = admin_connect(cfg).await?;
            let out = subs.remove(&mut client, &id).await.map_err(in_file)?;
            print_out(json, &out, removed)?;
        }
        EndpointsCommand::RotateSecret { id, keep_old, json } => {
            let mut client = admin_connect(cfg).await?;
            let out = subs
                .rotate(&mut client, &id, keep_old)
                .await
                .map_err(in_file)?;
            print_out(json, &out, |w| with_secret(w, "has a new secret"))?;
        }
        other => return Ok(Some(other)),
    }
    Ok(None)
}

fn view(v: &RuntimeView) -> String {
    let mut out = format!(
        "  target  {}\n  events  {}\n  signing {}\n  timeout {}ms\n",
        v.target,
        v.events.join(","),
        v.signing.join(","),
        v.timeout_ms
    );
    if let Some(until) = &v.old_secret_until {
        out.push_str(&format!("  the previous secret also signs until {until}\n"));
    }
    out
}

fn with_secret(w: &WithSecret, what: &str) -> String {
    format!(
        "endpoint {} {what}\n{}\nsecret: {}\n\nThis secret is shown once: give it to the receiver now (walhook keeps it only encrypted).\n",
        w.endpoint.id,
        view(&w.endpoint),
        w.secret
    )
}

fn removed(r: &Removed) -> String {
    format!(
        "endpoint {} removed; {} open deliveries disabled (reason: endpoint removed)\n",
        r.id, r.deliveries_disabled
    )
}

fn toggled(t: &reports::EndpointToggle) -> String {
    let state = if t.enabled { "enabled" } else { "disabled" };
    if t.changed {
        format!("endpoint {} {state}\n", t.endpoint)
    } else {
        format!("endpoint {} was already {state}\n", t.endpoint)
    }
}
