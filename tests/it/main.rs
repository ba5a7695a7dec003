//! walhook's integration tests: one binary, a module per area. The tests run
//! in parallel in this one process and share one throwaway PostgreSQL cluster
//! (a fresh database each); a test that restarts, stops or crashes the server
//! starts a cluster of its own (see `common`).

mod common;

mod admin_api;
mod admin_cli;
mod browser;
mod capture;
mod crash;
mod demo;
mod dispatch;
mod embedded;
mod fast_path;
mod http_attempt;
mod listen;
mod policy;
mod retry_race;
mod secrets;
mod setup_errors;
