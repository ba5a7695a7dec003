//! Dispatch: from a due delivery to a signed HTTP POST and the decision that
//! follows it.
//!
//! - [`sign`]: the request headers, signatures (superleap, Standard Webhooks)
//!   and their verification.
//! - [`http`]: the shared HTTP client and one attempt, turned into an
//!   [`http::AttemptRecord`] that never carries secrets.
//! - [`retry`]: when to try again, or give up, as a pure function of the policy
//!   and an injected clock (the three-day rule).
//! - [`limits`]: how much the ledger dispatcher may claim per endpoint (fair
//!   share, `max_in_flight`, `rate_limit`).
//!
//! Everything here except [`http::attempt`] is pure; the delivery loop that
//! claims work from the ledger and records attempts builds on these.

pub mod deliver;
pub mod http;
pub mod leases;
pub mod limits;
pub mod outcome;
pub mod prune;
pub mod retry;
pub mod sign;
pub mod stream;
