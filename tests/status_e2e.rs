//! End to end against real tesserad processes: the status API through a client generated
//! from the contract, bad inputs, kill -9 during a stream of producer writes, graceful
//! shutdown, the data-dir lock and the metrics endpoint.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_proto::kms::v1::Empty;
use tessera_proto::metastore_status::v1::meta_store_status_service_client::MetaStoreStatusServiceClient;
use tessera_proto::metastore_status::v1::{
    GetRequestStatusesRequest, ListRequestsRequest, MetaStoreType, RequestProcessingStatus,
};
use tessera_proto::tessera::status::v1::status_producer_service_client::StatusProducerServiceClient;
use tessera_proto::tessera::status::v1::{DeleteRequestRequest, RecordRequestRequest, UpdateStatusRequest};
use tonic::Code;

#[path = "common/mod.rs"]
mod common;
use common::Daemon;

fn rec(id: &str, kind: MetaStoreType, status: RequestProcessingStatus) -> RecordRequestRequest {
    RecordRequestRequest {
        request_id: id.into(),
        meta_store_type: kind as i32,
        status: status as i32,
        error_message: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_api_answers_every_rpc_and_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let ch = d.channel().await;
    let mut q = MetaStoreStatusServiceClient::new(ch.clone());
    let mut p = StatusProducerServiceClient::new(ch);

    for i in 0..5 {
        let r = p
            .record_request(rec(&format!("kg-{i}"), MetaStoreType::KeyGeneration, RequestProcessingStatus::Processing))
            .await
            .unwrap()
            .into_inner();
        assert!(r.created);
    }
    p.record_request(rec("up-1", MetaStoreType::Upload, RequestProcessingStatus::Processing)).await.unwrap();
    // An identical record is idempotent; a different one is refused.
    let again = p
        .record_request(rec("kg-0", MetaStoreType::KeyGeneration, RequestProcessingStatus::Processing))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    let e = p
        .record_request(rec("kg-0", MetaStoreType::KeyGeneration, RequestProcessingStatus::Completed))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);

    let u = p
        .update_status(UpdateStatusRequest {
            request_id: "kg-1".into(),
            meta_store_type: MetaStoreType::KeyGeneration as i32,
            status: RequestProcessingStatus::Failed as i32,
            error_message: Some("out of entropy".into()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.info.unwrap().error_message.as_deref(), Some("out of entropy"));
    p.update_status(UpdateStatusRequest {
        request_id: "kg-2".into(),
        meta_store_type: MetaStoreType::KeyGeneration as i32,
        status: RequestProcessingStatus::Completed as i32,
        error_message: None,
    })
    .await
    .unwrap();
    let back = p
        .update_status(UpdateStatusRequest {
            request_id: "kg-2".into(),
            meta_store_type: MetaStoreType::KeyGeneration as i32,
            status: RequestProcessingStatus::Processing as i32,
            error_message: None,
        })
        .await
        .unwrap_err();
    assert_eq!(back.code(), Code::FailedPrecondition);
    p.delete_request(DeleteRequestRequest {
        request_id: "kg-3".into(),
        meta_store_type: MetaStoreType::KeyGeneration as i32,
    })
    .await
    .unwrap();

    // GetRequestStatuses: with and without a type, unknown ids absent, none found NOT_FOUND.
    let got = q
        .get_request_statuses(GetRequestStatusesRequest {
            request_ids: vec!["kg-1".into(), "nope".into(), "up-1".into()],
            meta_store_type: None,
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = got.statuses.iter().map(|s| s.request_id.as_str()).collect();
    assert_eq!(ids, ["kg-1", "up-1"]);
    assert_eq!(got.statuses[0].status, RequestProcessingStatus::Failed as i32);
    let only_kg = q
        .get_request_statuses(GetRequestStatusesRequest {
            request_ids: vec!["kg-1".into(), "up-1".into()],
            meta_store_type: Some(MetaStoreType::KeyGeneration as i32),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only_kg.statuses.len(), 1);
    let nf = q
        .get_request_statuses(GetRequestStatusesRequest { request_ids: vec!["nope".into()], meta_store_type: None })
        .await
        .unwrap_err();
    assert_eq!(nf.code(), Code::NotFound);
    let bad = q
        .get_request_statuses(GetRequestStatusesRequest {
            request_ids: vec!["ok".into(), "has space".into()],
            meta_store_type: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("request_ids[1]"), "{}", bad.message());
    let too_many = q
        .get_request_statuses(GetRequestStatusesRequest {
            request_ids: (0..1001).map(|i| format!("x{i}")).collect(),
            meta_store_type: None,
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    let bad_type = q
        .get_request_statuses(GetRequestStatusesRequest { request_ids: vec!["kg-1".into()], meta_store_type: Some(77) })
        .await
        .unwrap_err();
    assert_eq!(bad_type.code(), Code::InvalidArgument);

    // ListRequests: ALL across stores in a fixed order, filters, paging, bad tokens.
    let mut all = Vec::new();
    let mut token = None;
    loop {
        let page = q
            .list_requests(ListRequestsRequest {
                meta_store_type: MetaStoreType::All as i32,
                status_filter: None,
                max_results: Some(2),
                page_token: token.take(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.requests.len() <= 2);
        all.extend(page.requests.into_iter().map(|r| r.request_id));
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(all, ["kg-0", "kg-1", "kg-2", "kg-3", "kg-4", "up-1"]);
    let processing = q
        .list_requests(ListRequestsRequest {
            meta_store_type: MetaStoreType::All as i32,
            status_filter: Some(RequestProcessingStatus::Processing as i32),
            max_results: None,
            page_token: None,
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = processing.requests.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids, ["kg-0", "kg-4", "up-1"]);
    assert_eq!(processing.next_page_token, None);
    let garbage = q
        .list_requests(ListRequestsRequest {
            meta_store_type: MetaStoreType::All as i32,
            status_filter: None,
            max_results: None,
            page_token: Some("not-a-token".into()),
        })
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument);
    let zero = q
        .list_requests(ListRequestsRequest {
            meta_store_type: 0,
            status_filter: None,
            max_results: Some(0),
            page_token: None,
        })
        .await
        .unwrap_err();
    assert_eq!(zero.code(), Code::InvalidArgument);

    // GetMetaStoreInfo lists every store, ours appended, with counts.
    let info = q.get_meta_store_info(Empty {}).await.unwrap().into_inner();
    assert_eq!(info.meta_stores.len(), 9);
    assert_eq!(info.meta_stores[0].r#type, MetaStoreType::KeyGeneration as i32);
    assert_eq!(info.meta_stores[0].current_count, 5);
    assert_eq!(info.meta_stores[0].capacity, -1);

    // Producers must name one store.
    let all_kind =
        p.record_request(rec("z", MetaStoreType::All, RequestProcessingStatus::Processing)).await.unwrap_err();
    assert_eq!(all_kind.code(), Code::InvalidArgument);
    let any_status = p.record_request(rec("z", MetaStoreType::Plan, RequestProcessingStatus::Any)).await.unwrap_err();
    assert_eq!(any_status.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_producer_writes_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let ch = d.channel().await;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut p = StatusProducerServiceClient::new(ch.clone());
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100_000 {
                let id = format!("t{t}-{i}");
                match p
                    .record_request(rec(&id, MetaStoreType::Preprocessing, RequestProcessingStatus::Processing))
                    .await
                {
                    Ok(_) => acked.lock().unwrap().push(id),
                    Err(_) => return,
                }
            }
        }));
    }
    // Let a good number of writes through, then pull the plug mid-stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 800 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    d.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 800, "only {} writes were acknowledged before the kill", acked.len());

    let d = Daemon::start(dir.path(), &[]);
    let mut q = MetaStoreStatusServiceClient::new(d.channel().await);
    for chunk in acked.chunks(1000) {
        let got = q
            .get_request_statuses(GetRequestStatusesRequest {
                request_ids: chunk.to_vec(),
                meta_store_type: Some(MetaStoreType::Preprocessing as i32),
            })
            .await
            .unwrap()
            .into_inner();
        let found: std::collections::BTreeSet<_> = got.statuses.into_iter().map(|s| s.request_id).collect();
        let missing: Vec<_> = chunk.iter().filter(|id| !found.contains(*id)).collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged records lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    // The count agrees with what is there: acknowledged plus at most the in-flight ones.
    let info = q.get_meta_store_info(Empty {}).await.unwrap().into_inner();
    let count =
        info.meta_stores.iter().find(|s| s.r#type == MetaStoreType::Preprocessing as i32).unwrap().current_count;
    assert!(count as usize >= acked.len() && count as usize <= acked.len() + 8, "count {count}, acked {}", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_restart_sees_writes_and_lock_refuses_second_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let maddr = common::free_addrs(1).remove(0);
    let d = Daemon::start(dir.path(), &["--metrics-listen", &maddr]);
    let mut p = StatusProducerServiceClient::new(d.channel().await);
    p.record_request(rec("keep-me", MetaStoreType::Plan, RequestProcessingStatus::Processing)).await.unwrap();

    // tesserad on `dir` with `extra` flags fails to start: what it said on stderr.
    let refused = |dir: &std::path::Path, extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tesserad"))
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .arg("--data-dir")
            .arg(dir)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A second daemon on the same dir is refused with a clear message.
    let err = refused(dir.path(), &[]);
    assert!(err.contains("in use by another tesserad"), "{err}");

    // A metrics port already taken is an error at start-up, not a daemon without metrics.
    let taken = std::net::TcpListener::bind(common::free_addrs(1).remove(0)).unwrap();
    let other = tempfile::tempdir().unwrap();
    let err = refused(other.path(), &["--metrics-listen", &taken.local_addr().unwrap().to_string()]);
    assert!(err.contains("binding the metrics endpoint"), "{err}");

    // Metrics: request counts per RPC and fsyncs. The request comes in two pieces: the
    // answer waits for the whole head.
    let mut s = std::net::TcpStream::connect(&maddr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nho").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    s.write_all(b"st: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.contains("tessera_grpc_requests_total{method=\"/tessera.status.v1.StatusProducerService/RecordRequest\",code=\"0\"} 1"), "{body}");
    assert!(body.contains("tessera_fsync_total"), "{body}");

    let st = d.terminate();
    assert!(st.success(), "tesserad exited with {st} after SIGTERM");

    let d = Daemon::start(dir.path(), &[]);
    let mut q = MetaStoreStatusServiceClient::new(d.channel().await);
    let got = q
        .get_request_statuses(GetRequestStatusesRequest { request_ids: vec!["keep-me".into()], meta_store_type: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.statuses.len(), 1);
}
