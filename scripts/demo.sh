#!/usr/bin/env bash
# Demo: a host namespace running vswitch, four "containers" (namespaces):
# three on network blue (two TAP, one veth) and one on red, and an
# "external" namespace behind the host's uplink. Containers ping, run iperf3,
# fetch a page from outside through SNAT, and serve one on a published port;
# the switch's FDB, connection table and counters are shown. Everything is
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
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for n in host c1 c2 c3 r1 ext; do ip netns del "$P-$n" 2>/dev/null || true; done
    rm -rf "$SOCK" "/tmp/$P.log" "/tmp/$P.state" "/tmp/$P.flows" "/tmp/$P-www" "/tmp/$P-c2www"
}
PIDS=()
trap cleanup EXIT INT TERM
for n in host c1 c2 c3 r1 ext; do ip netns add "$P-$n"; ip -n "$P-$n" link set lo up; done
# The host's external interface: a veth to the "external" namespace.
ip link add "${P}u" netns "$P-host" type veth peer name "${P}x" netns "$P-ext"
ip -n "$P-host" addr add 192.168.200.1/24 dev "${P}u"; ip -n "$P-host" link set "${P}u" up
ip -n "$P-ext" addr add 192.168.200.2/24 dev "${P}x"; ip -n "$P-ext" link set "${P}x" up
start() {
    ip netns exec "$P-host" "$BIN" run --config configs/demo.toml --socket "$SOCK" \
        --state-dir "/tmp/$P.state" 2>>"/tmp/$P.log" &
    SW=$!
}
start
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
echo "== iperf3 TCP, TAP container to veth container (AF_PACKET with virtio-net headers on the switch end)"
ip netns exec "$P-c3" iperf3 -s -1 -B 10.77.1.13 >/dev/null & S=$!
sleep 0.3; ip netns exec "$P-c1" iperf3 -c 10.77.1.13 -t 3 | grep -E 'sender|receiver'; wait $S
echo "== gateway and NAT: uplink ${P}u, SNAT to 192.168.200.1"
VS uplink add "${P}u"
mkdir -p "/tmp/$P-www" && echo "hello from outside" >"/tmp/$P-www/index.html"
ip netns exec "$P-ext" python3 -m http.server 8080 --bind 0.0.0.0 --directory "/tmp/$P-www" >/dev/null 2>&1 & PIDS+=("$!")
mkdir -p "/tmp/$P-c2www" && echo "hello from container c2" >"/tmp/$P-c2www/index.html"
ip netns exec "$P-c2" python3 -m http.server 80 --bind 0.0.0.0 --directory "/tmp/$P-c2www" >/dev/null 2>&1 & PIDS+=("$!")
for _ in $(seq 50); do ip netns exec "$P-c2" ss -Hltn 'sport = :80' | grep -q . && break; sleep 0.1; done
echo -n "c1 -> http://192.168.200.2:8080 (through SNAT): "; ip netns exec "$P-c1" curl -s -m 5 http://192.168.200.2:8080/ || echo "(failed)"
VS publish blue 10.77.1.12:80 --host-port 8081 >/dev/null
echo -n "external -> http://192.168.200.1:8081 (published port of c2): "; ip netns exec "$P-ext" curl -s -m 5 http://192.168.200.1:8081/ || echo "(failed)"
echo -n "c1 -> http://192.168.200.1:8081 (hairpin): "; ip netns exec "$P-c1" curl -s -m 5 http://192.168.200.1:8081/ || echo "(failed)"
echo; VS conntrack show
echo; VS fdb show; echo; VS stats
echo "== the switch is killed (kill -9) and started again: containers keep their interfaces"
ip -n "$P-c1" -br addr show eth0
kill -9 "$SW"; wait "$SW" 2>/dev/null || true
start
for _ in $(seq 50); do [ -S "$SOCK" ] && VS port ls >/dev/null 2>&1 && break; sleep 0.1; done
ip -n "$P-c1" -br addr show eth0
ip netns exec "$P-c1" ping -c 3 -i 0.2 10.77.1.13 | tail -2
echo -n "external -> http://192.168.200.1:8081 after the restart: "; ip netns exec "$P-ext" curl -s -m 5 http://192.168.200.1:8081/ || echo "(failed)"
