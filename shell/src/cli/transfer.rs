//! `tessera upload` and `tessera download`: parallel chunked upload with resumption, and
//! download with a hash check, both with a progress line on stderr.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tessera_proto::ai::pipestream::repository::filesystem::upload as up;
use tessera_proto::ai::pipestream::repository::filesystem::upload::node_upload_service_client::NodeUploadServiceClient;
use tessera_proto::tessera::repository::v1 as repo;
use tessera_proto::tessera::repository::v1::document_service_client::DocumentServiceClient;
use tonic::transport::Channel;

fn grpc(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

/// A progress line, redrawn at most every 200 ms.
pub struct Progress {
    label: &'static str,
    total: u64,
    done: Arc<AtomicU64>,
    /// Bytes already done before this run (a resumed upload), left out of the rate.
    base: u64,
    started: Instant,
}

impl Progress {
    pub fn new(label: &'static str, total: u64) -> Self {
        Self::resumed(label, total, 0)
    }

    pub fn resumed(label: &'static str, total: u64, base: u64) -> Self {
        Self { label, total, done: Arc::new(AtomicU64::new(base)), base, started: Instant::now() }
    }

    pub fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    pub fn draw(&self) {
        let done = self.done.load(Ordering::Relaxed);
        let frac = if self.total == 0 { 1.0 } else { (done as f64 / self.total as f64).min(1.0) };
        let bar: String = (0..30).map(|i| if (i as f64) < frac * 30.0 { '#' } else { ' ' }).collect();
        let mib_s =
            done.saturating_sub(self.base) as f64 / (1 << 20) as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        eprint!("\r{} [{bar}] {:>5.1}% {:>8.1} MiB/s", self.label, frac * 100.0, mib_s);
        let _ = std::io::stderr().flush();
    }

    /// Redraws until `done` resolves.
    pub async fn while_running<T>(&self, done: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(done);
        loop {
            tokio::select! {
                r = &mut done => {
                    self.draw();
                    eprintln!();
                    return r;
                }
                _ = tokio::time::sleep(Duration::from_millis(200)) => self.draw(),
            }
        }
    }
}

fn file_sha256(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let (mut h, mut buf, mut n) = (Sha256::new(), vec![0u8; 1 << 20], 0u64);
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok((tessera_core::codec::hex(&h.finalize()), n));
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

/// Uploads `path` in `chunk` byte chunks from `parallel` senders; with `resume`, sends only
/// what the server is missing of that node's current upload.
pub async fn upload(
    ch: Channel,
    path: &Path,
    chunk: u64,
    parallel: usize,
    resume: Option<String>,
) -> anyhow::Result<()> {
    if chunk == 0 || chunk > 16 << 20 {
        bail!("--chunk-size must be 1 byte to 16 MiB");
    }
    let (sha, size) = file_sha256(path)?;
    if size == 0 {
        bail!("{} is empty: there is nothing to upload", path.display());
    }
    let n_chunks = size.div_ceil(chunk);
    let mut c = NodeUploadServiceClient::new(ch.clone());
    let (node_id, upload_id, todo): (String, String, Vec<u64>) = match resume {
        Some(node_id) => {
            let s = c
                .get_upload_status(up::GetUploadStatusRequest { node_id: node_id.clone() })
                .await
                .map_err(grpc)?
                .into_inner();
            if s.state == up::UploadState::Completed as i32 {
                eprintln!("{node_id} is already complete");
                return Ok(());
            }
            if s.state != up::UploadState::Uploading as i32 && s.state != up::UploadState::Pending as i32 {
                bail!("upload of {node_id} cannot be resumed: {}", s.error_message);
            }
            let above = s.highest_chunk.map_or(0, |h| h as u64 + 1);
            let todo = s.missing_chunks.iter().map(|n| *n as u64).chain(above..n_chunks).collect();
            (node_id, s.upload_id, todo)
        }
        None => {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let r = c
                .initiate_upload(up::InitiateUploadRequest {
                    name,
                    path: path.display().to_string(),
                    expected_size: size as i64,
                    metadata: [("sha256".to_string(), sha.clone())].into_iter().collect(),
                    ..Default::default()
                })
                .await
                .map_err(grpc)?
                .into_inner();
            eprintln!("node {} (resume with: tessera upload {} --resume {})", r.node_id, path.display(), r.node_id);
            (r.node_id, r.upload_id, (0..n_chunks).collect())
        }
    };
    let sent_before = size.saturating_sub(todo.iter().map(|n| (size - n * chunk).min(chunk)).sum());
    let progress = Progress::resumed("upload  ", size, sent_before);
    let queue = Arc::new(Mutex::new(todo.into_iter().collect::<VecDeque<u64>>()));
    let mut tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>> = Vec::new();
    for _ in 0..parallel.max(1) {
        let (queue, counter, ch) = (queue.clone(), progress.counter(), ch.clone());
        let (path, node_id, upload_id) = (path.to_owned(), node_id.clone(), upload_id.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = NodeUploadServiceClient::new(ch);
            let mut f = std::fs::File::open(&path)?;
            loop {
                let Some(n) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else { return Ok(()) };
                let len = (size - n * chunk).min(chunk);
                let mut data = vec![0u8; len as usize];
                f.seek(SeekFrom::Start(n * chunk))?;
                f.read_exact(&mut data)?;
                let req = up::UploadChunkRequest {
                    node_id: node_id.clone(),
                    upload_id: upload_id.clone(),
                    data,
                    chunk_number: n as i64,
                    is_last: n == n_chunks - 1,
                };
                c.upload_chunk(req).await.map_err(grpc)?;
                counter.fetch_add(len, Ordering::Relaxed);
            }
        }));
    }
    progress
        .while_running(async {
            for t in tasks {
                t.await??;
            }
            Ok::<_, anyhow::Error>(())
        })
        .await?;
    let s =
        c.get_upload_status(up::GetUploadStatusRequest { node_id: node_id.clone() }).await.map_err(grpc)?.into_inner();
    if s.state != up::UploadState::Completed as i32 {
        bail!("upload of {node_id} ended {:?}: {}", s.state, s.error_message);
    }
    if s.file_sha != sha {
        bail!("server computed SHA-256 {} but the file's is {sha}", s.file_sha);
    }
    println!("{node_id} {size} bytes sha256 {sha}");
    Ok(())
}

/// Downloads a completed document to `out`, checking size and SHA-256.
pub async fn download(ch: Channel, node_id: String, version: Option<u64>, out: &Path) -> anyhow::Result<()> {
    let mut d = DocumentServiceClient::new(ch);
    let mut s = d
        .download(repo::DownloadRequest { node_id: node_id.clone(), version, offset: 0, length: 0 })
        .await
        .map_err(grpc)?
        .into_inner();
    let tmp = out.with_extension("part");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let first = s.message().await.map_err(grpc)?.context("the server sent nothing")?;
    let doc = first.document.clone().context("the first message carries no document")?;
    let progress = Progress::new("download", doc.size);
    let counter = progress.counter();
    let mut h = Sha256::new();
    let written = progress
        .while_running(async {
            let mut msg = Some(first);
            let mut n = 0u64;
            while let Some(m) = msg {
                h.update(&m.data);
                f.write_all(&m.data)?;
                n += m.data.len() as u64;
                counter.store(n, Ordering::Relaxed);
                msg = s.message().await.map_err(grpc)?;
            }
            f.sync_all()?;
            Ok::<_, anyhow::Error>(n)
        })
        .await?;
    let sha = tessera_core::codec::hex(&h.finalize());
    if written != doc.size || sha != doc.sha256 {
        bail!(
            "download of {node_id} is damaged: {written} bytes sha256 {sha}, expected {} bytes sha256 {}",
            doc.size,
            doc.sha256
        );
    }
    std::fs::rename(&tmp, out)?;
    println!("{} ({} bytes, version {}, sha256 {sha} verified)", out.display(), doc.size, doc.version);
    Ok(())
}
