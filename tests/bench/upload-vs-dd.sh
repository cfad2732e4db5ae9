#!/usr/bin/env bash
# Upload ingest against the disk's own sequential write rate, in the same run.
#   tests/bench/upload-vs-dd.sh [SIZE_MIB] [CHUNK_KIB] [SENDERS]      (defaults 1024 4096 8)
# Prints dd's rate (conv=fsync, same size, same filesystem), tessera's, their ratio and
# tesserad's peak RSS. Figures, not pass/fail.
set -euo pipefail
size=${1:-1024}; chunk=${2:-4096}; senders=${3:-8}
root="$(cd "$(dirname "$0")/../.." && pwd)"
cargo build --release -q -p tessera-shell --bins --manifest-path "$root/Cargo.toml"
bin="$root/target/release"
work="$(mktemp -d "$root/target/bench-upload.XXXXXX")"
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

start=$(date +%s.%N)
dd if=/dev/zero of="$work/dd.bin" bs=4M count=$((size / 4)) conv=fsync status=none
dd_secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
rm -f "$work/dd.bin"
dd_rate=$(awk -v s="$size" -v t="$dd_secs" 'BEGIN {print s / t}')

"$bin/tesserad" --listen 127.0.0.1:0 --data-dir "$work/data" > "$work/out" 2> "$work/err" &
pid=$!
for _ in $(seq 100); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
addr="http://$(awk '{print $4}' "$work/out")"
line=$("$bin/tessera" --addr "$addr" bench upload --size-mib "$size" --chunk-kib "$chunk" --parallel "$senders")
rate=$(echo "$line" | sed -E 's/.*=> ([0-9.]+) MiB\/s.*/\1/')
rss=$(awk '/VmHWM/ {print $2 / 1024}' "/proc/$pid/status")
printf 'dd conv=fsync:  %8.1f MiB/s\n' "$dd_rate"
echo "tessera:        $line"
printf 'ratio:          %8.2f (tessera / dd)\n' "$(awk -v a="$rate" -v b="$dd_rate" 'BEGIN {print a / b}')"
printf 'tesserad peak RSS: %.0f MiB\n' "$rss"
