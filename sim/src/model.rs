//! The workload and its checker.
//!
//! Each client owns the ids it creates and issues operations on them one at a time, so each
//! id has a linear history. An id whose last operation was acknowledged is *certain*: the
//! registry must hold it with exactly that status (the durability invariant), unless it is a
//! finished entry of a capped store, which may be evicted. An id whose operation got no
//! answer is *tainted*: the operation may land now, later (a delayed copy) or never, so the
//! checker stops asserting on it and the client stops using it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tessera_core::status::{Entry, Status, StatusRequest, StatusResponse, StoreKind};
use tessera_core::{CoreError, CoreResult};

use crate::net::{self, Outcome};
use crate::run::{CAPACITY, CAPPED, KINDS, World};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Certain(Status),
    /// An update to this status is on its way; the entry is in one state or the other.
    Pending(Status),
    Tainted,
}

pub struct Model {
    /// Per node: (kind, id) -> what we know.
    nodes: Vec<BTreeMap<(StoreKind, String), Known>>,
}

impl Model {
    pub fn new(nodes: usize) -> Self {
        Self { nodes: vec![BTreeMap::new(); nodes] }
    }
}

fn evictable(kind: StoreKind, status: Status) -> bool {
    kind == CAPPED && status.is_finished()
}

pub fn short_req(r: &StatusRequest) -> String {
    match r {
        StatusRequest::Record { kind, id, status, .. } => format!("record {}/{id} {}", kind.name(), status.name()),
        StatusRequest::Update { kind, id, status, .. } => format!("update {}/{id} {}", kind.name(), status.name()),
        StatusRequest::Delete { kind, id } => format!("delete {}/{id}", kind.name()),
        StatusRequest::Get { ids, kind } => format!("get {ids:?} in {:?}", kind.map(StoreKind::name)),
        StatusRequest::List { kind, filter, max_results, page_token } => format!(
            "list {:?} {:?} max={max_results:?} token={}",
            kind.map(StoreKind::name),
            filter.map(Status::name),
            page_token.is_some()
        ),
        StatusRequest::Info => "info".into(),
    }
}

fn short_entry(e: &Entry) -> String {
    format!("{}/{}={}#{}", e.kind.name(), e.id, e.status.name(), e.seq)
}

/// Shortens a debug rendering for the trace.
pub fn clip(s: &str) -> String {
    if s.len() <= 160 {
        s.to_owned()
    } else {
        format!("{}…", &s[..s.char_indices().nth(160).map_or(s.len(), |c| c.0)])
    }
}

type StatusOutcome = Outcome<CoreResult<StatusResponse>>;

fn pick_status(world: &World, node: usize) -> Option<crate::node::Handle> {
    world.node_handle(node)
}

pub fn short_out(o: &StatusOutcome) -> String {
    match o {
        Outcome::Unknown => "no answer".into(),
        Outcome::Reply(Err(e)) => format!("error {e:?}"),
        Outcome::Reply(Ok(r)) => match r {
            StatusResponse::Recorded { entry, created, evicted } => {
                format!("recorded {} created={created} evicted={evicted:?}", short_entry(entry))
            }
            StatusResponse::Updated(e) | StatusResponse::Deleted(e) => format!("ok {}", short_entry(e)),
            StatusResponse::Statuses(es) => format!("{:?}", es.iter().map(short_entry).collect::<Vec<_>>()),
            StatusResponse::Page { entries, next_page_token } => format!(
                "page {:?} more={}",
                entries.iter().map(short_entry).collect::<Vec<_>>(),
                next_page_token.is_some()
            ),
            StatusResponse::Info(s) => format!("{:?}", s.iter().map(|i| i.count).collect::<Vec<_>>()),
        },
    }
}

async fn call(world: &Arc<World>, client: usize, node: usize, req: StatusRequest) -> StatusOutcome {
    let desc = short_req(&req);
    let out = net::call(world, client, node, pick_status, req).await;
    world.event(format!("c{client}->n{node} {desc} => {}", short_out(&out)));
    world.lock().ops += 1;
    out
}

fn known(world: &World, node: usize, kind: StoreKind, id: &str) -> Option<Known> {
    world.lock().model.nodes[node].get(&(kind, id.to_owned())).copied()
}

fn set(world: &World, node: usize, kind: StoreKind, id: &str, k: Option<Known>) {
    let mut w = world.lock();
    let m = &mut w.model.nodes[node];
    match k {
        Some(k) => {
            m.insert((kind, id.to_owned()), k);
        }
        None => {
            m.remove(&(kind, id.to_owned()));
        }
    }
}

/// A certain id this client owns on `node`, picked at random.
fn pick_owned(world: &World, client: usize, node: usize) -> Option<(StoreKind, String, Status)> {
    let prefix = format!("c{client}-");
    let owned: Vec<(StoreKind, String, Status)> = world.lock().model.nodes[node]
        .iter()
        .filter_map(|((k, id), v)| match v {
            Known::Certain(s) if id.starts_with(&prefix) => Some((*k, id.clone(), *s)),
            _ => None,
        })
        .collect();
    if owned.is_empty() {
        return None;
    }
    let i = world.rng_below(owned.len() as u64) as usize;
    owned.into_iter().nth(i)
}

/// An acknowledged entry is missing: fine only if it may have been evicted.
fn missing(world: &World, node: usize, kind: StoreKind, id: &str, status: Status, context: &str) {
    if evictable(kind, status) {
        set(world, node, kind, id, None);
    } else {
        world.violation(format!(
            "n{node}: acknowledged {}/{id} ({}) is missing ({context})",
            kind.name(),
            status.name()
        ));
    }
}

fn random_status(world: &World) -> Status {
    match world.rng_below(100) {
        0..70 => Status::Processing,
        70..85 => Status::Completed,
        _ => Status::Failed,
    }
}

async fn record(world: &Arc<World>, client: usize, node: usize, counter: &mut u64) {
    *counter += 1;
    let id = format!("c{client}-{counter}");
    let kind = KINDS[world.rng_below(KINDS.len() as u64) as usize];
    let status = random_status(world);
    let out = call(world, client, node, StatusRequest::Record { kind, id: id.clone(), status, error: None }).await;
    match out {
        Outcome::Unknown => set(world, node, kind, &id, Some(Known::Tainted)),
        Outcome::Reply(Ok(StatusResponse::Recorded { entry, evicted, .. })) => {
            if entry.status != status || entry.id != id {
                world.violation(format!("n{node}: record {id} answered with {}", short_entry(&entry)));
            }
            set(world, node, kind, &id, Some(Known::Certain(status)));
            if let Some(gone) = evicted {
                match known(world, node, kind, &gone) {
                    Some(Known::Certain(s) | Known::Pending(s)) if !evictable(kind, s) => {
                        world.violation(format!("n{node}: evicted {gone} which is {} in {}", s.name(), kind.name()))
                    }
                    _ => set(world, node, kind, &gone, None),
                }
            }
        }
        Outcome::Reply(Err(CoreError::ResourceExhausted(_))) if kind == CAPPED => {}
        Outcome::Reply(other) => world.violation(format!("n{node}: record {id} answered {other:?}")),
    }
}

async fn update(world: &Arc<World>, client: usize, node: usize, delete: bool) {
    let Some((kind, id, cur)) = pick_owned(world, client, node) else { return };
    let (req, new) = if delete {
        (StatusRequest::Delete { kind, id: id.clone() }, Status::Deleted)
    } else {
        let new = random_status(world);
        (StatusRequest::Update { kind, id: id.clone(), status: new, error: None }, new)
    };
    let allowed = cur == new || !cur.is_finished() || (delete && cur != Status::Deleted);
    if allowed && cur != new {
        set(world, node, kind, &id, Some(Known::Pending(new)));
    }
    match call(world, client, node, req).await {
        Outcome::Unknown => set(world, node, kind, &id, Some(Known::Tainted)),
        Outcome::Reply(Err(CoreError::NotFound(_))) => {
            // A duplicated copy of this very request may have landed first and made the
            // entry evictable, so either state counts.
            let state = if allowed && evictable(kind, new) { new } else { cur };
            missing(world, node, kind, &id, state, "update said NOT_FOUND")
        }
        Outcome::Reply(Ok(StatusResponse::Updated(e) | StatusResponse::Deleted(e))) if allowed => {
            if e.status != new {
                world.violation(format!("n{node}: {id} became {} instead of {}", e.status.name(), new.name()));
            }
            set(world, node, kind, &id, Some(Known::Certain(new)));
        }
        Outcome::Reply(Err(CoreError::FailedPrecondition(_))) if !allowed => {}
        Outcome::Reply(other) => world.violation(format!(
            "n{node}: {} {id} from {} to {} answered {other:?}",
            if delete { "delete" } else { "update" },
            cur.name(),
            new.name()
        )),
    }
}

async fn get(world: &Arc<World>, client: usize, node: usize, counter: u64) {
    let mut asked = BTreeMap::new();
    for _ in 0..1 + world.rng_below(4) {
        if let Some((k, id, s)) = pick_owned(world, client, node) {
            asked.insert(id, (k, s));
        }
    }
    let mut ids: Vec<String> = asked.keys().cloned().collect();
    ids.push(format!("c{client}-never-{counter}"));
    let kind = if world.chance(0.5) { None } else { Some(KINDS[world.rng_below(3) as usize]) };
    match call(world, client, node, StatusRequest::Get { ids: ids.clone(), kind }).await {
        Outcome::Unknown => {}
        Outcome::Reply(Ok(StatusResponse::Statuses(found))) => {
            let by_id: BTreeMap<(StoreKind, &str), &Entry> =
                found.iter().map(|e| ((e.kind, e.id.as_str()), e)).collect();
            for e in &found {
                if !ids.contains(&e.id) || kind.is_some_and(|k| k != e.kind) {
                    world.violation(format!("n{node}: get returned {} which was not asked", short_entry(e)));
                }
            }
            for (id, (k, s)) in &asked {
                if kind.is_some_and(|x| x != *k) {
                    continue;
                }
                // Re-read the model: the entry may have been evicted meanwhile.
                if known(world, node, *k, id) != Some(Known::Certain(*s)) {
                    continue;
                }
                match by_id.get(&(*k, id.as_str())) {
                    Some(e) if e.status == *s => {}
                    Some(e) => world.violation(format!(
                        "n{node}: {id} is {} but was acknowledged as {}",
                        e.status.name(),
                        s.name()
                    )),
                    None => missing(world, node, *k, id, *s, "get"),
                }
            }
        }
        Outcome::Reply(Err(CoreError::NotFound(_))) => {
            for (id, (k, s)) in &asked {
                if kind.is_none_or(|x| x == *k) && known(world, node, *k, id) == Some(Known::Certain(*s)) {
                    missing(world, node, *k, id, *s, "get said NOT_FOUND");
                }
            }
        }
        Outcome::Reply(other) => world.violation(format!("n{node}: get answered {other:?}")),
    }
}

/// Certain ids on `node` in unlimited stores (never evicted), optionally of one kind.
fn durable_unevictable(world: &World, node: usize, kind: Option<StoreKind>) -> BTreeSet<(StoreKind, String)> {
    world.lock().model.nodes[node]
        .iter()
        .filter(|((k, _), v)| matches!(v, Known::Certain(_)) && *k != CAPPED && kind.is_none_or(|x| x == *k))
        .map(|(key, _)| key.clone())
        .collect()
}

async fn list(world: &Arc<World>, client: usize, node: usize) {
    let kind = if world.chance(0.5) { None } else { Some(KINDS[world.rng_below(3) as usize]) };
    let filter = if world.chance(0.6) {
        None
    } else {
        Some([Status::Processing, Status::Completed, Status::Failed, Status::Deleted][world.rng_below(4) as usize])
    };
    let size = 1 + world.rng_below(7) as i32;
    let before = durable_unevictable(world, node, kind);
    let mut seen: Vec<(StoreKind, u64, String)> = Vec::new();
    let mut token = None;
    loop {
        let req = StatusRequest::List { kind, filter, max_results: Some(size), page_token: token.take() };
        match call(world, client, node, req).await {
            Outcome::Unknown => return,
            Outcome::Reply(Ok(StatusResponse::Page { entries, next_page_token })) => {
                if entries.len() > size as usize {
                    world.violation(format!("n{node}: page of {} entries for max_results {size}", entries.len()));
                }
                for e in entries {
                    if filter.is_some_and(|f| f != e.status) || kind.is_some_and(|k| k != e.kind) {
                        world.violation(format!("n{node}: listing returned {} outside its filter", short_entry(&e)));
                    }
                    if let Some(last) = seen.last()
                        && (last.0, last.1) >= (e.kind, e.seq)
                    {
                        world.violation(format!(
                            "n{node}: listing went back or repeated: {}#{} after {}#{}",
                            e.kind.name(),
                            e.seq,
                            last.0.name(),
                            last.1
                        ));
                    }
                    seen.push((e.kind, e.seq, e.id));
                }
                match next_page_token {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
            Outcome::Reply(other) => {
                world.violation(format!("n{node}: list page answered {other:?}"));
                return;
            }
        }
    }
    let ids: BTreeSet<(StoreKind, String)> = seen.into_iter().map(|(k, _, id)| (k, id)).collect();
    if filter.is_none() {
        for b in before {
            if !ids.contains(&b) {
                world.violation(format!("n{node}: paged listing skipped acknowledged {}/{}", b.0.name(), b.1));
            }
        }
    }
}

async fn info(world: &Arc<World>, client: usize, node: usize) {
    let floor: BTreeMap<StoreKind, usize> =
        KINDS.iter().map(|k| (*k, durable_unevictable(world, node, Some(*k)).len())).collect();
    match call(world, client, node, StatusRequest::Info).await {
        Outcome::Unknown => {}
        Outcome::Reply(Ok(StatusResponse::Info(stores))) => {
            for s in stores {
                if s.kind == CAPPED && s.count > CAPACITY as u64 {
                    world.violation(format!(
                        "n{node}: {} holds {} entries, capacity {CAPACITY}",
                        s.kind.name(),
                        s.count
                    ));
                }
                if let Some(f) = floor.get(&s.kind)
                    && (s.count as usize) < *f
                {
                    world.violation(format!("n{node}: {} counts {} but {f} were acknowledged", s.kind.name(), s.count));
                }
            }
        }
        Outcome::Reply(other) => world.violation(format!("n{node}: info answered {other:?}")),
    }
}

pub async fn client(world: Arc<World>, client: usize, until_ms: u64) {
    let mut counter = 0u64;
    while world.elapsed_ms() < until_ms {
        let node = world.rng_below(world.opts.nodes as u64) as usize;
        match world.rng_below(100) {
            0..40 => record(&world, client, node, &mut counter).await,
            40..60 => update(&world, client, node, false).await,
            60..65 => update(&world, client, node, true).await,
            65..80 => get(&world, client, node, counter).await,
            80..90 => list(&world, client, node).await,
            _ => info(&world, client, node).await,
        }
        madsim::time::sleep(Duration::from_millis(world.rng_below(5))).await;
    }
}

/// After healing and a final crash of every node: every certain entry is there with its
/// status, and each store's count equals what a full listing finds.
pub async fn final_check(world: &Arc<World>) {
    for node in 0..world.opts.nodes {
        let mut handle = None;
        for _ in 0..100 {
            handle = world.node_handle(node);
            if handle.is_some() {
                break;
            }
            madsim::time::sleep(Duration::from_millis(10)).await;
        }
        let Some(h) = handle else {
            world.violation(format!("n{node} did not come back after healing"));
            continue;
        };
        let certain: Vec<((StoreKind, String), Status)> = world.lock().model.nodes[node]
            .iter()
            .filter_map(|(key, v)| match v {
                Known::Certain(s) => Some((key.clone(), *s)),
                Known::Pending(_) | Known::Tainted => None,
            })
            .collect();
        for ((kind, id), s) in certain {
            match h.call(StatusRequest::Get { ids: vec![id.clone()], kind: Some(kind) }).await {
                Ok(Ok(StatusResponse::Statuses(found))) if found.len() == 1 && found[0].status == s => {}
                Ok(Ok(StatusResponse::Statuses(found))) => world.violation(format!(
                    "n{node}: after recovery {id} is {:?}, acknowledged as {}",
                    found.iter().map(short_entry).collect::<Vec<_>>(),
                    s.name()
                )),
                Ok(Err(CoreError::NotFound(_))) => missing(world, node, kind, &id, s, "after recovery"),
                other => world.violation(format!("n{node}: final get of {id} answered {other:?}")),
            }
        }
        for kind in KINDS {
            let mut n = 0u64;
            let mut token = None;
            loop {
                let req = StatusRequest::List {
                    kind: Some(kind),
                    filter: None,
                    max_results: Some(1000),
                    page_token: token.take(),
                };
                match h.call(req).await {
                    Ok(Ok(StatusResponse::Page { entries, next_page_token })) => {
                        n += entries.len() as u64;
                        match next_page_token {
                            Some(t) => token = Some(t),
                            None => break,
                        }
                    }
                    other => {
                        world.violation(format!("n{node}: final listing answered {other:?}"));
                        break;
                    }
                }
            }
            match h.call(StatusRequest::Info).await {
                Ok(Ok(StatusResponse::Info(stores))) => {
                    let c = stores.iter().find(|s| s.kind == kind).map_or(0, |s| s.count);
                    if c != n {
                        world.violation(format!("n{node}: {} counts {c} entries but lists {n}", kind.name()));
                    }
                }
                other => world.violation(format!("n{node}: final info answered {other:?}")),
            }
        }
    }
    world.event("final check done".into());
}
