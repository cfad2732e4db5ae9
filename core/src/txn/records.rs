//! Records of the state store and their encoding.

use crate::codec::{Decoder, Encoder};
use crate::store::{STATE, StoreError};

/// One version of a key. `value: None` is a tombstone (the key was deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Option<Vec<u8>>,
    pub version: u64,
    pub commit_ts: u64,
}

impl Versioned {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let e = Encoder::new().u64(self.version).u64(self.commit_ts);
        match &self.value {
            Some(v) => e.u8(1).bytes(v),
            None => e.u8(0),
        }
        .finish()
    }

    pub(crate) fn decode(buf: &[u8]) -> Result<Self, StoreError> {
        let mut d = Decoder::new(STATE, buf);
        let version = d.u64()?;
        let commit_ts = d.u64()?;
        let value = match d.u8()? {
            0 => None,
            1 => Some(d.bytes()?.to_vec()),
            _ => return Err(StoreError::Corrupt { keyspace: STATE, reason: "bad value tag".into() }),
        };
        d.end()?;
        Ok(Self { value, version, commit_ts })
    }
}

/// One key's change in a committed transaction, as replay shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub version: u64,
}

/// A committed transaction's operations on one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub txn_id: String,
    pub commit_ts: u64,
    pub operations: Vec<Operation>,
}

impl Event {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new().str(&self.txn_id).u64(self.commit_ts).u64(self.operations.len() as u64);
        for op in &self.operations {
            e = e.str(&op.key).u64(op.version);
            e = match &op.value {
                Some(v) => e.u8(1).bytes(v),
                None => e.u8(0),
            };
        }
        e.finish()
    }

    pub(crate) fn decode(buf: &[u8]) -> Result<Self, StoreError> {
        let mut d = Decoder::new(STATE, buf);
        let txn_id = d.string()?;
        let commit_ts = d.u64()?;
        let n = d.u64()?;
        let mut operations = Vec::new();
        for _ in 0..n {
            let key = d.string()?;
            let version = d.u64()?;
            let value = match d.u8()? {
                0 => None,
                1 => Some(d.bytes()?.to_vec()),
                _ => return Err(StoreError::Corrupt { keyspace: STATE, reason: "bad op tag".into() }),
            };
            operations.push(Operation { key, value, version });
        }
        d.end()?;
        Ok(Self { txn_id, commit_ts, operations })
    }
}

/// The global log record of a commit: which transaction, which agents.
pub(crate) fn encode_global(txn_id: &str, agents: &[(String, String)]) -> Vec<u8> {
    let mut e = Encoder::new().str(txn_id).u64(agents.len() as u64);
    for (ns, agent) in agents {
        e = e.str(ns).str(agent);
    }
    e.finish()
}

pub(crate) fn decode_global(buf: &[u8]) -> Result<(String, Vec<(String, String)>), StoreError> {
    let mut d = Decoder::new(STATE, buf);
    let txn_id = d.string()?;
    let n = d.u64()?;
    let mut agents = Vec::new();
    for _ in 0..n {
        agents.push((d.string()?, d.string()?));
    }
    d.end()?;
    Ok((txn_id, agents))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip() {
        let v = Versioned { value: Some(b"x".to_vec()), version: 3, commit_ts: 9 };
        assert_eq!(Versioned::decode(&v.encode()).unwrap(), v);
        let t = Versioned { value: None, version: 4, commit_ts: 10 };
        assert_eq!(Versioned::decode(&t.encode()).unwrap(), t);
        let e = Event {
            txn_id: "t".into(),
            commit_ts: 5,
            operations: vec![
                Operation { key: "a".into(), value: Some(vec![1]), version: 1 },
                Operation { key: "b".into(), value: None, version: 2 },
            ],
        };
        assert_eq!(Event::decode(&e.encode()).unwrap(), e);
        let g = encode_global("t", &[("ns".into(), "a".into())]);
        assert_eq!(decode_global(&g).unwrap(), ("t".to_owned(), vec![("ns".to_owned(), "a".to_owned())]));
    }
}
