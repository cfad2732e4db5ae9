//! The transaction workload and its checker (DESIGN §5, transactions).
//!
//! Client `c` owns agent `c{c}` on every node and commits *rounds*: round r writes the value
//! r to the agent's three keys in one transaction. So a read must see all three keys at the
//! same round, version and commit_ts (no partial transaction); that round must be at least
//! the last acknowledged one (durable, read-after-ack) and never an aborted one. After the
//! final crash, replay must hold every acknowledged round at its commit_ts, and the global
//! log must number commits 1, 2, 3... with no gap and no reuse.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tessera_core::txn::{TxnMachine, TxnRequest, TxnResponse};
use tessera_core::{CoreError, CoreResult};

use crate::model::clip;
use crate::net::{self, Outcome};
use crate::run::World;

const NS: &str = "sim";
const KEYS: [&str; 3] = ["k0", "k1", "k2"];

#[derive(Default, Clone)]
pub struct AgentState {
    last_acked: u64,
    max_attempted: u64,
    acked: Vec<(u64, u64)>,
    aborted: BTreeSet<u64>,
}

pub struct TxnModel {
    /// Per node: agent -> what its owner knows.
    agents: Vec<BTreeMap<String, AgentState>>,
    /// Per node: acknowledged commit_ts -> agent (each may be handed out once).
    acked_ts: Vec<BTreeMap<u64, String>>,
}

impl TxnModel {
    pub fn new(nodes: usize) -> Self {
        Self { agents: vec![BTreeMap::new(); nodes], acked_ts: vec![BTreeMap::new(); nodes] }
    }
}

type TxnOutcome = Outcome<CoreResult<TxnResponse>>;

fn pick(world: &World, node: usize) -> Option<crate::node::TxnHandle> {
    world.txn_handle(node)
}

async fn call(world: &Arc<World>, client: usize, node: usize, req: TxnRequest) -> TxnOutcome {
    let desc = format!("{req:?}");
    let out = net::call(world, client, node, pick, req).await;
    let shown = match &out {
        Outcome::Reply(r) => format!("{r:?}"),
        Outcome::Unknown => "no answer".into(),
    };
    world.event(format!("c{client}->n{node} {} => {}", clip(&desc), clip(&shown)));
    world.lock().ops += 1;
    out
}

fn agent_state(world: &World, node: usize, agent: &str) -> AgentState {
    world.lock().txn.agents[node].get(agent).cloned().unwrap_or_default()
}

fn update_agent(world: &World, node: usize, agent: &str, f: impl FnOnce(&mut AgentState)) {
    f(world.lock().txn.agents[node].entry(agent.to_owned()).or_default());
}

fn round_of(v: &Option<Vec<u8>>) -> Option<u64> {
    let b: [u8; 8] = v.as_deref()?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

async fn round(world: &Arc<World>, client: usize, node: usize) {
    let agent = format!("c{client}");
    let Outcome::Reply(begun) = call(world, client, node, TxnRequest::Begin { timeout_ms: None }).await else { return };
    let txn_id = match begun {
        Ok(TxnResponse::Begun { txn_id, .. }) => txn_id,
        other => return world.violation(format!("n{node}: begin answered {other:?}")),
    };
    let r = agent_state(world, node, &agent).max_attempted + 1;
    for key in KEYS {
        let req = TxnRequest::Write {
            txn_id: txn_id.clone(),
            namespace: NS.into(),
            agent_id: agent.clone(),
            key: key.into(),
            value: r.to_be_bytes().to_vec(),
        };
        match call(world, client, node, req).await {
            Outcome::Reply(Ok(TxnResponse::Staged)) => {}
            // The node restarted and forgot the transaction, or the message was lost.
            Outcome::Reply(Err(CoreError::NotFound(_))) | Outcome::Unknown => return,
            Outcome::Reply(other) => return world.violation(format!("n{node}: write answered {other:?}")),
        }
    }
    update_agent(world, node, &agent, |s| s.max_attempted = r);
    if world.chance(0.1) {
        if let Outcome::Reply(out) = call(world, client, node, TxnRequest::Abort { txn_id }).await {
            match out {
                Ok(TxnResponse::Aborted) => update_agent(world, node, &agent, |s| {
                    s.aborted.insert(r);
                }),
                other => world.violation(format!("n{node}: abort answered {other:?}")),
            }
        }
        return;
    }
    match call(world, client, node, TxnRequest::Commit { txn_id }).await {
        Outcome::Reply(Ok(TxnResponse::Committed { commit_ts })) => {
            let mut w = world.lock();
            if let Some(prev) = w.txn.acked_ts[node].insert(commit_ts, agent.clone()) {
                drop(w);
                return world.violation(format!("n{node}: commit_ts {commit_ts} acknowledged twice ({prev}, {agent})"));
            }
            let s = w.txn.agents[node].entry(agent).or_default();
            s.last_acked = r;
            s.acked.push((r, commit_ts));
        }
        Outcome::Reply(Err(CoreError::NotFound(_))) | Outcome::Unknown => {}
        Outcome::Reply(other) => world.violation(format!("n{node}: commit answered {other:?}")),
    }
}

/// A transaction that outlives its timeout must not commit.
async fn expired(world: &Arc<World>, client: usize, node: usize) {
    let Outcome::Reply(Ok(TxnResponse::Begun { txn_id, .. })) =
        call(world, client, node, TxnRequest::Begin { timeout_ms: Some(20) }).await
    else {
        return;
    };
    madsim::time::sleep(Duration::from_millis(60)).await;
    match call(world, client, node, TxnRequest::Commit { txn_id }).await {
        Outcome::Reply(Err(CoreError::DeadlineExceeded(_) | CoreError::NotFound(_))) | Outcome::Unknown => {}
        Outcome::Reply(other) => {
            world.violation(format!("n{node}: commit of an expired transaction answered {other:?}"))
        }
    }
}

async fn read(world: &Arc<World>, client: usize, node: usize) {
    let agent = format!("c{}", world.rng_below(world.opts.clients as u64));
    let before = agent_state(world, node, &agent);
    let req = TxnRequest::Scan {
        namespace: NS.into(),
        agent_id: agent.clone(),
        prefix: String::new(),
        after: None,
        limit: 10,
    };
    let Outcome::Reply(out) = call(world, client, node, req).await else { return };
    let entries = match out {
        Ok(TxnResponse::Entries { entries, .. }) => entries,
        other => return world.violation(format!("n{node}: scan answered {other:?}")),
    };
    if entries.is_empty() {
        if before.last_acked > 0 {
            world.violation(format!("n{node}: {agent} reads empty after round {} was acknowledged", before.last_acked));
        }
        return;
    }
    let shape: Vec<(u64, u64, Option<u64>)> =
        entries.iter().map(|(_, v)| (v.version, v.commit_ts, round_of(&v.value))).collect();
    if entries.len() != KEYS.len() || shape.windows(2).any(|w| w[0] != w[1]) {
        return world.violation(format!("n{node}: {agent} shows a partial transaction: {shape:?}"));
    }
    let after = agent_state(world, node, &agent);
    match shape[0].2 {
        Some(r) if r < before.last_acked => {
            world.violation(format!("n{node}: {agent} reads round {r}, older than acknowledged {}", before.last_acked))
        }
        Some(r) if r > after.max_attempted || after.aborted.contains(&r) => {
            world.violation(format!("n{node}: {agent} reads round {r}, which was never committed"))
        }
        Some(_) => {}
        None => world.violation(format!("n{node}: {agent} holds a value that is no round")),
    }
}

pub async fn client(world: Arc<World>, client: usize, until_ms: u64) {
    while world.elapsed_ms() < until_ms {
        let node = world.rng_below(world.opts.nodes as u64) as usize;
        match world.rng_below(100) {
            0..60 => round(&world, client, node).await,
            60..65 => expired(&world, client, node).await,
            _ => read(&world, client, node).await,
        }
        madsim::time::sleep(Duration::from_millis(world.rng_below(5))).await;
    }
}

/// After healing and a final crash of every node: replay holds every acknowledged round at
/// its commit_ts, whole; and the global log is gapless.
pub async fn final_check(world: &Arc<World>) {
    for node in 0..world.opts.nodes {
        let Some(h) = world.txn_handle(node) else {
            world.violation(format!("n{node}: transaction driver did not come back"));
            continue;
        };
        let agents: Vec<(String, AgentState)> =
            world.lock().txn.agents[node].iter().map(|(a, s)| (a.clone(), s.clone())).collect();
        for (agent, s) in agents {
            let req = TxnRequest::Replay {
                namespace: NS.into(),
                agent_id: agent.clone(),
                from_ts: 0,
                to_ts: u64::MAX,
                limit: 100_000,
            };
            let events = match h.call(req).await {
                Ok(Ok(TxnResponse::Events { events, more: false })) => events,
                other => {
                    world.violation(format!("n{node}: final replay of {agent} answered {other:?}"));
                    continue;
                }
            };
            let mut by_ts = BTreeMap::new();
            let mut last = 0;
            for e in &events {
                if e.commit_ts <= last {
                    world.violation(format!("n{node}: {agent} replay goes back at commit_ts {}", e.commit_ts));
                }
                last = e.commit_ts;
                let rounds: Vec<Option<u64>> = e.operations.iter().map(|o| round_of(&o.value)).collect();
                if rounds.len() != KEYS.len() || rounds.windows(2).any(|w| w[0] != w[1]) {
                    world.violation(format!("n{node}: {agent} commit_ts {} is partial: {rounds:?}", e.commit_ts));
                }
                if let Some(Some(r)) = rounds.first() {
                    if s.aborted.contains(r) {
                        world.violation(format!("n{node}: aborted round {r} of {agent} was committed"));
                    }
                    by_ts.insert(e.commit_ts, *r);
                }
            }
            for (r, ts) in &s.acked {
                if by_ts.get(ts) != Some(r) {
                    world.violation(format!("n{node}: acknowledged round {r} of {agent} at commit_ts {ts} is lost"));
                }
            }
        }
        if let Some(store) = world.store(node) {
            match TxnMachine::global_log(&store, 0, u64::MAX - 1) {
                Ok(log) => {
                    let n = log.len() as u64;
                    if log.iter().map(|e| e.0).ne(1..=n) {
                        world.violation(format!("n{node}: the global log has gaps: {:?}", clip(&format!("{log:?}"))));
                    }
                    let acked: Vec<u64> = world.lock().txn.acked_ts[node].keys().copied().collect();
                    if let Some(ts) = acked.iter().find(|ts| **ts > n) {
                        world.violation(format!("n{node}: acknowledged commit_ts {ts} is beyond the log's end {n}"));
                    }
                }
                Err(e) => world.violation(format!("n{node}: global log unreadable: {e}")),
            }
        }
    }
    world.event("transaction check done".into());
}
