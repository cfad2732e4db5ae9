//! What a step of a state machine returns, and the trait drivers pump.
//!
//! The order is the driver's duty and lives in one place (the driver): write the batch, make
//! it durable, then send the messages and release the replies. That is raft-rs's
//! `Ready`/`advance` and quinn-proto's `poll_*` in one value.

use crate::error::{CoreError, CoreResult};
use crate::store::{StoreError, StoreRead, WriteBatch};

/// Identifies the client waiting for a reply; chosen by the driver, opaque to the core.
pub type ClientToken = u64;

#[derive(Debug)]
pub struct Ready<R, M = ()> {
    /// Must be durable before any reply or message below leaves the node.
    pub writes: WriteBatch,
    /// Messages to peers: (node id, message).
    pub messages: Vec<(String, M)>,
    /// Replies to waiting clients.
    pub replies: Vec<(ClientToken, R)>,
    /// When the driver should call [`Machine::tick`] next (milliseconds).
    pub deadline: Option<u64>,
    /// The replies promise nothing about durable state (for example: a transaction was
    /// begun, a write was staged in memory), so the driver may release them without waiting
    /// for the group's sync. Only valid with no writes.
    pub volatile: bool,
    /// The replies may leave before `writes` are durable, to a caller that asked to learn
    /// of their durability separately (the driver's `call_early`); any other caller still
    /// gets its reply after the sync. For a step whose answer is needed elsewhere at once
    /// while its writes are one copy among several (a coordinating replica's own copy).
    pub early: bool,
}

impl<R, M> Default for Ready<R, M> {
    fn default() -> Self {
        Self {
            writes: WriteBatch::default(),
            messages: Vec::new(),
            replies: Vec::new(),
            deadline: None,
            volatile: false,
            early: false,
        }
    }
}

impl<R, M> Ready<R, M> {
    /// A Ready that answers one client and writes `writes`.
    pub fn reply(token: ClientToken, reply: R, writes: WriteBatch) -> Self {
        Self { writes, replies: vec![(token, reply)], ..Self::default() }
    }
}

impl<R, M> Ready<CoreResult<R>, M> {
    /// Answers one client with a domain's outcome: its writes when it succeeded, none when
    /// it refused. A storage failure is no answer: it is fatal for the node.
    pub fn answer(token: ClientToken, out: CoreResult<(R, WriteBatch)>) -> Result<Self, StoreError> {
        match out {
            Ok((r, writes)) => Ok(Self::reply(token, Ok(r), writes)),
            Err(CoreError::Storage(e)) => Err(e),
            Err(e) => Ok(Self::reply(token, Err(e), WriteBatch::default())),
        }
    }
}

/// A deterministic state machine a driver can pump.
pub trait Machine {
    type Input;
    type Output;
    type Message;

    /// Handles one client input at time `now`. A store read failure is fatal for the node.
    fn step(
        &mut self,
        now: u64,
        token: ClientToken,
        input: Self::Input,
        store: &dyn StoreRead,
    ) -> Result<Ready<Self::Output, Self::Message>, StoreError>;

    /// When the driver should first call [`Machine::tick`] (a machine with timers from the
    /// start, such as a Raft member); later deadlines come in each `Ready`.
    fn deadline(&self) -> Option<u64> {
        None
    }

    /// Answers `input` straight from the store, without a step, when it only reads what
    /// earlier steps wrote and nothing of the machine's own state: the driver then serves it
    /// on the caller's thread instead of queueing it behind writes and their fsync. `None`:
    /// the input needs a step. Such an answer sees the same writes a step would (written,
    /// maybe not yet durable), so it promises no more than a volatile step does.
    fn read_only(_input: &Self::Input, _store: &dyn StoreRead) -> Option<Result<Self::Output, StoreError>> {
        None
    }

    /// Tells the machine that the writes of every step with a token below `through` are
    /// durable (the driver calls it after each sync, before its next step). A machine can
    /// then answer what depends only on those writes without waiting for a sync of its own.
    fn durable(&mut self, _through: ClientToken) {}

    /// Called when the last Ready's deadline has passed.
    fn tick(&mut self, _now: u64, _store: &dyn StoreRead) -> Result<Ready<Self::Output, Self::Message>, StoreError> {
        Ok(Ready::default())
    }
}
