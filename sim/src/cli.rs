//! Command line of the simulator: one seed or a sweep; each seed runs twice and the two
//! trace hashes must match.

use std::process::ExitCode;
use std::time::Instant;

use crate::run::{Options, SeedReport, run_seed};

fn usage() -> ExitCode {
    eprintln!(
        "usage: tessera-sim (--seed N | --seeds A..B) [--verbose] [--nodes N] [--clients N] [--duration-ms N] \
         [--layout-changes] [--tombstone-gc] [--broken-ack-before-sync]"
    );
    ExitCode::from(2)
}

/// Fewest client operations a seed must run to count as tested.
const MIN_OPS: u64 = 50;

fn parse_range(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once("..")?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Runs a seed twice; returns the first report and whether the hashes matched.
pub fn check_seed(seed: u64, opts: &Options) -> (SeedReport, bool) {
    let a = run_seed(seed, opts);
    let b = run_seed(seed, opts);
    let same = a.hash == b.hash;
    (a, same)
}

fn print_failure(r: &SeedReport, deterministic: bool) {
    eprintln!("seed {} FAILED ({})", r.seed, r.plan);
    if !deterministic {
        eprintln!("  the same seed produced two different traces: nondeterminism");
    }
    for v in r.violations.iter().take(10) {
        eprintln!("  violation {v}");
    }
    eprintln!("  last events of the history (run with --seed {} --verbose for all of it):", r.seed);
    for e in &r.events[r.events.len().saturating_sub(40)..] {
        eprintln!("    {e}");
    }
    eprintln!(
        "  reproduce: CARGO_TARGET_DIR=target/sim RUSTFLAGS=\"--cfg madsim\" cargo run --release -p tessera-sim -- --seed {}",
        r.seed
    );
}

pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = Options::default();
    let mut range = None;
    let mut verbose = false;
    let mut duration = None;
    let mut i = 0;
    while i < args.len() {
        let val = args.get(i + 1).map(String::as_str);
        match args[i].as_str() {
            "--seed" => {
                let Some(n) = val.and_then(|v| v.parse().ok()) else { return usage() };
                range = Some((n, n + 1));
                i += 1;
            }
            "--seeds" => {
                let Some(r) = val.and_then(parse_range) else { return usage() };
                range = Some(r);
                i += 1;
            }
            "--nodes" | "--clients" | "--duration-ms" => {
                let Some(n) = val.and_then(|v| v.parse::<u64>().ok()) else { return usage() };
                match args[i].as_str() {
                    "--nodes" => opts.nodes = n.clamp(1, 9) as usize,
                    "--clients" => opts.clients = n.clamp(1, 64) as usize,
                    _ => duration = Some(n),
                }
                i += 1;
            }
            "--verbose" => verbose = true,
            "--broken-ack-before-sync" => opts.ack_before_sync = true,
            "--layout-changes" => opts.layout_changes = true,
            "--tombstone-gc" => opts.tombstone_gc = true,
            _ => return usage(),
        }
        i += 1;
    }
    // A layout change needs time to commit and move keys under faults, and tombstones need
    // their grace to pass while clients still write: give both longer.
    let default = match (opts.layout_changes, opts.tombstone_gc) {
        (_, true) => 14_000,
        (true, false) => 8_000,
        (false, false) => opts.duration_ms,
    };
    opts.duration_ms = duration.unwrap_or(default);
    let Some((from, to)) = range else { return usage() };
    let started = Instant::now();
    let (mut failed, mut ops) = (0u64, 0u64);
    for seed in from..to {
        let (r, deterministic) = check_seed(seed, &opts);
        ops += r.ops;
        if verbose {
            for e in &r.events {
                println!("{e}");
            }
        }
        // A seed whose clients barely ran checked nothing (the cluster never got going).
        let idle = r.ops < MIN_OPS;
        if idle {
            eprintln!("seed {seed}: only {} client ops (at least {MIN_OPS} expected)", r.ops);
        }
        if !r.violations.is_empty() || !deterministic || idle {
            failed += 1;
            print_failure(&r, deterministic);
        } else if to - from == 1 {
            println!("seed {seed} ok: {} ops, trace {} ({})", r.ops, r.hash, r.plan);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let n = to.saturating_sub(from);
    println!(
        "{} passed, {failed} failed: seeds {from}..{to}, each run twice; {ops} client ops; {:.1} seeds/s ({:.2}s)",
        n - failed,
        n as f64 / secs.max(1e-9),
        secs
    );
    if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
