//! The replication side: the pgoutput decoder, the relation cache and the
//! capture loop that moves committed changes into the ledger; `setup` creates
//! what capture needs (publication, slot, replica identity).

pub mod capture;
pub mod pgoutput;
pub mod setup;
