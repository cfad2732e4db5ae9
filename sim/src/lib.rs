//! tessera-sim: Tessera's deterministic simulator.
//!
//! madsim runs several nodes in one process on a seeded scheduler with simulated time. Each
//! node runs the production driver (`tessera_shell::driver`) over a [`MemStore`] whose crash
//! model loses every unsynced write. A network layer of ours injects loss, duplication,
//! delay/reordering and partitions between clients and nodes; a fault task crashes and
//! restarts nodes, fails disks and skews clocks. Every acknowledged answer is checked
//! against a model of what must be true, and the whole event history is hashed so that
//! running a seed twice proves the run is reproducible.
//!
//! [`MemStore`]: tessera_core::mem_store::MemStore

pub mod trace;

#[cfg(madsim)]
pub mod cli;
#[cfg(madsim)]
pub mod faults;
#[cfg(madsim)]
pub mod kv_model;
#[cfg(madsim)]
pub mod meta_model;
#[cfg(madsim)]
pub mod model;
#[cfg(madsim)]
pub mod net;
#[cfg(madsim)]
pub mod node;
#[cfg(madsim)]
pub mod run;
#[cfg(madsim)]
pub mod txn_model;
