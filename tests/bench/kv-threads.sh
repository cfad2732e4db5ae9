#!/usr/bin/env bash
# Where a key-value operation's CPU and waiting go, thread by thread: three tesserad nodes
# (tenant RF 3, quorum), one `tessera bench kv` load, and for each thread of each process
# over a window inside one phase, per operation:
#   - CPU (utime + stime, /proc/PID/task/TID/stat);
#   - run-queue wait: time the thread was runnable but waited for a CPU (schedstat), which is
#     what each hand-off between threads costs in latency on a busy machine;
#   - slices: how often it was switched in (each one a wake-up and a context switch).
# Plus the whole machine's busy share and CPU per operation (/proc/stat).
#   tests/bench/kv-threads.sh [SECS] [CLIENTS] [PHASE]      (defaults 10 32 put; PHASE put|get)
# BIN=dir runs the binaries in dir instead of building them (to compare two builds).
# Figures, not pass/fail: operations in the window are the phase's rate times its length.
set -euo pipefail
secs=${1:-10}; clients=${2:-32}; phase=${3:-put}
[ "$secs" -ge 6 ] || { echo "SECS must be at least 6 (the window skips each phase's edges)" >&2; exit 2; }
case "$phase" in put | get) ;; *) echo "PHASE must be put or get" >&2; exit 2 ;; esac
root="$(cd "$(dirname "$0")/../.." && pwd)"
if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p tessera-shell --bins --manifest-path "$root/Cargo.toml"
    BIN="$root/target/release"
fi
# shellcheck source=tesserad-cluster.sh
. "$root/tests/bench/tesserad-cluster.sh"
bench_scratch kv-threads
start_tesserad "$BIN"

"$BIN/tessera" --addr "http://127.0.0.1:${t[0]}" bench kv --secs "$secs" --clients "$clients" --rounds 1 \
    > "$work/bench.out" 2>&1 &
load=$!
# One line per thread: pid, name, CPU ticks, run-queue wait (ns), slices.
snap() {
    for p in "${pids[@]}" "$load"; do
        for task in /proc/"$p"/task/*; do
            echo "$p $(tr ' ' _ < "$task/comm") $(awk '{print $14 + $15}' "$task/stat" 2>/dev/null) \
                $(awk '{print $2, $3}' "$task/schedstat" 2>/dev/null)" || true
        done
    done
}
# The put phase starts about a second in (start-up and the probe write); the get phase
# follows it. Skip a second or two at each edge.
skip=2; [ "$phase" = get ] && skip=$((secs + 2))
sleep "$skip"
snap > "$work/before"; head -1 /proc/stat > "$work/stat0"; t0=$(date +%s.%N)
sleep $((secs - 3))
snap > "$work/after"; head -1 /proc/stat > "$work/stat1"; t1=$(date +%s.%N)
wait "$load"
grep -E "tessera (put|get)" "$work/bench.out"

python3 - "$work" "$phase" "$t0" "$t1" "$load" "${pids[@]}" <<'PY'
import collections, os, re, sys
work, phase, t0, t1, load, *nodes = sys.argv[1:]
hz = os.sysconf("SC_CLK_TCK")
out = open(f"{work}/bench.out").read()
m = re.search(rf"tessera {phase}.*?(\d+) ops/s", out)
if not m:
    sys.exit(f"no {phase} figure in the bench's output:\n{out}")
ops = float(m.group(1)) * (float(t1) - float(t0))

def load_snap(path):
    d = {}
    for line in open(path):
        f = line.split()
        if len(f) == 5:
            d.setdefault((f[0], f[1]), []).append(tuple(map(int, f[2:])))
    return {k: [sum(x) for x in zip(*v)] for k, v in d.items()}

before, after = load_snap(f"{work}/before"), load_snap(f"{work}/after")
s0 = list(map(int, open(f"{work}/stat0").read().split()[1:]))
s1 = list(map(int, open(f"{work}/stat1").read().split()[1:]))
busy = lambda v: sum(v) - v[3] - v[4]
total = sum(s1) - sum(s0)
print(f"{phase}: machine {100 * (busy(s1) - busy(s0)) / total:.0f}% busy, "
      f"{100 * (s1[4] - s0[4]) / total:.0f}% iowait, all CPU {(busy(s1) - busy(s0)) * 1e6 / hz / ops:.1f} us/op")
print(f"{'process':8s} {'thread':16s} {'CPU us/op':>10s} {'run-queue wait us/op':>21s} {'slices/op':>10s}")
per_proc = collections.Counter()
for key in sorted(after):
    a, b = after[key], before.get(key, [0, 0, 0])
    cpu, wait, slices = (a[0] - b[0]) * 1e6 / hz / ops, (a[1] - b[1]) / 1e3 / ops, (a[2] - b[2]) / ops
    if cpu < 0.05 and slices < 0.005:
        continue
    name = "client" if key[0] == load else f"n{nodes.index(key[0]) + 1}"
    per_proc[name] += cpu
    print(f"{name:8s} {key[1]:16s} {cpu:10.1f} {wait:21.1f} {slices:10.2f}")
print("CPU us/op by process: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(per_proc.items())))
PY
