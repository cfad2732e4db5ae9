//! Prometheus text metrics: request counts and latency histograms per RPC (a tower layer on
//! the gRPC server), fsync count and latency (the driver's observer), the row cache, and how
//! far anti-entropy has reached (tombstones wait for it). Served over plain HTTP on
//! `--metrics-listen`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::driver::Observer;

const BUCKETS: [f64; 14] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}", self.counts[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// One RPC's counts by gRPC status code, and its latency.
#[derive(Default)]
struct Rpc {
    codes: BTreeMap<String, u64>,
    latency: Histogram,
}

#[derive(Default)]
struct Inner {
    /// By method path. Looked up by `&str`, so a call allocates nothing once its method and
    /// code have been seen.
    rpcs: BTreeMap<String, Rpc>,
    fsync: Histogram,
    groups: u64,
    grouped_requests: u64,
}

#[derive(Default, Clone)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
    /// The store whose row cache is reported, once set.
    store: Arc<std::sync::OnceLock<Arc<crate::fjall_store::FjallStore>>>,
    /// Anti-entropy's mark, in ms since the epoch: every other member was compared with this
    /// node in passes begun after it (0 until one pass reached them all).
    repaired_before_ms: Arc<AtomicU64>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn observe_rpc(&self, method: &str, code: &str, elapsed: Duration) {
        let mut m = self.lock();
        if !m.rpcs.contains_key(method) {
            m.rpcs.insert(method.to_owned(), Rpc::default());
        }
        let Some(rpc) = m.rpcs.get_mut(method) else { return };
        match rpc.codes.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                rpc.codes.insert(code.to_owned(), 1);
            }
        }
        rpc.latency.observe(elapsed.as_secs_f64());
    }

    /// Takes the mark an anti-entropy pass told the replica (`None`: some member was never
    /// compared; the last mark stays).
    pub fn anti_entropy_mark(&self, before_ms: Option<u64>) {
        if let Some(ms) = before_ms {
            self.repaired_before_ms.fetch_max(ms, Ordering::Relaxed);
        }
    }

    /// Reports `store`'s row cache from now on.
    pub fn watch_store(&self, store: Arc<crate::fjall_store::FjallStore>) {
        let _ = self.store.set(store);
    }

    pub fn render(&self) -> String {
        let m = self.lock();
        let mut out = String::new();
        out.push_str("# HELP tessera_grpc_requests_total gRPC requests by method and status code.\n");
        out.push_str("# TYPE tessera_grpc_requests_total counter\n");
        for (method, rpc) in &m.rpcs {
            for (code, n) in &rpc.codes {
                let _ = writeln!(out, "tessera_grpc_requests_total{{method=\"{method}\",code=\"{code}\"}} {n}");
            }
        }
        out.push_str("# HELP tessera_grpc_request_duration_seconds Time to the response headers.\n");
        out.push_str("# TYPE tessera_grpc_request_duration_seconds histogram\n");
        for (method, rpc) in &m.rpcs {
            rpc.latency.render(&mut out, "tessera_grpc_request_duration_seconds", &format!("method=\"{method}\""));
        }
        out.push_str("# HELP tessera_fsync_duration_seconds Duration of each group-commit fsync.\n");
        out.push_str("# TYPE tessera_fsync_duration_seconds histogram\n");
        m.fsync.render(&mut out, "tessera_fsync_duration_seconds", "");
        out.push_str("# HELP tessera_fsync_total Group-commit fsyncs.\n# TYPE tessera_fsync_total counter\n");
        let _ = writeln!(out, "tessera_fsync_total {}", m.fsync.count);
        out.push_str("# HELP tessera_commit_groups_total Driver groups (one fsync at most each).\n# TYPE tessera_commit_groups_total counter\n");
        let _ = writeln!(out, "tessera_commit_groups_total {}", m.groups);
        out.push_str("# HELP tessera_commit_group_requests_total Requests served by those groups.\n# TYPE tessera_commit_group_requests_total counter\n");
        let _ = writeln!(out, "tessera_commit_group_requests_total {}", m.grouped_requests);
        out.push_str(
            "# HELP tessera_kv_repaired_before_timestamp_seconds Spent tombstones stored before this time may \
             go: anti-entropy has compared this node with every other member since (0: not yet). Falling behind \
             the clock, it names a member away: tombstones wait for it.\n# TYPE \
             tessera_kv_repaired_before_timestamp_seconds gauge\n",
        );
        let mark = self.repaired_before_ms.load(Ordering::Relaxed);
        let _ = writeln!(out, "tessera_kv_repaired_before_timestamp_seconds {}.{:03}", mark / 1000, mark % 1000);
        if let Some(c) = self.store.get().and_then(|s| s.row_cache_stats()) {
            out.push_str("# HELP tessera_row_cache_lookups_total Row cache lookups of key-value keys, by result.\n# TYPE tessera_row_cache_lookups_total counter\n");
            let _ = writeln!(out, "tessera_row_cache_lookups_total{{result=\"hit\"}} {}", c.hits);
            let _ = writeln!(out, "tessera_row_cache_lookups_total{{result=\"miss\"}} {}", c.misses);
            out.push_str("# HELP tessera_row_cache_bytes What the row cache holds: keys, values and bookkeeping.\n# TYPE tessera_row_cache_bytes gauge\n");
            let _ = writeln!(out, "tessera_row_cache_bytes {}", c.bytes);
        }
        out
    }

    /// Serves `GET /metrics` on `listener` until the process exits.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "metrics listening");
        }
        loop {
            // One failed accept (too many open files, a peer gone before it was taken) must
            // not end the endpoint: its queued connections would be reset with it.
            let mut sock = match listener.accept().await {
                Ok((sock, _)) => sock,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let metrics = self.clone();
            tokio::spawn(async move {
                // The request's head, up to its blank line (or 2 KiB): a reply sent before
                // the whole request was read would leave bytes unread at close, and the
                // kernel answers those with a reset that can cut the reply short.
                let mut buf = [0u8; 2048];
                let mut n = 0;
                // One deadline for the whole head: a client trickling bytes cannot hold the
                // task longer than that.
                let head = async {
                    while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(read) => n += read,
                        }
                    }
                };
                if tokio::time::timeout(Duration::from_secs(5), head).await.is_err() || n == 0 {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if head.starts_with("GET /metrics ") || head.starts_with("GET / ") {
                    ("200 OK", metrics.render())
                } else {
                    ("404 Not Found", "not found; metrics are at /metrics\n".to_owned())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                if sock.write_all(resp.as_bytes()).await.is_ok() {
                    // Our side closes first; what the client still sends (a body, say) is
                    // read and dropped for a moment so that the close is a FIN, not a reset.
                    let _ = sock.shutdown().await;
                    let mut rest = [0u8; 512];
                    let drain = async { while matches!(sock.read(&mut rest).await, Ok(1..)) {} };
                    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
                }
            });
        }
    }
}

impl Observer for Metrics {
    fn group_committed(&self, requests: usize, synced: bool, sync_time: Duration) {
        let mut m = self.lock();
        m.groups += 1;
        m.grouped_requests += requests as u64;
        if synced {
            m.fsync.observe(sync_time.as_secs_f64());
        }
    }
}

/// Tower layer that counts and times every gRPC call.
#[derive(Clone)]
pub struct MetricsLayer {
    pub metrics: Metrics,
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner, metrics: self.metrics.clone() }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, RB> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            // Errors answered "trailers-only" carry grpc-status in the headers; a streamed
            // or successful unary answer carries it in trailers, which we count as 0 (OK).
            let code = match &res {
                Ok(r) => r.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0"),
                Err(_) => "transport",
            };
            metrics.observe_rpc(&method, code, started.elapsed());
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::store::{KV, Store, StoreRead, WriteBatch};

    #[test]
    fn the_anti_entropy_mark_is_reported_and_never_goes_back() {
        let metrics = Metrics::default();
        let gauge = |m: &Metrics| {
            m.render()
                .lines()
                .find_map(|l| l.strip_prefix("tessera_kv_repaired_before_timestamp_seconds ").map(str::to_owned))
        };
        assert_eq!(gauge(&metrics).as_deref(), Some("0.000"));
        metrics.anti_entropy_mark(Some(1_700_000_000_250));
        metrics.anti_entropy_mark(None);
        metrics.anti_entropy_mark(Some(1_600_000_000_000));
        assert_eq!(gauge(&metrics).as_deref(), Some("1700000000.250"));
    }

    #[test]
    fn the_row_cache_is_reported_once_watched() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::fjall_store::FjallStore::open(dir.path()).unwrap());
        let metrics = Metrics::default();
        assert!(!metrics.render().contains("tessera_row_cache"));
        metrics.watch_store(store.clone());
        let key = [tessera_core::kv::VALUE_PREFIX, b"acme\0k"].concat();
        let mut b = WriteBatch::default();
        b.put(KV, key.clone(), b"v".to_vec());
        store.write(&b).unwrap();
        store.get(KV, &key).unwrap();
        store.get(KV, &key).unwrap();
        let text = metrics.render();
        assert!(text.contains("tessera_row_cache_lookups_total{result=\"hit\"} 1\n"), "{text}");
        assert!(text.contains("tessera_row_cache_lookups_total{result=\"miss\"} 1\n"), "{text}");
        let bytes = text.lines().find_map(|l| l.strip_prefix("tessera_row_cache_bytes ")).unwrap();
        assert!(bytes.parse::<usize>().unwrap() > key.len(), "{text}");
    }
}
