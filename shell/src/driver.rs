//! The driver: pumps a [`Machine`] with group commit.
//!
//! Requests queue on a channel. The driver takes every request waiting (up to a group
//! limit), steps the machine once per request and writes each step's batch (visible, not
//! durable), then makes the whole group durable with a single `sync`, and only then releases
//! the replies. This is the only place that ordering lives: production (tokio + fjall) and
//! the simulator (madsim + MemStore) both run this code.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_core::{ClientToken, Machine, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

/// Time as the driver sees it: wall clock in production, simulated time under madsim.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
    fn sleep_ms(&self, ms: u64) -> Pin<Box<dyn Future<Output = ()> + Send>>;
    /// Awaited just before each group's sync. Production: nothing. The simulator uses it to
    /// model fsync latency, so a crash can land between "written" and "durable".
    fn before_sync(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(std::future::ready(()))
    }
    /// Runs blocking storage work (the fsync). Production moves it off the driver thread so
    /// stepping goes on meanwhile; the simulator runs it in place.
    fn offload(&self, work: BlockingWork) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>> {
        Box::pin(std::future::ready(work()))
    }
}

pub type BlockingWork = Box<dyn FnOnce() -> Result<(), StoreError> + Send>;

/// Hooks for metrics; the default does nothing.
pub trait Observer: Send + Sync + 'static {
    fn group_committed(&self, _requests: usize, _synced: bool, _sync_time: Duration) {}
}

pub struct NoopObserver;
impl Observer for NoopObserver {}

#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Most requests stepped before one sync.
    pub max_group: usize,
    /// Requests that may wait in the queue before callers are slowed down.
    pub queue_depth: usize,
    /// Test hook for the simulator: release replies *before* the sync. Never set in
    /// production; the simulator's checker must catch the lost acknowledged writes it causes.
    pub ack_before_sync: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self { max_group: 1024, queue_depth: 8192, ack_before_sync: false }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("the node's storage failed: {0}")]
    Store(#[from] StoreError),
    #[error("the node is shutting down or has stopped")]
    Stopped,
}

struct Call<I, O> {
    input: I,
    reply: Reply<O>,
}

/// Where a reply goes: a lone caller, one slot of a [`DriverHandle::call_many`], or a
/// caller of [`DriverHandle::call_early`] (and where it learns that the writes are durable).
enum Reply<O> {
    One(oneshot::Sender<O>),
    Part(Arc<Gather<O>>, usize),
    Early(oneshot::Sender<O>, oneshot::Sender<()>),
}

/// The replies of one `call_many`, sent to its caller once all are in.
struct Gather<O> {
    inner: std::sync::Mutex<Slots<O>>,
}

struct Slots<O> {
    outs: Vec<Option<O>>,
    left: usize,
    tx: Option<oneshot::Sender<Vec<O>>>,
}

impl<O> Gather<O> {
    fn new(n: usize, tx: oneshot::Sender<Vec<O>>) -> Self {
        let outs = (0..n).map(|_| None).collect();
        Self { inner: std::sync::Mutex::new(Slots { outs, left: n, tx: Some(tx) }) }
    }

    fn fill(&self, slot: usize, out: O) {
        let mut g = lock(&self.inner);
        if let Some(s) = g.outs.get_mut(slot)
            && s.is_none()
        {
            *s = Some(out);
            g.left -= 1;
        }
        if g.left == 0
            && let Some(tx) = g.tx.take()
        {
            // The caller may have gone away; the writes stand.
            let outs = g.outs.drain(..).flatten().collect();
            let _ = tx.send(outs);
        }
    }
}

impl<O> Reply<O> {
    /// After the sync: the reply, and for an early caller the news that it is durable.
    fn send(self, out: O) {
        match self {
            // The caller may have gone away (deadline, disconnect); the write stands.
            Reply::One(tx) => {
                let _ = tx.send(out);
            }
            Reply::Part(g, slot) => g.fill(slot, out),
            Reply::Early(tx, synced) => {
                let _ = tx.send(out);
                let _ = synced.send(());
            }
        }
    }
}

/// The moment a step's writes become durable, for a reply that may have left before it
/// ([`DriverHandle::call_early`]).
pub struct Durable(oneshot::Receiver<()>);

impl Durable {
    /// Resolves once the sync covering the step is done; an error when the driver stopped
    /// first (its storage failed, or it shut down): the writes may not be durable.
    pub async fn wait(self) -> Result<(), DriverError> {
        self.0.await.map_err(|_| DriverError::Stopped)
    }
}

/// A machine's [`Machine::read_only`] over the driver's store.
type Direct<I, O> = Arc<dyn Fn(&I) -> Option<Result<O, StoreError>> + Send + Sync>;

/// Cloneable handle that services use to send requests to the driver.
pub struct DriverHandle<I, O> {
    tx: mpsc::Sender<Call<I, O>>,
    direct: Direct<I, O>,
}

impl<I, O> Clone for DriverHandle<I, O> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), direct: self.direct.clone() }
    }
}

impl<I, O> DriverHandle<I, O> {
    /// Sends one request and waits for its reply, which arrives only after the writes it
    /// caused are durable. A request the machine answers from the store alone
    /// ([`Machine::read_only`]) is answered here, without the trip to the driver's thread.
    pub async fn call(&self, input: I) -> Result<O, DriverError> {
        if let Some(out) = (self.direct)(&input) {
            return Ok(out?);
        }
        let (reply, rx) = oneshot::channel();
        self.tx.send(Call { input, reply: Reply::One(reply) }).await.map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }

    /// Sends one request whose reply the machine may release before the step's writes are
    /// durable ([`tessera_core::Ready::early`]), and returns it with the [`Durable`] to await
    /// for them. A reply the machine did not release early comes after the sync, its
    /// `Durable` resolved already.
    pub async fn call_early(&self, input: I) -> Result<(O, Durable), DriverError> {
        let (reply, rx) = oneshot::channel();
        let (synced, durable) = oneshot::channel();
        self.tx.send(Call { input, reply: Reply::Early(reply, synced) }).await.map_err(|_| DriverError::Stopped)?;
        let out = rx.await.map_err(|_| DriverError::Stopped)?;
        Ok((out, Durable(durable)))
    }

    /// Sends several requests at once and waits for all their replies, in order: one wake of
    /// the driver and of the caller for the lot (a peer's batch), and they share a group
    /// commit as requests queued together do.
    pub async fn call_many(&self, inputs: Vec<I>) -> Result<Vec<O>, DriverError> {
        let n = inputs.len();
        let (tx, rx) = oneshot::channel();
        let gather = Arc::new(Gather::new(n, tx));
        let mut queued = Vec::with_capacity(n);
        for (slot, input) in inputs.into_iter().enumerate() {
            match (self.direct)(&input) {
                Some(out) => gather.fill(slot, out?),
                None => queued.push(Call { input, reply: Reply::Part(gather.clone(), slot) }),
            }
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        for call in queued {
            self.tx.send(call).await.map_err(|_| DriverError::Stopped)?;
        }
        drop(gather);
        rx.await.map_err(|_| DriverError::Stopped)
    }
}

/// The handle type for a machine's driver.
pub type HandleFor<M> = DriverHandle<<M as Machine>::Input, <M as Machine>::Output>;

pub struct Driver<M: Machine, S: Store>
where
    M::Message: 'static,
{
    machine: M,
    store: S,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn Observer>,
    config: DriverConfig,
    rx: mpsc::Receiver<Call<M::Input, M::Output>>,
    deadline: Option<u64>,
    outbox: Option<Arc<dyn Outbox<M::Message>>>,
}

impl<M, S> Driver<M, S>
where
    M: Machine,
    M: 'static,
    M::Message: 'static,
    S: Store + Clone + Send + Sync + 'static,
{
    /// Makes the machine's start-up batch durable and returns the driver and its handle.
    pub fn new(
        machine: M,
        init: tessera_core::WriteBatch,
        store: S,
        clock: Arc<dyn Clock>,
        observer: Arc<dyn Observer>,
        config: DriverConfig,
    ) -> Result<(Self, HandleFor<M>), DriverError> {
        if !init.is_empty() {
            store.write(&init)?;
            store.sync()?;
        }
        let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
        let deadline = machine.deadline();
        let reader = store.clone();
        let direct: Direct<M::Input, M::Output> = Arc::new(move |input| M::read_only(input, &reader));
        let handle = DriverHandle { tx, direct };
        Ok((Self { machine, store, clock, observer, config, rx, deadline, outbox: None }, handle))
    }

    /// Sends the machine's peer messages through `outbox`, each after the writes of its step
    /// are durable (without one, a machine's messages are dropped).
    pub fn with_outbox(mut self, outbox: Arc<dyn Outbox<M::Message>>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// Runs until every handle is dropped (after serving what was queued) or the store fails.
    /// A store failure is fatal: the node must restart and recover from what is durable.
    ///
    /// Two loops run together. The stepper takes groups of requests, steps the machine and
    /// writes each batch (visible, not durable). The syncer takes everything the stepper has
    /// finished, makes it durable with one fsync (off the driver thread where the
    /// environment allows) and only then releases those replies, in order. So the stepper
    /// keeps working while the disk syncs, and the next fsync covers all it did meanwhile.
    pub async fn run(self) -> Result<(), DriverError> {
        let Driver { mut machine, store, clock, observer, config, mut rx, mut deadline, outbox } = self;
        // Callers waiting for a reply, by token. A machine may answer a request in a later
        // step or tick (a Raft proposal answers once committed), so tokens are unique for the
        // driver's life rather than positions in a group.
        let waiting: std::sync::Mutex<HashMap<ClientToken, Reply<M::Output>>> = Default::default();
        let mut next_token: ClientToken = 0;
        // Every step with a token below it has its writes durable: set by the syncer after
        // each sync, passed on to the machine by the stepper before its next group.
        let durable = std::sync::atomic::AtomicU64::new(0);
        // Bounded: a stepper far ahead of the disk slows its callers down instead of growing.
        let (ptx, mut prx) = mpsc::channel::<Pending<M::Output, M::Message>>(64);
        let stepper = async {
            // Owned by the stepper: when it ends, the syncer drains what is left and ends too.
            let ptx = ptx;
            loop {
                let first = match deadline {
                    Some(at) => {
                        let sleep = clock.sleep_ms(at.saturating_sub(clock.now_ms()));
                        tokio::select! {
                            biased;
                            call = rx.recv() => call,
                            _ = sleep => {
                                deadline = None;
                                let ready = machine.tick(clock.now_ms(), &store)?;
                                deadline = ready.deadline;
                                let mut p = Pending { through: next_token, ..Pending::default() };
                                p.take(&store, ready)?;
                                if !p.is_empty() {
                                    ptx.send(p).await.map_err(|_| DriverError::Stopped)?;
                                }
                                continue;
                            }
                        }
                    }
                    None => rx.recv().await,
                };
                // No more handles: what is queued has been served; the syncer drains the rest.
                let Some(first) = first else { return Ok::<(), DriverError>(()) };
                let mut group = vec![first];
                while group.len() < config.max_group {
                    match rx.try_recv() {
                        Ok(call) => group.push(call),
                        Err(_) => break,
                    }
                }
                let now = clock.now_ms();
                machine.durable(durable.load(std::sync::atomic::Ordering::Acquire));
                let mut p = Pending { requests: group.len(), ..Pending::default() };
                for call in group {
                    let token = next_token;
                    next_token += 1;
                    lock(&waiting).insert(token, call.reply);
                    let mut ready = machine.step(now, token, call.input, &store)?;
                    if let Some(d) = ready.deadline {
                        deadline = Some(deadline.map_or(d, |cur| cur.min(d)));
                    }
                    if ready.volatile && ready.writes.is_empty() && ready.messages.is_empty() {
                        // Nothing durable is promised: answer now rather than after the fsync.
                        release(&waiting, ready.replies);
                        continue;
                    }
                    // Replies the machine lets go early leave now, once the writes are
                    // visible, to the callers that learn of the sync on their own.
                    let early = match ready.early {
                        true => take_early(&waiting, &mut ready.replies),
                        false => Vec::new(),
                    };
                    p.take(&store, ready)?;
                    for (tx, out, synced) in early {
                        let _ = tx.send(out);
                        p.synced.push(synced);
                    }
                }
                p.through = next_token;
                if config.ack_before_sync {
                    let replies = std::mem::take(&mut p.replies);
                    release(&waiting, replies);
                }
                ptx.send(p).await.map_err(|_| DriverError::Stopped)?;
            }
        };
        let syncer = async {
            while let Some(first) = prx.recv().await {
                let mut done = vec![first];
                while let Ok(p) = prx.try_recv() {
                    done.push(p);
                }
                let dirty = done.iter().any(|p| p.dirty);
                let started = Instant::now();
                if dirty {
                    clock.before_sync().await;
                    let s = store.clone();
                    clock.offload(Box::new(move || s.sync())).await?;
                }
                observer.group_committed(done.iter().map(|p| p.requests).sum(), dirty, started.elapsed());
                if let Some(through) = done.iter().map(|p| p.through).max() {
                    durable.fetch_max(through, std::sync::atomic::Ordering::Release);
                }
                for p in done {
                    if let Some(out) = &outbox {
                        for (to, msg) in p.messages {
                            out.send(to, msg);
                        }
                    }
                    release(&waiting, p.replies);
                    for synced in p.synced {
                        let _ = synced.send(());
                    }
                }
            }
            Ok::<(), DriverError>(())
        };
        tokio::try_join!(stepper, syncer).map(|_| ())
    }
}

/// Where a machine's messages to peers go, once the writes of their step are durable.
pub trait Outbox<M>: Send + Sync + 'static {
    fn send(&self, to: String, msg: M);
}

/// Replies and messages of one group, waiting for the fsync that covers its writes.
struct Pending<O, M> {
    replies: Vec<(ClientToken, O)>,
    messages: Vec<(String, M)>,
    dirty: bool,
    requests: usize,
    /// Every step with a token below it wrote into this group or an earlier one.
    through: ClientToken,
    /// Callers answered early, waiting for this group's sync.
    synced: Vec<oneshot::Sender<()>>,
}

impl<O, M> Default for Pending<O, M> {
    fn default() -> Self {
        Self { replies: Vec::new(), messages: Vec::new(), dirty: false, requests: 0, through: 0, synced: Vec::new() }
    }
}

impl<O, M> Pending<O, M> {
    /// Writes a step's batch (visible, not yet durable) and keeps what must wait for the sync.
    fn take<S: Store>(&mut self, store: &S, ready: tessera_core::Ready<O, M>) -> Result<(), StoreError> {
        if !ready.writes.is_empty() {
            store.write(&ready.writes)?;
            self.dirty = true;
        }
        self.replies.extend(ready.replies);
        self.messages.extend(ready.messages);
        Ok(())
    }

    fn is_empty(&self) -> bool {
        !self.dirty && self.replies.is_empty() && self.messages.is_empty() && self.synced.is_empty()
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn release<O>(waiting: &std::sync::Mutex<HashMap<ClientToken, Reply<O>>>, replies: Vec<(ClientToken, O)>) {
    if replies.is_empty() {
        return;
    }
    let mut waiting = lock(waiting);
    for (token, out) in replies {
        if let Some(reply) = waiting.remove(&token) {
            reply.send(out);
        }
    }
}

/// Where an early reply goes, the reply, and where the news of its sync goes.
type EarlyReply<O> = (oneshot::Sender<O>, O, oneshot::Sender<()>);

/// Takes out of `replies` those whose caller came through `call_early`.
fn take_early<O>(
    waiting: &std::sync::Mutex<HashMap<ClientToken, Reply<O>>>,
    replies: &mut Vec<(ClientToken, O)>,
) -> Vec<EarlyReply<O>> {
    let mut waiting = lock(waiting);
    let mut early = Vec::new();
    for (token, out) in std::mem::take(replies) {
        match waiting.remove(&token) {
            Some(Reply::Early(tx, synced)) => early.push((tx, out, synced)),
            Some(other) => {
                waiting.insert(token, other);
                replies.push((token, out));
            }
            None => replies.push((token, out)),
        }
    }
    early
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::mem_store::MemStore;
    use tessera_core::rng::Rng;
    use tessera_core::status::{Status, StatusConfig, StatusMachine, StatusRequest, StoreKind};

    struct FixedClock;
    impl Clock for FixedClock {
        fn now_ms(&self) -> u64 {
            1
        }
        fn sleep_ms(&self, _ms: u64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn group_shares_one_sync_and_replies_after_it() {
        let store = MemStore::new();
        let (machine, init) = StatusMachine::open(&store, StatusConfig::default(), &mut Rng::new(3)).unwrap();
        let (driver, handle) = Driver::new(
            machine,
            init,
            store.clone(),
            Arc::new(FixedClock),
            Arc::new(NoopObserver),
            DriverConfig::default(),
        )
        .unwrap();
        let syncs_before = store.sync_count();
        let mut calls = Vec::new();
        for i in 0..50 {
            let h = handle.clone();
            calls.push(tokio::spawn(async move {
                h.call(StatusRequest::Record {
                    kind: StoreKind::Upload,
                    id: format!("u{i}"),
                    status: Status::Processing,
                    error: None,
                })
                .await
            }));
        }
        drop(handle);
        let run = tokio::spawn(driver.run());
        for c in calls {
            assert!(c.await.unwrap().unwrap().is_ok());
        }
        run.await.unwrap().unwrap();
        // Every acknowledged record is durable: a crash now loses none of them.
        store.crash();
        assert!(store.durable_len(tessera_core::store::STATUS) > 50);
        let syncs = store.sync_count() - syncs_before;
        assert!(syncs < 50, "group commit should share syncs, got {syncs} for 50 writes");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn call_many_answers_in_order_after_one_sync_and_reads_directly() {
        use tessera_core::kv::{KvConfig, KvMachine, KvRequest, KvResponse, VClock, Version};
        let store = MemStore::new();
        let machine = KvMachine::new(KvConfig { idempotency_ttl_ms: 60_000, ..KvConfig::new("n1") });
        let (driver, handle) = Driver::new(
            machine,
            Default::default(),
            store.clone(),
            Arc::new(FixedClock),
            Arc::new(NoopObserver),
            DriverConfig::default(),
        )
        .unwrap();
        let run = tokio::spawn(driver.run());
        let version = |n: u64| Version {
            clock: VClock([("n2".to_owned(), n)].into_iter().collect()),
            ts_ms: 1,
            value: Some(vec![n as u8]),
        };
        let apply = |key: &str, n: u64| KvRequest::Apply {
            tenant: "t".into(),
            key: key.into(),
            versions: vec![version(n)],
            idem: None,
        };
        let read = |key: &str| KvRequest::Read { tenant: "t".into(), key: key.into() };
        assert!(handle.call_many(Vec::new()).await.unwrap().is_empty());
        let syncs_before = store.sync_count();
        let inputs = vec![apply("a", 1), read("missing"), apply("b", 2), apply("c", 3)];
        let outs = handle.call_many(inputs).await.unwrap();
        let got: Vec<_> = outs.into_iter().map(|o| o.unwrap()).collect();
        assert!(matches!(&got[0], KvResponse::Versions(v) if v == &vec![version(1)]));
        assert!(matches!(&got[1], KvResponse::Versions(v) if v.is_empty()));
        assert!(matches!(&got[2], KvResponse::Versions(v) if v == &vec![version(2)]));
        assert!(matches!(&got[3], KvResponse::Versions(v) if v == &vec![version(3)]));
        assert_eq!(store.sync_count() - syncs_before, 1, "one batch, one group commit");
        // Answered from the store by the caller: what the batch wrote, durable by now.
        store.crash();
        let outs = handle.call_many(vec![read("c"), read("a")]).await.unwrap();
        assert!(matches!(&outs[0], Ok(KvResponse::Versions(v)) if v == &vec![version(3)]));
        assert!(matches!(&outs[1], Ok(KvResponse::Versions(v)) if v == &vec![version(1)]));
        drop(handle);
        run.await.unwrap().unwrap();
    }

    /// Holds every sync until released, so a test can see what is answered before one.
    struct GatedClock(Arc<tokio::sync::Semaphore>);
    impl Clock for GatedClock {
        fn now_ms(&self) -> u64 {
            1
        }
        fn sleep_ms(&self, _ms: u64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
            Box::pin(std::future::pending())
        }
        fn before_sync(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
            let gate = self.0.clone();
            Box::pin(async move {
                if let Ok(p) = gate.acquire().await {
                    p.forget();
                }
            })
        }
    }

    type KvHandle = HandleFor<tessera_core::kv::KvMachine>;
    type Run = tokio::task::JoinHandle<Result<(), DriverError>>;

    /// A key-value machine's driver whose syncs wait at the returned gate.
    fn gated_kv_driver() -> (MemStore, Arc<tokio::sync::Semaphore>, KvHandle, Run) {
        use tessera_core::kv::{KvConfig, KvMachine};
        let store = MemStore::new();
        let machine = KvMachine::new(KvConfig { idempotency_ttl_ms: 60_000, ..KvConfig::new("n1") });
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (driver, handle) = Driver::new(
            machine,
            Default::default(),
            store.clone(),
            Arc::new(GatedClock(gate.clone())),
            Arc::new(NoopObserver),
            DriverConfig::default(),
        )
        .unwrap();
        (store, gate, handle, tokio::spawn(driver.run()))
    }

    fn coordinate(key: &str, keep: bool) -> tessera_core::kv::KvRequest {
        tessera_core::kv::KvRequest::Coordinate {
            tenant: "t".into(),
            key: key.into(),
            value: Some(b"v".to_vec()),
            idem: None,
            keep,
        }
    }

    /// Lets the spawned callers and the driver run as far as they can.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// Spawns `call`, lets it run as far as it can, and checks it is still waiting (else
    /// fails with `what`, what answering now would mean).
    async fn held<T: Send + 'static>(
        call: impl Future<Output = T> + Send + 'static,
        what: &str,
    ) -> tokio::task::JoinHandle<T> {
        let task = tokio::spawn(call);
        settle().await;
        assert!(!task.is_finished(), "{what}");
        task
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_coordination_waits_for_its_ceilings_sync_and_then_no_longer_for_others() {
        use tessera_core::kv::{KvRequest, KvResponse};
        let (_store, gate, handle, run) = gated_kv_driver();
        // The first coordination reserves a block of counters: no answer until it is durable.
        let h = handle.clone();
        let first =
            held(async move { h.call(coordinate("a", false)).await }, "answered before its ceiling was synced").await;
        // Nor is the next one, from the same block, answered while that sync is held.
        let h = handle.clone();
        let second =
            held(async move { h.call(coordinate("b", false)).await }, "answered before its block's ceiling was synced")
                .await;
        gate.add_permits(1);
        assert!(matches!(second.await.unwrap().unwrap(), Ok(KvResponse::Coordinated { .. })));
        let Ok(KvResponse::Coordinated { versions, .. }) = first.await.unwrap().unwrap() else {
            panic!("not coordinated")
        };
        // A write's group is held at its sync; a coordination from the durable block is
        // answered meanwhile, and the write only once its sync is done.
        let h = handle.clone();
        let apply = KvRequest::Apply { tenant: "t".into(), key: "a".into(), versions, idem: None };
        let write = tokio::spawn(async move { h.call(apply).await });
        settle().await;
        let early = tokio::time::timeout(Duration::from_secs(10), handle.call(coordinate("c", false))).await;
        assert!(matches!(early, Ok(Ok(Ok(KvResponse::Coordinated { .. })))), "not answered before the write's sync");
        assert!(!write.is_finished(), "a write answered before its sync");
        gate.add_permits(1);
        assert!(matches!(write.await.unwrap().unwrap(), Ok(KvResponse::Versions(_))));
        drop(handle);
        gate.add_permits(16);
        run.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_kept_coordination_answers_before_its_sync_and_its_durable_resolves_after() {
        use tessera_core::kv::{KvRequest, KvResponse};
        let (store, gate, handle, run) = gated_kv_driver();
        // The first one raises the counters' ceiling: its answer waits for that sync, and
        // its copy is durable by then.
        let h = handle.clone();
        let first =
            held(async move { h.call_early(coordinate("a", true)).await }, "answered before its ceiling was synced")
                .await;
        gate.add_permits(1);
        let (out, durable) = first.await.unwrap().unwrap();
        assert!(matches!(out, Ok(KvResponse::Coordinated { .. })));
        tokio::time::timeout(Duration::from_secs(10), durable.wait()).await.unwrap().unwrap();
        // From the durable block: answered while its own sync is held, the version already
        // visible here; its Durable resolves only once that sync is done.
        let (out, durable) = tokio::time::timeout(Duration::from_secs(10), handle.call_early(coordinate("b", true)))
            .await
            .unwrap()
            .unwrap();
        let Ok(KvResponse::Coordinated { versions, .. }) = out else { panic!("not coordinated") };
        let read = KvRequest::Read { tenant: "t".into(), key: "b".into() };
        assert!(matches!(handle.call(read).await.unwrap(), Ok(KvResponse::Versions(v)) if v == versions));
        let waiting = held(durable.wait(), "durable before its sync").await;
        // A plain call of the same request still waits for the sync.
        let h = handle.clone();
        let plain =
            held(async move { h.call(coordinate("c", true)).await }, "a plain call answered before its sync").await;
        gate.add_permits(1);
        waiting.await.unwrap().unwrap();
        gate.add_permits(1);
        assert!(matches!(plain.await.unwrap().unwrap(), Ok(KvResponse::Coordinated { .. })));
        // A sync that fails stops the driver: the copy kept before it never became durable,
        // and its Durable says so.
        let (_, durable) = handle.call_early(coordinate("d", true)).await.unwrap();
        store.fail_next_sync();
        gate.add_permits(16);
        assert!(durable.wait().await.is_err(), "durable although its sync failed");
        assert!(run.await.unwrap().is_err());
    }
}
