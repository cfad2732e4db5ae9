//! The registry's vocabulary: meta-store kinds, statuses, entries and configuration.

use std::collections::BTreeMap;

use crate::codec::{Decoder, Encoder};
use crate::store::{STATUS, StoreError};

/// A meta-store. The first five are the KMS contract's; the rest are Tessera's own
/// long-running operations, appended at the end of the wire enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum StoreKind {
    KeyGeneration = 1,
    PublicDecryption = 2,
    UserDecryption = 3,
    CrsGeneration = 4,
    Preprocessing = 5,
    Migration = 6,
    Upload = 7,
    Plan = 8,
    ReconcileJob = 9,
}

impl StoreKind {
    pub const COUNT: usize = 9;
    /// The fixed order `ALL` walks the stores in.
    pub const ALL: [StoreKind; Self::COUNT] = [
        Self::KeyGeneration,
        Self::PublicDecryption,
        Self::UserDecryption,
        Self::CrsGeneration,
        Self::Preprocessing,
        Self::Migration,
        Self::Upload,
        Self::Plan,
        Self::ReconcileJob,
    ];

    /// The wire number; 0 (`ALL`) is not a kind.
    pub fn from_wire(n: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as i32 == n)
    }

    pub fn index(self) -> usize {
        self as usize - 1
    }

    /// The wire enum's value name.
    pub fn name(self) -> &'static str {
        match self {
            Self::KeyGeneration => "KEY_GENERATION",
            Self::PublicDecryption => "PUBLIC_DECRYPTION",
            Self::UserDecryption => "USER_DECRYPTION",
            Self::CrsGeneration => "CRS_GENERATION",
            Self::Preprocessing => "PREPROCESSING",
            Self::Migration => "MIGRATION",
            Self::Upload => "UPLOAD",
            Self::Plan => "PLAN",
            Self::ReconcileJob => "RECONCILE_JOB",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        let up = s.to_ascii_uppercase().replace('-', "_");
        Self::ALL.into_iter().find(|k| k.name() == up)
    }
}

/// A request's processing status (the wire's `ANY` is a filter, not a status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Status {
    Processing = 0,
    Completed = 1,
    Failed = 2,
    Deleted = 4,
}

impl Status {
    pub fn from_wire(n: i32) -> Option<Self> {
        match n {
            0 => Some(Self::Processing),
            1 => Some(Self::Completed),
            2 => Some(Self::Failed),
            4 => Some(Self::Deleted),
            _ => None,
        }
    }

    pub fn is_finished(self) -> bool {
        self != Self::Processing
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Processing => "PROCESSING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Deleted => "DELETED",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        [Self::Processing, Self::Completed, Self::Failed, Self::Deleted]
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub kind: StoreKind,
    pub status: Status,
    pub error: Option<String>,
    /// Insertion order within the registry; fixes the listing order.
    pub seq: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl Entry {
    pub(crate) fn encode(&self) -> Vec<u8> {
        Encoder::new()
            .u8(self.status as u8)
            .opt_str(self.error.as_deref())
            .u64(self.seq)
            .u64(self.created_ms)
            .u64(self.updated_ms)
            .finish()
    }

    pub(crate) fn decode(kind: StoreKind, id: &str, buf: &[u8]) -> Result<Self, StoreError> {
        let mut d = Decoder::new(STATUS, buf);
        let status = Status::from_wire(d.u8()? as i32)
            .ok_or(StoreError::Corrupt { keyspace: STATUS, reason: "unknown status".into() })?;
        let error = d.opt_string()?;
        let seq = d.u64()?;
        let created_ms = d.u64()?;
        let updated_ms = d.u64()?;
        d.end()?;
        Ok(Self { id: id.to_owned(), kind, status, error, seq, created_ms, updated_ms })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreInfo {
    pub kind: StoreKind,
    /// -1 means unlimited.
    pub capacity: i64,
    pub count: u64,
}

/// Per-store capacities; a store not named is unlimited (-1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusConfig {
    pub capacities: BTreeMap<StoreKind, i64>,
}

impl StatusConfig {
    pub fn capacity(&self, kind: StoreKind) -> i64 {
        self.capacities.get(&kind).copied().unwrap_or(-1)
    }

    pub fn with_capacity(mut self, kind: StoreKind, capacity: i64) -> Self {
        self.capacities.insert(kind, capacity);
        self
    }
}
