#!/usr/bin/env bash
# End-to-end benchmark: vswitch against the Linux bridge on the same
# namespace topology, in the same run; vswitch's gateway/NAT against a
# docker0-style bridge with iptables MASQUERADE/DNAT; plus the pipeline on
# memory (L2 and NAT).
# Prints a table and writes bench/results/<commit>.{json,svg} and appends
# to bench/results/HISTORY.md.
#
#   bash bench/run.sh                 # full run (~30 minutes on the 2-core VM, ~13 of them the start sweep)
#   DURATION=3 TRIALS=1 bash bench/run.sh   # shorter
#
# The L2, NAT and VXLAN figures (kernel against vswitch) are medians of
# $TRIALS trials that alternate the two datapaths.
#
# Cores are configuration: the switch worker runs on $WORKER_CORE. Every
# end-to-end row is measured in two layouts, alternating in each trial:
#  - equal cores (the headline): both datapaths get every core. The
#    applications (iperf3, servers, clients) are not pinned and trafgen
#    sends from every core, in the kernel's runs and in vswitch's; vswitch
#    places its worker on $WORKER_CORE.
#  - pinned (rows *_pinned): the applications and trafgen run on
#    $GEN_CORE only, in both runs. The kernel's datapath runs in the
#    applications' context, so it gets that one core while vswitch gets it
#    plus its worker's.
# LAYOUTS="equal pinned" by default; name one to run only that.
# At a fixed offered load (FIX_TCP for iperf3, FIX_PPS for 64-byte frames),
# the CPU each datapath costs, whole machine (time not idle, from
# /proc/uptime and /proc/stat's idle), in the equal layout.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
WORKER_CORE=${WORKER_CORE:-1}
GEN_CORE=${GEN_CORE:-0}
TRIALS=${TRIALS:-3}
CLUSTER_HOSTS=${CLUSTER_HOSTS:-16}
SWEEP_STARTS=${SWEEP_STARTS:-16}
LAYOUTS=${LAYOUTS:-equal pinned}
FIX_TCP=${FIX_TCP:-5G}
FIX_PPS=${FIX_PPS:-100000}
# Other tracked flows for the SNAT connection-rate row.
FILL_FLOWS=${FILL_FLOWS:-100000}
NCPU=$(nproc)
# Sets the layout $1: APP prefixes the applications, TG_APP and TG_CPUS
# place trafgen; SFX names the rows.
layout() {
    case $1 in
        equal) APP=""; TG_APP=""; TG_CPUS=$NCPU; SFX="_equal" ;;
        pinned) APP="taskset -c $GEN_CORE"; TG_APP="taskset -c $GEN_CORE"; TG_CPUS=1; SFX="_pinned" ;;
        *) echo "unknown layout $1 (LAYOUTS: equal, pinned)"; exit 1 ;;
    esac
    LAYOUT=$1
}
layout "${LAYOUTS%% *}"
# iperf3 runs with the kernel's default congestion control (what a user
# gets) and again with ALT_CC: the two pace the same datapath very
# differently (docs/ARCHITECTURE.md, "Performance notes").
DEFAULT_CC=$(sysctl -n net.ipv4.tcp_congestion_control)
ALT_CC=${ALT_CC:-cubic}
# EXT_RPS (a CPU mask, e.g. 1 for core 0; unset by default): steer what the
# NAT section's "external" namespaces receive to those CPUs (RPS). Unset,
# their kernel takes a frame in on the CPU that sent it: the generator core
# in the iptables runs, the worker core when vswitch sends. See
# docs/ARCHITECTURE.md, "Where the kernel work of a delivered frame runs".
EXT_RPS=${EXT_RPS:-}
bash scripts/install-deps.sh >/dev/null
cargo build --release -q --all-features
grep -qw "$ALT_CC" /proc/sys/net/ipv4/tcp_available_congestion_control || modprobe "tcp_$ALT_CC" 2>/dev/null || true
grep -qw "$ALT_CC" /proc/sys/net/ipv4/tcp_available_congestion_control || { echo "congestion control $ALT_CC is not available; set ALT_CC"; exit 1; }
echo "TCP congestion control: $DEFAULT_CC (this kernel's default) in the iperf3 rows; $ALT_CC in the *_$ALT_CC rows"
BIN=$PWD/target/release/vswitch
BENCH=$PWD/target/release/vswitch-bench
COMMIT=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!bench/results' || echo -dirty)
COMMIT=$COMMIT${EXT_RPS:+-extrps$EXT_RPS}   # a run with EXT_RPS is recorded apart
P=vsb$$
TMP=$(mktemp -d)
RES=$TMP/results.txt
PIDS=()
# The initial namespace's default socket send buffer (pps raises it while
# trafgen starts), put back at the end.
WMEM_DEFAULT=$(sysctl -n net.core.wmem_default)
TG_WMEM=$((16 << 20))
cleanup() {
    sysctl -qw net.core.wmem_default="$WMEM_DEFAULT"
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; kill -CONT "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for n in bh ba bb vh va vb wa wb ta tb ih ia ib ic id nh nc ne sh sc se kA kB kc1 kc2 xA xB xa1 xa2 xb1 xb2; do ip netns del "$P-$n" 2>/dev/null || true; done
    # The cluster bench cleans up after itself; this covers it being killed.
    { ip netns list | awk '{print $1}' | grep "^$P-c" || true; } | while read -r n; do ip netns del "$n" 2>/dev/null || true; done
    # The containers' resolv.conf the switches wrote (attach), which stay
    # with attachments a stopped switch keeps.
    rm -rf /etc/netns/"$P"-*
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
NS() { ip netns exec "$P-$1" "${@:2}"; }
mkns() { ip netns add "$P-$1"; NS "$1" ip link set lo up; NS "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1; }
mac() { NS "$1" cat /sys/class/net/eth0/address; }
rxp() { NS "$1" cat /sys/class/net/eth0/statistics/rx_packets; }

# 64-byte UDP frames from $1 to $2 ($3: dst IP) for $DURATION s; prints frames/s delivered.
pps() {
    local src=$1 dst=$2 dip=$3 sip=$4
    local d s
    d=$(mac "$dst" | sed 's/^/0x/; s/:/,0x/g'); s=$(mac "$src" | sed 's/^/0x/; s/:/,0x/g')
    IFS=. read -r a b c e <<<"$sip"; local sipb="$a,$b,$c,$e"
    IFS=. read -r a b c e <<<"$dip"; local dipb="$a,$b,$c,$e"
    cat >"$TMP/t.cfg" <<CFG
{ $d, $s, 0x08, 0x00, 0x45, 0x00, 0x00, 0x2e, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, csumip(14, 33), $sipb, $dipb, 0x13, 0x88, 0x13, 0x89, 0x00, 0x1a, 0x00, 0x00, fill(0x00, 18) }
CFG
    local before after t0 t1
    before=$(rxp "$dst"); t0=$(date +%s.%N)
    # trafgen forks a sender per CPU, and stopping the parent (as `timeout`
    # does) leaves them flooding: every trafgen process of this run's
    # config file is stopped, and checked gone.
    # trafgen cannot raise its sockets' send buffers inside a namespace (the
    # net.core.wmem_* settings belong to the initial one), and a sender
    # whose frames wait in a veth's XDP ring (vswitch's AF_XDP ports) fills
    # the default 208 KiB, gets EAGAIN and exits ("Flushing TX_RING
    # failed"): such a run measured vswitch with one sender and the kernel
    # with all of them. The default is raised while trafgen opens its
    # sockets, and a sender that still exits is reported.
    sysctl -qw net.core.wmem_default=$TG_WMEM
    NS "$src" $TG_APP trafgen --dev eth0 --conf "$TMP/t.cfg" --cpus "$TG_CPUS" ${RATE:+--rate "${RATE}pps"} -q >/dev/null 2>"$TMP/tg.err" & local tg=$!
    sleep 0.5; sysctl -qw net.core.wmem_default=$WMEM_DEFAULT
    sleep "$(python3 -c "print(max(0.0, $DURATION - 0.5))")"
    pkill -INT -f -- "--conf $TMP/t.cfg" || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do pgrep -f -- "--conf $TMP/t.cfg" >/dev/null || break; sleep 0.1; done
    pkill -KILL -f -- "--conf $TMP/t.cfg" || true
    wait "$tg" 2>/dev/null || true
    t1=$(date +%s.%N); sleep 0.2; after=$(rxp "$dst")
    if grep -q "failed" "$TMP/tg.err"; then
        echo "trafgen $src -> $dst: a sender exited: $(grep -m1 failed "$TMP/tg.err")" >&2
    fi
    python3 -c "print(round(($after-$before)/($t1-$t0)))"
}

# Samples: rec KEY VALUE; medk KEY prints the median of KEY's values.
rec() { echo "$1 $2" >>"$TMP/samples"; }
medk() { python3 - "$TMP/samples" "$1" <<'PY'
import statistics, sys
v = [float(l.split()[1]) for l in open(sys.argv[1]) if l.split()[0] == sys.argv[2] and l.split()[1] != "nan"]
print(round(statistics.median(v), 3) if v else "nan")
PY
}
# The last value recorded for $L.$1 (or $1 when it has a dot or no layout).
last() { awk -v k="$1" -v kl="${L:-}.$1" '$1==kl||$1==k{v=$2} END{print v}' "$TMP/samples"; }
# Busy CPU time of the whole machine so far, in seconds (user, nice,
# system, irq, softirq; not idle, iowait or steal).
# CPU-seconds the whole machine has been busy: every CPU's time since boot
# less its idle and iowait time. Not the sum of /proc/stat's busy fields:
# those are sampled at the scheduler tick, and a load paced by a timer
# (iperf3 -b, trafgen --rate) runs between ticks, so the samples miss most
# of it (iperf3 at 5 Gbit/s over a veth: 0.2 CPU-s of busy ticks in 5 s,
# where idle fell by only 7.8 of 10). Idle time is measured exactly on a
# tickless kernel; so is uptime.
cpu_busy() { awk -v n="$(nproc)" -v hz="$(getconf CLK_TCK)" 'FNR==NR{up=$1; next} /^cpu /{idle=($5+$6)/hz} END{printf "%.3f\n", n*up - idle}' /proc/uptime /proc/stat; }

# Runs a measuring function ("$@", which prints its figure) and writes
# "figure busy-CPU-seconds wall-seconds" to $TMP/cost.
cost() {
    local c0 c1 v t0 t1
    c0=$(cpu_busy); t0=$(date +%s.%N); v=$("$@"); t1=$(date +%s.%N); c1=$(cpu_busy)
    echo "$v $(python3 -c "print(round($c1 - $c0, 3), round($t1 - $t0, 3))")" >"$TMP/cost"
}
# CPU-seconds per GB (TCP, figure in Gbit/s) and per million packets
# (frames, figure in frames/s), from $TMP/cost.
per_gb() { read -r g c _ <"$TMP/cost"; python3 -c "g=$g*$DURATION/8; print(round($c/g, 3) if g > 0 else 'nan')"; }
per_mp() { read -r r c _ <"$TMP/cost"; python3 -c "m=$r*$DURATION/1e6; print(round($c/m, 3) if m > 0 else 'nan')"; }
# Cores the whole machine kept busy during the last cost measurement.
cores() { read -r _ c w <"$TMP/cost"; python3 -c "print(round($c/$w, 2))"; }
# The figure of the last cost measurement.
fig() { cut -d' ' -f1 "$TMP/cost"; }

# Median of the arguments.
med() { printf '%s\n' "$@" | python3 -c "import sys,statistics;print(round(statistics.median(float(x) for x in sys.stdin.read().split()),3))"; }

# iperf3 TCP, one stream, $1 -> $2 ($3 server IP); prints Gbit/s. With
# TCP_CC set, the client uses that congestion control.
tcp() {
    ip netns exec "$P-$2" $APP iperf3 -s -1 -B "$3" >/dev/null 2>&1 & local s=$!
    sleep 0.4
    NS "$1" $APP iperf3 -c "$3" -t "$DURATION" ${TCP_CC:+-C "$TCP_CC"} ${TCP_RATE:+-b "$TCP_RATE"} -J >"$TMP/i.json" || true
    wait $s 2>/dev/null || true
    python3 -c "import json;print(round(json.load(open('$TMP/i.json'))['end']['sum_received']['bits_per_second']/1e9,3))"
}

# UDP RTT $1 -> $2:$3; writes "p50 p99" (µs) to $TMP/rtt.
rtt() {
    ip netns exec "$P-$2" $APP "$BENCH" udp-echo --bind "$3:7777" & local e=$!
    PIDS+=("$e"); sleep 0.3
    NS "$1" $APP "$BENCH" rtt --to "$3:7777" --count 3000 --interval-us 200 >"$TMP/r.json" || true
    kill "$e" 2>/dev/null || true; wait "$e" 2>/dev/null || true
    python3 -c "import json;d=json.load(open('$TMP/r.json'));print(d['p50_us'],d['p99_us'])" >"$TMP/rtt"
}

# Starts vswitch in namespace $1 with config $2 and socket $3; sets SWPID.
start_switch() {
    rm -rf "$TMP/state-$1"
    ip netns exec "$P-$1" "$BIN" run --config "$2" --socket "$3" --state-dir "$TMP/state-$1" 2>"$TMP/$1.log" & SWPID=$!
    PIDS+=("$SWPID")
    for _ in $(seq 50); do [ -S "$3" ] && break; sleep 0.1; done
    [ -S "$3" ] || { echo "vswitch did not start:"; cat "$TMP/$1.log"; exit 1; }
}

# One-way latency of sparse packets (each 300 ms after the last, so every
# one meets an idle datapath), measured by the kernel: tcpdump timestamps the
# request leaving $1's eth0 and arriving on $2's eth0. Writes "p50 p99 max" (µs).
oneway() {
    local n=20
    ip netns exec "$P-$1" timeout 30 tcpdump -i eth0 -n -tt -l -c $((n + 10)) "udp and dst port 7777" >"$TMP/tx.txt" 2>/dev/null & local a=$!
    ip netns exec "$P-$2" timeout 30 tcpdump -i eth0 -n -tt -l -c $((n + 10)) "udp and dst port 7777" >"$TMP/rx.txt" 2>/dev/null & local b=$!
    ip netns exec "$P-$2" $APP "$BENCH" udp-echo --bind "$3:7777" & local e=$!
    PIDS+=("$a" "$b" "$e"); sleep 1.5
    NS "$1" $APP "$BENCH" rtt --to "$3:7777" --count $n --interval-us 300000 >/dev/null || true
    wait "$a" "$b" 2>/dev/null || true
    kill "$e" 2>/dev/null || true; wait "$e" 2>/dev/null || true
    python3 - "$TMP/tx.txt" "$TMP/rx.txt" >"$TMP/oneway" <<'PY'
import sys
tx = [float(l.split()[0]) for l in open(sys.argv[1]) if l.strip()]
rx = [float(l.split()[0]) for l in open(sys.argv[2]) if l.strip()]
d = sorted((r - t) * 1e6 for t, r in list(zip(tx, rx))[10:])  # skip the warm-up burst
if len(tx) != len(rx) or not d:
    print("nan nan nan"); sys.exit()
q = lambda f: d[min(len(d) - 1, int(f * len(d)))]
print(round(q(0.5), 1), round(q(0.99), 1), round(d[-1], 1))
PY
}

echo "== start sweep: 64-byte frames across $SWEEP_STARTS starts of the switch (environments of different sizes), veth and TAP, busy and adaptive"
# A figure counts only if it holds across starts with every worker on its
# core; the sweep fails the run when a worker is misplaced.
STARTS=$SWEEP_STARTS WORKER_CORE=$WORKER_CORE GEN_CORE=$GEN_CORE VSWITCH_BIN=$BIN bash bench/sweep.sh | tee "$TMP/sweep.txt" | grep -v '^RESULT'
grep '^RESULT' "$TMP/sweep.txt" | sed 's/^RESULT //' >"$TMP/sweep.res"

echo "== L2: Linux bridge and vswitch (worker on core $WORKER_CORE, busy polling) side by side, $TRIALS interleaved trials, medians"
# Both topologies stay up; the trials alternate kernel and vswitch, so a slow
# phase of this shared machine hits both. The switch is stopped (SIGSTOP)
# during the kernel's trials: its busy worker must not take the execution
# resources a sibling vCPU shares.
mkns bh; mkns ba; mkns bb
NS bh ip link add br0 type bridge; NS bh ip link set br0 up
i=1
for c in ba bb; do
    ip link add "$P$c" type veth peer name eth0 netns "$P-$c"
    ip link set "$P$c" netns "$P-bh"; NS bh ip link set "$P$c" master br0 up
    NS "$c" ip addr add "10.99.0.$i/24" dev eth0; NS "$c" ip link set eth0 up; i=$((i+1))
done
NS ba ping -c 2 -i 0.2 10.99.0.2 >/dev/null
mkns vh; mkns va; mkns vb; mkns wa; mkns wb; mkns ta; mkns tb
cat >"$TMP/vs.toml" <<CFG
[[workers]]
core = $WORKER_CORE
idle = { mode = "busy" }
[[networks]]
name = "bench"
subnet = "10.98.0.0/24"
CFG
SOCK=$TMP/vs.sock
start_switch vh "$TMP/vs.toml" "$SOCK"; VPID=$SWPID
V() { "$BIN" --socket "$SOCK" "$@" >/dev/null; }
V attach bench --netns "$P-va" --kind veth --ip 10.98.0.11/24
V attach bench --netns "$P-vb" --kind veth --ip 10.98.0.12/24
V attach bench --netns "$P-ta" --kind tap --ip 10.98.0.13/24
V attach bench --netns "$P-tb" --kind tap --ip 10.98.0.14/24
V attach bench --netns "$P-wa" --kind veth-xdp --ip 10.98.0.15/24
V attach bench --netns "$P-wb" --kind veth-xdp --ip 10.98.0.16/24
NS va ping -c 2 -i 0.2 10.98.0.12 >/dev/null; NS ta ping -c 2 -i 0.2 10.98.0.14 >/dev/null; NS wa ping -c 2 -i 0.2 10.98.0.16 >/dev/null
for t in $(seq "$TRIALS"); do
    for L in $LAYOUTS; do
        layout "$L"
        kill -STOP "$VPID"
        cost pps ba bb 10.99.0.2 10.99.0.1; rec "$L.k_pps" "$(fig)"; rec "$L.k_pps_cpu" "$(per_mp)"; rec "$L.k_pps_cores" "$(cores)"
        cost tcp ba bb 10.99.0.2; rec "$L.k_tcp" "$(fig)"; rec "$L.k_tcp_cpu" "$(per_gb)"; rec "$L.k_tcp_cores" "$(cores)"
        rec "$L.k_tcpa" "$(TCP_CC=$ALT_CC tcp ba bb 10.99.0.2)"
        rtt ba bb 10.99.0.2; read -r a b <"$TMP/rtt"; rec "$L.k_p50" "$a"; rec "$L.k_p99" "$b"
        kill -CONT "$VPID"; sleep 0.2
        cost pps wa wb 10.98.0.16 10.98.0.15; rec "$L.v_pps" "$(fig)"; rec "$L.v_pps_cpu" "$(per_mp)"; rec "$L.v_pps_cores" "$(cores)"
        rec "$L.v_ppsp" "$(pps va vb 10.98.0.12 10.98.0.11)"
        cost tcp ta tb 10.98.0.14; rec "$L.v_tcp" "$(fig)"; rec "$L.v_tcp_cpu" "$(per_gb)"; rec "$L.v_tcp_cores" "$(cores)"
        rec "$L.v_tcpa" "$(TCP_CC=$ALT_CC tcp ta tb 10.98.0.14)"
        rec "$L.v_tcpv" "$(tcp va vb 10.98.0.12)"
        rec "$L.v_tcpx" "$(tcp wa wb 10.98.0.16)"
        rtt ta tb 10.98.0.14; read -r a b <"$TMP/rtt"; rec "$L.v_p50" "$a"; rec "$L.v_p99" "$b"
        rtt va vb 10.98.0.12; read -r a b <"$TMP/rtt"; rec "$L.vv_p50" "$a"
        echo "trial $t, $L layout: 64B frames delivered bridge/vswitch veth-xdp/vswitch veth $(last k_pps)/$(last v_pps)/$(last v_ppsp) per s; iperf3 TCP bridge $(last k_tcp), vswitch TAP $(last v_tcp), veth $(last v_tcpv), veth-xdp $(last v_tcpx) Gbit/s, with $ALT_CC bridge $(last k_tcpa), vswitch TAP $(last v_tcpa) Gbit/s; RTT p50 bridge $(last k_p50), vswitch TAP $(last v_p50), veth $(last vv_p50) us"
    done
done
for L in $LAYOUTS; do
    echo "Linux bridge, $L layout, medians: 64B frames delivered $(medk "$L.k_pps")/s; iperf3 TCP $(medk "$L.k_tcp") Gbit/s ($ALT_CC: $(medk "$L.k_tcpa")); UDP RTT p50/p99 $(medk "$L.k_p50") / $(medk "$L.k_p99") us"
    echo "at full rate, $L layout, medians (whole machine): 64B frames bridge/vswitch veth-xdp $(medk "$L.k_pps_cpu")/$(medk "$L.v_pps_cpu") CPU-s per million frames with $(medk "$L.k_pps_cores")/$(medk "$L.v_pps_cores") cores busy; iperf3 TCP bridge/vswitch TAP $(medk "$L.k_tcp_cpu")/$(medk "$L.v_tcp_cpu") CPU-s per GB with $(medk "$L.k_tcp_cores")/$(medk "$L.v_tcp_cores") cores busy"
    echo "vswitch, $L layout, medians: 64B frames delivered (veth/AF_XDP) $(medk "$L.v_pps")/s, (veth/AF_PACKET) $(medk "$L.v_ppsp")/s; iperf3 TCP (TAP) $(medk "$L.v_tcp") ($ALT_CC: $(medk "$L.v_tcpa")), (veth/AF_PACKET) $(medk "$L.v_tcpv"), (veth/AF_XDP) $(medk "$L.v_tcpx") Gbit/s; UDP RTT p50/p99 (TAP) $(medk "$L.v_p50") / $(medk "$L.v_p99") us, p50 (veth) $(medk "$L.vv_p50") us"
done
"$BIN" --socket "$SOCK" stats
# Kept (stopped) for the CPU cost at a fixed load, below.
kill -STOP "$VPID"
layout equal
oneway ba bb 10.99.0.2; read -r K_OW50 K_OW99 K_OWMAX <"$TMP/oneway"; echo "Linux bridge: one-way latency of packets after 300 ms idle, p50/p99/max: $K_OW50 / $K_OW99 / $K_OWMAX us"


echo "== vswitch, adaptive idle mode (edge gateway): CPU while idle, first packet after idle"
mkns ih; mkns ia; mkns ib; mkns ic; mkns id
cat >"$TMP/idle.toml" <<CFG
[[workers]]
core = $WORKER_CORE
idle = { mode = "adaptive", idle_after_us = 200, max_sleep_ms = 100 }
[[networks]]
name = "edge"
subnet = "10.97.0.0/24"
CFG
SOCK2=$TMP/idle.sock
start_switch ih "$TMP/idle.toml" "$SOCK2"; IPID=$SWPID
"$BIN" --socket "$SOCK2" attach edge --netns "$P-ia" --kind tap --ip 10.97.0.11/24 >/dev/null
"$BIN" --socket "$SOCK2" attach edge --netns "$P-ib" --kind tap --ip 10.97.0.12/24 >/dev/null
"$BIN" --socket "$SOCK2" attach edge --netns "$P-ic" --kind veth-xdp --ip 10.97.0.13/24 >/dev/null
"$BIN" --socket "$SOCK2" attach edge --netns "$P-id" --kind veth-xdp --ip 10.97.0.14/24 >/dev/null
NS ia ping -c 2 -i 0.2 10.97.0.12 >/dev/null; NS ic ping -c 2 -i 0.2 10.97.0.14 >/dev/null
sleep 1
ticks() { awk '{print $14 + $15}' "/proc/$IPID/stat"; }
T0=$(ticks); S0=$(date +%s.%N); sleep "$DURATION"; T1=$(ticks); S1=$(date +%s.%N)
IDLE_CPU=$(python3 -c "import os;print(round(100*($T1-$T0)/os.sysconf('SC_CLK_TCK')/($S1-$S0),3))")
echo "CPU of the whole switch process while idle: $IDLE_CPU % of one core"
# Each probe 300 ms after the last: the worker is asleep in poll(2) every time.
oneway ia ib 10.97.0.12; read -r I_OW50 I_OW99 I_OWMAX <"$TMP/oneway"
echo "one-way latency of packets after 300 ms idle (first packet wakes the worker), p50/p99/max: $I_OW50 / $I_OW99 / $I_OWMAX us"

echo "== CPU cost at a fixed offered load (equal layout): iperf3 TCP at $FIX_TCP bit/s, 64-byte frames at $FIX_PPS/s; whole machine, /proc/stat"
kill -STOP "$IPID"
for t in $(seq "$TRIALS"); do
    TCP_RATE=$FIX_TCP cost tcp ba bb 10.99.0.2; rec k_tcp_fix "$(fig)"; rec k_tcp_cpu "$(per_gb)"
    RATE=$FIX_PPS cost pps ba bb 10.99.0.2 10.99.0.1; rec k_pps_fix "$(cut -d' ' -f1 "$TMP/cost")"; rec k_pps_cpu "$(per_mp)"
    kill -CONT "$VPID"; sleep 0.2
    TCP_RATE=$FIX_TCP cost tcp ta tb 10.98.0.14; rec vb_tcp_fix "$(cut -d' ' -f1 "$TMP/cost")"; rec vb_tcp_cpu "$(per_gb)"
    RATE=$FIX_PPS cost pps wa wb 10.98.0.16 10.98.0.15; rec vb_pps_fix "$(cut -d' ' -f1 "$TMP/cost")"; rec vb_pps_cpu "$(per_mp)"
    kill -STOP "$VPID"; kill -CONT "$IPID"; sleep 0.2
    TCP_RATE=$FIX_TCP cost tcp ia ib 10.97.0.12; rec va_tcp_fix "$(cut -d' ' -f1 "$TMP/cost")"; rec va_tcp_cpu "$(per_gb)"
    RATE=$FIX_PPS cost pps ic id 10.97.0.14 10.97.0.13; rec va_pps_fix "$(cut -d' ' -f1 "$TMP/cost")"; rec va_pps_cpu "$(per_mp)"
    kill -STOP "$IPID"
    echo "trial $t: CPU-s per GB at $FIX_TCP bit/s bridge/vswitch busy/vswitch adaptive $(last k_tcp_cpu)/$(last vb_tcp_cpu)/$(last va_tcp_cpu); CPU-s per million frames at $FIX_PPS/s $(last k_pps_cpu)/$(last vb_pps_cpu)/$(last va_pps_cpu)"
done
echo "achieved at the fixed load, medians: TCP bridge/busy/adaptive $(medk k_tcp_fix)/$(medk vb_tcp_fix)/$(medk va_tcp_fix) Gbit/s; frames $(medk k_pps_fix)/$(medk vb_pps_fix)/$(medk va_pps_fix) per s"
kill "$VPID" "$IPID"; kill -CONT "$VPID" "$IPID"; wait "$VPID" "$IPID" 2>/dev/null || true

# iperf3 TCP, server in $1 on port $2, client in $3 to $4:$5; prints Gbit/s
# (TCP_CC as for tcp).
tcp_to() {
    ip netns exec "$P-$1" $APP iperf3 -s -1 -p "$2" >/dev/null 2>&1 & local s=$!
    sleep 0.4
    NS "$3" $APP iperf3 -c "$4" -p "$5" -t "$DURATION" ${TCP_CC:+-C "$TCP_CC"} ${TCP_RATE:+-b "$TCP_RATE"} -J >"$TMP/i.json" || true
    wait $s 2>/dev/null || true
    python3 -c "import json;print(round(json.load(open('$TMP/i.json'))['end']['sum_received']['bits_per_second']/1e9,3))"
}

# New TCP connections per second from $1 to $2:$3 (server already running:
# accept-server, as many SO_REUSEPORT threads as clients); prints the rate and
# leaves the failed connects (timeouts: a SYN lost) in $TMP/cfail.
# $4: connections each client thread keeps in flight (non-blocking sockets);
# none: one blocking connect at a time.
cps() {
    NS "$1" $APP "$BENCH" connrate --to "$2:$3" --secs "$DURATION" --threads 4 --inflight "${4:-0}" >"$TMP/c.json" || true
    python3 -c "import json;print(json.load(open('$TMP/c.json'))['failed'])" >"$TMP/cfail"
    python3 -c "import json;print(round(json.load(open('$TMP/c.json'))['conn_per_sec']))"
}

# A host with an uplink veth to an external namespace: $1 host, $2 ext,
# $3 interface prefix, $4 /24 prefix of the link.
uplink_pair() {
    ip link add "$P$3u" netns "$P-$1" type veth peer name "$P$3x" netns "$P-$2"
    NS "$1" ip addr add "$4.1/24" dev "$P$3u"; NS "$1" ip link set "$P$3u" up
    NS "$2" ip addr add "$4.2/24" dev "$P$3x"; NS "$2" ip link set "$P$3x" up
}

echo "== NAT: docker0-style bridge with iptables MASQUERADE/DNAT and vswitch's gateway (worker on core $WORKER_CORE, busy polling; TAP container, AF_PACKET uplink) side by side, $TRIALS interleaved trials, medians"
mkns nh; mkns nc; mkns ne
uplink_pair nh ne n 192.168.95
NS nh ip link add br0 type bridge; NS nh ip addr add 10.96.0.1/24 dev br0; NS nh ip link set br0 up
ip link add "${P}nc" type veth peer name eth0 netns "$P-nc"
ip link set "${P}nc" netns "$P-nh"; NS nh ip link set "${P}nc" master br0 up
NS nc ip addr add 10.96.0.2/24 dev eth0; NS nc ip link set eth0 up; NS nc ip route add default via 10.96.0.1
NS nh sysctl -qw net.ipv4.ip_forward=1
NS nh iptables -t nat -A POSTROUTING -s 10.96.0.0/24 ! -o br0 -j MASQUERADE
NS nh iptables -t nat -A PREROUTING -d 192.168.95.1 -p tcp --dport 15201 -j DNAT --to-destination 10.96.0.2:5201
NS nh iptables -t nat -A PREROUTING -d 192.168.95.1 -p tcp --dport 18080 -j DNAT --to-destination 10.96.0.2:8080
NS nc ping -c 2 -i 0.2 192.168.95.2 >/dev/null
ip netns exec "$P-nc" $APP "$BENCH" accept-server --bind 0.0.0.0:8080 --threads 4 & PIDS+=("$!")
mkns sh; mkns sc; mkns se
uplink_pair sh se s 192.168.94
cat >"$TMP/nat.toml" <<CFG
[[workers]]
core = $WORKER_CORE
idle = { mode = "busy" }
[[networks]]
name = "nat"
subnet = "10.95.0.0/24"
[uplink]
iface = "${P}su"
CFG
SOCK3=$TMP/nat.sock
start_switch sh "$TMP/nat.toml" "$SOCK3"; NPID=$SWPID
"$BIN" --socket "$SOCK3" attach nat --netns "$P-sc" --kind tap >/dev/null
"$BIN" --socket "$SOCK3" publish nat 10.95.0.2:5201 --host-port 15201 >/dev/null
"$BIN" --socket "$SOCK3" publish nat 10.95.0.2:8080 --host-port 18080 >/dev/null
if [ -n "$EXT_RPS" ]; then
    NS ne sh -c "echo $EXT_RPS >/sys/class/net/${P}nx/queues/rx-0/rps_cpus"
    NS se sh -c "echo $EXT_RPS >/sys/class/net/${P}sx/queues/rx-0/rps_cpus"
    echo "external namespaces take in their frames on CPU mask $EXT_RPS (EXT_RPS)"
fi
NS sc ping -c 2 -i 0.2 192.168.94.2 >/dev/null
ip netns exec "$P-sc" $APP "$BENCH" accept-server --bind 0.0.0.0:8080 --threads 4 & PIDS+=("$!"); sleep 0.3
for t in $(seq "$TRIALS"); do
    for L in $LAYOUTS; do
        layout "$L"
        kill -STOP "$NPID"
        rec "$L.k_snat" "$(tcp_to ne 5201 nc 192.168.95.2 5201)"
        rec "$L.k_dnat" "$(tcp_to nc 5201 ne 192.168.95.1 15201)"
        rec "$L.k_snata" "$(TCP_CC=$ALT_CC tcp_to ne 5201 nc 192.168.95.2 5201)"
        rec "$L.k_dnata" "$(TCP_CC=$ALT_CC tcp_to nc 5201 ne 192.168.95.1 15201)"
        rec "$L.k_cps" "$(cps ne 192.168.95.1 18080)"; KF=$(cat "$TMP/cfail")
        rec "$L.k_cpsi" "$(cps ne 192.168.95.1 18080 16)"; KF="$KF, $(cat "$TMP/cfail")"
        kill -CONT "$NPID"; sleep 0.2
        rec "$L.v_snat" "$(tcp_to se 5201 sc 192.168.94.2 5201)"
        rec "$L.v_dnat" "$(tcp_to sc 5201 se 192.168.94.1 15201)"
        rec "$L.v_snata" "$(TCP_CC=$ALT_CC tcp_to se 5201 sc 192.168.94.2 5201)"
        rec "$L.v_dnata" "$(TCP_CC=$ALT_CC tcp_to sc 5201 se 192.168.94.1 15201)"
        rec "$L.v_cps" "$(cps se 192.168.94.1 18080)"; VF=$(cat "$TMP/cfail")
        rec "$L.v_cpsi" "$(cps se 192.168.94.1 18080 16)"; VF="$VF, $(cat "$TMP/cfail")"
        echo "trial $t, $L layout: iperf3 TCP SNAT iptables/vswitch $(last k_snat)/$(last v_snat), DNAT $(last k_dnat)/$(last v_dnat) Gbit/s, with $ALT_CC SNAT $(last k_snata)/$(last v_snata), DNAT $(last k_dnata)/$(last v_dnata) Gbit/s; new TCP connections/s, blocking clients $(last k_cps)/$(last v_cps), 16 in flight per client $(last k_cpsi)/$(last v_cpsi) (failed connects $KF / $VF)"
    done
done
for L in $LAYOUTS; do
    echo "iptables, $L layout, medians: iperf3 TCP container -> external (MASQUERADE) $(medk "$L.k_snat"), external -> published port (DNAT) $(medk "$L.k_dnat") Gbit/s ($ALT_CC: $(medk "$L.k_snata"), $(medk "$L.k_dnata")); new TCP connections/s to a published port $(medk "$L.k_cps") (4 blocking clients), $(medk "$L.k_cpsi") (4 clients, 16 in flight each)"
    echo "vswitch, $L layout, medians: iperf3 TCP container -> external (SNAT) $(medk "$L.v_snat"), external -> published port (DNAT) $(medk "$L.v_dnat") Gbit/s ($ALT_CC: $(medk "$L.v_snata"), $(medk "$L.v_dnata")); new TCP connections/s to a published port $(medk "$L.v_cps") (4 blocking clients), $(medk "$L.v_cpsi") (4 clients, 16 in flight each)"
done
layout equal
echo "== NAT at a fixed offered load (equal layout): iperf3 TCP container -> external at $FIX_TCP bit/s, CPU-s per GB"
for t in $(seq "$TRIALS"); do
    kill -STOP "$NPID"
    TCP_RATE=$FIX_TCP cost tcp_to ne 5201 nc 192.168.95.2 5201; rec k_snat_cpu "$(per_gb)"
    kill -CONT "$NPID"; sleep 0.2
    TCP_RATE=$FIX_TCP cost tcp_to se 5201 sc 192.168.94.2 5201; rec v_snat_cpu "$(per_gb)"
    echo "trial $t: iptables/vswitch $(last k_snat_cpu)/$(last v_snat_cpu) CPU-s per GB"
done
echo "== new TCP connections/s to a published port with 1, 1000 and 10000 ports published (equal layout): Docker's iptables rules (one DNAT rule per port, the measured port published last) against vswitch's"
# Docker's layout of the rules: PREROUTING jumps to DOCKER for local
# addresses, one DNAT rule per published port, in the order published.
NS nh iptables -t nat -N DOCKER
NS nh iptables -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
NS nh iptables -t nat -A DOCKER ! -i br0 -p tcp -m tcp --dport 19080 -j DNAT --to-destination 10.96.0.2:8080
"$BIN" --socket "$SOCK3" publish nat 10.95.0.2:8080 --host-port 19080 >/dev/null
HAVE=1; NEXTP=20000
for N in 1 1000 10000; do
    # The ports published before the measured one: its rule comes last.
    ADD=$((N - HAVE))
    if [ "$ADD" -gt 0 ]; then
        t0=$(date +%s.%N)
        { echo "*nat"; for p in $(seq "$NEXTP" $((NEXTP + ADD - 1))); do echo "-I DOCKER 1 ! -i br0 -p tcp -m tcp --dport $p -j DNAT --to-destination 10.96.0.2:$p"; done; echo COMMIT; } | NS nh iptables-restore --noflush
        t1=$(date +%s.%N)
        for p in $(seq "$NEXTP" $((NEXTP + ADD - 1))); do "$BIN" --socket "$SOCK3" publish nat "10.95.0.2:$p" --host-port "$p" >/dev/null; done
        t2=$(date +%s.%N)
        NEXTP=$((NEXTP + ADD)); HAVE=$N
        echo "published $ADD more ports: iptables-restore $(python3 -c "print(round($t1-$t0,2))") s, vswitch publish (one command each) $(python3 -c "print(round($t2-$t1,1))") s"
    fi
    for t in $(seq "$TRIALS"); do
        kill -STOP "$NPID"
        rec "k_cps_$N" "$(cps ne 192.168.95.1 19080)"
        kill -CONT "$NPID"; sleep 0.2
        rec "v_cps_$N" "$(cps se 192.168.94.1 19080)"
    done
    echo "$N published ports: iptables/vswitch $(medk "k_cps_$N")/$(medk "v_cps_$N") connections/s (4 blocking clients, medians)"
done
echo "== new TCP connections/s through SNAT (container -> external), with no other flows and with $FILL_FLOWS other tracked flows (equal layout)"
# A server outside each side; the other flows are UDP from the container to
# $FILL_FLOWS destination ports outside (dropped there), sent again before
# every measurement so that none expires (UDP unreplied: 30 s on both).
for ns in ne se; do
    ip netns exec "$P-$ns" $APP "$BENCH" accept-server --bind 0.0.0.0:8081 --threads 4 & PIDS+=("$!")
    NS "$ns" iptables -A INPUT -p udp --dport 1024:65535 -j DROP
done
sleep 0.3
# $1 container namespace, $2 external address: $FILL_FLOWS UDP flows.
fill() {
    NS "$1" python3 -c "
import socket
n, dst = $FILL_FLOWS, '$2'
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range((n + 49999) // 50000)]
for i in range(n):
    socks[i // 50000].sendto(b'x', (dst, 1024 + i % 50000))
" || echo "filling flows from $1 failed" >&2
}
k_tracked() { NS nh cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo "?"; }
v_tracked() { { "$BIN" --socket "$SOCK3" conntrack show --json | python3 -c "import json,sys;print(json.load(sys.stdin)['count'])"; } 2>/dev/null || echo "?"; }
for t in $(seq "$TRIALS"); do
    kill -STOP "$NPID"
    rec k_cps_snat "$(cps nc 192.168.95.2 8081)"
    fill nc 192.168.95.2; KT=$(k_tracked)
    rec k_cps_snat_fill "$(cps nc 192.168.95.2 8081)"
    kill -CONT "$NPID"; sleep 0.2
    rec v_cps_snat "$(cps sc 192.168.94.2 8081)"
    fill sc 192.168.94.2; VT=$(v_tracked)
    rec v_cps_snat_fill "$(cps sc 192.168.94.2 8081)"
    echo "trial $t: iptables/vswitch $(last k_cps_snat)/$(last v_cps_snat) connections/s; with the other flows (tracked before: $KT / $VT) $(last k_cps_snat_fill)/$(last v_cps_snat_fill)"
done
echo "through SNAT: iptables/vswitch $(medk k_cps_snat)/$(medk v_cps_snat) connections/s; with $FILL_FLOWS other tracked flows $(medk k_cps_snat_fill)/$(medk v_cps_snat_fill) (4 blocking clients, medians)"
"$BIN" --socket "$SOCK3" stats
"$BIN" --socket "$SOCK3" conntrack show | tail -1
kill "$NPID"; wait "$NPID" 2>/dev/null || true

echo "== VXLAN: two hosts, Linux bridge + kernel VXLAN on each"
mkns kA; mkns kB; mkns kc1; mkns kc2
uplink_pair kA kB k 192.168.93
for h in A B; do
    local_ip=$([ $h = A ] && echo 192.168.93.1 || echo 192.168.93.2)
    remote_ip=$([ $h = A ] && echo 192.168.93.2 || echo 192.168.93.1)
    dev=$([ $h = A ] && echo "${P}ku" || echo "${P}kx")
    c=$([ $h = A ] && echo kc1 || echo kc2)
    NS "k$h" ip link add br0 type bridge; NS "k$h" ip link set br0 up
    NS "k$h" ip link add vx0 type vxlan id 42 dstport 4789 local "$local_ip" dev "$dev"
    NS "k$h" bridge fdb append 00:00:00:00:00:00 dev vx0 dst "$remote_ip"
    NS "k$h" ip link set vx0 master br0 up
    ip link add "$P$c" type veth peer name eth0 netns "$P-$c"
    ip link set "$P$c" netns "$P-k$h"; NS "k$h" ip link set "$P$c" master br0 up
    NS "$c" ip addr add "10.94.0.$([ $h = A ] && echo 11 || echo 12)/24" dev eth0
    NS "$c" ip link set eth0 mtu 1450 up
done
NS kc1 ping -c 2 -i 0.2 10.94.0.12 >/dev/null

echo "== VXLAN: two hosts, vswitch on each (both workers adaptive on core $WORKER_CORE), beside the kernel's; $TRIALS interleaved trials, medians"
XPIDS=()
mkns xA; mkns xB; mkns xa1; mkns xa2; mkns xb1; mkns xb2
uplink_pair xA xB x 192.168.92
for h in A B; do
    peer=$([ $h = A ] && echo 192.168.92.2 || echo 192.168.92.1)
    dev=$([ $h = A ] && echo "${P}xu" || echo "${P}xx")
    cat >"$TMP/x$h.toml" <<CFG
[[workers]]
core = $WORKER_CORE
idle = { mode = "adaptive", idle_after_us = 200, max_sleep_ms = 20 }
[[networks]]
name = "ov"
driver = "overlay"
vni = 42
peers = ["$peer"]
[uplink]
iface = "$dev"
CFG
    start_switch "x$h" "$TMP/x$h.toml" "$TMP/x$h.sock"; XPIDS+=("$SWPID")
done
"$BIN" --socket "$TMP/xA.sock" attach ov --netns "$P-xa1" --kind tap --ip 10.94.0.11/24 >/dev/null
"$BIN" --socket "$TMP/xA.sock" attach ov --netns "$P-xa2" --kind veth-xdp --ip 10.94.0.21/24 >/dev/null
"$BIN" --socket "$TMP/xB.sock" attach ov --netns "$P-xb1" --kind tap --ip 10.94.0.12/24 >/dev/null
"$BIN" --socket "$TMP/xB.sock" attach ov --netns "$P-xb2" --kind veth-xdp --ip 10.94.0.22/24 >/dev/null
NS xa1 ping -c 2 -i 0.2 10.94.0.12 >/dev/null; NS xa2 ping -c 2 -i 0.2 10.94.0.22 >/dev/null
for t in $(seq "$TRIALS"); do
    for L in $LAYOUTS; do
        layout "$L"
        kill -STOP "${XPIDS[@]}"
        rec "$L.k_vx_tcp" "$(tcp kc1 kc2 10.94.0.12)"
        rec "$L.k_vx_tcpa" "$(TCP_CC=$ALT_CC tcp kc1 kc2 10.94.0.12)"
        rec "$L.k_vx_pps" "$(pps kc1 kc2 10.94.0.12 10.94.0.11)"
        kill -CONT "${XPIDS[@]}"; sleep 0.2
        rec "$L.v_vx_tcp" "$(tcp xa1 xb1 10.94.0.12)"
        rec "$L.v_vx_tcpa" "$(TCP_CC=$ALT_CC tcp xa1 xb1 10.94.0.12)"
        rec "$L.v_vx_pps" "$(pps xa2 xb2 10.94.0.22 10.94.0.21)"
        echo "trial $t, $L layout: iperf3 TCP across hosts kernel/vswitch $(last k_vx_tcp)/$(last v_vx_tcp) Gbit/s, with $ALT_CC $(last k_vx_tcpa)/$(last v_vx_tcpa) Gbit/s; 64B frames delivered across hosts $(last k_vx_pps)/$(last v_vx_pps) per s"
    done
done
for L in $LAYOUTS; do
    echo "kernel VXLAN, $L layout, medians: iperf3 TCP across hosts $(medk "$L.k_vx_tcp") Gbit/s ($ALT_CC: $(medk "$L.k_vx_tcpa")); 64B frames delivered across hosts $(medk "$L.k_vx_pps")/s"
    echo "vswitch, $L layout, medians: iperf3 TCP across hosts (TAP containers) $(medk "$L.v_vx_tcp") Gbit/s ($ALT_CC: $(medk "$L.v_vx_tcpa")); 64B frames delivered across hosts (veth/AF_XDP containers) $(medk "$L.v_vx_pps")/s"
done
"$BIN" --socket "$TMP/xA.sock" stats
"$BIN" --socket "$TMP/xB.sock" stats
# The two VXLAN switches are done: their workers would otherwise wake on the
# worker core beside every later section (the pipeline on memory runs there).
kill "${XPIDS[@]}"; wait "${XPIDS[@]}" 2>/dev/null || true

: >"$TMP/cl.res"
# CLUSTER_HOSTS=0 skips the peer-table sync section, CONTAINER_START=0 the
# podman section, DNS_BENCH=0 the resolver's.
for backend in $([ "$CLUSTER_HOSTS" -gt 0 ] && echo gossip etcd); do
    echo "== peer-table sync: $CLUSTER_HOSTS hosts (namespaces on one bridge), one switch each, $backend backend"
    "$BENCH" cluster --hosts "$CLUSTER_HOSTS" --vswitch "$BIN" --prefix "$P-c" --backend "$backend" | tee "$TMP/cl.txt" | grep -v '^RESULT'
    grep '^RESULT' "$TMP/cl.txt" | sed 's/^RESULT //' >>"$TMP/cl.res"
done

echo "== container start: podman on a vswitch network (the CNI plugin) against podman's own bridge network"
if [ "${CONTAINER_START:-1}" != 0 ]; then
    bash bench/container_start.sh "$BIN" | tee "$TMP/cs.txt" | grep -v '^RESULT'
    grep '^RESULT' "$TMP/cs.txt" | sed 's/^RESULT //' >>"$TMP/cl.res"
fi

echo "== name resolution: dnsperf against a network's resolver, vswitch's on the gateway against dnsmasq on a docker0-style bridge"
if [ "${DNS_BENCH:-1}" != 0 ]; then
    DURATION=$DURATION TRIALS=$TRIALS WORKER_CORE=$WORKER_CORE bash bench/dns.sh "$BIN" | tee "$TMP/dns.txt" | grep -v '^RESULT'
    grep '^RESULT' "$TMP/dns.txt" | sed 's/^RESULT //' >>"$TMP/cl.res"
fi

echo "== pipeline on memory"
# Field $3 of the case named $2 among the JSON lines of file $1.
jv() {
    python3 - "$@" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("JSON "):
        d = json.loads(line[5:])
        if d.get("case") == sys.argv[2]:
            print(round(d[sys.argv[3]], 2))
PY
}
# Pinned to the worker core, as a worker would be (unpinned, the scheduler may
# move the run between the two cores mid-trial).
taskset -c "$WORKER_CORE" "$BENCH" pipeline | tee "$TMP/pipe.txt" | grep -v '^JSON'
P1=$(jv "$TMP/pipe.txt" pipeline_l2_1_macs cycles_per_packet)
P100K=$(jv "$TMP/pipe.txt" pipeline_l2_100000_macs cycles_per_packet)
P100KM=$(jv "$TMP/pipe.txt" pipeline_l2_100000_macs_3_out_ports cycles_per_packet)
taskset -c "$WORKER_CORE" "$BENCH" nat | tee "$TMP/nat.txt" | grep -v '^JSON'
N1=$(jv "$TMP/nat.txt" pipeline_nat_1_flows cycles_per_packet); N1M=$(jv "$TMP/nat.txt" pipeline_nat_1000000_flows cycles_per_packet)
NRATIO=$(jv "$TMP/nat.txt" pipeline_nat_1000000_flows ratio_vs_1_flow); NBYTES=$(jv "$TMP/nat.txt" pipeline_nat_1000000_flows bytes_per_flow)
EXP50=$(jv "$TMP/nat.txt" expiry_step_1000000_flows median_us); EXP99=$(jv "$TMP/nat.txt" expiry_step_1000000_flows p99_us); EXPMAX=$(jv "$TMP/nat.txt" expiry_step_1000000_flows max_us)
# The same with the flow entries in a mapping of a tmpfs file, as the switch
# keeps them (so that a restarted switch takes them over).
taskset -c "$WORKER_CORE" "$BENCH" nat --flow-file "/dev/shm/$P.flows" | tee "$TMP/natf.txt" | grep -v '^JSON'
rm -f "/dev/shm/$P.flows"
NF1=$(jv "$TMP/natf.txt" pipeline_nat_1_flows_flow_file cycles_per_packet); NF1M=$(jv "$TMP/natf.txt" pipeline_nat_1000000_flows_flow_file cycles_per_packet)
taskset -c "$WORKER_CORE" "$BENCH" vxlan | tee "$TMP/vx.txt" | grep -v '^JSON'
VENC=$(jv "$TMP/vx.txt" pipeline_vxlan_encap cycles_per_packet)
VDEC=$(jv "$TMP/vx.txt" pipeline_vxlan_decap cycles_per_packet)

{
    echo "# metric unit kernel vswitch [lower]"
    for L in $LAYOUTS; do
        x=_$L
        m() { medk "$L.$1"; }
        cat <<R
frames64_delivered_veth_xdp$x pps $(m k_pps) $(m v_pps)
frames64_delivered_veth_packet$x pps $(m k_pps) $(m v_ppsp)
iperf3_tcp_tap$x Gbit/s $(m k_tcp) $(m v_tcp)
iperf3_tcp_veth_packet$x Gbit/s $(m k_tcp) $(m v_tcpv)
iperf3_tcp_veth_xdp$x Gbit/s $(m k_tcp) $(m v_tcpx)
iperf3_tcp_tap_$ALT_CC$x Gbit/s $(m k_tcpa) $(m v_tcpa)
cpu_s_per_mpkt_frames64_veth_xdp_at_full_rate$x cpu-s/Mpkt $(m k_pps_cpu) $(m v_pps_cpu) lower
cores_busy_frames64_veth_xdp_at_full_rate$x cores $(m k_pps_cores) $(m v_pps_cores) lower
cpu_s_per_gb_tcp_tap_at_full_rate$x cpu-s/GB $(m k_tcp_cpu) $(m v_tcp_cpu) lower
cores_busy_tcp_tap_at_full_rate$x cores $(m k_tcp_cores) $(m v_tcp_cores) lower
rtt_p50_tap$x us $(m k_p50) $(m v_p50) lower
rtt_p99_tap$x us $(m k_p99) $(m v_p99) lower
rtt_p50_veth$x us $(m k_p50) $(m vv_p50) lower
iperf3_tcp_snat$x Gbit/s $(m k_snat) $(m v_snat)
iperf3_tcp_dnat$x Gbit/s $(m k_dnat) $(m v_dnat)
iperf3_tcp_snat_$ALT_CC$x Gbit/s $(m k_snata) $(m v_snata)
iperf3_tcp_dnat_$ALT_CC$x Gbit/s $(m k_dnata) $(m v_dnata)
tcp_conn_per_sec_published$x conn/s $(m k_cps) $(m v_cps)
tcp_conn_per_sec_published_inflight16$x conn/s $(m k_cpsi) $(m v_cpsi)
iperf3_tcp_vxlan$x Gbit/s $(m k_vx_tcp) $(m v_vx_tcp)
iperf3_tcp_vxlan_$ALT_CC$x Gbit/s $(m k_vx_tcpa) $(m v_vx_tcpa)
frames64_delivered_vxlan$x pps $(m k_vx_pps) $(m v_vx_pps)
R
    done
    cat <<R
after_idle_oneway_p50_adaptive us $K_OW50 $I_OW50 lower
after_idle_oneway_max_adaptive us $K_OWMAX $I_OWMAX lower
idle_cpu_adaptive_percent % - $IDLE_CPU lower
cpu_s_per_gb_tcp_tap_busy_at_$FIX_TCP cpu-s/GB $(medk k_tcp_cpu) $(medk vb_tcp_cpu) lower
cpu_s_per_gb_tcp_tap_adaptive_at_$FIX_TCP cpu-s/GB $(medk k_tcp_cpu) $(medk va_tcp_cpu) lower
cpu_s_per_mpkt_frames64_busy_at_$FIX_PPS cpu-s/Mpkt $(medk k_pps_cpu) $(medk vb_pps_cpu) lower
cpu_s_per_mpkt_frames64_adaptive_at_$FIX_PPS cpu-s/Mpkt $(medk k_pps_cpu) $(medk va_pps_cpu) lower
cpu_s_per_gb_tcp_snat_busy_at_$FIX_TCP cpu-s/GB $(medk k_snat_cpu) $(medk v_snat_cpu) lower
tcp_conn_per_sec_1_published conn/s $(medk k_cps_1) $(medk v_cps_1)
tcp_conn_per_sec_1000_published conn/s $(medk k_cps_1000) $(medk v_cps_1000)
tcp_conn_per_sec_10000_published conn/s $(medk k_cps_10000) $(medk v_cps_10000)
tcp_conn_per_sec_snat conn/s $(medk k_cps_snat) $(medk v_cps_snat)
tcp_conn_per_sec_snat_${FILL_FLOWS}_flows conn/s $(medk k_cps_snat_fill) $(medk v_cps_snat_fill)
R
} >"$RES"
cat "$TMP/cl.res" >>"$RES"
cat "$TMP/sweep.res" >>"$RES"
echo
echo "== summary (kernel = Linux bridge for the L2 rows, docker0-style bridge + iptables NAT for the NAT rows, bridge + kernel VXLAN on two hosts for the VXLAN rows; same topology, same run)"
"$BENCH" report --input "$RES" --commit "$COMMIT" --out bench/results
echo "pipeline cycles/packet: $P1 (1 MAC), $P100K (100,000 MACs), $P100KM (100,000 MACs, destinations on 3 ports)"
echo "NAT pipeline cycles/packet: $N1 (1 flow), $N1M (1,000,000 flows: ${NRATIO}x the 1-flow rate); $NBYTES bytes per tracked flow"
echo "NAT pipeline cycles/packet, flow entries in a tmpfs file mapping: $NF1 (1 flow), $NF1M (1,000,000 flows)"
echo "conntrack expiry at the bound, 1,000,000 flows replaced, steps of 4,096 slots: median $EXP50 / p99 $EXP99 / max $EXPMAX us"
echo "VXLAN pipeline cycles/packet: encap $VENC, decap $VDEC"
echo "adaptive idle: $IDLE_CPU % of one core while idle; first packet after idle one-way p50/p99/max $I_OW50 / $I_OW99 / $I_OWMAX us"
{
    echo
    echo "## $COMMIT — $(date -u +%Y-%m-%dT%H:%MZ), DURATION=${DURATION}s, worker core $WORKER_CORE, generator core $GEN_CORE, TCP congestion control $DEFAULT_CC (rows *_$ALT_CC: $ALT_CC)${EXT_RPS:+, RPS mask of the NAT external namespaces $EXT_RPS}"
    echo '```'
    "$BENCH" report --input "$RES" --commit "$COMMIT" --out bench/results | grep -v '^wrote'
    echo "pipeline cycles/packet: $P1 (1 MAC), $P100K (100,000 MACs), $P100KM (100,000 MACs, destinations on 3 ports)"
    echo "NAT pipeline cycles/packet: $N1 (1 flow), $N1M (1,000,000 flows: ${NRATIO}x the 1-flow rate); $NBYTES bytes per tracked flow"
    echo "NAT pipeline cycles/packet, flow entries in a tmpfs file mapping: $NF1 (1 flow), $NF1M (1,000,000 flows)"
echo "conntrack expiry at the bound, 1,000,000 flows replaced, steps of 4,096 slots: median $EXP50 / p99 $EXP99 / max $EXPMAX us"
    echo "VXLAN pipeline cycles/packet: encap $VENC, decap $VDEC"
    echo "adaptive idle: $IDLE_CPU % of one core while idle; first packet after idle one-way p50/p99/max $I_OW50 / $I_OW99 / $I_OWMAX us"
    echo '```'
} >>bench/results/HISTORY.md
