//! The document repository: intake-first uploads assembled from chunks.
//!
//! `Initiate` records the intake and answers with ids at once. Chunks arrive in any order,
//! in parallel, possibly repeated; each is written with the step that acknowledges it, so a
//! chunk is acknowledged only once durable. The machine keeps a running SHA-256 over the
//! contiguous prefix of chunks received (reading back stored chunks as gaps fill), so the
//! document's hash is ready the moment the last gap closes and memory stays at one chunk
//! whatever the document's size. After a restart the running hash is rebuilt from the
//! stored prefix on the next chunk. The chunks then remain as the document's body.

mod keys;
mod machine;
mod records;

pub use machine::{ChunkIn, Intake, UploadConfig, UploadMachine, UploadRequest, UploadResponse};
pub use records::{Upload, UploadState};

/// The `blob` keyspace key of a chunk's bytes, for drivers that write chunk files ahead of
/// the step that stores them.
pub fn chunk_key(upload_id: &str, number: u64) -> Vec<u8> {
    keys::chunk(upload_id, number)
}

/// Largest chunk, in bytes.
pub const MAX_CHUNK_BYTES: usize = 16 << 20;
/// Most chunks one document may have.
pub const MAX_CHUNKS: u64 = 1 << 20;
/// Metadata key under which a client declares the document's SHA-256 (hex).
pub const DECLARED_SHA256_KEY: &str = "sha256";
/// Default time an upload may go without a chunk before it expires.
pub const DEFAULT_TTL_MS: u64 = 24 * 60 * 60 * 1000;
