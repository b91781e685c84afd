#!/usr/bin/env bash
# Demo: a host namespace running vswitch, four "containers" (namespaces):
# three on network blue (two TAP, one veth/AF_XDP) and one on red. They ping,
# run iperf3, and the switch's FDB and counters are shown. Everything is
# removed at the end, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh >/dev/null
cargo build --release -q
BIN=$PWD/target/release/vswitch
P=vsdemo$$
SOCK=/tmp/$P.sock
VS() { "$BIN" --socket "$SOCK" "$@"; }
cleanup() {
    [ -n "${SW:-}" ] && kill "$SW" 2>/dev/null && wait "$SW" 2>/dev/null || true
    for n in host c1 c2 c3 r1; do ip netns del "$P-$n" 2>/dev/null || true; done
    rm -f "$SOCK" "/tmp/$P.log"
}
trap cleanup EXIT INT TERM
for n in host c1 c2 c3 r1; do ip netns add "$P-$n"; ip -n "$P-$n" link set lo up; done
ip netns exec "$P-host" "$BIN" run --config configs/demo.toml --socket "$SOCK" 2>"/tmp/$P.log" &
SW=$!
for _ in $(seq 50); do [ -S "$SOCK" ] && break; sleep 0.1; done
VS attach blue --netns "$P-c1" --kind tap  --ip 10.77.1.11/24
VS attach blue --netns "$P-c2" --kind tap  --ip 10.77.1.12/24
VS attach blue --netns "$P-c3" --kind veth --ip 10.77.1.13/24
VS attach red  --netns "$P-r1" --kind tap  --ip 10.77.2.11/24
echo; VS network ls; echo; VS port ls; echo
for dst in 10.77.1.12 10.77.1.13; do
    ip netns exec "$P-c1" ping -c 3 -i 0.2 "$dst" | tail -2
done
echo "== iperf3 TCP, TAP container to TAP container"
ip netns exec "$P-c2" iperf3 -s -1 -B 10.77.1.12 >/dev/null & S=$!
sleep 0.3; ip netns exec "$P-c1" iperf3 -c 10.77.1.12 -t 3 | grep -E 'sender|receiver'; wait $S
echo "== iperf3 TCP, TAP container to veth (AF_XDP) container"
ip netns exec "$P-c3" iperf3 -s -1 -B 10.77.1.13 >/dev/null & S=$!
sleep 0.3; ip netns exec "$P-c1" iperf3 -c 10.77.1.13 -t 3 | grep -E 'sender|receiver'; wait $S
echo; VS fdb show; echo; VS stats
