//! Shared by the end-to-end tests: start and stop real tesserad processes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Daemon {
    /// Starts tesserad on a free loopback port and waits for its ready line.
    pub fn start(dir: &Path, extra: &[&str]) -> Daemon {
        Self::start_at(dir, "127.0.0.1:0", extra)
    }

    /// Starts tesserad listening on `listen` (a cluster member's fixed address).
    pub fn start_at(dir: &Path, listen: &str, extra: &[&str]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tesserad"))
            .args(["--listen", listen, "--data-dir"])
            .arg(dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tesserad");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read ready line");
        let addr = line
            .trim()
            .strip_prefix("tesserad listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from tesserad: {line:?}"))
            .parse()
            .expect("address");
        Daemon { child, addr }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.expect("connect")
    }

    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait");
    }

    /// SIGTERM, then the exit status. An idle daemon stops in milliseconds; one that takes
    /// 5 s is waiting out its 10 s grace for a driver whose handle something still holds.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(Instant::now() < deadline, "tesserad did not stop within 5 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `tests/python/run.sh MODULE` against this daemon.
    pub fn run_python(&self, module: &str) -> ExitStatus {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/run.sh");
        Command::new("bash")
            .arg(script)
            .arg(module)
            .env("TESSERA_ADDR", self.addr.to_string())
            .env("TESSERA_PYENV", concat!(env!("CARGO_TARGET_TMPDIR"), "/pyenv"))
            .status()
            .expect("run the Python client test (is python3 installed?)")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cluster id a node keeps in its data directory `dir`.
pub fn cluster_id(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("cluster-id")).expect("read cluster-id").trim().to_owned()
}

/// `n` loopback addresses that were free a moment ago (for a cluster's fixed members, or a
/// metrics endpoint). They are drawn from below the kernel's ephemeral range: a port it
/// hands out for a `:0` bind (another test's daemon starting meanwhile) is never one of them,
/// so no daemon can take one between this check and its own bind.
pub fn free_addrs(n: usize) -> Vec<String> {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Unprivileged ports below the range; a range that leaves too few, anywhere unprivileged.
    let (floor, top) = match ephemeral {
        e if e >= 11_024 => (10_000, e),
        _ => (1_024, u16::MAX),
    };
    let span = u64::from(top - floor);
    let mut x = u64::from(std::process::id())
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    let mut held = Vec::new();
    while held.len() < n {
        // xorshift: any spread will do, no two tests start from the same state.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = floor + (x % span) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    held.iter().map(|l| l.local_addr().expect("addr").to_string()).collect()
}
