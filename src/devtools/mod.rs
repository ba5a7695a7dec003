//! Tools for developers rather than the daemon: the `walhook demo` tour, the
//! `walhook listen` receiver, and the throwaway PostgreSQL cluster both the
//! demo and the integration tests start.

pub mod demo;
pub mod embedded;
pub mod listen;
