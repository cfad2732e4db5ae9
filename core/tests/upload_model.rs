//! Chunk assembly under arbitrary order, duplication and crashes (between a chunk's write
//! and its fsync): the completed document's bytes and SHA-256 always equal what was sent.

use proptest::prelude::*;
use sha2::{Digest, Sha256};
use tessera_core::mem_store::MemStore;
use tessera_core::rng::Rng;
use tessera_core::store::BLOB;
use tessera_core::upload::{ChunkIn, Intake, UploadConfig, UploadMachine, UploadRequest, UploadResponse, UploadState};
use tessera_core::{CoreError, Machine, Store, StoreRead};

struct Sut {
    store: MemStore,
    m: UploadMachine,
    now: u64,
}

impl Sut {
    fn new() -> Self {
        let store = MemStore::new();
        let m = UploadMachine::open(&store, UploadConfig { ttl_ms: 10_000 }, Rng::new(5)).unwrap();
        Self { store, m, now: 1 }
    }
    fn call(&mut self, req: UploadRequest, sync: bool) -> Result<UploadResponse, CoreError> {
        self.now += 1;
        let ready = self.m.step(self.now, 0, req, &self.store).unwrap();
        self.store.write(&ready.writes).unwrap();
        if sync {
            self.store.sync().unwrap();
        }
        ready.replies.into_iter().next().unwrap().1
    }
    fn restart(&mut self) {
        self.store.crash();
        self.m = UploadMachine::open(&self.store, UploadConfig { ttl_ms: 10_000 }, Rng::new(self.now)).unwrap();
    }
    fn initiate(&mut self, metadata: Vec<(String, String)>, expected_size: i64) -> (String, String) {
        let intake = Intake { name: "doc.bin".into(), metadata, expected_size, ..Intake::default() };
        let Ok(UploadResponse::Initiated { upload, .. }) = self.call(UploadRequest::Initiate(intake), true) else {
            panic!("initiate")
        };
        (upload.node_id, upload.upload_id)
    }
    fn chunk(
        &mut self,
        ids: &(String, String),
        n: usize,
        data: &[u8],
        last: bool,
        sync: bool,
    ) -> Result<UploadResponse, CoreError> {
        let req = UploadRequest::Chunk(ChunkIn {
            node_id: ids.0.clone(),
            upload_id: ids.1.clone(),
            number: n as i64,
            data: data.to_vec(),
            is_last: last,
        });
        self.call(req, sync)
    }
    fn read_back(&mut self, upload_id: &str) -> Vec<u8> {
        let Ok(UploadResponse::ChunkLengths(lens)) =
            self.call(UploadRequest::ChunkLengths { upload_id: upload_id.into() }, true)
        else {
            panic!("lengths")
        };
        let mut out = Vec::new();
        for (n, len) in lens.iter().enumerate() {
            let Ok(UploadResponse::Chunk(b)) =
                self.call(UploadRequest::ReadChunk { upload_id: upload_id.into(), number: n as u64 }, true)
            else {
                panic!("chunk {n}")
            };
            assert_eq!(b.len() as u64, *len);
            out.extend(b);
        }
        out
    }
    fn chunk_keys(&self, upload_id: &str) -> usize {
        let _ = upload_id;
        self.store.prefix(BLOB, b"c", None, usize::MAX).unwrap().len()
    }
}

fn hexsha(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn any_order_duplicates_and_crashes_assemble_the_same_bytes(
        doc in proptest::collection::vec(any::<u8>(), 1..3000),
        chunk in 1usize..400,
        order_seed in any::<u64>(),
        crash_every in 0u8..6,
        declare in any::<bool>(),
    ) {
        let chunks: Vec<&[u8]> = doc.chunks(chunk).collect();
        let last = chunks.len() - 1;
        let mut sut = Sut::new();
        let meta = if declare { vec![("sha256".to_string(), hexsha(&doc).to_uppercase())] } else { vec![] };
        let ids = sut.initiate(meta, if declare { doc.len() as i64 } else { 0 });
        // Deliveries: every chunk at least once, some twice, in a seeded order.
        let mut rng = Rng::new(order_seed);
        let mut deliveries: Vec<usize> = (0..chunks.len()).chain((0..chunks.len()).filter(|_| rng.chance(0.3))).collect();
        for i in (1..deliveries.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            deliveries.swap(i, j);
        }
        let mut acked = vec![false; chunks.len()];
        let mut step = 0u8;
        let mut queue: std::collections::VecDeque<usize> = deliveries.into();
        while let Some(n) = queue.pop_front() {
            step = step.wrapping_add(1);
            let crash = crash_every > 0 && step.is_multiple_of(crash_every * 3);
            let r = sut.chunk(&ids, n, chunks[n], n == last, !crash);
            if crash {
                // Never acknowledged: gone with the crash; the client sends it again.
                sut.restart();
                if !acked[n] { queue.push_back(n); }
                continue;
            }
            match r {
                Ok(UploadResponse::ChunkStored { duplicate, .. }) => {
                    prop_assert_eq!(duplicate, acked[n]);
                    acked[n] = true;
                }
                other => prop_assert!(false, "chunk {} answered {:?}", n, other),
            }
        }
        let Ok(UploadResponse::Status(up)) = sut.call(UploadRequest::Status { node_id: ids.0.clone() }, true) else { panic!() };
        prop_assert_eq!(up.state, UploadState::Completed);
        prop_assert_eq!(up.sha256, Some(hexsha(&doc)));
        prop_assert_eq!(up.bytes_received, doc.len() as u64);
        prop_assert_eq!(sut.read_back(&ids.1), doc.clone());
        // A different body for a received chunk is refused; the same body is fine.
        let mut other = chunks[0].to_vec();
        other[0] ^= 1;
        let r = sut.chunk(&ids, 0, &other, false, true);
        prop_assert!(matches!(r, Err(CoreError::AlreadyExists(_))), "{:?}", r);
        let r = sut.chunk(&ids, 0, chunks[0], false, true);
        prop_assert!(matches!(r, Ok(UploadResponse::ChunkStored { duplicate: true, .. })), "{:?}", r);
    }
}

#[test]
fn declared_hash_mismatch_fails_and_frees_chunks() {
    let mut sut = Sut::new();
    let ids = sut.initiate(vec![("sha256".into(), "0".repeat(64))], 0);
    sut.chunk(&ids, 1, b"world", true, true).unwrap();
    let Ok(UploadResponse::ChunkStored { upload, .. }) = sut.chunk(&ids, 0, b"hello ", false, true) else { panic!() };
    assert_eq!(upload.state, UploadState::Failed);
    assert!(upload.error.unwrap().contains("SHA-256 mismatch"));
    assert_eq!(sut.chunk_keys(&ids.1), 0);
}

#[test]
fn cancel_and_expiry_free_chunks() {
    let mut sut = Sut::new();
    let ids = sut.initiate(vec![], 0);
    sut.chunk(&ids, 0, b"abc", false, true).unwrap();
    let Ok(UploadResponse::Cancelled(u)) = sut.call(UploadRequest::Cancel { node_id: ids.0.clone() }, true) else {
        panic!()
    };
    assert_eq!(u.state, UploadState::Cancelled);
    assert_eq!(sut.chunk_keys(&ids.1), 0);
    assert!(matches!(sut.chunk(&ids, 1, b"x", true, true), Err(CoreError::FailedPrecondition(_))));

    let ids = sut.initiate(vec![], 0);
    sut.chunk(&ids, 0, b"abc", false, true).unwrap();
    sut.restart(); // the expiry deadline survives a restart
    sut.now += 20_000;
    let ready = sut.m.tick(sut.now, &sut.store).unwrap();
    sut.store.write(&ready.writes).unwrap();
    sut.store.sync().unwrap();
    let Ok(UploadResponse::Status(u)) = sut.call(UploadRequest::Status { node_id: ids.0.clone() }, true) else {
        panic!()
    };
    assert_eq!(u.state, UploadState::Failed);
    assert!(u.error.unwrap().contains("expired"));
    assert_eq!(sut.chunk_keys(&ids.1), 0);
}

#[test]
fn bad_chunks_are_clear_errors() {
    let mut sut = Sut::new();
    let ids = sut.initiate(vec![], 0);
    assert!(matches!(sut.chunk(&ids, 0, b"", false, true), Err(CoreError::InvalidArgument(m)) if m.contains("empty")));
    let neg =
        ChunkIn { node_id: ids.0.clone(), upload_id: ids.1.clone(), number: -1, data: b"x".to_vec(), is_last: false };
    let r = sut.call(UploadRequest::Chunk(neg), true);
    assert!(matches!(r, Err(CoreError::InvalidArgument(m)) if m.contains("negative")));
    sut.chunk(&ids, 2, b"x", false, true).unwrap();
    sut.chunk(&ids, 4, b"x", false, true).unwrap();
    let r = sut.call(UploadRequest::Missing { upload_id: ids.1.clone(), limit: 10 }, true);
    assert_eq!(r, Ok(UploadResponse::Missing(vec![0, 1, 3])));
    assert!(matches!(sut.chunk(&ids, 1, b"x", true, true), Err(CoreError::InvalidArgument(_))));
    let unknown = ("n".to_string(), "nope".to_string());
    assert!(matches!(sut.chunk(&unknown, 0, b"x", false, true), Err(CoreError::NotFound(_))));
    let wrong_node = ("other".to_string(), ids.1.clone());
    assert!(matches!(sut.chunk(&wrong_node, 0, b"x", false, true), Err(CoreError::InvalidArgument(_))));
    let bad = Intake { metadata: vec![("sha256".into(), "xyz".into())], ..Intake::default() };
    assert!(matches!(sut.call(UploadRequest::Initiate(bad), true), Err(CoreError::InvalidArgument(_))));
}

#[test]
fn versions_and_fail_if_exists() {
    let mut sut = Sut::new();
    let intake = |fail| Intake { client_node_id: "doc-1".into(), fail_if_exists: fail, ..Intake::default() };
    let Ok(UploadResponse::Initiated { upload: v1, is_update: false }) =
        sut.call(UploadRequest::Initiate(intake(false)), true)
    else {
        panic!()
    };
    sut.chunk(&(v1.node_id.clone(), v1.upload_id.clone()), 0, b"one", true, true).unwrap();
    let Ok(UploadResponse::Initiated { upload: v2, is_update: true }) =
        sut.call(UploadRequest::Initiate(intake(false)), true)
    else {
        panic!()
    };
    assert_eq!((v2.version, v2.previous_upload_id.as_deref()), (2, Some(v1.upload_id.as_str())));
    assert!(matches!(sut.call(UploadRequest::Initiate(intake(true)), true), Err(CoreError::AlreadyExists(_))));
    // The old version stays downloadable; the new one is not complete yet.
    let Ok(UploadResponse::Document(d)) =
        sut.call(UploadRequest::Document { node_id: "doc-1".into(), version: Some(1) }, true)
    else {
        panic!()
    };
    assert_eq!(d.upload_id, v1.upload_id);
    assert!(matches!(
        sut.call(UploadRequest::Document { node_id: "doc-1".into(), version: None }, true),
        Err(CoreError::FailedPrecondition(_))
    ));
}
