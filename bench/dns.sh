#!/usr/bin/env bash
# Name resolution for containers: dnsperf from a container against its
# network's resolver, vswitch's (on the gateway) against dnsmasq on a
# docker0-style bridge (the kernel path's usual resolver), in one run,
# trials alternating. Two questions each: a container's name of the network
# (answered locally), and an outside name, cached after the first ask
# (answered from the cache; the upstream is a dnsmasq outside).
# Prints queries/s at saturation (100 in flight), and the p50/p99 latency
# at a fixed $RATE queries/s, with RESULT lines for run.sh.
# vswitch's per-source limit is raised above the load ([dns] rate and burst)
# for the run: dnsmasq has none, and dnsperf asks from one address.
#
#   bash bench/dns.sh [VSWITCH_BINARY]   # DURATION=5 TRIALS=3 RATE=5000 IDLE='{ mode = "busy" }'
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-$PWD/target/release/vswitch}
DURATION=${DURATION:-5}
TRIALS=${TRIALS:-3}
RATE=${RATE:-5000}
WORKER_CORE=${WORKER_CORE:-1}
# The worker that carries the queries between the containers' ports and the
# gateway's: adaptive, as a frugal host runs it (a busy one takes its core
# from the resolver thread and dnsperf on this 2-core machine).
IDLE=${IDLE:-'{ mode = "adaptive", idle_after_us = 200, max_sleep_ms = 20 }'}
[ -x "$BIN" ] || cargo build --release -q -p vswitch-control
command -v dnsperf >/dev/null || { echo "dnsperf is missing: run scripts/install-deps.sh"; exit 1; }
P=vdn$$
D=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for n in kh kc ke vh vc vw ve; do ip netns del "$P-$n" 2>/dev/null || true; done
    rm -rf /etc/netns/"$P"-* "$D"
}
trap cleanup EXIT INT TERM
NS() { ip netns exec "$P-$1" "${@:2}"; }
mkns() { ip netns add "$P-$1"; NS "$1" ip link set lo up; NS "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1; }
# An uplink veth from host $1 to outside namespace $2, /24 prefix $3.
uplink() {
    ip link add "$P$1u" netns "$P-$1" type veth peer name "$P$1x" netns "$P-$2"
    NS "$1" ip addr add "$3.1/24" dev "$P$1u"; NS "$1" ip link set "$P$1u" up
    NS "$2" ip addr add "$3.2/24" dev "$P$1x"; NS "$2" ip link set "$P$1x" up
}
# dnsmasq in $1 on address $2, with more options; runs until the end (not
# through NS: $! must be the server's PID, which `ip netns exec` becomes).
dnsmasq_in() {
    local ns=$1 addr=$2
    shift 2
    ip netns exec "$P-$ns" dnsmasq --no-daemon --no-hosts --bind-interfaces --listen-address="$addr" \
        --pid-file="$D/dnsmasq-$ns.pid" "$@" 2>>"$D/dnsmasq-$ns.log" &
    PIDS+=("$!")
}
UPSTREAM="--no-resolv --address=/outside.test/192.0.2.9 --local-ttl=300"

# The kernel's path: a bridge, its container, dnsmasq on the bridge's
# address answering the network's names (as Docker's embedded resolver
# does) and forwarding the rest to the upstream, with a cache as large as
# vswitch's.
mkns kh; mkns kc; mkns ke
uplink kh ke 192.168.89
NS kh ip link add br0 type bridge; NS kh ip addr add 10.99.0.1/24 dev br0; NS kh ip link set br0 up
ip link add "${P}kc" type veth peer name eth0 netns "$P-kc"
ip link set "${P}kc" netns "$P-kh"; NS kh ip link set "${P}kc" master br0 up
NS kc ip addr add 10.99.0.2/24 dev eth0; NS kc ip link set eth0 up
# shellcheck disable=SC2086
dnsmasq_in ke 192.168.89.2 $UPSTREAM
dnsmasq_in kh 10.99.0.1 --no-resolv --server=192.168.89.2 --cache-size=10000 --host-record=web,10.99.0.3

# vswitch: the network's resolver on its gateway, the same upstream as the
# network's --dns; the name "web" is a container's, attached by name.
mkns vh; mkns vc; mkns vw; mkns ve
uplink vh ve 192.168.88
# shellcheck disable=SC2086
dnsmasq_in ve 192.168.88.2 $UPSTREAM
cat >"$D/vs.toml" <<CFG
[[workers]]
core = $WORKER_CORE
idle = $IDLE
[dns]
rate = 10000000
burst = 10000000
[[networks]]
name = "dn"
subnet = "10.98.0.0/24"
dns = ["192.168.88.2"]
[uplink]
iface = "${P}vhu"
CFG
ip netns exec "$P-vh" "$BIN" run --config "$D/vs.toml" --socket "$D/vs.sock" --state-dir "$D/state" 2>"$D/vswitch.log" &
SWPID=$!
PIDS+=("$SWPID")
for _ in $(seq 50); do [ -S "$D/vs.sock" ] && break; sleep 0.1; done
[ -S "$D/vs.sock" ] || { echo "vswitch did not start:"; cat "$D/vswitch.log"; exit 1; }
"$BIN" --socket "$D/vs.sock" attach dn --netns "$P-vc" --kind tap >/dev/null
"$BIN" --socket "$D/vs.sock" attach dn --netns "$P-vw" --kind tap --name web >/dev/null
sleep 0.5

printf 'web A\n' >"$D/local.q"
printf 'outside.test A\n' >"$D/outside.q"
# Both resolvers answer both names before anything is measured (the outside
# name is then in their caches).
for q in web outside.test; do
    [ -n "$(NS kc dig +short +time=2 @10.99.0.1 "$q")" ] || { echo "dnsmasq does not answer $q"; exit 1; }
    [ -n "$(NS vc dig +short +time=2 @10.98.0.1 "$q")" ] || { echo "vswitch does not answer $q"; cat "$D/vswitch.log"; exit 1; }
done

# dnsperf from container $1 to server $2 with query file $3 and more
# options; prints "qps p50_us p99_us lost" (latencies from the per-query
# lines of -v).
perf() {
    NS "$1" dnsperf -s "$2" -d "$3" -l "$DURATION" "${@:4}" -v >"$D/perf.txt" 2>&1 || true
    python3 - "$D/perf.txt" <<'PY'
import re, sys
lat, qps, lost = [], 0.0, 0
for line in open(sys.argv[1]):
    if line.startswith("> "):
        try:
            lat.append(float(line.split()[-1]))
        except ValueError:
            pass
    m = re.search(r"Queries per second:\s+([\d.]+)", line)
    if m:
        qps = float(m.group(1))
    m = re.search(r"Queries lost:\s+(\d+)", line)
    if m:
        lost = int(m.group(1))
lat.sort()
q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6, 1) if lat else float("nan")
print(round(qps), q(0.50), q(0.99), lost)
PY
}
med() { printf '%s\n' "$@" | python3 -c "import sys,statistics;print(round(statistics.median(float(x) for x in sys.stdin.read().split()),1))"; }
declare -A S
for t in $(seq "$TRIALS"); do
    for what in local outside; do
        # The adaptive switch sleeps while the kernel's path is measured.
        read -r kq _ _ kl < <(perf kc 10.99.0.1 "$D/$what.q" -q 100)
        read -r _ k50 k99 _ < <(perf kc 10.99.0.1 "$D/$what.q" -Q "$RATE")
        read -r vq _ _ vl < <(perf vc 10.98.0.1 "$D/$what.q" -q 100)
        read -r _ v50 v99 _ < <(perf vc 10.98.0.1 "$D/$what.q" -Q "$RATE")
        S[k_qps_$what]+=" $kq"; S[v_qps_$what]+=" $vq"
        S[k_p50_$what]+=" $k50"; S[v_p50_$what]+=" $v50"
        S[k_p99_$what]+=" $k99"; S[v_p99_$what]+=" $v99"
        echo "trial $t, $what name: dnsmasq/vswitch $kq/$vq queries/s (lost $kl/$vl); at $RATE/s p50 $k50/$v50 us, p99 $k99/$v99 us"
    done
done
for what in local outside; do
    # shellcheck disable=SC2086
    KQ=$(med ${S[k_qps_$what]}) VQ=$(med ${S[v_qps_$what]})
    # shellcheck disable=SC2086
    K50=$(med ${S[k_p50_$what]}) V50=$(med ${S[v_p50_$what]})
    # shellcheck disable=SC2086
    K99=$(med ${S[k_p99_$what]}) V99=$(med ${S[v_p99_$what]})
    echo "$what name, medians: dnsmasq/vswitch $KQ/$VQ queries/s ($(python3 -c "print(round($VQ/$KQ, 2))")x); at $RATE/s p50 $K50/$V50 us, p99 $K99/$V99 us"
    echo "RESULT dns_qps_$what q/s $KQ $VQ"
    echo "RESULT dns_p99_at_${RATE}_$what us $K99 $V99 lower"
done
"$BIN" --socket "$D/vs.sock" stats | grep '^dns' || true
