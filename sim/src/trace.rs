//! The event history of one run: what happened, in order, with simulated time. Hashed for
//! the determinism check and printed when a checker fails.

use sha2::{Digest, Sha256};

#[derive(Default)]
pub struct Trace {
    events: Vec<String>,
    hasher: Sha256,
}

impl Trace {
    pub fn record(&mut self, now_ms: u64, event: String) {
        let line = format!("{now_ms:>8}ms {event}");
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        self.events.push(line);
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Hash of every event so far.
    pub fn hash(&self) -> String {
        let d = self.hasher.clone().finalize();
        d.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    pub fn events(&self) -> &[String] {
        &self.events
    }

    /// The last `n` events, for a failure report.
    pub fn tail(&self, n: usize) -> &[String] {
        &self.events[self.events.len().saturating_sub(n)..]
    }
}
