#!/usr/bin/env bash
# Start sweep: does a figure hold across starts of the switch?
#
# For veth (AF_XDP) and TAP containers, and for a busy and an adaptive worker,
# starts the switch $STARTS times, each time with an environment of another
# size (an N-byte variable, N = 0, 1, ...; the start-up layout of a process
# moves with it), attaches two containers and measures 64-byte frames
# delivered from one to the other with trafgen on $GEN_CORE, the worker
# pinned to $WORKER_CORE. Before measuring, it reads every worker's
# placement from `vswitch stats --json` and the kernel's `Cpus_allowed_list`;
# a start whose worker is not alone on its core is reported and fails the
# sweep.
#
# This VM's own speed drifts by up to ~25 % over tens of seconds (the Linux
# bridge's figure moves with it), more than any difference between starts. So
# each trial of the switch alternates with a trial of a Linux bridge between
# two other namespaces, the switch stopped (SIGSTOP) meanwhile, and a start's
# figure is the median of $TRIALS such pairs: frames/s, and frames/s relative
# to the bridge in the same window ("normalized"). The spread across starts
# is reported for both; the normalized one is the verdict.
#
#   bash bench/sweep.sh                    # STARTS=16 TRIALS=3 SECS=2 (~13 minutes)
#   KINDS=veth-xdp MODES=busy bash bench/sweep.sh
#   NOISE=1 bash bench/sweep.sh            # also as many figures from one start: the noise floor
#
# Prints one line per start, a summary per kind and mode (slowest, median,
# fastest, slowest/fastest), busy against adaptive, and lines
#   RESULT <metric> <unit> - <value> [lower]
# that bench/run.sh adds to its report. Exits non-zero when a worker was
# misplaced (the figures would not be the switch's).
set -euo pipefail
cd "$(dirname "$0")/.."
STARTS=${STARTS:-16}
TRIALS=${TRIALS:-3}
SECS=${SECS:-2}
WORKER_CORE=${WORKER_CORE:-1}
GEN_CORE=${GEN_CORE:-0}
KINDS=${KINDS:-veth-xdp tap}
MODES=${MODES:-busy adaptive}
BIN=${VSWITCH_BIN:-$PWD/target/release/vswitch}
[ -x "$BIN" ] || { echo "sweep: build first (cargo build --release) or set VSWITCH_BIN" >&2; exit 1; }
command -v trafgen >/dev/null || { echo "sweep: trafgen missing (bash scripts/install-deps.sh)" >&2; exit 1; }
P=vss$$
TMP=$(mktemp -d)
SW=""
cleanup() {
    # Under `set -e` a failing last command here would end the cleanup
    # before the namespaces go: every step tolerates failure.
    if [ -n "$SW" ]; then
        kill -CONT "$SW" 2>/dev/null || true
        kill "$SW" 2>/dev/null || true
        wait "$SW" 2>/dev/null || true
    fi
    for n in h c1 c2 bh b1 b2; do ip netns del "$P$n" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
for n in h c1 c2 bh b1 b2; do ip netns add "$P$n"; ip -n "$P$n" link set lo up; done
for n in c1 c2 b1 b2; do ip netns exec "$P$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1; done
# The reference: a Linux bridge between two veth containers.
ip -n "${P}bh" link add br0 type bridge; ip -n "${P}bh" link set br0 up
i=1
for c in b1 b2; do
    ip link add "$P$c" type veth peer name eth0 netns "$P$c"
    ip link set "$P$c" netns "${P}bh"; ip -n "${P}bh" link set "$P$c" master br0 up
    ip -n "$P$c" addr add "10.78.0.$i/24" dev eth0; ip -n "$P$c" link set eth0 up; i=$((i + 1))
done
ip netns exec "${P}b1" ping -c 2 -i 0.2 -W 1 10.78.0.2 >/dev/null
rxp() { ip netns exec "$P$1" cat /sys/class/net/eth0/statistics/rx_packets; }
mac() { ip netns exec "$P$1" cat /sys/class/net/eth0/address; }
frame() { echo "{ eth(da=$(mac "$2"), sa=$(mac "$1"), type=0x0800), ipv4(saddr=$3, daddr=$4, proto=17, ttl=64), udp(sport=4000, dport=9), fill(0x00, 18) }"; }
frame b1 b2 10.78.0.1 10.78.0.2 >"$TMP/bridge.cfg"
med() { printf '%s\n' "$@" | python3 -c "import sys,statistics;print(round(statistics.median(float(x) for x in sys.stdin.read().split())))"; }

# Starts the switch ($1 kind, $2 mode, $3 bytes of padding in its
# environment) with two containers; sets SW, and PLACED to "" or to what was
# wrong with the worker's placement.
start() {
    local kind=$1 mode=$2 pad=$3 idle
    case $mode in
        busy) idle='{ mode = "busy" }' ;;
        adaptive) idle='{ mode = "adaptive", idle_after_us = 200, max_sleep_ms = 20 }' ;;
    esac
    printf '[[workers]]\ncore = %s\nidle = %s\n[[networks]]\nname = "sw"\nsubnet = "10.79.0.0/24"\n' \
        "$WORKER_CORE" "$idle" >"$TMP/w.toml"
    rm -f "$TMP/s.sock"; rm -rf "$TMP/state"
    ip netns exec "${P}h" env VSWITCH_SWEEP_PAD="$(printf "%*s" "$pad" "" | tr ' ' x)" \
        "$BIN" run --config "$TMP/w.toml" --socket "$TMP/s.sock" --state-dir "$TMP/state" 2>"$TMP/sw.log" & SW=$!
    for _ in $(seq 100); do [ -S "$TMP/s.sock" ] && break; sleep 0.05; done
    [ -S "$TMP/s.sock" ] || { echo "sweep: vswitch did not start:" >&2; cat "$TMP/sw.log" >&2; exit 1; }
    local V=("$BIN" --socket "$TMP/s.sock")
    "${V[@]}" attach sw --netns "${P}c1" --kind "$kind" --ip 10.79.0.11/24 >/dev/null
    "${V[@]}" attach sw --netns "${P}c2" --kind "$kind" --ip 10.79.0.12/24 >/dev/null
    # Placement, from the switch and from the kernel.
    local placed kern="" t
    placed=$("${V[@]}" stats --json | python3 -c "import json,sys; w=json.load(sys.stdin)['workers'][0]; print(w['allowed_cores'] if w['placed_as_configured'] else 'MISPLACED:'+w['allowed_cores'])")
    for t in /proc/"$SW"/task/*; do
        [ "$(cat "$t/comm")" = vswitch-worker0 ] && kern=$(awk '/Cpus_allowed_list/{print $2}' "$t/status")
    done
    PLACED=""
    if [ "$placed" != "$WORKER_CORE" ] || [ "$kern" != "$WORKER_CORE" ]; then
        PLACED="MISPLACED stats=$placed kernel=$kern"
    fi
    ip netns exec "${P}c1" ping -c 2 -i 0.2 -W 1 10.79.0.12 >/dev/null || true
    frame c1 c2 10.79.0.11 10.79.0.12 >"$TMP/tg.cfg"
}

# Each start begins from its configuration alone: what the switch made is
# taken back first (a stopped switch leaves the containers' interfaces).
stop() {
    local c
    for c in c1 c2; do "$BIN" --socket "$TMP/s.sock" detach sw --netns "$P$c" >/dev/null 2>&1 || true; done
    kill "$SW"; wait "$SW" 2>/dev/null || true; SW=""
}

# One trial: frames/s delivered from $1 to $2 with frame file $3.
trial() {
    local a b t0 t1
    a=$(rxp "$2"); t0=$(date +%s.%N)
    ip netns exec "$P$1" taskset -c "$GEN_CORE" timeout -s INT "$SECS" trafgen --dev eth0 --conf "$3" --cpus 1 -q >/dev/null 2>&1 || true
    t1=$(date +%s.%N); sleep 0.2; b=$(rxp "$2")
    python3 -c "print(round(($b-$a)/($t1-$t0)))"
}

# Prints "frames/s normalized": medians over $TRIALS pairs of a bridge trial
# (the switch stopped) and a switch trial.
measure() {
    local v=() q=() k x
    for _ in $(seq "$TRIALS"); do
        kill -STOP "$SW"; k=$(trial b1 b2 "$TMP/bridge.cfg"); kill -CONT "$SW"; sleep 0.1
        x=$(trial c1 c2 "$TMP/tg.cfg")
        v+=("$x"); q+=("$(python3 -c "print($x/max($k,1))")")
    done
    echo "$(med "${v[@]}") $(printf '%s\n' "${q[@]}" | python3 -c "import sys,statistics;print(round(statistics.median(float(x) for x in sys.stdin.read().split()),4))")"
}

# One start: sets F to the start's figure, or to MISPLACED ...
one_start() {
    start "$@"
    if [ -n "$PLACED" ]; then F=$PLACED; else F=$(measure); fi
    stop
}

bad=0
declare -A FIG
for kind in $KINDS; do
    for mode in $MODES; do
        figs=()
        for pad in $(seq 0 $((STARTS - 1))); do
            one_start "$kind" "$mode" "$pad"
            case $F in MISPLACED*)
                echo "$kind $mode start $pad (environment +$pad bytes): $F"
                bad=$((bad + 1)); continue ;;
            esac
            read -r f q <<<"$F"
            echo "$kind $mode start $pad (environment +$pad bytes): $f frames/s, ${q}x the bridge"
            figs+=("$f:$q")
        done
        FIG[$kind-$mode]="${figs[*]}"
        if [ -n "${NOISE:-}" ]; then
            # The noise floor: as many figures again, all from one start.
            start "$kind" "$mode" 0
            [ -n "$PLACED" ] && { echo "noise start: $PLACED" >&2; bad=$((bad + 1)); }
            figs=()
            for i in $(seq "$STARTS"); do
                read -r f q <<<"$(measure)"
                figs+=("$f:$q")
                echo "$kind $mode one start, figure $i: $f frames/s, ${q}x the bridge"
            done
            stop
            FIG[$kind-$mode-onestart]="${figs[*]}"
        fi
    done
done

python3 - "$KINDS" "$MODES" "$(declare -p FIG)" <<'PY'
import statistics, sys, re
kinds, modes, decl = sys.argv[1].split(), sys.argv[2].split(), sys.argv[3]
fig = {k: [tuple(float(y) for y in x.split(":")) for x in v.split()]
       for k, v in re.findall(r'\[([^\]]+)\]="([^"]*)"', decl)}
def spread(v):
    return min(v) / max(v)
med = {}
for kind in kinds:
    for mode in modes:
        v = fig.get(f"{kind}-{mode}", [])
        if not v:
            continue
        raw, norm = [x[0] for x in v], [x[1] for x in v]
        med[(kind, mode)] = (statistics.median(raw), statistics.median(norm), min(norm))
        print(f"{kind} {mode}: {len(v)} starts, slowest {min(raw)/1e3:.0f} / median {statistics.median(raw)/1e3:.0f} / fastest {max(raw)/1e3:.0f} kpps "
              f"(slowest/fastest {spread(raw):.3f}); normalized to the bridge {min(norm):.3f} / {statistics.median(norm):.3f} / {max(norm):.3f}x "
              f"(slowest/fastest {spread(norm):.3f})")
        print(f"RESULT start_sweep_{kind}_{mode}_slowest_over_fastest ratio - {spread(norm):.3f}")
        print(f"RESULT start_sweep_{kind}_{mode}_slowest_over_fastest_raw ratio - {spread(raw):.3f}")
        print(f"RESULT start_sweep_{kind}_{mode}_median pps - {statistics.median(raw):.0f}")
        n = fig.get(f"{kind}-{mode}-onestart", [])
        if n:
            nr, nn = [x[0] for x in n], [x[1] for x in n]
            print(f"{kind} {mode}, noise floor: {len(n)} figures from one start, slowest/fastest {spread(nr):.3f}, normalized {spread(nn):.3f}")
            print(f"RESULT start_sweep_{kind}_{mode}_one_start_slowest_over_fastest ratio - {spread(nn):.3f}")
    if (kind, "busy") in med and (kind, "adaptive") in med:
        b, a = med[(kind, "busy")], med[(kind, "adaptive")]
        print(f"{kind}: busy/adaptive, medians normalized to the bridge {b[1]/a[1]:.3f}; busy's slowest start / adaptive's median {b[2]/a[1]:.3f}")
        print(f"RESULT start_sweep_{kind}_busy_over_adaptive ratio - {b[1]/a[1]:.3f}")
PY
if [ "$bad" -gt 0 ]; then
    echo "sweep: $bad start(s) had a worker off its core; their figures are not the switch's" >&2
    exit 1
fi
