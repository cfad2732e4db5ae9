# Sourced by the key-value benches (after they set $root, the repository): a scratch
# directory, free loopback ports and a three-node tesserad cluster.

# bench_scratch NAME: a scratch directory $work under target/ and an empty array pids; on exit
# the processes in pids are killed and the directory removed.
bench_scratch() {
    work="$(mktemp -d "$root/target/$1.XXXXXX")"
    pids=()
    trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
}

# A free port on 127.0.0.1.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_tesserad BIN_DIR: starts n1..n3 (data in $work/t1..t3, logs in $work/tN.out) as one
# cluster on free ports, appends their pids to pids, sets t to their ports, and returns once
# all three listen (or after 10 s).
start_tesserad() {
    local bin=$1 i n ready members
    t=()
    for _ in 1 2 3; do t+=("$(port)"); done
    members="n1=127.0.0.1:${t[0]},n2=127.0.0.1:${t[1]},n3=127.0.0.1:${t[2]}"
    for i in 0 1 2; do
        n=$((i + 1))
        "$bin/tesserad" --node-id "n$n" --listen "127.0.0.1:${t[$i]}" --initial-cluster "$members" \
            --data-dir "$work/t$n" --log warn > "$work/t$n.out" 2>&1 &
        pids+=($!)
    done
    for _ in $(seq 100); do
        ready=0
        for n in 1 2 3; do grep -q listening "$work/t$n.out" 2>/dev/null && ready=$((ready + 1)); done
        [ "$ready" -eq 3 ] && return 0
        sleep 0.1
    done
}
