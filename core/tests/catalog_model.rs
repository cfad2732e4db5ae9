//! The catalog machine against simple models: paging under interleaved creates and deletes
//! never skips or repeats an item that lived through the listing; idempotent replays return
//! identical results; a different request under a used key is refused; preconditions,
//! cascades and crashes behave.

use std::collections::BTreeSet;

use proptest::prelude::*;
use tessera_core::catalog::{
    CatalogConfig, CatalogMachine, CatalogRequest, CatalogResponse, Idempotency, Kind, ListQuery, Precondition,
    Resource,
};
use tessera_core::mem_store::MemStore;
use tessera_core::rng::Rng;
use tessera_core::{CoreError, Machine, Store};

struct Sut {
    store: MemStore,
    m: CatalogMachine,
    now: u64,
}

impl Sut {
    fn new() -> Self {
        let store = MemStore::new();
        let (m, init) =
            CatalogMachine::open(&store, CatalogConfig { idempotency_ttl_ms: 1_000 }, &mut Rng::new(3)).unwrap();
        store.write(&init).unwrap();
        store.sync().unwrap();
        Self { store, m, now: 1 }
    }

    fn call(&mut self, req: CatalogRequest) -> Result<CatalogResponse, CoreError> {
        self.now += 1;
        let ready = self.m.step(self.now, 0, req, &self.store).unwrap();
        self.store.write(&ready.writes).unwrap();
        self.store.sync().unwrap();
        ready.replies.into_iter().next().unwrap().1
    }

    fn restart(&mut self) {
        self.store.crash();
        let (m, init) =
            CatalogMachine::open(&self.store, CatalogConfig { idempotency_ttl_ms: 1_000 }, &mut Rng::new(self.now))
                .unwrap();
        assert!(init.is_empty(), "the token key survives a restart");
        self.m = m;
    }

    fn create(&mut self, tenant: &str, kind: Kind, parent: &str, name: &str) -> Result<Resource, CoreError> {
        let req = CatalogRequest::Create {
            tenant: tenant.into(),
            kind,
            parent: parent.into(),
            name: name.into(),
            payload: name.as_bytes().to_vec(),
            time_ms: 0,
            idem: None,
        };
        self.call(req).map(|r| match r {
            CatalogResponse::Resource { resource, .. } => resource,
            other => panic!("{other:?}"),
        })
    }

    fn delete(&mut self, tenant: &str, kind: Kind, id: &str, cascade: Vec<Kind>) -> Result<(), CoreError> {
        let req = CatalogRequest::Delete {
            tenant: tenant.into(),
            kind,
            id: id.into(),
            pre: Precondition::default(),
            cascade,
            idem: None,
        };
        self.call(req).map(|_| ())
    }

    fn page(
        &mut self,
        tenant: &str,
        parent: &str,
        size: usize,
        token: Option<String>,
    ) -> (Vec<Resource>, Option<String>) {
        let q = ListQuery {
            tenant: tenant.into(),
            kind: Kind::Table,
            parent: parent.into(),
            prefix: String::new(),
            direct_below: None,
            page_size: size,
            page_token: token,
            scope: format!("tables {parent}"),
        };
        match self.call(CatalogRequest::List(q)).unwrap() {
            CatalogResponse::Page { items, next_page_token } => (items, next_page_token),
            other => panic!("{other:?}"),
        }
    }

    /// A tenant with one catalog and one namespace; returns (tenant, catalog, namespace).
    fn tree(&mut self) -> (String, String, String) {
        let t = self.create("", Kind::Tenant, "", "acme").unwrap().id;
        let c = self.create(&t, Kind::Catalog, "", "sales").unwrap().id;
        let n = self.create(&t, Kind::Namespace, &c, "raw").unwrap().id;
        (t, c, n)
    }
}

#[derive(Debug, Clone)]
enum Op {
    Create(u8),
    Delete(u8),
    Page(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![(0u8..40).prop_map(Op::Create), (0u8..40).prop_map(Op::Delete), (1usize..6).prop_map(Op::Page)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn paging_never_skips_or_repeats_under_concurrent_changes(
        initial in proptest::collection::btree_set(0u8..40, 0..25),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let mut s = Sut::new();
        let (t, _, ns) = s.tree();
        let mut live: std::collections::BTreeMap<String, String> = Default::default();
        for n in &initial {
            let name = format!("t{n:02}");
            let r = s.create(&t, Kind::Table, &ns, &name).unwrap();
            live.insert(name, r.id);
        }
        // One listing walks while the ops run between its pages.
        let before: BTreeSet<String> = live.keys().cloned().collect();
        let mut touched: BTreeSet<String> = BTreeSet::new();
        let mut seen: Vec<String> = Vec::new();
        let mut token: Option<String> = None;
        let mut finished = false;
        for o in ops {
            match o {
                Op::Create(n) => {
                    let name = format!("t{n:02}");
                    let r = s.create(&t, Kind::Table, &ns, &name);
                    match live.get(&name) {
                        Some(_) => prop_assert!(matches!(r, Err(CoreError::AlreadyExists(_)))),
                        None => { live.insert(name.clone(), r.unwrap().id); touched.insert(name); }
                    }
                }
                Op::Delete(n) => {
                    let name = format!("t{n:02}");
                    if let Some(id) = live.remove(&name) {
                        s.delete(&t, Kind::Table, &id, vec![]).unwrap();
                        touched.insert(name);
                    }
                }
                Op::Page(size) if !finished => {
                    let (items, next) = s.page(&t, &ns, size, token.take());
                    prop_assert!(items.len() <= size);
                    seen.extend(items.into_iter().map(|r| r.name));
                    match next { Some(t) => token = Some(t), None => finished = true }
                }
                Op::Page(_) => {}
            }
        }
        while !finished {
            let (items, next) = s.page(&t, &ns, 7, token.take());
            seen.extend(items.into_iter().map(|r| r.name));
            match next { Some(t) => token = Some(t), None => finished = true }
        }
        // Strictly increasing: nothing repeated, order kept.
        prop_assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        // Every item that existed throughout appeared.
        let seen: BTreeSet<String> = seen.into_iter().collect();
        for name in before.iter().filter(|n| !touched.contains(*n)) {
            prop_assert!(seen.contains(name), "{name} was live all along but never listed");
        }
        // Nothing listed that never existed.
        for name in &seen {
            prop_assert!(before.contains(name) || touched.contains(name));
        }
    }

    #[test]
    fn idempotent_replays_return_identical_results(names in proptest::collection::vec(0u8..8, 1..20), crash_at in 0usize..20) {
        let mut s = Sut::new();
        let (t, _, ns) = s.tree();
        let mut first: std::collections::BTreeMap<u8, Resource> = Default::default();
        for (i, n) in names.iter().enumerate() {
            if i == crash_at {
                s.restart();
            }
            let req = CatalogRequest::Create {
                tenant: t.clone(),
                kind: Kind::Table,
                parent: ns.clone(),
                name: format!("t{n}"),
                payload: vec![*n],
                time_ms: 0,
                idem: Some(Idempotency { op: "CreateTable".into(), key: format!("k{n}"), request_hash: vec![*n] }),
            };
            let Ok(CatalogResponse::Resource { resource, replayed }) = s.call(req) else { panic!("create") };
            match first.get(n) {
                Some(r) => { prop_assert!(replayed); prop_assert_eq!(r, &resource); }
                None => { prop_assert!(!replayed); first.insert(*n, resource); }
            }
        }
        // The same key with another request is refused, and changes nothing.
        let n = names[0];
        let other = CatalogRequest::Create {
            tenant: t.clone(),
            kind: Kind::Table,
            parent: ns.clone(),
            name: "other".into(),
            payload: vec![],
            time_ms: 0,
            idem: Some(Idempotency { op: "CreateTable".into(), key: format!("k{n}"), request_hash: vec![99] }),
        };
        prop_assert!(matches!(s.call(other), Err(CoreError::Aborted(_))));
        prop_assert_eq!(s.page(&t, &ns, 100, None).0.len(), first.len());
    }
}

#[test]
fn preconditions_names_cascades_and_expiry() {
    let mut s = Sut::new();
    let (t, c, ns) = s.tree();
    let table = s.create(&t, Kind::Table, &ns, "orders").unwrap();
    // Tables and views share names.
    assert!(matches!(s.create(&t, Kind::View, &ns, "orders"), Err(CoreError::AlreadyExists(_))));
    // Unknown tenant, wrong kind, missing parent.
    assert!(matches!(s.create("nobody", Kind::Catalog, "", "x"), Err(CoreError::NotFound(_))));
    assert!(matches!(s.create(&t, Kind::Table, &c, "x"), Err(CoreError::InvalidArgument(_))));
    assert!(matches!(s.create(&t, Kind::Namespace, &c, "a\u{1f}b"), Err(CoreError::NotFound(_))));
    let update = |version, etag: Option<String>| CatalogRequest::Update {
        tenant: t.clone(),
        kind: Kind::Table,
        id: table.id.clone(),
        name: Some("orders_v2".into()),
        payload: b"v2".to_vec(),
        pre: Precondition { version, etag },
        idem: None,
    };
    let Err(CoreError::FailedPrecondition(msg)) = s.call(update(Some(7), None)) else { panic!() };
    assert!(msg.contains("version 1"), "{msg}");
    assert!(matches!(s.call(update(None, Some("nope".into()))), Err(CoreError::FailedPrecondition(_))));
    let Ok(CatalogResponse::Resource { resource: v2, .. }) = s.call(update(Some(1), Some(table.etag.clone()))) else {
        panic!()
    };
    assert_eq!((v2.version, v2.name.as_str()), (2, "orders_v2"));
    assert_ne!(v2.etag, table.etag);
    // Non-empty parents: refused without cascade, removed whole with it.
    s.create(&t, Kind::Namespace, &c, "raw\u{1f}daily").unwrap();
    assert!(matches!(s.delete(&t, Kind::Catalog, &c, vec![]), Err(CoreError::FailedPrecondition(_))));
    assert!(matches!(s.delete(&t, Kind::Namespace, &ns, vec![Kind::Table]), Err(CoreError::FailedPrecondition(_))));
    s.delete(&t, Kind::Catalog, &c, vec![Kind::Namespace, Kind::Table, Kind::View]).unwrap();
    assert!(matches!(
        s.call(CatalogRequest::Get { tenant: t.clone(), kind: Kind::Table, id: table.id.clone() }),
        Err(CoreError::NotFound(_))
    ));
    assert!(s.create(&t, Kind::Catalog, "", "sales").is_ok(), "the name is free again");
    // Idempotency records expire: after the TTL the key is free for a new request.
    let req = |hash: u8| CatalogRequest::Create {
        tenant: t.clone(),
        kind: Kind::Catalog,
        parent: String::new(),
        name: format!("c{hash}"),
        payload: vec![],
        time_ms: 0,
        idem: Some(Idempotency { op: "CreateCatalog".into(), key: "once".into(), request_hash: vec![hash] }),
    };
    s.call(req(1)).unwrap();
    assert!(matches!(s.call(req(2)), Err(CoreError::Aborted(_))));
    s.now += 2_000;
    let ready = s.m.tick(s.now, &s.store).unwrap();
    assert!(!ready.writes.is_empty(), "expired records are deleted");
    s.store.write(&ready.writes).unwrap();
    assert!(s.call(req(2)).is_ok());
}

#[test]
fn upserts_are_all_or_nothing_replay_and_go_with_their_snapshot() {
    let mut s = Sut::new();
    let (t, _c, ns) = s.tree();
    let table = s.create(&t, Kind::Table, &ns, "orders").unwrap();
    let snap = s.create(&t, Kind::Snapshot, &table.id, "0000000000000001").unwrap();
    let upsert = |items: Vec<(&str, &str)>, key: Option<&str>| CatalogRequest::Upsert {
        tenant: t.clone(),
        kind: Kind::ColumnStats,
        parent: snap.id.clone(),
        items: items.into_iter().map(|(n, p)| (n.to_owned(), p.as_bytes().to_vec())).collect(),
        idem: key.map(|k| Idempotency { op: "PutColumnStats".into(), key: k.into(), request_hash: vec![1] }),
    };
    let list = |s: &mut Sut| -> Vec<(String, Vec<u8>, u64)> {
        let q = ListQuery {
            tenant: t.clone(),
            kind: Kind::ColumnStats,
            parent: snap.id.clone(),
            prefix: String::new(),
            direct_below: None,
            page_size: 100,
            page_token: None,
            scope: "cols".into(),
        };
        match s.call(CatalogRequest::List(q)).unwrap() {
            CatalogResponse::Page { items, .. } => items.into_iter().map(|r| (r.name, r.payload, r.version)).collect(),
            other => panic!("{other:?}"),
        }
    };
    let Ok(CatalogResponse::Upserted { count: 2, replayed: false, .. }) =
        s.call(upsert(vec![("a", "1"), ("b", "1")], Some("k")))
    else {
        panic!()
    };
    // A bad item anywhere in a batch writes none of it.
    assert!(matches!(s.call(upsert(vec![("a", "2"), ("", "2")], None)), Err(CoreError::InvalidArgument(_))));
    assert!(matches!(s.call(upsert(vec![("c", "2"), ("c", "3")], None)), Err(CoreError::InvalidArgument(_))));
    assert_eq!(list(&mut s), vec![("a".into(), b"1".to_vec(), 1), ("b".into(), b"1".to_vec(), 1)]);
    // A replay answers from the record and changes nothing; a new batch replaces by name.
    let Ok(CatalogResponse::Upserted { count: 2, replayed: true, .. }) = s.call(upsert(vec![("a", "9")], Some("k")))
    else {
        panic!()
    };
    s.call(upsert(vec![("b", "2"), ("c", "2")], None)).unwrap();
    let got = list(&mut s);
    assert_eq!(got.len(), 3);
    assert_eq!((got[1].1.as_slice(), got[1].2), (b"2".as_slice(), 2), "b replaced, version moved");
    // Statistics are children of their snapshot: deleting it needs them in the cascade.
    assert!(matches!(s.delete(&t, Kind::Snapshot, &snap.id, vec![]), Err(CoreError::FailedPrecondition(_))));
    s.delete(&t, Kind::Snapshot, &snap.id, vec![Kind::ColumnStats]).unwrap();
    assert!(matches!(s.call(upsert(vec![("a", "1")], None)), Err(CoreError::NotFound(_))));
}
