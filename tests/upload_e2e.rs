//! The document repository end to end against real tesserad processes: a multi-MiB file in
//! shuffled, duplicated chunks from 8 concurrent senders, download (whole and ranged) with
//! hash check, progress stream, status registry, bad inputs, cancel, expiry, and kill -9 in
//! the middle of an upload followed by resumption.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use sha2::{Digest, Sha256};
use tessera_core::rng::Rng;
use tessera_proto::ai::pipestream::repository::filesystem::upload as up;
use tessera_proto::ai::pipestream::repository::filesystem::upload::node_upload_service_client::NodeUploadServiceClient;
use tessera_proto::metastore_status::v1::meta_store_status_service_client::MetaStoreStatusServiceClient;
use tessera_proto::metastore_status::v1::{GetRequestStatusesRequest, MetaStoreType, RequestProcessingStatus};
use tessera_proto::tessera::repository::v1 as repo;
use tessera_proto::tessera::repository::v1::document_service_client::DocumentServiceClient;
use tonic::Code;
use tonic::transport::Channel;

const CHUNK: usize = 256 << 10;

fn random_doc(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut v = vec![0u8; len];
    r.fill(&mut v);
    v
}

fn sha_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

fn client(ch: &Channel) -> NodeUploadServiceClient<Channel> {
    NodeUploadServiceClient::new(ch.clone()).max_decoding_message_size(32 << 20)
}

async fn initiate(c: &mut NodeUploadServiceClient<Channel>, doc: &[u8], node: &str) -> up::InitiateUploadResponse {
    let req = up::InitiateUploadRequest {
        name: "report.bin".into(),
        mime_type: "application/octet-stream".into(),
        expected_size: doc.len() as i64,
        metadata: [("sha256".to_string(), sha_hex(doc))].into_iter().collect(),
        client_node_id: node.into(),
        ..Default::default()
    };
    c.initiate_upload(req).await.unwrap().into_inner()
}

fn chunk_req(i: &up::InitiateUploadResponse, doc: &[u8], n: usize) -> up::UploadChunkRequest {
    let chunks: Vec<&[u8]> = doc.chunks(CHUNK).collect();
    up::UploadChunkRequest {
        node_id: i.node_id.clone(),
        upload_id: i.upload_id.clone(),
        data: chunks[n].to_vec(),
        chunk_number: n as i64,
        is_last: n == chunks.len() - 1,
    }
}

async fn download(ch: &Channel, node: &str, offset: u64, length: u64) -> (repo::Document, Vec<u8>) {
    let mut d = DocumentServiceClient::new(ch.clone());
    let mut s = d
        .download(repo::DownloadRequest { node_id: node.into(), version: None, offset, length })
        .await
        .unwrap()
        .into_inner();
    let (mut doc, mut bytes) = (None, Vec::new());
    while let Some(m) = s.message().await.unwrap() {
        if m.document.is_some() {
            doc = m.document;
        }
        assert_eq!(m.offset, offset + bytes.len() as u64, "pieces arrive in order");
        bytes.extend(m.data);
    }
    (doc.expect("first message carries the document"), bytes)
}

/// Chunk files in the daemon's data dir.
fn blob_files(data_dir: &std::path::Path) -> usize {
    std::fs::read_dir(data_dir.join("blobs")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_duplicated_parallel_chunks_assemble_and_download() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::Daemon::start(dir.path(), &[]);
    let ch = d.channel().await;
    let doc = random_doc(6 * 1024 * 1024 + 12345, 7);
    let n_chunks = doc.len().div_ceil(CHUNK);
    let init = initiate(&mut client(&ch), &doc, "").await;
    assert_eq!(init.state, up::UploadState::Pending as i32);

    // Progress stream from the start.
    let mut progress = client(&ch)
        .stream_upload_progress(up::UploadProgressRequest { node_id: init.node_id.clone() })
        .await
        .unwrap()
        .into_inner();

    // Every chunk once, a third of them twice, shuffled, spread over 8 concurrent senders.
    let mut rng = Rng::new(99);
    let mut deliveries: Vec<usize> = (0..n_chunks).chain((0..n_chunks).filter(|n| n % 3 == 0)).collect();
    for i in (1..deliveries.len()).rev() {
        deliveries.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mine: Vec<usize> = deliveries.iter().copied().skip(t).step_by(8).collect();
        let (mut c, init, doc) = (client(&ch), init.clone(), doc.clone());
        tasks.push(tokio::spawn(async move {
            for n in mine {
                c.upload_chunk(chunk_req(&init, &doc, n)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let status = client(&ch)
        .get_upload_status(up::GetUploadStatusRequest { node_id: init.node_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state, up::UploadState::Completed as i32, "{status:?}");
    assert_eq!(status.bytes_uploaded, doc.len() as i64);
    assert_eq!(status.file_sha, sha_hex(&doc));
    assert!(status.missing_chunks.is_empty());

    let mut last = None;
    while let Some(p) = progress.message().await.unwrap() {
        if let Some(prev) = &last {
            let prev: &up::UploadProgressResponse = prev;
            assert!(p.bytes_uploaded >= prev.bytes_uploaded, "progress never goes back");
        }
        last = Some(p);
    }
    let last = last.unwrap();
    assert_eq!((last.state, last.percent), (up::UploadState::Completed as i32, 100.0));

    let (meta, bytes) = download(&ch, &init.node_id, 0, 0).await;
    assert_eq!((meta.size, meta.sha256.as_str()), (doc.len() as u64, sha_hex(&doc).as_str()));
    assert!(bytes == doc, "downloaded bytes differ");
    let (_, part) = download(&ch, &init.node_id, 1000, 300_000).await;
    assert!(part == doc[1000..301_000], "ranged download differs");
    // One file per chunk: files written ahead for duplicates were removed, not kept.
    assert_eq!(blob_files(dir.path()), n_chunks);

    // Visible in the status registry as a completed UPLOAD request.
    let mut q = MetaStoreStatusServiceClient::new(ch.clone());
    let s = q
        .get_request_statuses(GetRequestStatusesRequest {
            request_ids: vec![init.upload_id.clone()],
            meta_store_type: Some(MetaStoreType::Upload as i32),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.statuses[0].status, RequestProcessingStatus::Completed as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunks_cancel_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::Daemon::start(dir.path(), &[]);
    let ch = d.channel().await;
    let mut c = client(&ch);
    let doc = random_doc(3 * CHUNK, 1);
    let init = initiate(&mut c, &doc, "doc-a").await;
    c.upload_chunk(chunk_req(&init, &doc, 0)).await.unwrap();

    let mut changed = chunk_req(&init, &doc, 0);
    changed.data[0] ^= 0xff;
    assert_eq!(c.upload_chunk(changed).await.unwrap_err().code(), Code::AlreadyExists);
    let mut negative = chunk_req(&init, &doc, 1);
    negative.chunk_number = -1;
    assert_eq!(c.upload_chunk(negative).await.unwrap_err().code(), Code::InvalidArgument);
    let mut empty = chunk_req(&init, &doc, 1);
    empty.data.clear();
    assert_eq!(c.upload_chunk(empty).await.unwrap_err().code(), Code::InvalidArgument);
    let mut huge = chunk_req(&init, &doc, 1);
    huge.data = vec![0; (16 << 20) + 1];
    assert_eq!(c.upload_chunk(huge).await.unwrap_err().code(), Code::InvalidArgument);
    let mut unknown = chunk_req(&init, &doc, 1);
    unknown.upload_id = "no-such-upload".into();
    assert_eq!(c.upload_chunk(unknown).await.unwrap_err().code(), Code::NotFound);
    let bad_sha = up::InitiateUploadRequest {
        metadata: [("sha256".to_string(), "not-hex".to_string())].into_iter().collect(),
        ..Default::default()
    };
    assert_eq!(c.initiate_upload(bad_sha).await.unwrap_err().code(), Code::InvalidArgument);
    // Only the accepted chunk holds a file; the rejected ones left nothing behind.
    assert_eq!(blob_files(dir.path()), 1);

    // Cancel frees the upload and its chunk files; later chunks are refused.
    let r = c.cancel_upload(up::CancelUploadRequest { node_id: init.node_id.clone() }).await.unwrap().into_inner();
    assert!(r.success);
    assert_eq!(blob_files(dir.path()), 0);
    assert_eq!(c.upload_chunk(chunk_req(&init, &doc, 1)).await.unwrap_err().code(), Code::FailedPrecondition);
    let s =
        c.get_upload_status(up::GetUploadStatusRequest { node_id: init.node_id.clone() }).await.unwrap().into_inner();
    assert_eq!(s.state, up::UploadState::Cancelled as i32);

    // A new version of the same node; fail_if_exists refuses a third.
    let v2 = initiate(&mut c, &doc, "doc-a").await;
    assert!(v2.is_update);
    assert_eq!(v2.previous_version_id, init.upload_id);
    let again =
        up::InitiateUploadRequest { client_node_id: "doc-a".into(), fail_if_exists: true, ..Default::default() };
    assert_eq!(c.initiate_upload(again).await.unwrap_err().code(), Code::AlreadyExists);
    // Not complete yet: no download.
    let mut docs = DocumentServiceClient::new(ch.clone());
    let e = docs.get_document(repo::GetDocumentRequest { node_id: "doc-a".into(), version: None }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_expire() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(&cfg, "[upload]\nttl_secs = 1\n").unwrap();
    let d = common::Daemon::start(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let ch = d.channel().await;
    let mut c = client(&ch);
    let doc = random_doc(2 * CHUNK, 2);
    let init = initiate(&mut c, &doc, "").await;
    c.upload_chunk(chunk_req(&init, &doc, 0)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let s =
        c.get_upload_status(up::GetUploadStatusRequest { node_id: init.node_id.clone() }).await.unwrap().into_inner();
    assert_eq!(s.state, up::UploadState::Failed as i32, "{s:?}");
    assert!(s.error_message.contains("expired"), "{}", s.error_message);
    assert_eq!(c.upload_chunk(chunk_req(&init, &doc, 1)).await.unwrap_err().code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_upload_then_resume_missing_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let doc = random_doc(20 * CHUNK + 77, 3);
    let n_chunks = doc.len().div_ceil(CHUNK);
    let d = common::Daemon::start(dir.path(), &[]);
    let ch = d.channel().await;
    let init = initiate(&mut client(&ch), &doc, "resumable").await;
    // Every other chunk is acknowledged before the crash.
    for n in (0..n_chunks).step_by(2) {
        client(&ch).upload_chunk(chunk_req(&init, &doc, n)).await.unwrap();
    }
    d.kill9();

    let d = common::Daemon::start(dir.path(), &[]);
    let ch = d.channel().await;
    let mut c = client(&ch);
    let s =
        c.get_upload_status(up::GetUploadStatusRequest { node_id: init.node_id.clone() }).await.unwrap().into_inner();
    assert_eq!(s.state, up::UploadState::Uploading as i32);
    assert_eq!(s.upload_id, init.upload_id);
    let want: Vec<i64> = (0..n_chunks as i64).filter(|n| n % 2 == 1).collect();
    // 21 chunks: the last one (20) was acknowledged, so every odd number is missing.
    assert_eq!(n_chunks, 21);
    assert_eq!(s.missing_chunks, want);
    // Resume over the bidirectional stream with what is missing (and the last chunk).
    let mut todo: Vec<usize> = (0..n_chunks).filter(|n| n % 2 == 1).collect();
    if !todo.contains(&(n_chunks - 1)) {
        todo.push(n_chunks - 1);
    }
    let reqs: Vec<up::UploadChunkRequest> = todo.iter().map(|n| chunk_req(&init, &doc, *n)).collect();
    let mut answers = c.upload_chunks(tonic::codegen::tokio_stream::iter(reqs)).await.unwrap().into_inner();
    let mut complete = false;
    while let Some(a) = answers.message().await.unwrap() {
        complete |= a.is_file_complete;
    }
    assert!(complete);
    let (meta, bytes) = download(&ch, &init.node_id, 0, 0).await;
    assert_eq!(meta.sha256, sha_hex(&doc));
    assert!(bytes == doc);
}
