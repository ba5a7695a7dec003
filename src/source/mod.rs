//! The replication side: the capture loop that reads the slot and turns
//! committed changes into events, the relation cache it keeps, the ledger
//! writer it hands events to, the policy for its errors, and `setup` of what
//! it needs in the database.

pub mod align;
pub mod backfill;
pub mod capture;
pub mod error;
pub mod notices;
pub mod objects;
pub mod policy;
pub mod primary;
pub mod relations;
pub mod setup;
pub mod teardown;
