//! `ai.pipestream.repository.filesystem.upload.NodeUploadService` (intake-first chunked
//! uploads) and our `tessera.repository.v1.DocumentService` (metadata and download), over
//! the upload machine. Every upload is also an entry of the status registry (type UPLOAD).

use std::sync::Arc;
use std::time::Duration;

use tessera_core::status::{Status as EntryStatus, StatusRequest, StoreKind};
use tessera_core::upload::{
    ChunkIn, Intake, MAX_CHUNK_BYTES, Upload, UploadMachine, UploadRequest, UploadResponse, UploadState, chunk_key,
};
use tessera_proto::ai::pipestream::repository::filesystem::upload as wire;
use tessera_proto::tessera::repository::v1 as repo;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use super::errors::{driver_status, to_status};
use super::statehouse::ChannelStream;
use super::status::StatusHandle;
use crate::driver::HandleFor;
use crate::fjall_store::{FjallStore, Prestaged};

pub type UploadHandle = HandleFor<UploadMachine>;

/// A chunk file written ahead of the driver; released when the call is over (or abandoned,
/// if the caller goes away), which removes it unless the driver adopted it.
struct StagedChunk {
    store: Arc<FjallStore>,
    key: Vec<u8>,
    p: Prestaged,
}

impl Drop for StagedChunk {
    fn drop(&mut self) {
        self.store.release_blob(&self.key, self.p);
    }
}

/// Bytes per download message, well under gRPC's default 4 MiB receive limit.
const DOWNLOAD_PIECE: usize = 1 << 20;
/// Most missing chunk numbers one status answer lists.
const MISSING_LISTED: usize = 10_000;

#[derive(Clone)]
pub struct UploadService {
    driver: UploadHandle,
    status: StatusHandle,
    /// Bumped on every change, so progress streams wake up.
    changed: Arc<watch::Sender<u64>>,
    /// Where chunk files are written ahead of the driver, in parallel (see `blob_files`).
    prestage: Option<Arc<FjallStore>>,
}

/// Chunks smaller than this go through the driver's own write: a head start is not worth a
/// thread hop.
const PRESTAGE_MIN_BYTES: usize = 256 << 10;

impl UploadService {
    pub fn new(driver: UploadHandle, status: StatusHandle) -> Self {
        Self { driver, status, changed: Arc::new(watch::channel(0).0), prestage: None }
    }

    /// Lets chunk uploads write their files in parallel ahead of the driver.
    pub fn with_prestage(mut self, store: Arc<FjallStore>) -> Self {
        self.prestage = Some(store);
        self
    }

    async fn call(&self, req: UploadRequest) -> Result<UploadResponse, Status> {
        self.driver.call(req).await.map_err(driver_status)?.map_err(to_status)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Mirrors an upload into the status registry. The registry is advisory here: a full
    /// registry must not fail the upload itself, so errors are logged.
    async fn record_status(&self, up: &Upload, created: bool) {
        let status = match up.state {
            UploadState::Pending | UploadState::Uploading => EntryStatus::Processing,
            UploadState::Completed => EntryStatus::Completed,
            UploadState::Failed | UploadState::Cancelled => EntryStatus::Failed,
        };
        let error = up.error.clone();
        let req = if created {
            StatusRequest::Record { kind: StoreKind::Upload, id: up.upload_id.clone(), status, error }
        } else {
            StatusRequest::Update { kind: StoreKind::Upload, id: up.upload_id.clone(), status, error }
        };
        match self.status.call(req).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(upload = %up.upload_id, error = %e, "status registry did not take the upload"),
            Err(e) => tracing::warn!(upload = %up.upload_id, error = %e, "status registry unavailable"),
        }
    }

    async fn chunk(&self, r: wire::UploadChunkRequest) -> Result<wire::UploadChunkResponse, Status> {
        let mut data = r.data;
        let mut staged = None;
        if let Some(store) = &self.prestage
            && let Ok(n) = u64::try_from(r.chunk_number)
            && (PRESTAGE_MIN_BYTES..=MAX_CHUNK_BYTES).contains(&data.len())
        {
            // The driver re-checks everything; a file it does not adopt is removed below.
            let (store, key) = (store.clone(), chunk_key(&r.upload_id, n));
            let (back, result) = tokio::task::spawn_blocking(move || {
                let result = store.prestage_blob(&key, &data);
                (data, result.map(|p| StagedChunk { store, key, p }))
            })
            .await
            .map_err(|e| Status::internal(format!("chunk write task failed: {e}")))?;
            data = back;
            match result {
                Ok(s) => staged = Some(s),
                // The driver's own write will meet the same disk and report it properly.
                Err(e) => tracing::warn!(error = %e, "cannot write a chunk ahead of the driver"),
            }
        }
        let req =
            ChunkIn { node_id: r.node_id, upload_id: r.upload_id, number: r.chunk_number, data, is_last: r.is_last };
        let answer = self.call(UploadRequest::Chunk(req)).await;
        drop(staged);
        let UploadResponse::ChunkStored { upload, chunk, duplicate } = answer? else {
            return Err(Status::internal("unexpected answer to a chunk"));
        };
        if !duplicate {
            self.bump();
            if upload.state.is_terminal() {
                self.record_status(&upload, false).await;
            }
        }
        let complete = upload.state == UploadState::Completed;
        Ok(wire::UploadChunkResponse {
            node_id: upload.node_id.clone(),
            state: upload.state as i32,
            bytes_uploaded: upload.bytes_received as i64,
            chunk_number: chunk as i64,
            file_sha: upload.sha256.clone().filter(|_| complete).unwrap_or_default(),
            hash_type: if complete { wire::HashType::Sha256Hex as i32 } else { 0 },
            job_id: upload.upload_id.clone(),
            is_file_complete: complete,
        })
    }

    async fn latest(&self, node_id: &str) -> Result<Upload, Status> {
        match self.call(UploadRequest::Status { node_id: node_id.to_owned() }).await? {
            UploadResponse::Status(u) => Ok(u),
            _ => Err(Status::internal("unexpected answer to a status query")),
        }
    }

    async fn document(&self, node_id: String, version: Option<u64>) -> Result<Upload, Status> {
        match self.call(UploadRequest::Document { node_id, version }).await? {
            UploadResponse::Document(u) => Ok(u),
            _ => Err(Status::internal("unexpected answer to a document query")),
        }
    }
}

/// Total size as known: the declared size, or what arrived once the last chunk is in.
fn total_bytes(u: &Upload) -> u64 {
    if u.expected_size > 0 {
        u.expected_size
    } else if u.state == UploadState::Completed {
        u.bytes_received
    } else {
        0
    }
}

fn progress(u: &Upload) -> wire::UploadProgressResponse {
    let total = total_bytes(u);
    let percent = if u.state == UploadState::Completed {
        100.0
    } else if total > 0 {
        (u.bytes_received as f64 * 100.0 / total as f64).min(100.0)
    } else {
        0.0
    };
    let complete = u.state == UploadState::Completed;
    wire::UploadProgressResponse {
        node_id: u.node_id.clone(),
        state: u.state as i32,
        bytes_uploaded: u.bytes_received as i64,
        total_bytes: total as i64,
        percent,
        error_message: u.error.clone().unwrap_or_default(),
        updated_at_epoch_ms: u.updated_ms as i64,
        file_sha: u.sha256.clone().filter(|_| complete).unwrap_or_default(),
        hash_type: if complete { wire::HashType::Sha256Hex as i32 } else { 0 },
        job_id: u.upload_id.clone(),
    }
}

fn document(u: &Upload) -> repo::Document {
    repo::Document {
        node_id: u.node_id.clone(),
        version: u.version,
        upload_id: u.upload_id.clone(),
        name: u.name.clone(),
        path: u.path.clone(),
        drive: u.drive.clone(),
        mime_type: u.mime_type.clone(),
        size: u.bytes_received,
        sha256: u.sha256.clone().unwrap_or_default(),
        metadata: u.metadata.iter().cloned().collect(),
        created_at_epoch_ms: u.created_ms as i64,
        completed_at_epoch_ms: u.updated_ms as i64,
    }
}

#[tonic::async_trait]
impl wire::node_upload_service_server::NodeUploadService for UploadService {
    async fn initiate_upload(
        &self,
        request: Request<wire::InitiateUploadRequest>,
    ) -> Result<Response<wire::InitiateUploadResponse>, Status> {
        let r = request.into_inner();
        let mut metadata: Vec<(String, String)> = r.metadata.into_iter().collect();
        metadata.sort();
        let intake = Intake {
            drive: r.drive,
            name: r.name,
            path: r.path,
            mime_type: r.mime_type,
            metadata,
            expected_size: r.expected_size,
            client_node_id: r.client_node_id,
            fail_if_exists: r.fail_if_exists,
        };
        let UploadResponse::Initiated { upload, is_update } = self.call(UploadRequest::Initiate(intake)).await? else {
            return Err(Status::internal("unexpected answer to an intake"));
        };
        self.record_status(&upload, true).await;
        Ok(Response::new(wire::InitiateUploadResponse {
            node_id: upload.node_id.clone(),
            upload_id: upload.upload_id.clone(),
            state: upload.state as i32,
            created_at_epoch_ms: upload.created_ms as i64,
            is_update,
            previous_version_id: upload.previous_upload_id.unwrap_or_default(),
        }))
    }

    type StreamUploadProgressStream = ChannelStream<Result<wire::UploadProgressResponse, Status>>;

    async fn stream_upload_progress(
        &self,
        request: Request<wire::UploadProgressRequest>,
    ) -> Result<Response<Self::StreamUploadProgressStream>, Status> {
        let node_id = request.into_inner().node_id;
        let first = self.latest(&node_id).await?;
        let (tx, rx) = mpsc::channel(4);
        let svc = self.clone();
        let mut changed = self.changed.subscribe();
        tokio::spawn(async move {
            let mut current = first;
            let mut last_sent = None;
            loop {
                let p = progress(&current);
                if last_sent.as_ref() != Some(&p) {
                    if tx.send(Ok(p.clone())).await.is_err() {
                        return;
                    }
                    last_sent = Some(p);
                }
                if current.state.is_terminal() {
                    return;
                }
                // Wake on any change, and at least every second (expiry happens on a timer).
                let _ = tokio::time::timeout(Duration::from_secs(1), changed.changed()).await;
                current = match svc.latest(&node_id).await {
                    Ok(u) => u,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(ChannelStream::new(rx)))
    }

    async fn upload_chunk(
        &self,
        request: Request<wire::UploadChunkRequest>,
    ) -> Result<Response<wire::UploadChunkResponse>, Status> {
        Ok(Response::new(self.chunk(request.into_inner()).await?))
    }

    type UploadChunksStream = ChannelStream<Result<wire::UploadChunkResponse, Status>>;

    async fn upload_chunks(
        &self,
        request: Request<Streaming<wire::UploadChunkRequest>>,
    ) -> Result<Response<Self::UploadChunksStream>, Status> {
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let svc = self.clone();
        tokio::spawn(async move {
            loop {
                let next = match input.message().await {
                    Ok(Some(r)) => svc.chunk(r).await,
                    Ok(None) => return,
                    Err(e) => Err(e),
                };
                let failed = next.is_err();
                if tx.send(next).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ChannelStream::new(rx)))
    }

    async fn get_upload_status(
        &self,
        request: Request<wire::GetUploadStatusRequest>,
    ) -> Result<Response<wire::GetUploadStatusResponse>, Status> {
        let u = self.latest(&request.into_inner().node_id).await?;
        let missing = if u.state.is_terminal() {
            Vec::new()
        } else {
            match self.call(UploadRequest::Missing { upload_id: u.upload_id.clone(), limit: MISSING_LISTED }).await? {
                UploadResponse::Missing(m) => m.into_iter().map(|n| n as i64).collect(),
                _ => return Err(Status::internal("unexpected answer to a missing-chunks query")),
            }
        };
        let complete = u.state == UploadState::Completed;
        Ok(Response::new(wire::GetUploadStatusResponse {
            node_id: u.node_id.clone(),
            state: u.state as i32,
            bytes_uploaded: u.bytes_received as i64,
            total_bytes: total_bytes(&u) as i64,
            error_message: u.error.clone().unwrap_or_default(),
            updated_at_epoch_ms: u.updated_ms as i64,
            upload_id: u.upload_id.clone(),
            chunks_received: u.chunks_received as i64,
            missing_chunks: missing,
            last_chunk: u.last_chunk.map(|n| n as i64),
            highest_chunk: u.highest_chunk.map(|n| n as i64),
            file_sha: u.sha256.clone().filter(|_| complete).unwrap_or_default(),
        }))
    }

    async fn cancel_upload(
        &self,
        request: Request<wire::CancelUploadRequest>,
    ) -> Result<Response<wire::CancelUploadResponse>, Status> {
        let node_id = request.into_inner().node_id;
        let UploadResponse::Cancelled(u) = self.call(UploadRequest::Cancel { node_id }).await? else {
            return Err(Status::internal("unexpected answer to a cancel"));
        };
        self.bump();
        self.record_status(&u, false).await;
        Ok(Response::new(wire::CancelUploadResponse {
            node_id: u.node_id.clone(),
            success: true,
            message: format!("upload {} cancelled; its chunks are freed", u.upload_id),
        }))
    }
}

#[tonic::async_trait]
impl repo::document_service_server::DocumentService for UploadService {
    async fn get_document(
        &self,
        request: Request<repo::GetDocumentRequest>,
    ) -> Result<Response<repo::Document>, Status> {
        let r = request.into_inner();
        Ok(Response::new(document(&self.document(r.node_id, r.version).await?)))
    }

    type DownloadStream = ChannelStream<Result<repo::DownloadChunk, Status>>;

    async fn download(
        &self,
        request: Request<repo::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let r = request.into_inner();
        let up = self.document(r.node_id, r.version).await?;
        let size = up.bytes_received;
        if r.offset > size {
            return Err(Status::out_of_range(format!("offset {} is past the document's end ({size} bytes)", r.offset)));
        }
        let end = if r.length == 0 { size } else { r.offset.saturating_add(r.length).min(size) };
        let UploadResponse::ChunkLengths(lengths) =
            self.call(UploadRequest::ChunkLengths { upload_id: up.upload_id.clone() }).await?
        else {
            return Err(Status::internal("unexpected answer to a chunk listing"));
        };
        let (tx, rx) = mpsc::channel(2);
        let svc = self.clone();
        let header = document(&up);
        tokio::spawn(async move {
            let result: Result<(), Status> = async {
                let mut first = Some(header);
                let mut chunk_start = 0u64;
                for (n, len) in lengths.iter().enumerate() {
                    let chunk_end = chunk_start + len;
                    if chunk_end > r.offset && chunk_start < end {
                        let UploadResponse::Chunk(bytes) = svc
                            .call(UploadRequest::ReadChunk { upload_id: up.upload_id.clone(), number: n as u64 })
                            .await?
                        else {
                            return Err(Status::internal("unexpected answer to a chunk read"));
                        };
                        let from = r.offset.saturating_sub(chunk_start) as usize;
                        let to = (end.min(chunk_end) - chunk_start) as usize;
                        for (i, piece) in bytes[from..to].chunks(DOWNLOAD_PIECE).enumerate() {
                            let msg = repo::DownloadChunk {
                                document: first.take(),
                                offset: chunk_start + (from + i * DOWNLOAD_PIECE) as u64,
                                data: piece.to_vec(),
                            };
                            tx.send(Ok(msg)).await.map_err(|_| Status::cancelled("client went away"))?;
                        }
                    }
                    chunk_start = chunk_end;
                }
                if let Some(doc) = first {
                    // An empty range still tells the client what the document is.
                    tx.send(Ok(repo::DownloadChunk { document: Some(doc), offset: r.offset, data: Vec::new() }))
                        .await
                        .map_err(|_| Status::cancelled("client went away"))?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Response::new(ChannelStream::new(rx)))
    }
}
