//! `metastore_status.v1.MetaStoreStatusService` (the KMS contract) and our producer API
//! `tessera.status.v1.StatusProducerService`, both over the status registry.

use tessera_core::CoreResult;
use tessera_core::status::{Entry, Status as EntryStatus, StatusRequest, StatusResponse, StoreKind};
use tessera_proto::kms::v1::Empty;
use tessera_proto::metastore_status::v1 as wire;
use tessera_proto::tessera::status::v1 as producer;
use tonic::{Request, Response, Status};

use super::errors::{driver_status, enum_field, to_status};
use crate::driver::DriverHandle;

pub type StatusHandle = DriverHandle<StatusRequest, CoreResult<StatusResponse>>;

#[derive(Clone)]
pub struct StatusService {
    driver: StatusHandle,
}

impl StatusService {
    pub fn new(driver: StatusHandle) -> Self {
        Self { driver }
    }

    async fn call(&self, req: StatusRequest) -> Result<StatusResponse, Status> {
        self.driver.call(req).await.map_err(driver_status)?.map_err(to_status)
    }
}

fn info(e: Entry) -> wire::RequestStatusInfo {
    wire::RequestStatusInfo {
        request_id: e.id,
        meta_store_type: e.kind as i32,
        status: e.status as i32,
        error_message: e.error,
    }
}

/// `ALL` (0) means every store.
fn kind_or_all(field: &str, v: i32) -> Result<Option<StoreKind>, Status> {
    if v == wire::MetaStoreType::All as i32 {
        return Ok(None);
    }
    enum_field(field, v, StoreKind::from_wire, "MetaStoreType").map(Some)
}

/// A producer names exactly one store.
fn one_kind(v: i32) -> Result<StoreKind, Status> {
    kind_or_all("meta_store_type", v)?.ok_or_else(|| {
        Status::invalid_argument("meta_store_type: a request belongs to one meta-store; ALL is only for queries")
    })
}

/// `ANY` (3) or unset means no filter.
fn filter(v: Option<i32>) -> Result<Option<EntryStatus>, Status> {
    match v {
        None => Ok(None),
        Some(n) if n == wire::RequestProcessingStatus::Any as i32 => Ok(None),
        Some(n) => enum_field("status_filter", n, EntryStatus::from_wire, "RequestProcessingStatus").map(Some),
    }
}

fn producer_status(v: i32) -> Result<EntryStatus, Status> {
    if v == wire::RequestProcessingStatus::Any as i32 {
        return Err(Status::invalid_argument("status: ANY is a filter, not a status a request can have"));
    }
    enum_field("status", v, EntryStatus::from_wire, "RequestProcessingStatus")
}

fn unexpected(r: StatusResponse) -> Status {
    Status::internal(format!("status registry answered with an unexpected shape: {r:?}"))
}

#[tonic::async_trait]
impl wire::meta_store_status_service_server::MetaStoreStatusService for StatusService {
    async fn get_request_statuses(
        &self,
        request: Request<wire::GetRequestStatusesRequest>,
    ) -> Result<Response<wire::GetRequestStatusesResponse>, Status> {
        let r = request.into_inner();
        let kind = match r.meta_store_type {
            None => None,
            Some(v) => kind_or_all("meta_store_type", v)?,
        };
        match self.call(StatusRequest::Get { ids: r.request_ids, kind }).await? {
            StatusResponse::Statuses(entries) => Ok(Response::new(wire::GetRequestStatusesResponse {
                statuses: entries.into_iter().map(info).collect(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn list_requests(
        &self,
        request: Request<wire::ListRequestsRequest>,
    ) -> Result<Response<wire::ListRequestsResponse>, Status> {
        let r = request.into_inner();
        let req = StatusRequest::List {
            kind: kind_or_all("meta_store_type", r.meta_store_type)?,
            filter: filter(r.status_filter)?,
            max_results: r.max_results,
            page_token: r.page_token,
        };
        match self.call(req).await? {
            StatusResponse::Page { entries, next_page_token } => Ok(Response::new(wire::ListRequestsResponse {
                requests: entries.into_iter().map(info).collect(),
                next_page_token,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn get_meta_store_info(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<wire::GetMetaStoreInfoResponse>, Status> {
        match self.call(StatusRequest::Info).await? {
            StatusResponse::Info(stores) => Ok(Response::new(wire::GetMetaStoreInfoResponse {
                meta_stores: stores
                    .into_iter()
                    .map(|s| wire::MetaStoreInfo {
                        r#type: s.kind as i32,
                        capacity: s.capacity.clamp(-1, i64::from(i32::MAX)) as i32,
                        current_count: s.count.min(i32::MAX as u64) as i32,
                    })
                    .collect(),
            })),
            other => Err(unexpected(other)),
        }
    }
}

#[tonic::async_trait]
impl producer::status_producer_service_server::StatusProducerService for StatusService {
    async fn record_request(
        &self,
        request: Request<producer::RecordRequestRequest>,
    ) -> Result<Response<producer::RecordRequestResponse>, Status> {
        let r = request.into_inner();
        let req = StatusRequest::Record {
            kind: one_kind(r.meta_store_type)?,
            id: r.request_id,
            status: producer_status(r.status)?,
            error: r.error_message,
        };
        match self.call(req).await? {
            StatusResponse::Recorded { entry, created, evicted } => {
                Ok(Response::new(producer::RecordRequestResponse {
                    info: Some(info(entry)),
                    created,
                    evicted_request_id: evicted,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn update_status(
        &self,
        request: Request<producer::UpdateStatusRequest>,
    ) -> Result<Response<producer::UpdateStatusResponse>, Status> {
        let r = request.into_inner();
        let req = StatusRequest::Update {
            kind: one_kind(r.meta_store_type)?,
            id: r.request_id,
            status: producer_status(r.status)?,
            error: r.error_message,
        };
        match self.call(req).await? {
            StatusResponse::Updated(e) => Ok(Response::new(producer::UpdateStatusResponse { info: Some(info(e)) })),
            other => Err(unexpected(other)),
        }
    }

    async fn delete_request(
        &self,
        request: Request<producer::DeleteRequestRequest>,
    ) -> Result<Response<producer::DeleteRequestResponse>, Status> {
        let r = request.into_inner();
        let req = StatusRequest::Delete { kind: one_kind(r.meta_store_type)?, id: r.request_id };
        match self.call(req).await? {
            StatusResponse::Deleted(e) => Ok(Response::new(producer::DeleteRequestResponse { info: Some(info(e)) })),
            other => Err(unexpected(other)),
        }
    }
}
