//! The replication side: the pgoutput decoder, the relation cache and the
//! capture loop that moves committed changes into the ledger.

pub mod pgoutput;
