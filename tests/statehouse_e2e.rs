//! kill -9 tesserad during a stream of concurrent multi-key commits: after restart every
//! acknowledged commit is fully present, no unacknowledged one is partly present, and
//! commit_ts goes on without reuse.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost_types::value::Kind;
use prost_types::{Struct, Value};
use tessera_proto::statehouse::v1::statehouse_service_client::StatehouseServiceClient;
use tessera_proto::statehouse::v1::{
    BeginTransactionRequest, CommitRequest, GetStateAtVersionRequest, GetStateRequest, WriteRequest,
};
use tonic::transport::Channel;

const KEYS: [&str; 3] = ["a", "b", "c"];

/// agent -> acknowledged (round, commit_ts), in order.
type Acked = BTreeMap<String, Vec<(u64, u64)>>;
const NS: &str = "crash";

fn value(n: u64) -> Struct {
    let mut s = Struct::default();
    s.fields.insert("n".into(), Value { kind: Some(Kind::NumberValue(n as f64)) });
    s
}

fn n_of(s: &Option<Struct>) -> Option<u64> {
    match s.as_ref()?.fields.get("n")?.kind {
        Some(Kind::NumberValue(v)) => Some(v as u64),
        _ => None,
    }
}

/// One transaction writing all three keys of `agent` with the value `n`.
async fn commit_round(c: &mut StatehouseServiceClient<Channel>, agent: &str, n: u64) -> Result<u64, tonic::Status> {
    let txn_id = c.begin_transaction(BeginTransactionRequest { timeout_ms: None }).await?.into_inner().txn_id;
    for k in KEYS {
        c.write(WriteRequest {
            txn_id: txn_id.clone(),
            namespace: NS.into(),
            agent_id: agent.into(),
            key: k.into(),
            value: Some(value(n)),
        })
        .await?;
    }
    Ok(c.commit(CommitRequest { txn_id }).await?.into_inner().commit_ts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_commits_keeps_every_acknowledged_commit_whole() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::Daemon::start(dir.path(), &[]);
    let ch = d.channel().await;
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let mut c = StatehouseServiceClient::new(ch.clone());
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let agent = format!("agent{t}");
            for n in 1.. {
                match commit_round(&mut c, &agent, n).await {
                    Ok(ts) => acked.lock().unwrap().entry(agent.clone()).or_default().push((n, ts)),
                    Err(_) => return,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().values().map(Vec::len).sum::<usize>() < 600 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    d.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    let total: usize = acked.values().map(Vec::len).sum();
    assert!(total >= 600, "only {total} commits acknowledged before the kill");
    let max_ts = acked.values().flatten().map(|(_, ts)| *ts).max().unwrap();

    let d = common::Daemon::start(dir.path(), &[]);
    let mut c = StatehouseServiceClient::new(d.channel().await);
    for (agent, rounds) in &acked {
        // Every acknowledged round is present at its version, with its commit_ts.
        for (n, ts) in rounds {
            for k in KEYS {
                let r = c
                    .get_state_at_version(GetStateAtVersionRequest {
                        namespace: NS.into(),
                        agent_id: agent.clone(),
                        key: k.into(),
                        version: *n,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(r.exists, "{agent}/{k} version {n} (acknowledged at {ts}) is lost");
                assert_eq!((n_of(&r.value), r.commit_ts), (Some(*n), *ts), "{agent}/{k} v{n}");
            }
        }
        // The latest state is one whole round: the three keys agree (no partial commit).
        let mut latest = Vec::new();
        for k in KEYS {
            let r = c
                .get_state(GetStateRequest { namespace: NS.into(), agent_id: agent.clone(), key: k.into() })
                .await
                .unwrap()
                .into_inner();
            latest.push((r.version, r.commit_ts));
        }
        assert!(latest.windows(2).all(|w| w[0] == w[1]), "{agent}: keys disagree after the crash: {latest:?}");
        // At most the one round in flight at the kill may have landed beyond the acked ones.
        let last_acked = rounds.last().map_or(0, |r| r.0);
        assert!(latest[0].0 == last_acked || latest[0].0 == last_acked + 1, "{agent}: {latest:?} vs {last_acked}");
    }
    // commit_ts continues after the restart, never reusing an acknowledged one.
    let ts = commit_round(&mut c, "after", 1).await.unwrap();
    assert!(ts > max_ts, "commit_ts {ts} after restart does not exceed {max_ts}");
}
