//! Key layout of the document repository: chunk bodies in the `blob` keyspace, everything
//! else in the `upload` keyspace.
//!
//! ```text
//! blob:   c <upload_id> <chunk:u64>  -> chunk bytes (stay as the document's body once complete)
//! upload:
//! u <upload_id>                 -> upload record (one version of a document)
//! d <upload_id> <chunk:u64>     -> chunk length (received chunks, download ranges)
//! n <node_id>                   -> latest version number and its upload id
//! v <node_id> <version:u64>     -> upload id of that version
//! a <upload_id>                 -> u64 deadline: uploads still open, for expiry
//! ```

fn name(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn upload(id: &str) -> Vec<u8> {
    let mut k = vec![b'u'];
    k.extend_from_slice(id.as_bytes());
    k
}

pub fn chunk_prefix(upload: &str) -> Vec<u8> {
    let mut k = vec![b'c'];
    name(&mut k, upload);
    k
}

pub fn chunk(upload: &str, n: u64) -> Vec<u8> {
    let mut k = chunk_prefix(upload);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

pub fn digest_prefix(upload: &str) -> Vec<u8> {
    let mut k = vec![b'd'];
    name(&mut k, upload);
    k
}

pub fn digest(upload: &str, n: u64) -> Vec<u8> {
    let mut k = digest_prefix(upload);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

pub fn node(id: &str) -> Vec<u8> {
    let mut k = vec![b'n'];
    k.extend_from_slice(id.as_bytes());
    k
}

pub fn version(node: &str, v: u64) -> Vec<u8> {
    let mut k = vec![b'v'];
    name(&mut k, node);
    k.extend_from_slice(&v.to_be_bytes());
    k
}

pub const ACTIVE_PREFIX: &[u8] = b"a";

pub fn active(upload: &str) -> Vec<u8> {
    let mut k = ACTIVE_PREFIX.to_vec();
    k.extend_from_slice(upload.as_bytes());
    k
}

/// The number at the end of a chunk or digest key.
pub fn tail_u64(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}
