//! The `walhook` binary: parses the command line, sets up logging and the
//! runtime, and hands the command to [`cli`].

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, LogFormat};

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
    match rt.block_on(cli::dispatch_command(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("walhook: {}", cli::report(&e));
            ExitCode::FAILURE
        }
    }
}
