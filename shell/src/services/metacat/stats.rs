//! `TableStatisticsService`: table, column and per-file statistics of one snapshot, and
//! `statistics.StatsCapture`.
//!
//! Statistics are children of their snapshot in the catalog tree, so writing them requires
//! the snapshot to exist (checked atomically with the write) and deleting the snapshot
//! removes them. A snapshot holds one table-statistics record (named [`TABLE_STATS`]), column
//! statistics named by `column_id`, and file statistics named by `file_path`; listings page
//! in name order. The streaming puts gather the whole stream and write it as one batch, so a
//! stream that fails or is refused anywhere writes nothing.

use tessera_core::catalog::{CatalogRequest, CatalogResponse, Kind, ListQuery, MAX_BATCH, Resource};
use tessera_proto::ai::floedb::metacat::catalog::table_statistics_service_server::TableStatisticsService;
use tessera_proto::ai::floedb::metacat::catalog::*;
use tessera_proto::ai::floedb::metacat::common::snapshot_ref::Which;
use tessera_proto::ai::floedb::metacat::statistics as capture;
use tessera_proto::ai::floedb::metacat::statistics::stats_capture_server::StatsCapture;
use tonic::{Request, Response, Status, Streaming};

use super::principal::Caller;
use super::*;

/// The name of a snapshot's one table-statistics record.
const TABLE_STATS: &str = "table";
/// Most bytes one streamed put may carry in total.
const MAX_STREAM_BYTES: usize = 64 << 20;
/// Most bytes of one sketch, histogram or digest.
const MAX_BLOB: usize = 4 << 20;

fn check_ndv(field: &str, n: Option<&Ndv>) -> Result<(), Status> {
    let Some(n) = n else { return Ok(()) };
    if let Some(ndv::Mode::Exact(v)) = n.mode
        && v < 0
    {
        return Err(invalid(format!("{field}.exact: must not be negative")));
    }
    if let Some(ndv::Mode::Approx(a)) = &n.mode {
        if !a.estimate.is_finite() || a.estimate < 0.0 {
            return Err(invalid(format!("{field}.approx.estimate: must be a finite, non-negative number")));
        }
        check_properties(&a.properties)?;
    }
    if n.sketches.len() > 64 {
        return Err(invalid(format!("{field}.sketches: {} sketches, at most 64", n.sketches.len())));
    }
    for (i, s) in n.sketches.iter().enumerate() {
        if s.data.len() > MAX_BLOB {
            return Err(invalid(format!("{field}.sketches[{i}].data: {} bytes, at most {MAX_BLOB}", s.data.len())));
        }
        check_properties(&s.properties)?;
    }
    Ok(())
}

fn check_counts(field: &str, counts: &[(&str, i64)]) -> Result<(), Status> {
    for (name, v) in counts {
        if *v < 0 {
            return Err(invalid(format!("{field}.{name}: must not be negative, got {v}")));
        }
    }
    Ok(())
}

fn check_column(field: &str, c: &ColumnStats) -> Result<(), Status> {
    if c.column_id.is_empty() {
        return Err(invalid(format!("{field}.column_id: required")));
    }
    check_text(&format!("{field}.column_id"), &c.column_id, 1024)?;
    check_text(&format!("{field}.column_name"), &c.column_name, 1024)?;
    check_text(&format!("{field}.logical_type"), &c.logical_type, 1024)?;
    check_text(&format!("{field}.min"), &c.min, 64 << 10)?;
    check_text(&format!("{field}.max"), &c.max, 64 << 10)?;
    check_counts(field, &[("value_count", c.value_count), ("null_count", c.null_count), ("nan_count", c.nan_count)])?;
    for (name, b) in [("histogram", &c.histogram), ("tdigest", &c.tdigest)] {
        if b.len() > MAX_BLOB {
            return Err(invalid(format!("{field}.{name}: {} bytes, at most {MAX_BLOB}", b.len())));
        }
    }
    check_ndv(&format!("{field}.ndv"), c.ndv.as_ref())?;
    check_properties(&c.properties)
}

/// A nested id or snapshot number must agree with the request's when it is set.
fn check_owner(field: &str, table: Option<&mc::ResourceId>, snapshot: i64, want: (&str, i64)) -> Result<(), Status> {
    if let Some(t) = table
        && !t.id.is_empty()
        && t.id != want.0
    {
        return Err(invalid(format!("{field}.table_id: differs from the request's table_id")));
    }
    if snapshot != 0 && snapshot != want.1 {
        return Err(invalid(format!("{field}.snapshot_id: {snapshot} differs from the request's {}", want.1)));
    }
    Ok(())
}

impl Metacat {
    /// The snapshot resource a put names by number.
    async fn snapshot_by_id(&self, caller: &Caller, table: &str, id: i64) -> Result<Resource, Status> {
        self.snapshot(caller, table, Some(&mc::SnapshotRef { which: Some(Which::SnapshotId(id)) })).await
    }

    async fn upsert(
        &self,
        caller: &Caller,
        kind: Kind,
        snapshot: &Resource,
        items: Vec<(String, Vec<u8>)>,
        idem: Option<tessera_core::catalog::Idempotency>,
    ) -> Result<(Vec<Resource>, u64), Status> {
        let req =
            CatalogRequest::Upsert { tenant: caller.tenant.clone(), kind, parent: snapshot.id.clone(), items, idem };
        match self.call(req).await? {
            CatalogResponse::Upserted { resources, count, .. } => Ok((resources, count)),
            _ => Err(Status::internal("unexpected answer from the catalog")),
        }
    }

    /// One page of a snapshot's statistics of `kind`.
    async fn stats_page(
        &self,
        caller: &Caller,
        table: &str,
        snapshot: &Resource,
        kind: Kind,
        page: Option<&mc::PageRequest>,
    ) -> Result<(Vec<Resource>, mc::PageResponse), Status> {
        let (page_size, page_token) = page_of(page)?;
        self.page(ListQuery {
            tenant: caller.tenant.clone(),
            kind,
            scope: format!("{} {table} {}", kind.noun(), snapshot.id),
            parent: snapshot.id.clone(),
            prefix: String::new(),
            direct_below: None,
            page_size,
            page_token,
        })
        .await
    }
}

/// Reads a client stream of puts for one table and snapshot whole, checking each message.
/// Returns (table, snapshot number, idempotency key, items).
async fn gather<Req, Item>(
    caller: &Caller,
    mut stream: Streaming<Req>,
    parts: impl Fn(Req) -> (Option<mc::ResourceId>, i64, Option<mc::IdempotencyKey>, Vec<Item>),
    size: impl Fn(&Item) -> usize,
) -> Result<(String, i64, Option<mc::IdempotencyKey>, Vec<Item>), Status> {
    let mut head: Option<(String, i64)> = None;
    let mut key: Option<mc::IdempotencyKey> = None;
    let (mut items, mut bytes) = (Vec::new(), 0usize);
    while let Some(msg) = stream.message().await? {
        let (table_id, snapshot, k, batch) = parts(msg);
        let table = rid("table_id", table_id.as_ref(), Kind::Table, caller)?;
        match &head {
            None => head = Some((table, snapshot)),
            Some((t, s)) if *t != table || *s != snapshot => {
                return Err(invalid("every message of one stream must name the same table_id and snapshot_id"));
            }
            Some(_) => {}
        }
        if let Some(k) = k.filter(|k| !k.key.is_empty()) {
            if key.as_ref().is_some_and(|old| old.key != k.key) {
                return Err(invalid("idempotency: one stream may carry only one idempotency key"));
            }
            key = Some(k);
        }
        for it in batch {
            bytes += size(&it);
            items.push(it);
        }
        if items.len() > MAX_BATCH {
            return Err(invalid(format!("more than {MAX_BATCH} entries in one stream")));
        }
        if bytes > MAX_STREAM_BYTES {
            return Err(invalid(format!("more than {} MiB in one stream", MAX_STREAM_BYTES >> 20)));
        }
    }
    let (table, snapshot) = head.ok_or_else(|| invalid("the stream carried no message"))?;
    Ok((table, snapshot, key, items))
}

fn table_stats_msg(r: &Resource, table: &str, snapshot: i64) -> Result<TableStats, Status> {
    let mut s: TableStats = decode(r)?;
    s.table_id = Some(id_of(&r.tenant, Kind::Table, table));
    s.snapshot_id = snapshot;
    Ok(s)
}

fn column_stats_msg(r: &Resource, table: &str, snapshot: i64) -> Result<ColumnStats, Status> {
    let mut c: ColumnStats = decode(r)?;
    c.table_id = Some(id_of(&r.tenant, Kind::Table, table));
    c.snapshot_id = snapshot;
    Ok(c)
}

fn file_stats_msg(r: &Resource, table: &str, snapshot: i64) -> Result<FileColumnStats, Status> {
    let mut f: FileColumnStats = decode(r)?;
    f.table_id = Some(id_of(&r.tenant, Kind::Table, table));
    f.snapshot_id = snapshot;
    for c in &mut f.columns {
        c.table_id.clone_from(&f.table_id);
        c.snapshot_id = snapshot;
    }
    Ok(f)
}

/// The snapshot number a snapshot resource carries.
fn snapshot_number(r: &Resource) -> Result<i64, Status> {
    Ok(decode::<Snapshot>(r)?.snapshot_id)
}

#[tonic::async_trait]
impl TableStatisticsService for Metacat {
    async fn get_table_stats(
        &self,
        req: Request<GetTableStatsRequest>,
    ) -> Result<Response<GetTableStatsResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let table = rid("table_id", req.get_ref().table_id.as_ref(), Kind::Table, &caller)?;
        page_of(req.get_ref().page.as_ref())?;
        let snap = self.snapshot(&caller, &table, req.get_ref().snapshot.as_ref()).await?;
        let number = snapshot_number(&snap)?;
        let r = self
            .one(CatalogRequest::Resolve {
                tenant: caller.tenant.clone(),
                kind: Kind::TableStats,
                parent: snap.id.clone(),
                name: TABLE_STATS.into(),
            })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::NotFound => {
                    Status::not_found(format!("no table statistics for snapshot {number} of table {table}"))
                }
                _ => s,
            })?;
        let page = mc::PageResponse { next_page_token: String::new(), total_size: 1 };
        Ok(respond(
            &caller,
            GetTableStatsResponse { stats: Some(table_stats_msg(&r, &table, number)?), page: Some(page) },
        ))
    }

    async fn list_column_stats(
        &self,
        req: Request<ListColumnStatsRequest>,
    ) -> Result<Response<ListColumnStatsResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let table = rid("table_id", req.get_ref().table_id.as_ref(), Kind::Table, &caller)?;
        let snap = self.snapshot(&caller, &table, req.get_ref().snapshot.as_ref()).await?;
        let number = snapshot_number(&snap)?;
        let (items, page) =
            self.stats_page(&caller, &table, &snap, Kind::ColumnStats, req.get_ref().page.as_ref()).await?;
        let columns = items.iter().map(|r| column_stats_msg(r, &table, number)).collect::<Result<_, _>>()?;
        Ok(respond(&caller, ListColumnStatsResponse { columns, page: Some(page) }))
    }

    async fn list_file_column_stats(
        &self,
        req: Request<ListFileColumnStatsRequest>,
    ) -> Result<Response<ListFileColumnStatsResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let table = rid("table_id", req.get_ref().table_id.as_ref(), Kind::Table, &caller)?;
        let snap = self.snapshot(&caller, &table, req.get_ref().snapshot.as_ref()).await?;
        let number = snapshot_number(&snap)?;
        let (items, page) =
            self.stats_page(&caller, &table, &snap, Kind::FileStats, req.get_ref().page.as_ref()).await?;
        let file_columns = items.iter().map(|r| file_stats_msg(r, &table, number)).collect::<Result<_, _>>()?;
        Ok(respond(&caller, ListFileColumnStatsResponse { file_columns, page: Some(page) }))
    }

    async fn put_table_stats(
        &self,
        req: Request<PutTableStatsRequest>,
    ) -> Result<Response<PutTableStatsResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let r = req.into_inner();
        let table = rid("table_id", r.table_id.as_ref(), Kind::Table, &caller)?;
        let mut stats = r.stats.clone().ok_or_else(|| invalid("stats: required"))?;
        check_owner("stats", stats.table_id.as_ref(), stats.snapshot_id, (&table, r.snapshot_id))?;
        check_counts(
            "stats",
            &[
                ("row_count", stats.row_count),
                ("data_file_count", stats.data_file_count),
                ("total_size_bytes", stats.total_size_bytes),
            ],
        )?;
        check_ndv("stats.ndv", stats.ndv.as_ref())?;
        check_properties(&stats.properties)?;
        let idem =
            idem("PutTableStats", r.idempotency.as_ref(), &PutTableStatsRequest { idempotency: None, ..r.clone() })?;
        let snap = self.snapshot_by_id(&caller, &table, r.snapshot_id).await?;
        // Ids live in the tree, not the payload.
        stats.table_id = None;
        stats.snapshot_id = 0;
        let (res, _) = self
            .upsert(&caller, Kind::TableStats, &snap, vec![(TABLE_STATS.into(), stats.encode_to_vec())], idem)
            .await?;
        let res = res.into_iter().next().ok_or_else(|| Status::internal("the catalog returned no statistics"))?;
        Ok(respond(
            &caller,
            PutTableStatsResponse {
                stats: Some(table_stats_msg(&res, &table, r.snapshot_id)?),
                meta: Some(meta(&res)),
            },
        ))
    }

    async fn put_column_stats(
        &self,
        req: Request<Streaming<PutColumnStatsRequest>>,
    ) -> Result<Response<PutColumnStatsResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let parts = |m: PutColumnStatsRequest| (m.table_id, m.snapshot_id, m.idempotency, m.columns);
        let (table, number, key, columns) =
            gather(&caller, req.into_inner(), parts, |c: &ColumnStats| c.encoded_len()).await?;
        let mut items = Vec::with_capacity(columns.len());
        for (i, mut c) in columns.into_iter().enumerate() {
            let field = format!("columns[{i}]");
            check_column(&field, &c)?;
            check_owner(&field, c.table_id.as_ref(), c.snapshot_id, (&table, number))?;
            c.table_id = None;
            c.snapshot_id = 0;
            items.push((c.column_id.clone(), c.encode_to_vec()));
        }
        let idem = stream_idem("PutColumnStats", key, &table, number, &items)?;
        let snap = self.snapshot_by_id(&caller, &table, number).await?;
        let (_, count) = self.upsert(&caller, Kind::ColumnStats, &snap, items, idem).await?;
        Ok(respond(&caller, PutColumnStatsResponse { upserted: count as i32 }))
    }

    async fn put_file_column_stats(
        &self,
        req: Request<Streaming<PutFileColumnStatsRequest>>,
    ) -> Result<Response<PutFileColumnStatsResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        let parts = |m: PutFileColumnStatsRequest| (m.table_id, m.snapshot_id, m.idempotency, m.files);
        let (table, number, key, files) =
            gather(&caller, req.into_inner(), parts, |f: &FileColumnStats| f.encoded_len()).await?;
        let mut items = Vec::with_capacity(files.len());
        for (i, mut f) in files.into_iter().enumerate() {
            let field = format!("files[{i}]");
            if f.file_path.is_empty() {
                return Err(invalid(format!("{field}.file_path: required")));
            }
            check_text(&format!("{field}.file_path"), &f.file_path, 1024)?;
            check_counts(&field, &[("row_count", f.row_count), ("size_bytes", f.size_bytes)])?;
            check_owner(&field, f.table_id.as_ref(), f.snapshot_id, (&table, number))?;
            if f.columns.len() > 10_000 {
                return Err(invalid(format!("{field}.columns: {} columns, at most 10000", f.columns.len())));
            }
            for (j, c) in f.columns.iter_mut().enumerate() {
                let cf = format!("{field}.columns[{j}]");
                check_column(&cf, c)?;
                check_owner(&cf, c.table_id.as_ref(), c.snapshot_id, (&table, number))?;
                c.table_id = None;
                c.snapshot_id = 0;
            }
            f.table_id = None;
            f.snapshot_id = 0;
            items.push((f.file_path.clone(), f.encode_to_vec()));
        }
        let idem = stream_idem("PutFileColumnStats", key, &table, number, &items)?;
        let snap = self.snapshot_by_id(&caller, &table, number).await?;
        let (_, count) = self.upsert(&caller, Kind::FileStats, &snap, items, idem).await?;
        Ok(respond(&caller, PutFileColumnStatsResponse { upserted: count as i32 }))
    }
}

/// The idempotency key of a streamed put, hashed over the whole stream's canonical content
/// (table, snapshot and every entry in order), so a replay split differently still matches.
fn stream_idem(
    op: &str,
    key: Option<mc::IdempotencyKey>,
    table: &str,
    snapshot: i64,
    items: &[(String, Vec<u8>)],
) -> Result<Option<tessera_core::catalog::Idempotency>, Status> {
    let mut canonical = Vec::new();
    canonical.extend_from_slice(table.as_bytes());
    canonical.push(0);
    canonical.extend_from_slice(&snapshot.to_be_bytes());
    for (name, payload) in items {
        canonical.extend_from_slice(&(name.len() as u64).to_be_bytes());
        canonical.extend_from_slice(name.as_bytes());
        canonical.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        canonical.extend_from_slice(payload);
    }
    idem(op, key.as_ref(), &canonical)
}

/// `StatsCapture` as the contract gives it: every request and response message has no
/// fields, so no call can name a table, a job or a result. Listing answers truthfully that
/// there is nothing to show; the calls that would need to name something are refused with
/// a message pointing at the service that carries statistics.
#[tonic::async_trait]
impl StatsCapture for Metacat {
    async fn list_jobs(
        &self,
        req: Request<capture::ListJobsRequest>,
    ) -> Result<Response<capture::ListJobsResponse>, Status> {
        let caller = Caller::tenant_scoped(req.metadata())?;
        Ok(respond(&caller, capture::ListJobsResponse {}))
    }

    async fn analyze(
        &self,
        req: Request<capture::AnalyzeRequest>,
    ) -> Result<Response<capture::AnalyzeResponse>, Status> {
        Caller::tenant_scoped(req.metadata())?;
        Err(no_capture("Analyze", "a table"))
    }

    async fn get_job(&self, req: Request<capture::GetJobRequest>) -> Result<Response<capture::GetJobResponse>, Status> {
        Caller::tenant_scoped(req.metadata())?;
        Err(no_capture("GetJob", "a job"))
    }

    async fn cancel_job(
        &self,
        req: Request<capture::CancelJobRequest>,
    ) -> Result<Response<capture::CancelJobResponse>, Status> {
        Caller::tenant_scoped(req.metadata())?;
        Err(no_capture("CancelJob", "a job"))
    }
}

fn no_capture(rpc: &str, what: &str) -> Status {
    Status::unimplemented(format!(
        "StatsCapture.{rpc}: the request has no fields to name {what}; this server runs no capture jobs. \
         Send statistics with TableStatisticsService.PutTableStats, PutColumnStats and PutFileColumnStats"
    ))
}
