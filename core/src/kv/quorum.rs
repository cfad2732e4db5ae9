//! Quorum rules: how many replicas must answer, and what a read answers from the replies
//! it gathered (with the replicas that need repair).

use crate::error::{CoreError, CoreResult};

use super::vclock::{Version, reconcile};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    One,
    Quorum,
    All,
}

impl Consistency {
    /// Parses the wire's consistency string; empty means quorum.
    pub fn parse(s: &str) -> CoreResult<Consistency> {
        match s.to_ascii_lowercase().as_str() {
            "" | "quorum" => Ok(Consistency::Quorum),
            "one" => Ok(Consistency::One),
            "all" => Ok(Consistency::All),
            _ => Err(CoreError::InvalidArgument(format!(
                "consistency {} is not one of \"one\", \"quorum\", \"all\" (empty means quorum)",
                crate::ids::shown(s)
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Consistency::One => "one",
            Consistency::Quorum => "quorum",
            Consistency::All => "all",
        }
    }

    /// Replies needed out of `replicas`.
    pub fn needed(self, replicas: usize) -> usize {
        match self {
            Consistency::One => 1.min(replicas),
            Consistency::Quorum => replicas / 2 + 1,
            Consistency::All => replicas,
        }
    }
}

/// What a read learned: the reconciled versions and which repliers hold less than that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOutcome<N> {
    pub versions: Vec<Version>,
    pub stale: Vec<N>,
}

/// Reconciles the replies of a read. A replier is stale when its versions differ from the
/// reconciled set (it lacks a version or holds a superseded one).
pub fn resolve_read<N: Clone>(replies: &[(N, Vec<Version>)]) -> ReadOutcome<N> {
    let mut versions: Vec<Version> = Vec::new();
    for (_, v) in replies {
        versions = reconcile(&versions, v);
    }
    let stale = replies.iter().filter(|(_, v)| reconcile(&[], v) != versions).map(|(n, _)| n.clone()).collect();
    ReadOutcome { versions, stale }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::vclock::VClock;

    fn v(entries: &[(&str, u64)], ts: u64, val: &str) -> Version {
        let clock = VClock(entries.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect());
        Version { clock, ts_ms: ts, value: Some(val.as_bytes().to_vec()) }
    }

    #[test]
    fn needed_replies() {
        assert_eq!([1, 2, 3].map(|r| Consistency::Quorum.needed(r)), [1, 2, 2]);
        assert_eq!(Consistency::All.needed(3), 3);
        assert_eq!(Consistency::One.needed(3), 1);
        assert!(Consistency::parse("most").is_err());
        // A huge bad value is shown cut, so the status stays small enough for any client.
        let e = Consistency::parse(&"x".repeat(100_000)).unwrap_err().to_string();
        assert!(e.len() < 200 && e.contains("100000 bytes"), "{e}");
        assert_eq!(Consistency::parse("").unwrap(), Consistency::Quorum);
    }

    #[test]
    fn reads_merge_and_name_stale_replicas() {
        let old = v(&[("a", 1)], 1, "old");
        let new = v(&[("a", 2)], 2, "new");
        let other = v(&[("a", 1), ("b", 1)], 3, "other");
        let r = resolve_read(&[("n1", vec![old.clone()]), ("n2", vec![new.clone()]), ("n3", vec![])]);
        assert_eq!(r.versions, vec![new.clone()]);
        assert_eq!(r.stale, vec!["n1", "n3"]);
        // new and other are concurrent: siblings, both kept.
        let r = resolve_read(&[("n1", vec![new.clone()]), ("n2", vec![other.clone()])]);
        assert_eq!(r.versions.len(), 2);
        assert_eq!(r.stale, vec!["n1", "n2"]);
        assert_eq!(crate::kv::vclock::winner(&r.versions), Some(&other));
    }
}
