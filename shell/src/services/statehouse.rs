//! `statehouse.v1.StatehouseService` over the transaction machine.
//!
//! Values travel as `google.protobuf.Struct`; the core stores their protobuf encoding as
//! opaque bytes. Behaviour the contract leaves open follows the public Python SDK: a missing
//! key or version is OK with `exists = false` (never NOT_FOUND), aborting an unknown
//! transaction is OK, and `timeout_ms` 0 or unset means the 30 s default.

use std::pin::Pin;
use std::task::{Context, Poll};

use prost::Message;
use prost_types::Struct;
use tessera_core::CoreResult;
use tessera_core::txn::{Event, TxnRequest, TxnResponse, Versioned};
use tessera_proto::statehouse::v1 as wire;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::errors::{driver_status, to_status};
use crate::driver::DriverHandle;

pub type TxnHandle = DriverHandle<TxnRequest, CoreResult<TxnResponse>>;

/// Events fetched per store read while replaying; the stream holds at most a few pages.
const REPLAY_PAGE: usize = 256;
/// ListKeys/ScanPrefix rows fetched per store read when the client asks for everything.
const LIST_PAGE: usize = 1024;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Clone)]
pub struct StatehouseService {
    driver: TxnHandle,
}

impl StatehouseService {
    pub fn new(driver: TxnHandle) -> Self {
        Self { driver }
    }

    async fn call(&self, req: TxnRequest) -> Result<TxnResponse, Status> {
        self.driver.call(req).await.map_err(driver_status)?.map_err(to_status)
    }
}

fn unexpected(r: TxnResponse) -> Status {
    Status::internal(format!("state machine answered with an unexpected shape: {r:?}"))
}

fn decode_value(bytes: &[u8]) -> Result<Struct, Status> {
    Struct::decode(bytes).map_err(|e| Status::internal(format!("stored value does not decode: {e}")))
}

fn state_response(v: Option<Versioned>) -> Result<(Option<Struct>, u64, u64, bool), Status> {
    Ok(match v {
        None => (None, 0, 0, false),
        Some(Versioned { value: None, version, commit_ts }) => (None, version, commit_ts, false),
        Some(Versioned { value: Some(b), version, commit_ts }) => (Some(decode_value(&b)?), version, commit_ts, true),
    })
}

fn wire_event(e: Event) -> Result<wire::ReplayEvent, Status> {
    let mut operations = Vec::with_capacity(e.operations.len());
    for op in e.operations {
        let value = op.value.as_deref().map(decode_value).transpose()?;
        operations.push(wire::Operation { key: op.key, value, version: op.version });
    }
    Ok(wire::ReplayEvent { txn_id: e.txn_id, commit_ts: e.commit_ts, operations })
}

/// A `Stream` over an mpsc receiver (the replay producer feeds it with backpressure).
pub struct ChannelStream<T> {
    rx: mpsc::Receiver<T>,
}

impl<T> ChannelStream<T> {
    pub fn new(rx: mpsc::Receiver<T>) -> Self {
        Self { rx }
    }
}

impl<T> Stream for ChannelStream<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.rx.poll_recv(cx)
    }
}

fn page_token(after: &str) -> String {
    tessera_core::codec::hex(after.as_bytes())
}

fn parse_page_token(t: &str) -> Result<Option<String>, Status> {
    if t.is_empty() {
        return Ok(None);
    }
    tessera_core::codec::unhex(t)
        .and_then(|b| String::from_utf8(b).ok())
        .map(Some)
        .ok_or_else(|| Status::invalid_argument("page_token: not a token this server issued"))
}

#[tonic::async_trait]
impl wire::statehouse_service_server::StatehouseService for StatehouseService {
    async fn health(&self, _: Request<wire::HealthRequest>) -> Result<Response<wire::HealthResponse>, Status> {
        // Answering at all means the driver is alive; ask it something cheap to be sure.
        self.call(TxnRequest::LastCommitTs).await?;
        Ok(Response::new(wire::HealthResponse { status: "ok".into() }))
    }

    async fn version(&self, _: Request<wire::VersionRequest>) -> Result<Response<wire::VersionResponse>, Status> {
        Ok(Response::new(wire::VersionResponse {
            version: format!("tessera {VERSION}"),
            git_sha: option_env!("TESSERA_GIT_SHA").unwrap_or("unknown").into(),
        }))
    }

    async fn begin_transaction(
        &self,
        request: Request<wire::BeginTransactionRequest>,
    ) -> Result<Response<wire::BeginTransactionResponse>, Status> {
        let r = request.into_inner();
        match self.call(TxnRequest::Begin { timeout_ms: r.timeout_ms }).await? {
            TxnResponse::Begun { txn_id, .. } => Ok(Response::new(wire::BeginTransactionResponse { txn_id })),
            other => Err(unexpected(other)),
        }
    }

    async fn write(&self, request: Request<wire::WriteRequest>) -> Result<Response<wire::WriteResponse>, Status> {
        let r = request.into_inner();
        // A missing value is the empty object, as the origin server treats it.
        let value = r.value.unwrap_or_default().encode_to_vec();
        let req =
            TxnRequest::Write { txn_id: r.txn_id, namespace: r.namespace, agent_id: r.agent_id, key: r.key, value };
        match self.call(req).await? {
            TxnResponse::Staged => Ok(Response::new(wire::WriteResponse {})),
            other => Err(unexpected(other)),
        }
    }

    async fn delete(&self, request: Request<wire::DeleteRequest>) -> Result<Response<wire::DeleteResponse>, Status> {
        let r = request.into_inner();
        let req = TxnRequest::Delete { txn_id: r.txn_id, namespace: r.namespace, agent_id: r.agent_id, key: r.key };
        match self.call(req).await? {
            TxnResponse::Staged => Ok(Response::new(wire::DeleteResponse {})),
            other => Err(unexpected(other)),
        }
    }

    async fn commit(&self, request: Request<wire::CommitRequest>) -> Result<Response<wire::CommitResponse>, Status> {
        match self.call(TxnRequest::Commit { txn_id: request.into_inner().txn_id }).await? {
            TxnResponse::Committed { commit_ts } => Ok(Response::new(wire::CommitResponse { commit_ts })),
            other => Err(unexpected(other)),
        }
    }

    async fn abort(&self, request: Request<wire::AbortRequest>) -> Result<Response<wire::AbortResponse>, Status> {
        match self.call(TxnRequest::Abort { txn_id: request.into_inner().txn_id }).await? {
            TxnResponse::Aborted => Ok(Response::new(wire::AbortResponse {})),
            other => Err(unexpected(other)),
        }
    }

    async fn get_state(
        &self,
        request: Request<wire::GetStateRequest>,
    ) -> Result<Response<wire::GetStateResponse>, Status> {
        let r = request.into_inner();
        match self.call(TxnRequest::Get { namespace: r.namespace, agent_id: r.agent_id, key: r.key }).await? {
            TxnResponse::State(v) => {
                let (value, version, commit_ts, exists) = state_response(v)?;
                Ok(Response::new(wire::GetStateResponse { value, version, commit_ts, exists }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn get_state_at_version(
        &self,
        request: Request<wire::GetStateAtVersionRequest>,
    ) -> Result<Response<wire::GetStateAtVersionResponse>, Status> {
        let r = request.into_inner();
        let req =
            TxnRequest::GetAtVersion { namespace: r.namespace, agent_id: r.agent_id, key: r.key, version: r.version };
        match self.call(req).await? {
            TxnResponse::State(v) => {
                let (value, version, commit_ts, exists) = state_response(v)?;
                Ok(Response::new(wire::GetStateAtVersionResponse { value, version, commit_ts, exists }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn list_keys(
        &self,
        request: Request<wire::ListKeysRequest>,
    ) -> Result<Response<wire::ListKeysResponse>, Status> {
        let r = request.into_inner();
        let mut after = parse_page_token(&r.page_token)?;
        let want = if r.limit == 0 { usize::MAX } else { r.limit as usize };
        let mut keys = Vec::new();
        loop {
            let limit = (want - keys.len()).min(LIST_PAGE);
            let req =
                TxnRequest::ListKeys { namespace: r.namespace.clone(), agent_id: r.agent_id.clone(), after, limit };
            let TxnResponse::Keys { keys: page, more } = self.call(req).await? else {
                return Err(Status::internal("unexpected answer to ListKeys"));
            };
            after = page.last().cloned();
            keys.extend(page);
            if !more {
                return Ok(Response::new(wire::ListKeysResponse { keys, next_page_token: String::new() }));
            }
            if keys.len() >= want {
                let next_page_token = after.as_deref().map(page_token).unwrap_or_default();
                return Ok(Response::new(wire::ListKeysResponse { keys, next_page_token }));
            }
        }
    }

    async fn scan_prefix(
        &self,
        request: Request<wire::ScanPrefixRequest>,
    ) -> Result<Response<wire::ScanPrefixResponse>, Status> {
        let r = request.into_inner();
        let mut after = parse_page_token(&r.page_token)?;
        let want = if r.limit == 0 { usize::MAX } else { r.limit as usize };
        let mut entries = Vec::new();
        loop {
            let limit = (want - entries.len()).min(LIST_PAGE);
            let req = TxnRequest::Scan {
                namespace: r.namespace.clone(),
                agent_id: r.agent_id.clone(),
                prefix: r.prefix.clone(),
                after,
                limit,
            };
            let TxnResponse::Entries { entries: page, more } = self.call(req).await? else {
                return Err(Status::internal("unexpected answer to ScanPrefix"));
            };
            after = page.last().map(|e| e.0.clone());
            for (key, v) in page {
                let value = Some(decode_value(v.value.as_deref().unwrap_or_default())?);
                entries.push(wire::StateEntry { key, value, version: v.version, commit_ts: v.commit_ts });
            }
            if !more {
                return Ok(Response::new(wire::ScanPrefixResponse { entries, next_page_token: String::new() }));
            }
            if entries.len() >= want {
                let next_page_token = after.as_deref().map(page_token).unwrap_or_default();
                return Ok(Response::new(wire::ScanPrefixResponse { entries, next_page_token }));
            }
        }
    }

    type ReplayStream = ChannelStream<Result<wire::ReplayEvent, Status>>;

    async fn replay(&self, request: Request<wire::ReplayRequest>) -> Result<Response<Self::ReplayStream>, Status> {
        let r = request.into_inner();
        // An absent end means "up to now": pin it, so a replay ends even while commits go on.
        let to_ts = match r.end_ts {
            Some(t) => t,
            None => match self.call(TxnRequest::LastCommitTs).await? {
                TxnResponse::LastCommitTs(t) => t,
                other => return Err(unexpected(other)),
            },
        };
        let mut from_ts = r.start_ts.unwrap_or(0);
        // Validate up front so a bad request fails the call instead of the stream.
        self.call(TxnRequest::Replay {
            namespace: r.namespace.clone(),
            agent_id: r.agent_id.clone(),
            from_ts: 1,
            to_ts: 0,
            limit: 1,
        })
        .await?;
        let (tx, rx) = mpsc::channel(4);
        let driver = self.driver.clone();
        tokio::spawn(async move {
            loop {
                let req = TxnRequest::Replay {
                    namespace: r.namespace.clone(),
                    agent_id: r.agent_id.clone(),
                    from_ts,
                    to_ts,
                    limit: REPLAY_PAGE,
                };
                let page = match driver.call(req).await {
                    Ok(Ok(TxnResponse::Events { events, more })) => Ok((events, more)),
                    Ok(Ok(other)) => Err(unexpected(other)),
                    Ok(Err(e)) => Err(to_status(e)),
                    Err(e) => Err(driver_status(e)),
                };
                let (events, more) = match page {
                    Ok(p) => p,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                for e in events {
                    from_ts = e.commit_ts + 1;
                    // A closed channel means the client went away: stop reading.
                    if tx.send(wire_event(e)).await.is_err() {
                        return;
                    }
                }
                if !more {
                    return;
                }
            }
        });
        Ok(Response::new(ChannelStream::new(rx)))
    }
}
