//! Cluster metadata: membership and layout versions, and tenants, replicated by a Raft
//! group (raft-rs). [`state`] is what is replicated and how a command changes it; [`log`] is
//! the Raft log raft-rs reads; [`machine`] drives raft-rs and answers proposals and reads.

mod keys;
pub mod log;
pub mod machine;
pub mod state;

pub use machine::{MetaConfig, MetaMachine, MetaRequest, MetaResponse, MetaStatus};
pub use state::{Command, Layout, Member, MetaState, TenantRecord};
