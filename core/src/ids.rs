//! Validation of the ids clients send (request ids, node ids, upload ids).

use crate::error::{CoreError, CoreResult};

/// Longest id we accept.
pub const MAX_ID_LEN: usize = 128;

/// Checks a node's address: `host:port`, at most 255 bytes, with a port a socket can use.
pub fn validate_addr(field: &str, addr: &str) -> CoreResult<()> {
    let port = addr.rsplit_once(':').filter(|(h, _)| !h.is_empty()).and_then(|(_, p)| p.parse::<u16>().ok());
    match port {
        Some(p) if p > 0 && addr.len() <= 255 => Ok(()),
        _ => Err(CoreError::InvalidArgument(format!("{field} {addr:?}: expected host:port"))),
    }
}

/// Checks an id: 1..=128 characters from `A-Z a-z 0-9 . _ : -` (covers hex digests, UUIDs
/// and prefixed names). The error names the field and shows the id.
pub fn validate_id(field: &str, id: &str) -> CoreResult<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        let shown: String = id.chars().take(40).collect();
        Err(CoreError::InvalidArgument(format!(
            "{field}: {shown:?} is not a valid id (1 to {MAX_ID_LEN} characters from A-Z a-z 0-9 . _ : -)"
        )))
    }
}
