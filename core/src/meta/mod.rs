//! Cluster metadata: membership and layout versions, tenants and migrations, replicated by a
//! Raft group (raft-rs). [`state`] is what is replicated and how a command changes it;
//! [`migration`] is a layout change and where keys live while it runs; [`log`] is
//! the Raft log raft-rs reads; [`machine`] drives raft-rs and answers proposals and reads.

mod keys;
pub mod log;
pub mod machine;
pub mod migration;
pub mod state;

pub use machine::{MetaConfig, MetaMachine, MetaRequest, MetaResponse, MetaStatus};
pub use migration::{Migration, MigrationKind, Placement, RfChange};
pub use state::{Command, Layout, Member, MetaState, TenantRecord};
