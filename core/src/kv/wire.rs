//! The peer protocol's bytes: [`KvRequest`] and `Result<KvResponse, CoreError>` in the core's
//! own encoding, so nodes of one version agree on it by construction. A body that does not
//! decode is a `Corrupt` error, never a panic.

use crate::codec::{Decoder, Encoder};
use crate::error::CoreError;
use crate::store::StoreError;

use super::replica::{Hint, IdemKey, IdemRecord, KvRequest, KvResponse};
use super::vclock::{VClock, Version, versions_len};

const WHAT: &str = "peer message";

fn versions(mut e: Encoder, vs: &[Version]) -> Encoder {
    e = e.u64(vs.len() as u64);
    for v in vs {
        e = v.encode(e);
    }
    e
}

fn read_versions(d: &mut Decoder<'_>) -> Result<Vec<Version>, StoreError> {
    let n = d.u64()?;
    let mut out = Vec::with_capacity(n.min(64) as usize);
    for _ in 0..n {
        out.push(Version::decode(d)?);
    }
    Ok(out)
}

fn idem_record(e: Encoder, r: &Option<IdemRecord>) -> Encoder {
    match r {
        None => e.u8(0),
        Some(r) => r.clock.encode(e.u8(fresh_tag(r.fresh)).str(&r.key).bytes(&r.request_hash)).u64(r.expires_ms),
    }
}

/// The tag before an idempotency key or record: 1, or 2 when it is fresh.
fn fresh_tag(fresh: bool) -> u8 {
    if fresh { 2 } else { 1 }
}

fn read_idem_record(d: &mut Decoder<'_>) -> Result<Option<IdemRecord>, StoreError> {
    Ok(match d.u8()? {
        0 => None,
        tag => {
            let key = d.string()?;
            let request_hash = d.bytes()?.to_vec();
            let clock = VClock::decode(d)?;
            Some(IdemRecord { key, request_hash, clock, expires_ms: d.u64()?, fresh: tag == 2 })
        }
    })
}

fn opt_bytes(e: Encoder, v: &Option<Vec<u8>>) -> Encoder {
    match v {
        Some(b) => e.u8(1).bytes(b),
        None => e.u8(0),
    }
}

fn pair(e: Encoder, p: &Option<(String, String)>) -> Encoder {
    match p {
        Some((t, k)) => e.u8(1).str(t).str(k),
        None => e.u8(0),
    }
}

fn read_pair(d: &mut Decoder<'_>) -> Result<Option<(String, String)>, StoreError> {
    Ok(match d.u8()? {
        0 => None,
        _ => Some((d.string()?, d.string()?)),
    })
}

fn scan(e: Encoder, after: &Option<(String, String)>, limit: usize) -> Encoder {
    pair(e, after).u64(limit as u64)
}

fn read_scan(d: &mut Decoder<'_>) -> Result<(Option<(String, String)>, usize), StoreError> {
    let after = read_pair(d)?;
    Ok((after, d.u64()?.min(1000) as usize))
}

pub fn encode_request(r: &KvRequest) -> Vec<u8> {
    // Room for the versions and value a write carries, and for the rest (names, keys, an
    // idempotency record) in most cases, so the common requests take one allocation.
    let carried = match r {
        KvRequest::Apply { versions: vs, .. }
        | KvRequest::HandOver { versions: vs, .. }
        | KvRequest::Hint { versions: vs, .. } => versions_len(vs),
        KvRequest::Coordinate { value, .. } => value.as_ref().map_or(0, Vec::len),
        _ => 0,
    };
    let e = Encoder::with_capacity(carried + 256);
    match r {
        // `keep` stays home: a peer coordinating for another node stores through `Apply`.
        KvRequest::Coordinate { tenant, key, value, idem, keep: _ } => {
            let e = opt_bytes(e.u8(1).str(tenant).str(key), value);
            match idem {
                Some(i) => e.u8(fresh_tag(i.fresh)).str(&i.key).bytes(&i.request_hash),
                None => e.u8(0),
            }
        }
        KvRequest::Apply { tenant, key, versions: vs, idem } => {
            idem_record(versions(e.u8(2).str(tenant).str(key), vs), idem)
        }
        KvRequest::HandOver { tenant, key, versions: vs } => versions(e.u8(20).str(tenant).str(key), vs),
        KvRequest::Read { tenant, key } => e.u8(3).str(tenant).str(key),
        KvRequest::IdemLookup { tenant, key, idem } => e.u8(17).str(tenant).str(key).str(idem),
        KvRequest::Hint { target, tenant, key, versions: vs, layout, taken_ms } => {
            let e = versions(e.u8(6).str(target).str(tenant).str(key), vs).u64(*layout);
            match taken_ms {
                Some(t) => e.u64(*t),
                None => e,
            }
        }
        KvRequest::Hints { target, limit } => e.u8(7).str(target).u64(*limit as u64),
        KvRequest::HintsDelivered { target, upto } => e.u8(8).str(target).u64(*upto),
        KvRequest::Stats => e.u8(9),
        KvRequest::Scan { after, limit } => scan(e.u8(10), after, *limit),
        KvRequest::Digests { after, limit } => scan(e.u8(11), after, *limit),
        KvRequest::Records { after, limit } => scan(e.u8(18), after, *limit),
        KvRequest::Fence { version } => e.u8(12).u64(*version),
        KvRequest::HintTargets => e.u8(13),
        KvRequest::Placed { version } => e.u8(14).u64(*version),
        KvRequest::TenantKeys { tenant, after } => match after {
            Some(k) => e.u8(16).str(tenant).u8(1).str(k),
            None => e.u8(16).str(tenant).u8(0),
        },
        KvRequest::Repaired { before_ms, layout } => e.u8(19).u64(*before_ms).u64(*layout),
        KvRequest::Stamp => e.u8(21),
        KvRequest::Discard { layout, keys } => {
            keys.iter().fold(e.u8(15).u64(*layout).u64(keys.len() as u64), |e, (t, k, d)| e.str(t).str(k).bytes(d))
        }
    }
    .finish()
}

pub fn decode_request(buf: &[u8]) -> Result<KvRequest, StoreError> {
    let mut d = Decoder::new(WHAT, buf);
    let r = match d.u8()? {
        1 => {
            let tenant = d.string()?;
            let key = d.string()?;
            let value = match d.u8()? {
                0 => None,
                _ => Some(d.bytes()?.to_vec()),
            };
            let idem = match d.u8()? {
                0 => None,
                tag => Some(IdemKey { key: d.string()?, request_hash: d.bytes()?.to_vec(), fresh: tag == 2 }),
            };
            KvRequest::Coordinate { tenant, key, value, idem, keep: false }
        }
        2 => {
            let tenant = d.string()?;
            let key = d.string()?;
            let versions = read_versions(&mut d)?;
            KvRequest::Apply { tenant, key, versions, idem: read_idem_record(&mut d)? }
        }
        20 => {
            let (tenant, key) = (d.string()?, d.string()?);
            KvRequest::HandOver { tenant, key, versions: read_versions(&mut d)? }
        }
        3 => KvRequest::Read { tenant: d.string()?, key: d.string()? },
        17 => KvRequest::IdemLookup { tenant: d.string()?, key: d.string()?, idem: d.string()? },
        6 => {
            let (target, tenant, key) = (d.string()?, d.string()?, d.string()?);
            let (versions, layout) = (read_versions(&mut d)?, d.u64()?);
            let taken_ms = if d.is_empty() { None } else { Some(d.u64()?) };
            KvRequest::Hint { target, tenant, key, versions, layout, taken_ms }
        }
        7 => KvRequest::Hints { target: d.string()?, limit: d.u64()?.min(1000) as usize },
        8 => KvRequest::HintsDelivered { target: d.string()?, upto: d.u64()? },
        9 => KvRequest::Stats,
        10 => {
            let (after, limit) = read_scan(&mut d)?;
            KvRequest::Scan { after, limit }
        }
        11 => {
            let (after, limit) = read_scan(&mut d)?;
            KvRequest::Digests { after, limit }
        }
        18 => {
            let (after, limit) = read_scan(&mut d)?;
            KvRequest::Records { after, limit }
        }
        12 => KvRequest::Fence { version: d.u64()? },
        13 => KvRequest::HintTargets,
        14 => KvRequest::Placed { version: d.u64()? },
        19 => KvRequest::Repaired { before_ms: d.u64()?, layout: d.u64()? },
        21 => KvRequest::Stamp,
        16 => {
            let tenant = d.string()?;
            let after = match d.u8()? {
                0 => None,
                _ => Some(d.string()?),
            };
            KvRequest::TenantKeys { tenant, after }
        }
        15 => {
            let layout = d.u64()?;
            let n = d.u64()?;
            let mut keys = Vec::with_capacity(n.min(1000) as usize);
            for _ in 0..n {
                keys.push((d.string()?, d.string()?, d.bytes()?.to_vec()));
            }
            KvRequest::Discard { layout, keys }
        }
        t => return Err(StoreError::Corrupt { keyspace: WHAT, reason: format!("unknown request tag {t}") }),
    };
    d.end()?;
    Ok(r)
}

pub fn encode_reply(r: &Result<KvResponse, CoreError>) -> Vec<u8> {
    // As in `encode_request`: room for the versions of the answers to writes and reads.
    let carried = match r {
        Ok(KvResponse::Versions(vs)) | Ok(KvResponse::Coordinated { versions: vs, .. }) => versions_len(vs),
        _ => 0,
    };
    let e = Encoder::with_capacity(carried + 256);
    match r {
        Err(err) => {
            let code = match err {
                CoreError::InvalidArgument(_) => 1,
                CoreError::NotFound(_) => 2,
                CoreError::AlreadyExists(_) => 3,
                CoreError::FailedPrecondition(_) => 4,
                CoreError::ResourceExhausted(_) => 5,
                CoreError::Aborted(_) => 6,
                CoreError::Unavailable(_) => 7,
                CoreError::DeadlineExceeded(_) => 8,
                CoreError::Storage(_) => 9,
            };
            e.u8(0).u8(code).str(&err.to_string())
        }
        Ok(KvResponse::Coordinated { clock, versions: vs, duplicate, idem }) => {
            idem_record(versions(clock.encode(e.u8(1)), vs).u8(*duplicate as u8), idem)
        }
        Ok(KvResponse::Versions(vs)) => versions(e.u8(2), vs),
        Ok(KvResponse::Done) => e.u8(5),
        Ok(KvResponse::Hints(hs)) => {
            let mut e = e.u8(6).u64(hs.len() as u64);
            for h in hs {
                e = versions(e.u64(h.seq).str(&h.tenant).str(&h.key), &h.versions).u64(h.layout);
            }
            for h in hs {
                e = e.u64(h.taken_ms);
            }
            e
        }
        Ok(KvResponse::Stats { keys, hints }) => e.u8(7).u64(*keys).u64(*hints),
        Ok(KvResponse::Entries(es)) => {
            let mut e = e.u8(8).u64(es.len() as u64);
            for (t, k, vs) in es {
                e = versions(e.str(t).str(k), vs);
            }
            e
        }
        Ok(KvResponse::Fence(v)) => e.u8(10).u64(*v),
        Ok(KvResponse::Targets(ts)) => ts.iter().fold(e.u8(11).u64(ts.len() as u64), |e, t| e.str(t)),
        Ok(KvResponse::Placed(v)) => e.u8(12).u64(*v),
        Ok(KvResponse::Discarded(n)) => e.u8(13).u64(*n),
        Ok(KvResponse::Stamp(t)) => e.u8(17).u64(*t),
        Ok(KvResponse::Idem { record, held }) => idem_record(e.u8(15), record).u8(u8::from(*held)),
        Ok(KvResponse::Count(n, last)) => match last {
            Some(k) => e.u8(14).u64(*n).u8(1).str(k),
            None => e.u8(14).u64(*n).u8(0),
        },
        Ok(KvResponse::Digests(ds)) => {
            let mut e = e.u8(9).u64(ds.len() as u64);
            for (t, k, d) in ds {
                e = e.str(t).str(k).bytes(d);
            }
            e
        }
        Ok(KvResponse::Records { found, last }) => {
            let mut e = e.u8(16).u64(found.len() as u64);
            for (t, k, r) in found {
                e = idem_record(e.str(t).str(k), &Some(r.clone()));
            }
            pair(e, last)
        }
    }
    .finish()
}

pub fn decode_reply(buf: &[u8]) -> Result<Result<KvResponse, CoreError>, StoreError> {
    let mut d = Decoder::new(WHAT, buf);
    let r = match d.u8()? {
        0 => {
            let code = d.u8()?;
            let msg = d.string()?;
            Err(match code {
                1 => CoreError::InvalidArgument(msg),
                2 => CoreError::NotFound(msg),
                3 => CoreError::AlreadyExists(msg),
                4 => CoreError::FailedPrecondition(msg),
                5 => CoreError::ResourceExhausted(msg),
                6 => CoreError::Aborted(msg),
                8 => CoreError::DeadlineExceeded(msg),
                // A peer's storage failure is, to us, a replica that cannot serve.
                _ => CoreError::Unavailable(msg),
            })
        }
        1 => {
            let clock = VClock::decode(&mut d)?;
            let versions = read_versions(&mut d)?;
            let duplicate = d.u8()? != 0;
            Ok(KvResponse::Coordinated { clock, versions, duplicate, idem: read_idem_record(&mut d)? })
        }
        2 => Ok(KvResponse::Versions(read_versions(&mut d)?)),
        5 => Ok(KvResponse::Done),
        6 => {
            let n = d.u64()?;
            let mut hs = Vec::with_capacity(n.min(1000) as usize);
            for _ in 0..n {
                let (seq, tenant, key) = (d.u64()?, d.string()?, d.string()?);
                hs.push(Hint { seq, tenant, key, versions: read_versions(&mut d)?, layout: d.u64()?, taken_ms: 0 });
            }
            // Appended after the list, one per hint (an older node's list has none).
            if !d.is_empty() {
                for h in &mut hs {
                    h.taken_ms = d.u64()?;
                }
            }
            Ok(KvResponse::Hints(hs))
        }
        7 => Ok(KvResponse::Stats { keys: d.u64()?, hints: d.u64()? }),
        8 => {
            let n = d.u64()?;
            let mut es = Vec::with_capacity(n.min(1000) as usize);
            for _ in 0..n {
                let (t, k) = (d.string()?, d.string()?);
                es.push((t, k, read_versions(&mut d)?));
            }
            Ok(KvResponse::Entries(es))
        }
        9 => {
            let n = d.u64()?;
            let mut ds = Vec::with_capacity(n.min(1000) as usize);
            for _ in 0..n {
                ds.push((d.string()?, d.string()?, d.bytes()?.to_vec()));
            }
            Ok(KvResponse::Digests(ds))
        }
        10 => Ok(KvResponse::Fence(d.u64()?)),
        11 => {
            let n = d.u64()?;
            let mut ts = Vec::with_capacity(n.min(1000) as usize);
            for _ in 0..n {
                ts.push(d.string()?);
            }
            Ok(KvResponse::Targets(ts))
        }
        12 => Ok(KvResponse::Placed(d.u64()?)),
        13 => Ok(KvResponse::Discarded(d.u64()?)),
        17 => Ok(KvResponse::Stamp(d.u64()?)),
        15 => Ok(KvResponse::Idem { record: read_idem_record(&mut d)?, held: d.u8()? != 0 }),
        16 => {
            let n = d.u64()?;
            let mut found = Vec::with_capacity(n.min(1000) as usize);
            for _ in 0..n {
                let (t, k) = (d.string()?, d.string()?);
                let rec = read_idem_record(&mut d)?.ok_or_else(|| StoreError::Corrupt {
                    keyspace: WHAT,
                    reason: "a records page without a record".into(),
                })?;
                found.push((t, k, rec));
            }
            Ok(KvResponse::Records { found, last: read_pair(&mut d)? })
        }
        14 => {
            let n = d.u64()?;
            let last = match d.u8()? {
                0 => None,
                _ => Some(d.string()?),
            };
            Ok(KvResponse::Count(n, last))
        }
        t => return Err(StoreError::Corrupt { keyspace: WHAT, reason: format!("unknown reply tag {t}") }),
    };
    d.end()?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let v = Version { clock: VClock([("n1".to_owned(), 3)].into()), ts_ms: 9, value: Some(b"x".to_vec()) };
        let rec = IdemRecord {
            key: "k".into(),
            request_hash: vec![1, 2],
            clock: v.clock.clone(),
            expires_ms: 5,
            fresh: true,
        };
        // A hint kept anew (its age starts now) and one kept again for another owner.
        let hint = |taken_ms| KvRequest::Hint {
            target: "n2".into(),
            tenant: "t".into(),
            key: "k".into(),
            versions: vec![v.clone()],
            layout: 3,
            taken_ms,
        };
        let reqs = [
            KvRequest::Coordinate {
                tenant: "t".into(),
                key: "k".into(),
                value: None,
                idem: Some(IdemKey { key: "i".into(), request_hash: vec![7], fresh: false }),
                keep: false,
            },
            KvRequest::Coordinate {
                tenant: "t".into(),
                key: "k".into(),
                value: Some(b"v".to_vec()),
                idem: Some(IdemKey { key: "g".into(), request_hash: vec![8], fresh: true }),
                keep: false,
            },
            KvRequest::Apply {
                tenant: "t".into(),
                key: "k".into(),
                versions: vec![v.clone()],
                idem: Some(rec.clone()),
            },
            KvRequest::HandOver { tenant: "t".into(), key: "k".into(), versions: vec![v.clone()] },
            hint(None),
            hint(Some(77)),
            KvRequest::IdemLookup { tenant: "t".into(), key: "k".into(), idem: "op-1".into() },
            KvRequest::Stats,
            KvRequest::Scan { after: Some(("t".into(), "k".into())), limit: 5 },
            KvRequest::Digests { after: None, limit: 7 },
            KvRequest::Records { after: Some(("t".into(), "op-1".into())), limit: 9 },
            KvRequest::Fence { version: 4 },
            KvRequest::HintTargets,
            KvRequest::Repaired { before_ms: 7, layout: 3 },
            KvRequest::Stamp,
            KvRequest::Placed { version: 6 },
            KvRequest::TenantKeys { tenant: "t".into(), after: None },
            KvRequest::TenantKeys { tenant: "t".into(), after: Some("k".into()) },
            KvRequest::Discard { layout: 5, keys: vec![("t".into(), "k".into(), vec![1; 16])] },
        ];
        for r in reqs {
            assert_eq!(decode_request(&encode_request(&r)).unwrap(), r);
        }
        let replies = [
            Ok(KvResponse::Coordinated {
                clock: v.clock.clone(),
                versions: vec![v.clone()],
                duplicate: true,
                idem: Some(rec.clone()),
            }),
            Ok(KvResponse::Records {
                found: vec![("t".into(), "k".into(), IdemRecord { fresh: false, ..rec.clone() })],
                last: Some(("t".into(), "op-2".into())),
            }),
            Ok(KvResponse::Records { found: vec![], last: None }),
            Ok(KvResponse::Idem { record: Some(IdemRecord { fresh: false, ..rec }), held: true }),
            Ok(KvResponse::Idem { record: None, held: false }),
            Ok(KvResponse::Hints(vec![Hint {
                seq: 4,
                tenant: "t".into(),
                key: "k".into(),
                versions: vec![v],
                layout: 2,
                taken_ms: 12,
            }])),
            Ok(KvResponse::Digests(vec![("t".into(), "k".into(), vec![3; 16])])),
            Ok(KvResponse::Fence(9)),
            Ok(KvResponse::Targets(vec!["n2".into(), "n9".into()])),
            Ok(KvResponse::Placed(6)),
            Ok(KvResponse::Discarded(2)),
            Ok(KvResponse::Stamp(11)),
            Ok(KvResponse::Count(3, None)),
            Ok(KvResponse::Count(3, Some("k".into()))),
            Err(CoreError::AlreadyExists("tenant exists".into())),
        ];
        for r in replies {
            assert_eq!(decode_reply(&encode_reply(&r)).unwrap(), r);
        }
        assert!(decode_request(&[42]).is_err());
    }
}
