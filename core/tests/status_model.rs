//! The status registry against a plain in-memory model: a vector of entries in insertion
//! order with capacities and eviction. Also checks that paging never skips or repeats while
//! entries are added, updated and evicted between pages, and that a reopen rebuilds the
//! same registry from the store.

use proptest::prelude::*;
use tessera_core::mem_store::MemStore;
use tessera_core::rng::Rng;
use tessera_core::status::{Status, StatusConfig, StatusMachine, StatusRequest, StatusResponse, StoreKind};
use tessera_core::{CoreError, Machine, Store};

#[derive(Debug, Clone)]
enum Op {
    Record { kind: u8, id: u8, status: u8 },
    Update { kind: u8, id: u8, status: u8 },
    Delete { kind: u8, id: u8 },
    Page { kind: u8, filter: u8, size: u8 },
    Get { ids: Vec<u8>, kind: u8 },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 0u8..12, 0u8..3).prop_map(|(kind, id, status)| Op::Record { kind, id, status }),
        3 => (0u8..3, 0u8..12, 0u8..3).prop_map(|(kind, id, status)| Op::Update { kind, id, status }),
        1 => (0u8..3, 0u8..12).prop_map(|(kind, id)| Op::Delete { kind, id }),
        2 => (0u8..4, 0u8..5, 1u8..5).prop_map(|(kind, filter, size)| Op::Page { kind, filter, size }),
        1 => (proptest::collection::vec(0u8..14, 1..4), 0u8..4).prop_map(|(ids, kind)| Op::Get { ids, kind }),
        1 => Just(Op::Reopen),
    ]
}

const KINDS: [StoreKind; 3] = [StoreKind::KeyGeneration, StoreKind::Upload, StoreKind::Plan];

fn status(n: u8) -> Status {
    [Status::Processing, Status::Completed, Status::Failed][n as usize % 3]
}

#[derive(Debug, Clone)]
struct ModelEntry {
    kind: StoreKind,
    id: String,
    status: Status,
}

struct Model {
    entries: Vec<ModelEntry>,
    caps: [i64; 3],
}

impl Model {
    fn find(&self, kind: StoreKind, id: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.kind == kind && e.id == id)
    }
    fn cap(&self, kind: StoreKind) -> i64 {
        self.caps[KINDS.iter().position(|k| *k == kind).unwrap()]
    }
    fn count(&self, kind: StoreKind) -> usize {
        self.entries.iter().filter(|e| e.kind == kind).count()
    }
    /// Listing order: kinds in wire order, then insertion order.
    fn listed(&self, kind: Option<StoreKind>, filter: Option<Status>) -> Vec<(StoreKind, String)> {
        let mut v: Vec<(usize, &ModelEntry)> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| kind.is_none_or(|k| k == e.kind) && filter.is_none_or(|f| f == e.status))
            .collect();
        v.sort_by_key(|(i, e)| (e.kind, *i));
        v.into_iter().map(|(_, e)| (e.kind, e.id.clone())).collect()
    }
}

struct Sut {
    store: MemStore,
    machine: StatusMachine,
    config: StatusConfig,
    now: u64,
}

impl Sut {
    fn open(store: MemStore, config: StatusConfig) -> Self {
        let (machine, init) = StatusMachine::open(&store, config.clone(), &mut Rng::new(1)).unwrap();
        store.write(&init).unwrap();
        store.sync().unwrap();
        Self { store, machine, config, now: 0 }
    }

    fn call(&mut self, req: StatusRequest) -> Result<StatusResponse, CoreError> {
        self.now += 1;
        let ready = self.machine.step(self.now, 0, req, &self.store).unwrap();
        self.store.write(&ready.writes).unwrap();
        self.store.sync().unwrap();
        ready.replies.into_iter().next().unwrap().1
    }
}

fn page_all(sut: &mut Sut, kind: Option<StoreKind>, filter: Option<Status>, size: i32) -> Vec<(StoreKind, String)> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let r = sut.call(StatusRequest::List { kind, filter, max_results: Some(size), page_token: token.take() });
        let Ok(StatusResponse::Page { entries, next_page_token }) = r else { panic!("list failed: {r:?}") };
        assert!(entries.len() <= size as usize);
        out.extend(entries.into_iter().map(|e| (e.kind, e.id)));
        match next_page_token {
            Some(t) => token = Some(t),
            None => return out,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn registry_matches_model(ops in proptest::collection::vec(op(), 1..80), caps in proptest::array::uniform3(prop_oneof![Just(-1i64), 1i64..6])) {
        let mut config = StatusConfig::default();
        for (k, c) in KINDS.iter().zip(caps) {
            config = config.with_capacity(*k, c);
        }
        let mut sut = Sut::open(MemStore::new(), config);
        let mut model = Model { entries: Vec::new(), caps };

        for op in ops {
            match op {
                Op::Record { kind, id, status: s } => {
                    let (kind, id, st) = (KINDS[kind as usize], format!("r{id}"), status(s));
                    let r = sut.call(StatusRequest::Record { kind, id: id.clone(), status: st, error: None });
                    match model.find(kind, &id) {
                        Some(i) if model.entries[i].status == st => prop_assert!(matches!(r, Ok(StatusResponse::Recorded { created: false, .. })), "{:?}", r),
                        Some(_) => prop_assert!(matches!(r, Err(CoreError::AlreadyExists(_))), "{:?}", r),
                        None => {
                            let cap = model.cap(kind);
                            if cap >= 0 && model.count(kind) as i64 >= cap {
                                let oldest = model.entries.iter().position(|e| e.kind == kind && e.status != Status::Processing);
                                match oldest {
                                    Some(i) => {
                                        let gone = model.entries.remove(i);
                                        let Ok(StatusResponse::Recorded { evicted, created: true, .. }) = &r else { panic!("{r:?}") };
                                        prop_assert_eq!(evicted.as_deref(), Some(gone.id.as_str()));
                                    }
                                    None => {
                                        prop_assert!(matches!(r, Err(CoreError::ResourceExhausted(_))), "{:?}", r);
                                        continue;
                                    }
                                }
                            } else {
                                prop_assert!(matches!(r, Ok(StatusResponse::Recorded { created: true, evicted: None, .. })), "{:?}", r);
                            }
                            model.entries.push(ModelEntry { kind, id, status: st });
                        }
                    }
                }
                Op::Update { kind, id, status: s } => {
                    let (kind, id, st) = (KINDS[kind as usize], format!("r{id}"), status(s));
                    let r = sut.call(StatusRequest::Update { kind, id: id.clone(), status: st, error: None });
                    match model.find(kind, &id) {
                        None => prop_assert!(matches!(r, Err(CoreError::NotFound(_))), "{:?}", r),
                        Some(i) => {
                            let cur = model.entries[i].status;
                            if cur == st {
                                prop_assert!(r.is_ok());
                            } else if cur.is_finished() {
                                prop_assert!(matches!(r, Err(CoreError::FailedPrecondition(_))), "{:?}", r);
                            } else {
                                prop_assert!(r.is_ok());
                                model.entries[i].status = st;
                            }
                        }
                    }
                }
                Op::Delete { kind, id } => {
                    let (kind, id) = (KINDS[kind as usize], format!("r{id}"));
                    let r = sut.call(StatusRequest::Delete { kind, id: id.clone() });
                    match model.find(kind, &id) {
                        None => prop_assert!(matches!(r, Err(CoreError::NotFound(_))), "{:?}", r),
                        Some(i) => {
                            prop_assert!(r.is_ok());
                            model.entries[i].status = Status::Deleted;
                        }
                    }
                }
                Op::Page { kind, filter, size } => {
                    let kind = KINDS.get(kind as usize).copied();
                    let filter = [None, Some(Status::Processing), Some(Status::Completed), Some(Status::Failed), Some(Status::Deleted)][filter as usize];
                    let got = page_all(&mut sut, kind, filter, size as i32);
                    prop_assert_eq!(got, model.listed(kind, filter));
                }
                Op::Get { ids, kind } => {
                    let kind = KINDS.get(kind as usize).copied();
                    let ids: Vec<String> = ids.iter().map(|i| format!("r{i}")).collect();
                    let r = sut.call(StatusRequest::Get { ids: ids.clone(), kind });
                    let mut want = Vec::new();
                    let mut seen = std::collections::BTreeSet::new();
                    for id in &ids {
                        if !seen.insert(id.clone()) { continue; }
                        for k in [StoreKind::KeyGeneration, StoreKind::Upload, StoreKind::Plan] {
                            if kind.is_none_or(|x| x == k)
                                && let Some(i) = model.find(k, id)
                            {
                                want.push((k, id.clone(), model.entries[i].status));
                            }
                        }
                    }
                    if want.is_empty() {
                        prop_assert!(matches!(r, Err(CoreError::NotFound(_))), "{:?}", r);
                    } else {
                        let Ok(StatusResponse::Statuses(got)) = r else { panic!("{r:?}") };
                        let got: Vec<_> = got.into_iter().map(|e| (e.kind, e.id, e.status)).collect();
                        prop_assert_eq!(got, want);
                    }
                }
                Op::Reopen => {
                    let store = sut.store.clone();
                    store.crash();
                    sut = Sut::open(store, sut.config.clone());
                }
            }
            for k in KINDS {
                prop_assert_eq!(sut.machine.registry().count(k), model.count(k) as u64);
            }
        }
    }

    /// Pages interleaved with inserts and status changes: no id twice, nothing that was
    /// there throughout (and matched the filter throughout) missed.
    #[test]
    fn paging_is_stable_under_concurrent_changes(initial in 1usize..30, changes in proptest::collection::vec((0u8..3, 0u8..40), 0..40), size in 1i32..6) {
        let mut sut = Sut::open(MemStore::new(), StatusConfig::default());
        for i in 0..initial {
            sut.call(StatusRequest::Record { kind: KINDS[i % 3], id: format!("a{i}"), status: Status::Processing, error: None }).unwrap();
        }
        let before: Vec<(StoreKind, String)> = (0..initial).map(|i| (KINDS[i % 3], format!("a{i}"))).collect();
        let mut touched = std::collections::BTreeSet::new();
        let mut got = Vec::new();
        let mut token = None;
        let mut changes = changes.into_iter();
        loop {
            let r = sut.call(StatusRequest::List { kind: None, filter: Some(Status::Processing), max_results: Some(size), page_token: token.take() });
            let Ok(StatusResponse::Page { entries, next_page_token }) = r else { panic!("{r:?}") };
            got.extend(entries.into_iter().map(|e| (e.kind, e.id)));
            if let Some((what, n)) = changes.next() {
                match what {
                    0 => { let _ = sut.call(StatusRequest::Record { kind: KINDS[n as usize % 3], id: format!("b{n}"), status: Status::Processing, error: None }); }
                    _ => {
                        let i = n as usize % initial;
                        let id = format!("a{i}");
                        touched.insert(id.clone());
                        let _ = sut.call(StatusRequest::Update { kind: KINDS[i % 3], id, status: Status::Completed, error: None });
                    }
                }
            }
            match next_page_token { Some(t) => token = Some(t), None => break }
        }
        let mut uniq = std::collections::BTreeSet::new();
        for g in &got {
            prop_assert!(uniq.insert(g.clone()), "{:?} listed twice", g);
        }
        for b in before {
            if !touched.contains(&b.1) {
                prop_assert!(uniq.contains(&b), "{:?} skipped", b);
            }
        }
    }
}
