//! walhook: PostgreSQL row changes (logical replication, pgoutput) turned into
//! signed webhooks, with a durable ledger in Postgres as the queue.
//!
//! Data flows through the modules in this order:
//! `source` (replication stream, pgoutput decoding, relation cache) ->
//! `event` (row change -> `slug.verb` event, before/after/diff, ids) ->
//! `ledger` (durable events, deliveries and progress in Postgres) ->
//! `dispatch` (signing, HTTP, retry policy, the delivery loop) ->
//! `admin` (CLI reports, admin API, metrics, history page).
#![forbid(unsafe_code)]

pub mod config;
pub mod embedded;
pub mod event;
pub mod source;
