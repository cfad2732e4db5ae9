//! Records of the document repository.

use crate::codec::{Decoder, Encoder};
use crate::store::{StoreError, UPLOAD};

/// Where an upload stands; the numbers are the wire enum's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum UploadState {
    Pending = 1,
    Uploading = 2,
    Completed = 3,
    Failed = 4,
    Cancelled = 5,
}

impl UploadState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    fn from_u8(v: u8) -> Option<Self> {
        [Self::Pending, Self::Uploading, Self::Completed, Self::Failed, Self::Cancelled]
            .into_iter()
            .find(|s| *s as u8 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Uploading => "UPLOADING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

/// One upload: one version of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub upload_id: String,
    pub node_id: String,
    pub version: u64,
    pub previous_upload_id: Option<String>,
    pub state: UploadState,
    pub name: String,
    pub path: String,
    pub drive: String,
    pub mime_type: String,
    pub metadata: Vec<(String, String)>,
    /// 0: not declared.
    pub expected_size: u64,
    /// Lower-case hex SHA-256 the client declared (metadata key `sha256`).
    pub declared_sha256: Option<String>,
    /// Number of the chunk sent with `is_last`, once known.
    pub last_chunk: Option<u64>,
    /// Highest chunk number received so far.
    pub highest_chunk: Option<u64>,
    pub chunks_received: u64,
    pub bytes_received: u64,
    /// Lower-case hex SHA-256 of the assembled document, once complete.
    pub sha256: Option<String>,
    pub error: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

fn opt_u64(e: Encoder, v: Option<u64>) -> Encoder {
    match v {
        Some(n) => e.u8(1).u64(n),
        None => e.u8(0),
    }
}

impl Upload {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new()
            .u8(1)
            .str(&self.upload_id)
            .str(&self.node_id)
            .u64(self.version)
            .opt_str(self.previous_upload_id.as_deref())
            .u8(self.state as u8)
            .str(&self.name)
            .str(&self.path)
            .str(&self.drive)
            .str(&self.mime_type)
            .u64(self.metadata.len() as u64);
        for (k, v) in &self.metadata {
            e = e.str(k).str(v);
        }
        e = e.u64(self.expected_size).opt_str(self.declared_sha256.as_deref());
        e = opt_u64(e, self.last_chunk);
        e = opt_u64(e, self.highest_chunk);
        e.u64(self.chunks_received)
            .u64(self.bytes_received)
            .opt_str(self.sha256.as_deref())
            .opt_str(self.error.as_deref())
            .u64(self.created_ms)
            .u64(self.updated_ms)
            .finish()
    }

    pub(crate) fn decode(buf: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |r: &str| StoreError::Corrupt { keyspace: UPLOAD, reason: r.to_owned() };
        let mut d = Decoder::new(UPLOAD, buf);
        if d.u8()? != 1 {
            return Err(corrupt("unknown upload record version"));
        }
        let upload_id = d.string()?;
        let node_id = d.string()?;
        let version = d.u64()?;
        let previous_upload_id = d.opt_string()?;
        let state = UploadState::from_u8(d.u8()?).ok_or_else(|| corrupt("unknown upload state"))?;
        let name = d.string()?;
        let path = d.string()?;
        let drive = d.string()?;
        let mime_type = d.string()?;
        let n = d.u64()?;
        let mut metadata = Vec::new();
        for _ in 0..n {
            metadata.push((d.string()?, d.string()?));
        }
        let expected_size = d.u64()?;
        let declared_sha256 = d.opt_string()?;
        let opt = |d: &mut Decoder| -> Result<Option<u64>, StoreError> {
            match d.u8()? {
                0 => Ok(None),
                1 => Ok(Some(d.u64()?)),
                _ => Err(corrupt("bad option tag")),
            }
        };
        let last_chunk = opt(&mut d)?;
        let highest_chunk = opt(&mut d)?;
        let rec = Self {
            upload_id,
            node_id,
            version,
            previous_upload_id,
            state,
            name,
            path,
            drive,
            mime_type,
            metadata,
            expected_size,
            declared_sha256,
            last_chunk,
            highest_chunk,
            chunks_received: d.u64()?,
            bytes_received: d.u64()?,
            sha256: d.opt_string()?,
            error: d.opt_string()?,
            created_ms: d.u64()?,
            updated_ms: d.u64()?,
        };
        d.end()?;
        Ok(rec)
    }
}

/// A stored chunk's length (its presence marks the chunk as received).
pub(crate) fn encode_len(len: u64) -> Vec<u8> {
    Encoder::new().u64(len).finish()
}

pub(crate) fn decode_len(buf: &[u8]) -> Result<u64, StoreError> {
    let mut d = Decoder::new(UPLOAD, buf);
    let len = d.u64()?;
    d.end()?;
    Ok(len)
}
