//! tessera-core: Tessera's sans-IO core.
//!
//! Every domain here is a deterministic state machine: it reads through the [`store::StoreRead`]
//! trait, takes the current time as a parameter, draws randomness from a seeded [`rng::Rng`],
//! and returns a [`ready::Ready`] (a write batch plus replies, peer messages and the next
//! deadline) instead of doing any I/O. Drivers (the tokio shell, the madsim simulator) make
//! the batch durable before they release the replies.
//!
//! No tokio, tonic, fjall, `std::time` or threads may enter this crate's dependency tree;
//! `.ci/run` checks it.

pub mod catalog;
pub mod codec;
pub mod error;
pub mod expiry_keys;
pub mod ids;
pub mod kv;
pub mod mem_store;
pub mod meta;
pub mod ready;
pub mod rng;
pub mod status;
pub mod store;
pub mod txn;
pub mod upload;

pub use error::{CoreError, CoreResult};
pub use ready::{ClientToken, Machine, Ready};
pub use store::{Store, StoreError, StoreRead, WriteBatch};
