//! `tessera-sim`: run seeds of the deterministic simulation.
//!
//! ```text
//! tessera-sim --seed 7           # one seed, run twice, trace hashes compared
//! tessera-sim --seeds 0..200     # a sweep
//! tessera-sim --seed 7 --verbose # print the whole history
//! tessera-sim --seeds 0..20 --broken-ack-before-sync   # must find violations
//! ```

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    tessera_sim::cli::main()
}

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    eprintln!(
        "tessera-sim runs only in a simulation build:\n  \
         CARGO_TARGET_DIR=target/sim RUSTFLAGS=\"--cfg madsim\" cargo run --release -p tessera-sim -- --seeds 0..200"
    );
    std::process::ExitCode::FAILURE
}
