//! A small, explicit binary encoding for records the core stores.
//!
//! Fixed-width big-endian integers and length-prefixed bytes: keys sort correctly, and a
//! truncated or foreign record is a clear `Corrupt` error instead of a panic.

use crate::store::StoreError;

#[derive(Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }
    /// An encoder with room for `bytes`: a record whose size is known up front is built in
    /// one allocation instead of the five or six a growing buffer takes.
    pub fn with_capacity(bytes: usize) -> Self {
        Self { buf: Vec::with_capacity(bytes) }
    }
    pub fn u8(mut self, v: u8) -> Self {
        self.buf.push(v);
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn bytes(mut self, v: &[u8]) -> Self {
        self.buf.extend_from_slice(&(v.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(v);
        self
    }
    pub fn str(self, v: &str) -> Self {
        self.bytes(v.as_bytes())
    }
    pub fn opt_str(self, v: Option<&str>) -> Self {
        match v {
            Some(s) => self.u8(1).str(s),
            None => self.u8(0),
        }
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

pub struct Decoder<'a> {
    buf: &'a [u8],
    keyspace: &'static str,
}

impl<'a> Decoder<'a> {
    pub fn new(keyspace: &'static str, buf: &'a [u8]) -> Self {
        Self { buf, keyspace }
    }

    fn corrupt(&self, reason: &str) -> StoreError {
        StoreError::Corrupt { keyspace: self.keyspace, reason: reason.to_owned() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.buf.len() < n {
            return Err(self.corrupt("record truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    pub fn u64(&mut self) -> Result<u64, StoreError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let b = self.take(4)?;
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        self.take(len)
    }

    pub fn string(&mut self) -> Result<String, StoreError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.corrupt("invalid UTF-8"))
    }

    pub fn opt_string(&mut self) -> Result<Option<String>, StoreError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.string()?)),
            _ => Err(self.corrupt("bad option tag")),
        }
    }

    /// Whether everything has been read (for a field appended to a record kept on disk).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn end(&self) -> Result<(), StoreError> {
        if self.buf.is_empty() { Ok(()) } else { Err(self.corrupt("trailing bytes")) }
    }
}

/// Lower-case hex, for opaque tokens.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.as_bytes().chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let buf = Encoder::new().u8(3).u64(9).str("hé").opt_str(None).opt_str(Some("x")).finish();
        let mut d = Decoder::new("t", &buf);
        assert_eq!(d.u8().unwrap(), 3);
        assert_eq!(d.u64().unwrap(), 9);
        assert_eq!(d.string().unwrap(), "hé");
        assert_eq!(d.opt_string().unwrap(), None);
        assert_eq!(d.opt_string().unwrap(), Some("x".into()));
        d.end().unwrap();
    }

    #[test]
    fn truncated_is_corrupt_not_panic() {
        let buf = Encoder::new().str("hello").finish();
        let mut d = Decoder::new("t", &buf[..5]);
        assert!(d.string().is_err());
    }

    #[test]
    fn hex_roundtrip() {
        assert_eq!(unhex(&hex(&[0, 255, 16])), Some(vec![0, 255, 16]));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("abc"), None);
    }
}
