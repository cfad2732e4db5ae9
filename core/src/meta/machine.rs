//! The metadata machine: one member of the cluster's Raft group (TiKV's raft-rs, driven
//! through `RawNode`'s `Ready`/`advance`), applying committed [`Command`]s to [`MetaState`].
//!
//! raft-rs is sans-IO like the rest of the core: this machine hands its log writes and
//! hard state to the driver in a [`Ready`] batch, and its Raft messages ride in the same
//! `Ready`, so they leave the node only once that batch is durable. A proposal is answered
//! when its entry is applied here; a read that must be current (a tenant lookup that found
//! nothing) waits for raft-rs's read index. Ticks come from the driver's deadline, and the
//! election timeout is drawn from the core's seeded RNG, so the simulator replays elections
//! exactly.

use std::collections::BTreeMap;

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType, Message, Snapshot};
use raft::{Config, RawNode, StateRole};

use crate::error::{CoreError, CoreResult};
use crate::ids::validate_id;
use crate::kv::ring::MAX_VNODES;
use crate::kv::{MAX_RF, MIN_RF};
use crate::ready::{ClientToken, Machine, Ready};
use crate::rng::Rng;
use crate::store::{META as KEYSPACE, StoreError, StoreRead, WriteBatch};

use super::keys;
use super::log::{RaftLog, encode};
use super::migration::Migration;
use super::state::{Applied, Command, Layout, MetaState, TenantRecord, raft_id_of};

#[derive(Debug, Clone)]
pub struct MetaConfig {
    /// This node's id.
    pub node_id: String,
    /// The initial cluster (id, host:port, virtual nodes); used only the first time a node
    /// starts, as etcd uses `--initial-cluster`. Afterwards the replicated layout rules.
    pub initial: Vec<(String, String, u32)>,
    /// Join an existing group instead of starting one (etcd's `--initial-cluster-state
    /// existing`): the node starts empty, as a learner the leader adds once the node is in
    /// the layout, and takes the metadata from the leader's snapshot. `initial` then only
    /// says where the other members are until the layout does.
    pub join: bool,
    /// One Raft tick.
    pub tick_ms: u64,
    /// Ticks without a leader before a follower campaigns (randomised up to twice this).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// How long a proposal or a current read may wait for the group before it fails.
    pub request_timeout_ms: u64,
    /// Applied entries kept in the log before it is compacted into a snapshot.
    pub compact_after: u64,
}

impl MetaConfig {
    pub fn new(node_id: String, initial: Vec<(String, String, u32)>) -> MetaConfig {
        MetaConfig {
            node_id,
            initial,
            join: false,
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            request_timeout_ms: 5_000,
            compact_after: 1_000,
        }
    }
}

#[derive(Debug, Clone)]
pub enum MetaRequest {
    /// A Raft message (an encoded `eraftpb.Message`) from the peer with node id `from`.
    Raft {
        from: String,
        msg: Vec<u8>,
    },
    CreateTenant {
        id: String,
        replication_factor: u32,
    },
    SetReplicationFactor {
        id: String,
        replication_factor: u32,
    },
    /// A tenant as applied here. `current`: one this node does not know yet is looked for
    /// after confirming with the leader that nothing newer is committed (raft-rs's read
    /// index), so a tenant created through another node is seen.
    Tenant {
        id: String,
        current: bool,
    },
    /// A tenant as the leader has it now: always after a read index round, so a factor just
    /// changed through another node is seen (`GetTenant`).
    ConfirmedTenant {
        id: String,
    },
    Layout,
    Status,
    /// Put a storage node on the ring; keys start moving to it.
    AddNode {
        id: String,
        addr: String,
        vnodes: u32,
    },
    /// Take a storage node off the ring; its keys start moving away.
    RemoveNode {
        id: String,
        force: bool,
    },
    /// An old owner's progress in handing its keys over, up to and including key `after`
    /// (storage order), where it resumes if it stops.
    Progress {
        migration: String,
        node: String,
        moved: u64,
        total: u64,
        done: bool,
        after: Option<(String, String)>,
    },
    /// A migration as applied here.
    Migration {
        id: String,
    },
    /// The migration under way, as applied here.
    Running,
    /// Every migration kept (the running one and the latest finished ones), as applied here.
    Migrations,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaStatus {
    pub node_id: String,
    pub applied: u64,
    pub term: u64,
    pub leader: Option<String>,
    pub role: &'static str,
    pub layout_version: u64,
    /// Digest of the applied state (equal on every node at the same `applied`).
    pub digest: [u8; 16],
    /// The Raft group's voters as this node knows them, by node id (sorted).
    pub voters: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaResponse {
    /// A peer's Raft message was taken.
    Stepped,
    Tenant(Option<TenantRecord>),
    Created(TenantRecord),
    ReplicationFactor {
        old: u32,
        new: TenantRecord,
        /// The migration moving the tenant's keys to their new replica sets, if any move.
        migration: Option<Migration>,
    },
    Layout(Layout),
    Status(MetaStatus),
    Migration(Option<Migration>),
    Migrations(Vec<Migration>),
}

/// What waits on the group: a proposal for its entry, a read for its read index. `sent`
/// holds the (term, leader, time) it was last handed to raft-rs under: under a new leader it
/// goes again, since the old one may have dropped it, and so it does after [`RESEND_MS`],
/// since a follower forwards it to the leader in a message the network may lose (applying
/// skips a second copy).
enum Waiter {
    Propose { token: ClientToken, cmd: Command, expires: u64, sent: Option<(u64, u64, u64)> },
    Read { token: ClientToken, id: String, expires: u64, sent: Option<(u64, u64, u64)>, index: Option<u64> },
}

/// How many storage nodes the metadata group keeps as voters when it has them (the rest are
/// learners): three tolerate one failure, and more would slow every commit.
const TARGET_VOTERS: usize = 3;

/// How far behind the leader's log a learner may be and still be promoted to voter.
const PROMOTE_LAG: u64 = 100;

/// How long a proposal or read handed to raft-rs waits before it is handed over again.
const RESEND_MS: u64 = 1_000;

/// Whether a waiter last `sent` so should go (again) to `leader` (term, leader id) at `now`.
/// On the leader itself nothing is lost in between, so only a new term sends it again.
fn due(sent: Option<(u64, u64, u64)>, leader: (u64, u64), now: u64, leading: bool) -> bool {
    match sent {
        None => true,
        Some((term, id, at)) => (term, id) != leader || (!leading && now >= at + RESEND_MS),
    }
}

impl Waiter {
    fn expires(&self) -> u64 {
        match self {
            Waiter::Propose { expires, .. } | Waiter::Read { expires, .. } => *expires,
        }
    }
}

pub struct MetaMachine {
    config: MetaConfig,
    raw: RawNode<RaftLog>,
    state: MetaState,
    applied: u64,
    rng: Rng,
    /// Keyed by the random context that travels with the entry or read request.
    waiting: BTreeMap<[u8; 16], Waiter>,
    next_tick: u64,
    /// (term, role) when the election timeout was last drawn.
    drawn_for: (u64, StateRole),
    /// Raft number to node id for nodes the layout does not name: those `--initial-cluster`
    /// named and those whose messages arrived. How a joining node answers the leader before
    /// the layout has reached it.
    known: BTreeMap<u64, String>,
}

fn config_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { keyspace: KEYSPACE, reason: format!("raft: {e}") }
}

impl MetaMachine {
    /// Opens the machine over what `store` holds, bootstrapping the group from the
    /// initial cluster the first time. Returns the writes that must be durable first.
    pub fn open(store: &dyn StoreRead, config: MetaConfig, rng: Rng) -> Result<(Self, WriteBatch), StoreError> {
        let mut init = WriteBatch::default();
        let (log, state, applied) = match (RaftLog::load(store)?, MetaState::load(store)?) {
            (Some(log), Some(state)) => {
                let applied = match store.get(KEYSPACE, keys::APPLIED)? {
                    Some(b) => u64::from_be_bytes(b.as_slice().try_into().map_err(|_| config_error("applied index"))?),
                    None => 0,
                };
                (log, state, applied)
            }
            _ => {
                // A node joining an existing group starts with no layout and no voters.
                let layout = match config.join {
                    true => Layout::default(),
                    false => Layout::initial(&config.initial),
                };
                if !config.join && layout.by_id(&config.node_id).is_none() {
                    return Err(config_error(format!("node {:?} is not in the initial cluster", config.node_id)));
                }
                let voters = layout.members.iter().map(|m| m.raft_id).collect();
                let log = RaftLog::bootstrap(voters, &mut init);
                let applied = log.snap_index;
                let state = MetaState { layout, ..MetaState::default() };
                state.persist_all(&MetaState::default(), &mut init);
                init.put(KEYSPACE, keys::APPLIED.to_vec(), applied.to_be_bytes().to_vec());
                (log, state, applied)
            }
        };
        // A joining node that has not received the metadata yet has an empty layout.
        if !state.layout.members.is_empty() && state.layout.by_id(&config.node_id).is_none() {
            return Err(config_error(format!("node {:?} is not in the cluster's layout", config.node_id)));
        }
        let known = config.initial.iter().map(|(id, _, _)| (raft_id_of(id), id.clone())).collect();
        let rc = Config {
            id: raft_id_of(&config.node_id),
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&rc, log, &logger).map_err(config_error)?;
        let mut m = MetaMachine {
            config,
            raw,
            state,
            applied,
            rng,
            waiting: BTreeMap::new(),
            next_tick: 0,
            drawn_for: (u64::MAX, StateRole::Follower),
            known,
        };
        m.rng = Rng::new(m.rng.next_u64());
        m.refresh_snapshot();
        m.draw_election_timeout();
        if m.raw.raft.prs().conf().voters().ids().len() == 1 {
            // A one-node group need not wait out an election timeout.
            let _ = m.raw.campaign();
        }
        Ok((m, init))
    }

    pub fn state(&self) -> &MetaState {
        &self.state
    }

    fn leader(&self) -> Option<String> {
        self.node_of(self.raw.raft.leader_id)
    }

    /// The node id of a Raft number: from the layout, or for a node still joining, from
    /// what `--initial-cluster` said.
    fn node_of(&self, raft_id: u64) -> Option<String> {
        match self.state.layout.by_raft_id(raft_id) {
            Some(m) => Some(m.id.clone()),
            None => self.known.get(&raft_id).cloned(),
        }
    }

    /// On the leader: keeps the Raft group in step with the layout, one configuration change
    /// at a time (as raft-rs requires):
    /// - a storage node the layout gained joins as a learner (it receives the log and
    ///   snapshots, and does not vote);
    /// - a learner is promoted to voter while fewer than [`TARGET_VOTERS`] storage nodes vote
    ///   and promoting can reach that many, or to replace a voter that is leaving;
    /// - a node off the ring whose hand-over is over (not in `previous`) leaves the group, after
    ///   its replacement votes; the leader hands leadership over before it removes itself.
    fn reconcile_group(&mut self) {
        if self.raw.raft.state != StateRole::Leader || self.raw.raft.has_pending_conf() {
            return;
        }
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let layout = &self.state.layout;
        let storage = |id: u64| layout.members.iter().any(|m| m.raft_id == id && m.storage);
        let handing_over = |id: u64| layout.by_raft_id(id).is_some_and(|m| layout.handing_over(&m.id));
        let in_group = |id: u64| conf.voters.contains(&id) || conf.learners.contains(&id);
        let change = |change_type, node_id| ConfChange { change_type, node_id, ..Default::default() };
        let joining = layout.members.iter().find(|m| m.storage && !in_group(m.raft_id));
        // Only a learner that is in touch and nearly caught up is worth a vote.
        let last = self.raw.raft.raft_log.last_index();
        let caught_up =
            |id: u64| self.raw.raft.prs().get(id).is_some_and(|p| p.recent_active && p.matched + PROMOTE_LAG >= last);
        let learners: Vec<u64> = conf.learners.iter().copied().filter(|l| storage(*l) && caught_up(*l)).collect();
        let voting = conf.voters.iter().filter(|v| storage(**v)).count();
        let leaving = conf.voters.iter().chain(&conf.learners).copied().find(|v| !storage(*v) && !handing_over(*v));
        let cc = if let Some(m) = joining {
            change(ConfChangeType::AddLearnerNode, m.raft_id)
        } else if let Some(&l) = learners.first()
            && voting < TARGET_VOTERS
            && (voting + learners.len() >= TARGET_VOTERS || leaving.is_some_and(|v| conf.voters.contains(&v)))
        {
            change(ConfChangeType::AddNode, l)
        } else if let Some(gone) = leaving {
            if gone == self.raw.raft.id {
                if let Some(&to) = conf.voters.iter().find(|v| storage(**v)) {
                    self.raw.transfer_leader(to);
                }
                return;
            }
            change(ConfChangeType::RemoveNode, gone)
        } else {
            return;
        };
        // Refused only while another change is pending; a later step tries again.
        let _ = self.raw.propose_conf_change(Vec::new(), cc);
    }

    /// raft-rs draws each election timeout from the thread RNG; replace each draw with one
    /// from ours, so elections depend on the seed alone.
    fn draw_election_timeout(&mut self) {
        let now = (self.raw.raft.term, self.raw.raft.state);
        if now != self.drawn_for {
            let et = self.config.election_ticks as u64;
            let t = et + self.rng.below(et);
            self.raw.raft.set_randomized_election_timeout(t as usize);
            self.drawn_for = now;
        }
    }

    /// The state at `applied`, for followers too far behind for the log.
    fn refresh_snapshot(&mut self) {
        let log = self.raw.raft.raft_log.store();
        let Ok(term) = raft::Storage::term(log, self.applied) else { return };
        let mut snap = Snapshot::default();
        snap.set_data(self.state.encode().into());
        let meta = snap.mut_metadata();
        meta.index = self.applied;
        meta.term = term;
        meta.set_conf_state(log.conf.clone());
        self.raw.raft.mut_store().snapshot = snap;
    }

    fn status(&self) -> MetaStatus {
        let role = match self.raw.raft.state {
            StateRole::Leader => "leader",
            StateRole::Candidate | StateRole::PreCandidate => "candidate",
            StateRole::Follower => "follower",
        };
        MetaStatus {
            node_id: self.config.node_id.clone(),
            applied: self.applied,
            term: self.raw.raft.term,
            leader: self.leader(),
            role,
            layout_version: self.state.layout.version,
            digest: self.state.digest(),
            voters: {
                let conf = self.raw.raft.prs().conf().to_conf_state();
                let mut v: Vec<String> = conf.voters.iter().filter_map(|id| self.node_of(*id)).collect();
                v.sort();
                v
            },
        }
    }

    fn context(&mut self) -> [u8; 16] {
        let mut c = [0u8; 16];
        self.rng.fill(&mut c);
        c
    }

    /// Queues a proposal under a fresh context (the command may take its id from it); it is
    /// answered when its entry is applied here, or when it expires.
    fn propose(&mut self, token: ClientToken, expires: u64, cmd: impl FnOnce(&[u8; 16]) -> Command) {
        let ctx = self.context();
        let cmd = cmd(&ctx);
        self.waiting.insert(ctx, Waiter::Propose { token, cmd, expires, sent: None });
    }

    fn validate_rf(rf: u32) -> CoreResult<()> {
        if (MIN_RF..=MAX_RF).contains(&rf) {
            Ok(())
        } else {
            Err(CoreError::InvalidArgument(format!("replication_factor: {rf} is out of range {MIN_RF}..={MAX_RF}")))
        }
    }

    /// Sends the waiters not yet handed to raft-rs, once a leader is known (raft-rs drops
    /// proposals and reads while there is none; they wait here instead).
    fn send_waiting(&mut self, now_ms: u64) {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            return;
        }
        let leader = (self.raw.raft.term, self.raw.raft.leader_id);
        let now = Some((leader.0, leader.1, now_ms));
        let leading = self.raw.raft.state == StateRole::Leader;
        let ready: Vec<[u8; 16]> = self
            .waiting
            .iter()
            .filter(|(_, w)| match w {
                Waiter::Propose { sent, .. } => due(*sent, leader, now_ms, leading),
                Waiter::Read { sent, index, .. } => due(*sent, leader, now_ms, leading) && index.is_none(),
            })
            .map(|(c, _)| *c)
            .collect();
        for ctx in ready {
            let Some(w) = self.waiting.get_mut(&ctx) else { continue };
            match w {
                Waiter::Propose { cmd, sent, .. } => {
                    if self.raw.propose(ctx.to_vec(), cmd.encode()).is_ok() {
                        *sent = now;
                    }
                }
                Waiter::Read { sent, .. } => {
                    self.raw.read_index(ctx.to_vec());
                    *sent = now;
                }
            }
        }
    }

    /// Handles everything raft-rs has ready: snapshot, committed entries, new entries, hard
    /// state, messages and read states, until it has nothing more.
    fn drain(&mut self, out: &mut Ready<CoreResult<MetaResponse>, Vec<u8>>) -> Result<(), StoreError> {
        while self.raw.has_ready() {
            let mut rd = self.raw.ready();
            self.route(rd.take_messages(), out);
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                self.install(&snap, &mut out.writes)?;
            }
            self.apply(rd.take_committed_entries(), out)?;
            if !rd.entries().is_empty() {
                self.raw.raft.mut_store().append(rd.entries(), &mut out.writes);
            }
            if let Some(hs) = rd.hs() {
                self.raw.raft.mut_store().set_hard_state(hs.clone(), &mut out.writes);
            }
            self.route(rd.take_persisted_messages(), out);
            for rs in rd.take_read_states() {
                let Ok(ctx) = <[u8; 16]>::try_from(rs.request_ctx.as_slice()) else { continue };
                if let Some(Waiter::Read { index, .. }) = self.waiting.get_mut(&ctx) {
                    *index = Some(rs.index);
                }
            }
            let mut light = self.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                self.raw.raft.mut_store().set_commit(commit, &mut out.writes);
            }
            self.route(light.take_messages(), out);
            self.apply(light.take_committed_entries(), out)?;
            self.raw.advance_apply();
        }
        self.answer_reads(out);
        self.compact(&mut out.writes);
        self.draw_election_timeout();
        Ok(())
    }

    fn route(&self, msgs: Vec<Message>, out: &mut Ready<CoreResult<MetaResponse>, Vec<u8>>) {
        for m in msgs {
            if let Some(to) = self.node_of(m.to) {
                out.messages.push((to, encode(&m)));
            }
        }
    }

    fn install(&mut self, snap: &Snapshot, batch: &mut WriteBatch) -> Result<(), StoreError> {
        let index = snap.get_metadata().index;
        if index <= self.applied {
            return Ok(());
        }
        let state = MetaState::decode(snap.get_data())?;
        state.persist_all(&self.state, batch);
        self.state = state;
        self.applied = index;
        batch.put(KEYSPACE, keys::APPLIED.to_vec(), index.to_be_bytes().to_vec());
        self.raw.raft.mut_store().install(snap, batch);
        Ok(())
    }

    fn apply(
        &mut self,
        entries: Vec<Entry>,
        out: &mut Ready<CoreResult<MetaResponse>, Vec<u8>>,
    ) -> Result<(), StoreError> {
        let Some(last) = entries.last().map(|e| e.index) else { return Ok(()) };
        let mut conf_changed = false;
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            if e.get_entry_type() == EntryType::EntryConfChange {
                let cc = ConfChange::parse_from_bytes(e.get_data())
                    .map_err(|err| config_error(format!("log entry {}: {err}", e.index)))?;
                let conf = self.raw.apply_conf_change(&cc).map_err(config_error)?;
                if self.raw.raft.state == StateRole::Leader && !conf.voters.contains(&self.raw.raft.id) {
                    // Removed while leading: it won an election with its own removal, proposed
                    // by an earlier leader, still uncommitted in its log. raft-rs leaves it
                    // leader, and its next commit check finds no progress of its own and
                    // panics. Step down, in the same term so the hard state of the Ready
                    // being handled stays as it is; no longer a voter, it does not campaign,
                    // and the voters elect one of theirs.
                    let term = self.raw.raft.term;
                    self.raw.raft.become_follower(term, raft::INVALID_ID);
                }
                self.raw.raft.mut_store().set_conf(conf, &mut out.writes);
                conf_changed = true;
                continue;
            }
            // Empty entries are a new leader's no-op.
            if e.get_entry_type() != EntryType::EntryNormal || e.get_data().is_empty() {
                continue;
            }
            let Ok(ctx) = <[u8; 16]>::try_from(e.get_context()) else {
                return Err(config_error(format!("log entry {} has no proposal context", e.index)));
            };
            if self.state.seen(&ctx) {
                // A copy proposed again under a new leader; the first one counted.
                continue;
            }
            let cmd = Command::decode(e.get_data())?;
            let result = self.state.apply(&cmd, &mut out.writes).map(|a| match a {
                Applied::Created(t) => MetaResponse::Created(t),
                Applied::ReplicationFactor { old, new, migration } => {
                    MetaResponse::ReplicationFactor { old, new, migration }
                }
                Applied::Migration(m) => MetaResponse::Migration(Some(m)),
            });
            self.state.remember(ctx, e.index, &mut out.writes);
            if let Some(Waiter::Propose { token, .. }) = self.waiting.remove(&ctx) {
                out.replies.push((token, result));
            }
        }
        self.applied = self.applied.max(last);
        out.writes.put(KEYSPACE, keys::APPLIED.to_vec(), self.applied.to_be_bytes().to_vec());
        if conf_changed {
            // raft-rs refuses a snapshot whose configuration lacks the receiving node, so a
            // learner just added must be sent one taken after its addition.
            self.refresh_snapshot();
        }
        Ok(())
    }

    fn answer_reads(&mut self, out: &mut Ready<CoreResult<MetaResponse>, Vec<u8>>) {
        let applied = self.applied;
        let done: Vec<[u8; 16]> = self
            .waiting
            .iter()
            .filter(|(_, w)| matches!(w, Waiter::Read { index: Some(i), .. } if *i <= applied))
            .map(|(c, _)| *c)
            .collect();
        for ctx in done {
            if let Some(Waiter::Read { token, id, .. }) = self.waiting.remove(&ctx) {
                out.replies.push((token, Ok(MetaResponse::Tenant(self.state.tenants.get(&id).cloned()))));
            }
        }
    }

    /// Folds applied entries into a snapshot point once enough have piled up.
    fn compact(&mut self, batch: &mut WriteBatch) {
        let snap_index = self.raw.raft.raft_log.store().snap_index;
        if self.applied.saturating_sub(snap_index) < self.config.compact_after {
            return;
        }
        self.refresh_snapshot();
        let applied = self.applied;
        self.raw.raft.mut_store().compact(applied, batch);
    }

    fn expire(&mut self, now: u64, out: &mut Ready<CoreResult<MetaResponse>, Vec<u8>>) {
        let gone: Vec<[u8; 16]> = self.waiting.iter().filter(|(_, w)| w.expires() <= now).map(|(c, _)| *c).collect();
        let timeout = self.config.request_timeout_ms;
        for ctx in gone {
            let msg = match self.waiting.remove(&ctx) {
                Some(Waiter::Propose { token, sent: None, .. }) => (
                    token,
                    format!("no metadata leader was reachable within {timeout} ms; the change was not made. Retry"),
                ),
                Some(Waiter::Propose { token, sent: Some(_), .. }) => (
                    token,
                    format!(
                        "the metadata change was not committed within {timeout} ms (no quorum reachable); \
                         it may still take effect"
                    ),
                ),
                Some(Waiter::Read { token, .. }) => {
                    (token, format!("the metadata leader did not confirm a current read within {timeout} ms. Retry"))
                }
                None => continue,
            };
            out.replies.push((msg.0, Err(CoreError::Unavailable(msg.1))));
        }
    }

    fn handle(
        &mut self,
        now: u64,
        token: ClientToken,
        input: MetaRequest,
        out: &mut Ready<CoreResult<MetaResponse>, Vec<u8>>,
    ) -> CoreResult<()> {
        let expires = now + self.config.request_timeout_ms;
        let reply = match input {
            MetaRequest::Raft { from, msg } => {
                let m = Message::parse_from_bytes(&msg)
                    .map_err(|e| CoreError::InvalidArgument(format!("not a Raft message: {e}")))?;
                if self.node_of(m.from).is_none() {
                    // A peer neither the layout nor `--initial-cluster` names: typically the
                    // leader reaching a node that joins. Its Raft number derives from its id,
                    // so the id it gives can be checked, and answers can then reach it.
                    if validate_id("node id", &from).is_err() || raft_id_of(&from) != m.from {
                        return Err(CoreError::InvalidArgument(format!(
                            "Raft message from unknown peer {} (claims to be {from:?})",
                            m.from
                        )));
                    }
                    self.known.insert(m.from, from);
                }
                // raft-rs refuses messages it cannot use (stale, from a removed peer); the
                // sender retries what matters.
                let _ = self.raw.step(m);
                MetaResponse::Stepped
            }
            MetaRequest::CreateTenant { id, replication_factor } => {
                validate_id("tenant_id", &id)?;
                Self::validate_rf(replication_factor)?;
                self.propose(token, expires, |_| Command::CreateTenant { id, replication_factor, at_ms: now });
                return Ok(());
            }
            MetaRequest::SetReplicationFactor { id, replication_factor } => {
                validate_id("tenant_id", &id)?;
                Self::validate_rf(replication_factor)?;
                self.propose(token, expires, |ctx| Command::SetReplicationFactor {
                    id,
                    replication_factor,
                    migration: Some(migration_id(ctx)),
                    at_ms: now,
                });
                return Ok(());
            }
            MetaRequest::ConfirmedTenant { id } => {
                let ctx = self.context();
                self.waiting.insert(ctx, Waiter::Read { token, id, expires, sent: None, index: None });
                return Ok(());
            }
            MetaRequest::Tenant { id, current } => {
                let t = self.state.tenants.get(&id).cloned();
                if t.is_some() || !current {
                    // A tenant's record only changes by its replication factor, which a
                    // coordinator may learn a moment late (its cache does anyway).
                    MetaResponse::Tenant(t)
                } else {
                    let ctx = self.context();
                    self.waiting.insert(ctx, Waiter::Read { token, id, expires, sent: None, index: None });
                    return Ok(());
                }
            }
            MetaRequest::AddNode { id, addr, vnodes } => {
                validate_id("node_id", &id)?;
                crate::ids::validate_addr("address", &addr)?;
                if vnodes == 0 || vnodes > MAX_VNODES {
                    return Err(CoreError::InvalidArgument(format!(
                        "virtual_nodes: {vnodes}, expected 1..={MAX_VNODES}"
                    )));
                }
                self.propose(token, expires, |ctx| Command::AddNode {
                    id,
                    addr,
                    vnodes,
                    migration: migration_id(ctx),
                    at_ms: now,
                });
                return Ok(());
            }
            MetaRequest::RemoveNode { id, force } => {
                validate_id("node_id", &id)?;
                self.propose(token, expires, |ctx| Command::RemoveNode {
                    id,
                    force,
                    migration: migration_id(ctx),
                    at_ms: now,
                });
                return Ok(());
            }
            MetaRequest::Progress { migration, node, moved, total, done, after } => {
                self.propose(token, expires, |_| Command::Progress {
                    migration,
                    node,
                    moved,
                    total,
                    done,
                    after,
                    at_ms: now,
                });
                return Ok(());
            }
            MetaRequest::Migration { id } => MetaResponse::Migration(self.state.migrations.get(&id).cloned()),
            MetaRequest::Running => MetaResponse::Migration(self.state.running().cloned()),
            MetaRequest::Migrations => MetaResponse::Migrations(self.state.migrations.values().cloned().collect()),
            MetaRequest::Layout => MetaResponse::Layout(self.state.layout.clone()),
            MetaRequest::Status => MetaResponse::Status(self.status()),
        };
        out.replies.push((token, Ok(reply)));
        Ok(())
    }

    fn finish(
        &mut self,
        now: u64,
        mut out: Ready<CoreResult<MetaResponse>, Vec<u8>>,
    ) -> Result<Ready<CoreResult<MetaResponse>, Vec<u8>>, StoreError> {
        self.send_waiting(now);
        self.reconcile_group();
        self.drain(&mut out)?;
        self.expire(now, &mut out);
        if self.next_tick == 0 {
            self.next_tick = now + self.config.tick_ms;
        }
        out.deadline = Some(self.next_tick);
        out.volatile = out.writes.is_empty();
        Ok(out)
    }
}

impl Machine for MetaMachine {
    type Input = MetaRequest;
    type Output = CoreResult<MetaResponse>;
    type Message = Vec<u8>;

    fn step(
        &mut self,
        now: u64,
        token: ClientToken,
        input: MetaRequest,
        _store: &dyn StoreRead,
    ) -> Result<Ready<Self::Output, Vec<u8>>, StoreError> {
        let mut out = Ready::default();
        if let Err(e) = self.handle(now, token, input, &mut out) {
            if let CoreError::Storage(s) = e {
                return Err(s);
            }
            out.replies.push((token, Err(e)));
        }
        self.finish(now, out)
    }

    fn tick(&mut self, now: u64, _store: &dyn StoreRead) -> Result<Ready<Self::Output, Vec<u8>>, StoreError> {
        // Catch up on the ticks that passed (a late timer), but never a burst that would
        // call a spurious election after a stall.
        if self.next_tick == 0 {
            // The first call: start the clock.
            self.next_tick = now + self.config.tick_ms;
        }
        let mut n = 0;
        while self.next_tick <= now && n < 3 {
            self.raw.tick();
            // A tick may start an election, which draws a new timeout; replace it before
            // the next tick compares against it.
            self.draw_election_timeout();
            self.next_tick += self.config.tick_ms;
            n += 1;
        }
        if self.next_tick <= now {
            self.next_tick = now + self.config.tick_ms;
        }
        self.draw_election_timeout();
        self.finish(now, Ready::default())
    }

    fn deadline(&self) -> Option<u64> {
        Some(self.next_tick)
    }
}

/// A migration's id, from its proposal's random context.
fn migration_id(ctx: &[u8; 16]) -> String {
    format!("mig-{}", crate::codec::hex(&ctx[..8]))
}
