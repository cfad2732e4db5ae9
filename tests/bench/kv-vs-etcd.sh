#!/usr/bin/env bash
# Key-value throughput against etcd, in the same run, at equal replica count and durability:
# three tesserad nodes (tenant RF 3, quorum writes and reads, fsync before ack) and three etcd
# members (Raft, fsync on, linearizable reads), all on loopback, one client process.
#   tests/bench/kv-vs-etcd.sh [SECS] [CLIENTS] [VALUE_SIZE]      (defaults 10 32 256)
# Each phase also shows the CPU each system's three server processes spent per operation (from
# /proc, around each turn): once the machine is busy, throughput follows it.
# One thread per node for both (three nodes share two cores here):
#   TESSERA_WORKER_THREADS=1 GOMAXPROCS=1 tests/bench/kv-vs-etcd.sh
# Installs Debian's etcd-server if etcd is missing. Figures, not pass/fail.
set -euo pipefail
secs=${1:-10}; clients=${2:-32}; size=${3:-256}
root="$(cd "$(dirname "$0")/../.." && pwd)"
if ! command -v etcd >/dev/null; then
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get install -y -q etcd-server >/dev/null
fi
cargo build --release -q -p tessera-shell --bins --manifest-path "$root/Cargo.toml"
bin="$root/target/release"
# shellcheck source=tesserad-cluster.sh
. "$root/tests/bench/tesserad-cluster.sh"
bench_scratch bench-kv
start_tesserad "$bin"
e=(); ep=()
for _ in 1 2 3; do e+=("$(port)"); ep+=("$(port)"); done
peers="e1=http://127.0.0.1:${ep[0]},e2=http://127.0.0.1:${ep[1]},e3=http://127.0.0.1:${ep[2]}"
for i in 0 1 2; do
    n=$((i + 1))
    etcd --name "e$n" --data-dir "$work/e$n" \
        --listen-client-urls "http://127.0.0.1:${e[$i]}" --advertise-client-urls "http://127.0.0.1:${e[$i]}" \
        --listen-peer-urls "http://127.0.0.1:${ep[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${ep[$i]}" \
        --initial-cluster "$peers" --initial-cluster-state new --log-level error > "$work/e$n.log" 2>&1 &
    pids+=($!)
done
# etcd at its best: the client talks to the leader, so no put or read index is forwarded.
# (Tessera has no leader: any node coordinates.) Each member's status names the leader.
leader=""
for _ in $(seq 100); do
    leader=$(python3 - "${e[@]}" <<'PY'
import json, sys, urllib.request
for port in sys.argv[1:]:
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v3/maintenance/status", data=b"{}", method="POST")
        st = json.load(urllib.request.urlopen(req, timeout=1))
    except Exception:
        continue
    if st.get("leader") and st.get("leader") == st.get("header", {}).get("member_id"):
        print(port)
        break
PY
    )
    [ -n "$leader" ] && break; sleep 0.1
done
[ -n "$leader" ] || { echo "etcd elected no leader" >&2; exit 1; }
echo "etcd leader: 127.0.0.1:$leader"
"$bin/tessera" --addr "http://127.0.0.1:${t[0]}" bench kv --secs "$secs" --clients "$clients" \
    --value-size "$size" --etcd "http://127.0.0.1:$leader" ${ROUNDS:+--rounds $ROUNDS} \
    --tessera-pids "${pids[0]},${pids[1]},${pids[2]}" --etcd-pids "${pids[3]},${pids[4]},${pids[5]}"
