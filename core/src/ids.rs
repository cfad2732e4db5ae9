//! Validation of the ids clients send (request ids, node ids, upload ids).

use crate::error::{CoreError, CoreResult};

/// Longest id we accept.
pub const MAX_ID_LEN: usize = 128;

/// Longest node address (`host:port`) we accept.
pub const MAX_ADDR_LEN: usize = 255;

/// Checks a node's address: `host:port`, at most 255 bytes, with a port a socket can use.
pub fn validate_addr(field: &str, addr: &str) -> CoreResult<()> {
    let port = addr.rsplit_once(':').filter(|(h, _)| !h.is_empty()).and_then(|(_, p)| p.parse::<u16>().ok());
    match port {
        Some(p) if p > 0 && addr.len() <= MAX_ADDR_LEN => Ok(()),
        _ => Err(CoreError::InvalidArgument(format!("{field} {}: expected host:port", shown(addr)))),
    }
}

/// `s` as an error message shows it: quoted, and cut to its first 40 characters (with the
/// length it had) so that a huge bad value cannot blow up the status it is refused with.
pub fn shown(s: &str) -> String {
    const SHOWN: usize = 40;
    match s.char_indices().nth(SHOWN) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &s[..cut], s.len()),
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
        Err(CoreError::InvalidArgument(format!(
            "{field}: {} is not a valid id (1 to {MAX_ID_LEN} characters from A-Z a-z 0-9 . _ : -)",
            shown(id)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_bad_value_is_shown_cut_with_its_length() {
        assert_eq!(shown("n1"), "\"n1\"");
        let huge = "é".repeat(100_000);
        let s = shown(&huge);
        assert!(s.len() < 120 && s.ends_with("... (200000 bytes)"), "{s}");
        let e = validate_id("node_id", &"!".repeat(1 << 20)).unwrap_err().to_string();
        assert!(e.len() < 200 && e.contains("node_id") && e.contains("1048576 bytes"), "{e}");
        let e = validate_addr("address", &"a".repeat(300)).unwrap_err().to_string();
        assert!(e.len() < 200 && e.contains("expected host:port"), "{e}");
    }
}
