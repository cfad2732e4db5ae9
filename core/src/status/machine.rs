//! The status registry as a [`Machine`] a driver can pump.

use super::{Entry, Status, StatusConfig, StatusRegistry, StoreInfo, StoreKind};
use crate::error::CoreResult;
use crate::ready::{ClientToken, Machine, Ready};
use crate::rng::Rng;
use crate::store::{StoreError, StoreRead, WriteBatch};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusRequest {
    Record {
        kind: StoreKind,
        id: String,
        status: Status,
        error: Option<String>,
    },
    Update {
        kind: StoreKind,
        id: String,
        status: Status,
        error: Option<String>,
    },
    Delete {
        kind: StoreKind,
        id: String,
    },
    /// `kind: None` looks in every store.
    Get {
        ids: Vec<String>,
        kind: Option<StoreKind>,
    },
    List {
        kind: Option<StoreKind>,
        filter: Option<Status>,
        max_results: Option<i32>,
        page_token: Option<String>,
    },
    Info,
}

impl StatusRequest {
    /// Whether the request can change state (and so needs a sync before its reply).
    pub fn is_mutation(&self) -> bool {
        matches!(self, Self::Record { .. } | Self::Update { .. } | Self::Delete { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusResponse {
    Recorded { entry: Entry, created: bool, evicted: Option<String> },
    Updated(Entry),
    Deleted(Entry),
    Statuses(Vec<Entry>),
    Page { entries: Vec<Entry>, next_page_token: Option<String> },
    Info(Vec<StoreInfo>),
}

pub struct StatusMachine {
    registry: StatusRegistry,
}

impl StatusMachine {
    /// Opens the registry; the returned batch must be durable before the first reply.
    pub fn open(store: &dyn StoreRead, config: StatusConfig, rng: &mut Rng) -> Result<(Self, WriteBatch), StoreError> {
        let (registry, init) = StatusRegistry::open(store, config, rng)?;
        Ok((Self { registry }, init))
    }

    pub fn registry(&self) -> &StatusRegistry {
        &self.registry
    }

    fn handle(
        &mut self,
        now: u64,
        req: StatusRequest,
        store: &dyn StoreRead,
    ) -> (CoreResult<StatusResponse>, WriteBatch) {
        let r = &mut self.registry;
        let result = match req {
            StatusRequest::Record { kind, id, status, error } => r
                .record(store, now, kind, &id, status, error)
                .map(|(entry, created, evicted, b)| (StatusResponse::Recorded { entry, created, evicted }, b)),
            StatusRequest::Update { kind, id, status, error } => {
                r.update(store, now, kind, &id, status, error).map(|(e, b)| (StatusResponse::Updated(e), b))
            }
            StatusRequest::Delete { kind, id } => {
                r.delete(store, now, kind, &id).map(|(e, b)| (StatusResponse::Deleted(e), b))
            }
            StatusRequest::Get { ids, kind } => {
                r.get_many(store, &ids, kind).map(|e| (StatusResponse::Statuses(e), WriteBatch::default()))
            }
            StatusRequest::List { kind, filter, max_results, page_token } => {
                r.list(store, kind, filter, max_results, page_token.as_deref()).map(|(entries, next_page_token)| {
                    (StatusResponse::Page { entries, next_page_token }, WriteBatch::default())
                })
            }
            StatusRequest::Info => Ok((StatusResponse::Info(r.info()), WriteBatch::default())),
        };
        match result {
            Ok((resp, batch)) => (Ok(resp), batch),
            Err(e) => (Err(e), WriteBatch::default()),
        }
    }
}

impl Machine for StatusMachine {
    type Input = StatusRequest;
    type Output = CoreResult<StatusResponse>;
    type Message = ();

    fn step(
        &mut self,
        now: u64,
        token: ClientToken,
        input: StatusRequest,
        store: &dyn StoreRead,
    ) -> Result<Ready<Self::Output>, StoreError> {
        let (reply, writes) = self.handle(now, input, store);
        // A store failure inside a step is fatal for the node, not an answer to the client.
        if let Err(crate::CoreError::Storage(e)) = reply {
            return Err(e);
        }
        Ok(Ready::reply(token, reply, writes))
    }
}
