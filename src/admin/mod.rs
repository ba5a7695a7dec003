//! The operator surface: what `walhook status|deliveries|endpoints|check|prune`
//! print and what the admin HTTP API serves.
//!
//! - [`reports`]: the serialisable results and thin calls into the ledger's
//!   history and queue, shared by the CLI and the HTTP API (one source of
//!   truth for both).
//! - [`backfill`]: asking for a backfill (checked, then queued), listing
//!   and cancelling them.
//! - [`requeue`]: `deliveries retry` by a filter and `deliveries resend`.
//! - [`ping`]: `walhook endpoints ping`, a signed ping straight to an endpoint.
//! - [`check`]: the `walhook check` doctor.
//! - [`prune`]: `walhook prune`, retention by hand.
//! - [`dbs`]: the source and the ledger's database (one unless
//!   `[ledger] url` names another).
//! - [`render`]: the human tables the CLI prints when `--json` is not given.
//! - [`api`]: the axum router (`/healthz`, `/readyz`, `/metrics`, `/api/...`,
//!   the history page at `/`) and the server `walhook run` starts.
//!
//! Promise: nothing here ever outputs a secret. Endpoint URLs are shown as
//! their origin only (userinfo, path and query may hold credentials), the
//! database as `user@host:port/db`, and secrets and the admin token never.

pub mod api;
pub mod backfill;
pub mod check;
pub mod dbs;
pub mod human;
pub mod init;
pub mod ping;
pub mod prune;
pub mod render;
pub mod reports;
pub mod requeue;
pub mod subscriptions;

pub use reports::AdminError;
