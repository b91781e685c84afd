#!/usr/bin/env bash
# Container start cost: `podman run --rm IMAGE true` on a vswitch network
# (the CNI plugin) against podman's own bridge network (the reference CNI
# plugins: bridge, portmap, firewall, tuning), in one run, alternating.
# podman runs in a namespace of its own with private storage and config.
# Prints both p50 and p99 of $RUNS starts, and RESULT lines for run.sh.
#
#   bash bench/container_start.sh [VSWITCH_BINARY]   # RUNS=20 by default
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-$PWD/target/release/vswitch}
RUNS=${RUNS:-20}
[ -x "$BIN" ] || cargo build --release -q -p vswitch-control
P=vcs$$
D=$(mktemp -d)
SWPID=
cleanup() {
    podman_ rm -a -f >/dev/null 2>&1 || true
    [ -z "$SWPID" ] || kill "$SWPID" 2>/dev/null || true
    wait 2>/dev/null || true
    ip netns del "$P-h" 2>/dev/null || true
    rm -rf "$D"
}
podman_() {
    CONTAINERS_CONF=$D/containers.conf nsenter --net="/run/netns/$P-h" \
        podman --root "$D/root" --runroot "$D/run" --tmpdir "$D/tmp" --storage-driver vfs "$@"
}
trap cleanup EXIT
ip netns add "$P-h"
ip netns exec "$P-h" ip link set lo up
mkdir -p "$D/cni" "$D/net.d" "$D/rootfs/bin"
ln -s "$BIN" "$D/cni/vswitch"
cp /bin/busybox "$D/rootfs/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$D/rootfs/bin/$a"; done
tar -C "$D/rootfs" -cf "$D/rootfs.tar" .
cat >"$D/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["$D/cni", "/usr/lib/cni"]
network_config_dir = "$D/net.d"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
cat >"$D/net.d/vsnet.conflist" <<NET
{"cniVersion": "1.0.0", "name": "vsnet", "plugins": [{"type": "vswitch", "socket": "$D/vswitch.sock", "subnet": "10.89.6.0/24", "capabilities": {"portMappings": true, "aliases": true}}]}
NET
ip netns exec "$P-h" "$BIN" run --socket "$D/vswitch.sock" --state-dir "$D/state" 2>"$D/vswitch.log" &
SWPID=$!
for _ in $(seq 100); do [ -S "$D/vswitch.sock" ] && break; sleep 0.05; done
podman_ import --change 'CMD ["/bin/sh"]' "$D/rootfs.tar" localhost/vsbox >/dev/null 2>&1
podman_ network create --subnet 10.89.7.0/24 pbr >/dev/null
# One start each first: the networks and caches are made outside the count.
podman_ run --rm --network vsnet localhost/vsbox true
podman_ run --rm --network pbr localhost/vsbox true
start_ms() {
    local t0 t1
    t0=$(date +%s%N)
    podman_ run --rm --network "$1" localhost/vsbox true
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000000))
}
: >"$D/pbr"; : >"$D/vsnet"
for _ in $(seq "$RUNS"); do
    start_ms pbr >>"$D/pbr"
    start_ms vsnet >>"$D/vsnet"
done
# pNN of the numbers in file $1 (nearest rank).
pct() { sort -n "$1" | awk -v q="$2" '{a[NR]=$1} END {i=int(q*NR+0.999999); if (i<1) i=1; print a[i]}'; }
K50=$(pct "$D/pbr" 0.5); K99=$(pct "$D/pbr" 0.99); V50=$(pct "$D/vsnet" 0.5); V99=$(pct "$D/vsnet" 0.99)
echo "podman run --rm IMAGE true, $RUNS starts each, alternating: podman's bridge network p50 $K50 ms, p99 $K99 ms; vswitch p50 $V50 ms, p99 $V99 ms (vswitch/bridge p50 $(awk -v a="$V50" -v b="$K50" 'BEGIN{printf "%.2f", a/b}')x)"
echo "RESULT container_start_p50 ms $K50 $V50 lower"
echo "RESULT container_start_p99 ms $K99 $V99 lower"
