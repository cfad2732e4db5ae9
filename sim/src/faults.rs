//! The fault plan of one seed: every rate is drawn from the seed, so a sweep covers calm runs
//! and stormy ones, and any run is reproduced by its seed alone.

use tessera_core::rng::Rng;

#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// Probability that a request or a reply is lost.
    pub loss: f64,
    /// Probability that a request is delivered twice.
    pub duplicate: f64,
    /// One-way network delay is uniform in 0..=max_delay_ms (so messages reorder).
    pub max_delay_ms: u64,
    /// Mean time between faults (crash, partition, disk error).
    pub fault_every_ms: u64,
    /// Probability that a fault is a crash (else a partition or a disk error).
    pub crash_share: f64,
    pub disk_error_share: f64,
    /// Longest a node stays down or a partition lasts.
    pub max_outage_ms: u64,
    /// Upper bound of simulated fsync latency.
    pub max_fsync_ms: u64,
    /// Per-node clock skew in milliseconds.
    pub skew_ms: Vec<i64>,
    /// A node kept down from this long after the clients start until the heal, longer than
    /// the tombstone grace: (node, from). Drawn only where tombstones are collected in the run.
    pub long_outage: Option<(usize, u64)>,
}

impl FaultPlan {
    /// A plan for `nodes` nodes whose faults come `min_fault_every_ms` apart on average at
    /// the most, and whose clocks are off by up to `max_skew_ms` each way.
    pub fn draw(rng: &mut Rng, nodes: usize, min_fault_every_ms: u64, max_skew_ms: i64) -> Self {
        let calm = rng.chance(0.1);
        let pick = |rng: &mut Rng, max: f64| if calm { 0.0 } else { (rng.below(1000) as f64 / 1000.0) * max };
        Self {
            loss: pick(rng, 0.15),
            duplicate: pick(rng, 0.15),
            max_delay_ms: 1 + rng.below(40),
            fault_every_ms: if calm { u64::MAX / 4 } else { min_fault_every_ms + rng.below(400) },
            crash_share: 0.5,
            disk_error_share: 0.15,
            max_outage_ms: 20 + rng.below(300),
            max_fsync_ms: 1 + rng.below(8),
            skew_ms: (0..nodes).map(|_| (rng.below(2001) as i64 - 1000) * max_skew_ms / 1000).collect(),
            long_outage: None,
        }
    }

    /// On half the seeds, one of `nodes` goes down between `from_ms` and twice that into the
    /// run, and stays down until the heal.
    pub fn draw_long_outage(&mut self, rng: &mut Rng, nodes: usize, from_ms: u64) {
        if rng.chance(0.5) {
            self.long_outage = Some((rng.below(nodes as u64) as usize, from_ms + rng.below(from_ms)));
        }
    }

    pub fn describe(&self) -> String {
        let long = match self.long_outage {
            Some((node, from)) => format!(" n{node} down from {from}ms to the heal"),
            None => String::new(),
        };
        format!(
            "loss={:.3} dup={:.3} delay<={}ms fault_every={}ms outage<={}ms fsync<={}ms skew={:?}{long}",
            self.loss,
            self.duplicate,
            self.max_delay_ms,
            self.fault_every_ms.min(999_999),
            self.max_outage_ms,
            self.max_fsync_ms,
            self.skew_ms
        )
    }
}
