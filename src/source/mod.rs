//! The replication side: the capture loop that reads the slot and turns
//! committed changes into events, and `setup`/`teardown` of what it needs in
//! the database.

pub mod capture;
pub mod setup;
