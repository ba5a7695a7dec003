//! walhook's integration tests: one binary, a module per area. The tests run
//! in parallel in this one process and share one throwaway PostgreSQL cluster
//! (a fresh database each); a test that restarts, stops or crashes the server
//! starts a cluster of its own (see `common`).

mod common;

mod admin_api;
mod admin_cli;
mod backfill;
mod backfill_cli;
mod browser;
mod capture;
mod crash;
mod custom_events;
mod demo;
mod dispatch;
mod drift;
mod embedded;
mod failover;
mod fast_path;
mod http_attempt;
mod ledger_db;
mod listen;
mod operations;
mod policy;
mod privilege;
mod retention;
mod retry_race;
mod runtime_endpoints;
mod secrets;
mod setup_errors;
mod startup;
mod tls;
