//! The transaction machine against a model: a map of key histories plus a log of commits.
//! Crashes land between every step, including between a commit's write and its sync; after
//! each, every acknowledged commit is fully present and nothing else is.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tessera_core::mem_store::MemStore;
use tessera_core::rng::Rng;
use tessera_core::txn::{TxnConfig, TxnMachine, TxnRequest, TxnResponse, Versioned};
use tessera_core::{CoreError, Machine, Store};

#[derive(Debug, Clone)]
enum Op {
    Begin,
    Write {
        txn: u8,
        agent: u8,
        key: u8,
        val: u8,
    },
    Delete {
        txn: u8,
        agent: u8,
        key: u8,
    },
    Commit {
        txn: u8,
    },
    /// Commit whose batch is written but the node dies before the sync.
    CommitThenCrash {
        txn: u8,
    },
    Abort {
        txn: u8,
    },
    Get {
        agent: u8,
        key: u8,
    },
    GetAt {
        agent: u8,
        key: u8,
        version: u8,
    },
    List {
        agent: u8,
        page: u8,
    },
    Replay {
        agent: u8,
        from: u8,
        to: u8,
        page: u8,
    },
    Crash,
    Advance {
        ms: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Begin),
        5 => (0u8..4, 0u8..2, 0u8..4, any::<u8>()).prop_map(|(txn, agent, key, val)| Op::Write { txn, agent, key, val }),
        1 => (0u8..4, 0u8..2, 0u8..4).prop_map(|(txn, agent, key)| Op::Delete { txn, agent, key }),
        3 => (0u8..4).prop_map(|txn| Op::Commit { txn }),
        1 => (0u8..4).prop_map(|txn| Op::CommitThenCrash { txn }),
        1 => (0u8..4).prop_map(|txn| Op::Abort { txn }),
        2 => (0u8..2, 0u8..4).prop_map(|(agent, key)| Op::Get { agent, key }),
        1 => (0u8..2, 0u8..4, 0u8..5).prop_map(|(agent, key, version)| Op::GetAt { agent, key, version }),
        1 => (0u8..2, 1u8..4).prop_map(|(agent, page)| Op::List { agent, page }),
        1 => (0u8..2, 0u8..8, 0u8..12, 1u8..4).prop_map(|(agent, from, to, page)| Op::Replay { agent, from, to, page }),
        1 => Just(Op::Crash),
        1 => (0u16..40_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

type Key = (String, String);
type Value = Option<Vec<u8>>;
/// (key, value, version) as replay reports one operation.
type ModelOp = (String, Value, u64);

#[derive(Default, Clone)]
struct Model {
    /// key -> every version's value (None = deleted)
    history: BTreeMap<Key, Vec<(Value, u64)>>,
    /// commit_ts -> (agent -> ops (key, value, version))
    log: BTreeMap<u64, BTreeMap<String, Vec<ModelOp>>>,
    last_ts: u64,
}

struct Sut {
    store: MemStore,
    m: TxnMachine,
    now: u64,
}

impl Sut {
    fn call(&mut self, req: TxnRequest, sync: bool) -> Result<TxnResponse, CoreError> {
        let ready = self.m.step(self.now, 0, req, &self.store).expect("store");
        self.store.write(&ready.writes).unwrap();
        if sync {
            self.store.sync().unwrap();
        }
        ready.replies.into_iter().next().unwrap().1
    }
    fn restart(&mut self) {
        self.store.crash();
        self.m = TxnMachine::open(&self.store, TxnConfig::default(), Rng::new(self.now)).unwrap();
    }
}

type Open = Vec<(String, u64, BTreeMap<Key, Option<Vec<u8>>>)>;

fn stage(sut: &mut Sut, open: &mut Open, txn: u8, a: u8, k: u8, value: Option<Vec<u8>>) -> Result<(), TestCaseError> {
    let Some((id, deadline, staged)) = open.get_mut(txn as usize) else { return Ok(()) };
    let (namespace, agent_id, key) = ("ns".to_string(), agent(a), key(k));
    let req = match &value {
        Some(v) => TxnRequest::Write { txn_id: id.clone(), namespace, agent_id, key, value: v.clone() },
        None => TxnRequest::Delete { txn_id: id.clone(), namespace, agent_id, key },
    };
    let r = sut.call(req, true);
    if sut.now >= *deadline {
        prop_assert!(matches!(r, Err(CoreError::DeadlineExceeded(_))), "{:?}", r);
    } else {
        prop_assert_eq!(r, Ok(TxnResponse::Staged));
        staged.insert((self::agent(a), self::key(k)), value);
    }
    Ok(())
}

fn agent(a: u8) -> String {
    format!("agent{a}")
}
fn key(k: u8) -> String {
    format!("k{k}")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn machine_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
        let store = MemStore::new();
        let m = TxnMachine::open(&store, TxnConfig::default(), Rng::new(9)).unwrap();
        let mut sut = Sut { store, m, now: 1_000 };
        let mut model = Model::default();
        // Open transactions: id, deadline, staged ops.
        let mut open: Open = Vec::new();
        let ns = "ns".to_string();

        for op in ops {
            match op {
                Op::Begin => {
                    let Ok(TxnResponse::Begun { txn_id, expires_at_ms }) = sut.call(TxnRequest::Begin { timeout_ms: None }, true) else { panic!("begin") };
                    prop_assert_eq!(expires_at_ms, sut.now + 30_000);
                    open.push((txn_id, expires_at_ms, BTreeMap::new()));
                }
                Op::Write { txn, agent: a, key: k, val } => stage(&mut sut, &mut open, txn, a, k, Some(vec![val]))?,
                Op::Delete { txn, agent: a, key: k } => stage(&mut sut, &mut open, txn, a, k, None)?,
                Op::Commit { txn } | Op::CommitThenCrash { txn } if (txn as usize) < open.len() => {
                    let crash = matches!(op, Op::CommitThenCrash { .. });
                    let (id, deadline, staged) = open.remove(txn as usize);
                    let r = sut.call(TxnRequest::Commit { txn_id: id.clone() }, !crash);
                    if sut.now >= deadline {
                        prop_assert!(matches!(r, Err(CoreError::DeadlineExceeded(_))), "{:?}", r);
                        continue;
                    }
                    let Ok(TxnResponse::Committed { commit_ts }) = r else { panic!("commit: {r:?}") };
                    prop_assert_eq!(commit_ts, model.last_ts + 1);
                    if crash {
                        // Never acknowledged: the whole commit must vanish, as must every open txn.
                        sut.restart();
                        open.clear();
                        continue;
                    }
                    // A retried commit learns the same outcome.
                    let again = sut.call(TxnRequest::Commit { txn_id: id.clone() }, true);
                    prop_assert_eq!(again, Ok(TxnResponse::Committed { commit_ts }));
                    model.last_ts = commit_ts;
                    let mut per_agent: BTreeMap<String, Vec<_>> = BTreeMap::new();
                    let mut staged: Vec<_> = staged.into_iter().collect();
                    staged.sort_by(|a, b| a.0.cmp(&b.0));
                    for ((a, k), v) in staged {
                        let h = model.history.entry((a.clone(), k.clone())).or_default();
                        h.push((v.clone(), commit_ts));
                        per_agent.entry(a).or_default().push((k, v, h.len() as u64));
                    }
                    model.log.insert(commit_ts, per_agent);
                }
                Op::Commit { .. } | Op::CommitThenCrash { .. } => {
                    let r = sut.call(TxnRequest::Commit { txn_id: "nope".into() }, true);
                    prop_assert!(matches!(r, Err(CoreError::NotFound(_))), "{:?}", r);
                }
                Op::Abort { txn } if (txn as usize) < open.len() => {
                    let (id, deadline, _) = open.remove(txn as usize);
                    prop_assert_eq!(sut.call(TxnRequest::Abort { txn_id: id.clone() }, true), Ok(TxnResponse::Aborted));
                    let r = sut.call(TxnRequest::Commit { txn_id: id }, true);
                    if sut.now >= deadline {
                        // It had expired before the abort: the commit says so.
                        prop_assert!(matches!(r, Err(CoreError::DeadlineExceeded(_))), "{:?}", r);
                    } else {
                        prop_assert!(matches!(r, Err(CoreError::FailedPrecondition(_))), "{:?}", r);
                    }
                }
                Op::Abort { .. } => {}
                Op::Get { agent: a, key: k } => {
                    let r = sut.call(TxnRequest::Get { namespace: ns.clone(), agent_id: agent(a), key: key(k) }, true);
                    let want = model.history.get(&(agent(a), key(k))).and_then(|h| h.last()).map(|(v, ts)| Versioned {
                        value: v.clone(),
                        version: model.history[&(agent(a), key(k))].len() as u64,
                        commit_ts: *ts,
                    });
                    prop_assert_eq!(r, Ok(TxnResponse::State(want)));
                }
                Op::GetAt { agent: a, key: k, version } => {
                    let r = sut.call(TxnRequest::GetAtVersion { namespace: ns.clone(), agent_id: agent(a), key: key(k), version: version as u64 }, true);
                    if version == 0 {
                        prop_assert!(matches!(r, Err(CoreError::InvalidArgument(_))));
                    } else {
                        let want = model.history.get(&(agent(a), key(k))).and_then(|h| h.get(version as usize - 1)).map(|(v, ts)| Versioned {
                            value: v.clone(), version: version as u64, commit_ts: *ts,
                        });
                        prop_assert_eq!(r, Ok(TxnResponse::State(want)));
                    }
                }
                Op::List { agent: a, page } => {
                    let mut got = Vec::new();
                    let mut after = None;
                    loop {
                        let r = sut.call(TxnRequest::ListKeys { namespace: ns.clone(), agent_id: agent(a), after: after.clone(), limit: page as usize }, true);
                        let Ok(TxnResponse::Keys { keys, more }) = r else { panic!("{r:?}") };
                        prop_assert!(keys.len() <= page as usize);
                        after = keys.last().cloned();
                        got.extend(keys);
                        if !more { break; }
                    }
                    let want: Vec<String> = model.history.iter()
                        .filter(|((ag, _), h)| *ag == agent(a) && h.last().is_some_and(|(v, _)| v.is_some()))
                        .map(|((_, k), _)| k.clone()).collect();
                    prop_assert_eq!(got, want);
                }
                Op::Replay { agent: a, from, to, page } => {
                    let (from, to) = (from as u64, to as u64);
                    let mut got = Vec::new();
                    let mut cursor = from;
                    loop {
                        let r = sut.call(TxnRequest::Replay { namespace: ns.clone(), agent_id: agent(a), from_ts: cursor, to_ts: to, limit: page as usize }, true);
                        let Ok(TxnResponse::Events { events, more }) = r else { panic!("{r:?}") };
                        if let Some(last) = events.last() { cursor = last.commit_ts + 1; }
                        got.extend(events.into_iter().map(|e| (e.commit_ts, e.operations.into_iter().map(|o| (o.key, o.value, o.version)).collect::<Vec<_>>())));
                        if !more { break; }
                    }
                    let want: Vec<_> = model.log.range(from..=to.max(from))
                        .filter(|(ts, _)| **ts <= to)
                        .filter_map(|(ts, per)| per.get(&agent(a)).map(|ops| (*ts, ops.clone())))
                        .collect();
                    prop_assert_eq!(got, want);
                }
                Op::Crash => {
                    sut.restart();
                    open.clear();
                }
                Op::Advance { ms } => sut.now += ms as u64,
            }
            // Whatever happened, the last commit_ts is the model's: never reused, never skipped.
            prop_assert_eq!(sut.m.last_commit_ts(), model.last_ts);
        }
        let log = TxnMachine::global_log(&sut.store, 1, u64::MAX - 1).unwrap();
        prop_assert_eq!(log.iter().map(|e| e.0).collect::<Vec<_>>(), (1..=model.last_ts).collect::<Vec<_>>());
    }
}

#[test]
fn limits_are_clear_errors() {
    let store = MemStore::new();
    let mut m = TxnMachine::open(&store, TxnConfig { max_open: 2, remember_finished: 10 }, Rng::new(1)).unwrap();
    let mut call = |req| m.step(0, 0, req, &store).unwrap().replies.remove(0).1;
    let Ok(TxnResponse::Begun { txn_id, .. }) = call(TxnRequest::Begin { timeout_ms: Some(10) }) else { panic!() };
    call(TxnRequest::Begin { timeout_ms: None }).unwrap();
    assert!(matches!(call(TxnRequest::Begin { timeout_ms: None }), Err(CoreError::ResourceExhausted(_))));
    let big = TxnRequest::Write {
        txn_id: txn_id.clone(),
        namespace: "n".into(),
        agent_id: "a".into(),
        key: "k".repeat(2000),
        value: vec![],
    };
    let e = call(big).unwrap_err();
    assert!(matches!(&e, CoreError::InvalidArgument(m) if m.contains("key")), "{e:?}");
    let empty_agent =
        TxnRequest::Write { txn_id, namespace: "n".into(), agent_id: String::new(), key: "k".into(), value: vec![] };
    assert!(matches!(call(empty_agent), Err(CoreError::InvalidArgument(m)) if m.contains("agent_id")));
    assert!(matches!(call(TxnRequest::Begin { timeout_ms: Some(u64::MAX) }), Err(CoreError::InvalidArgument(_))));
}
