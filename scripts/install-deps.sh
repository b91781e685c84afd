#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmark need on a fresh Debian
# machine, and sets the kernel up: tools as kernel referees, 2 MiB hugepages
# for AF_XDP UMEMs, the tun device. Idempotent; needs root.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
    echo "install-deps.sh: needs root (it installs packages and sets sysctls)" >&2
    exit 1
fi
# nftables: the uplink guard; curl, dnsutils, dnsmasq-base, python3: real
# clients and servers for the gateway and NAT tests; iptables: the
# docker0-style reference in the benchmark; etcd-server: the etcd backend's
# tests and benchmark; protobuf-compiler, libprotobuf-dev: building the etcd
# client (cargo feature `etcd`); podman, runc, conmon,
# containernetworking-plugins, busybox-static: a real container runtime that
# drives the CNI plugin, and an image made offline; docker.io: dockerd, which
# drives the Docker network driver (never started as a service: see below);
# util-linux: nsenter; dnsperf: the resolver's benchmark.
pkgs=(iproute2 iputils-ping iperf3 tcpdump netsniff-ng ethtool procps kmod nftables iptables curl dnsutils dnsmasq-base python3 etcd-server protobuf-compiler libprotobuf-dev podman runc conmon containernetworking-plugins busybox-static docker.io util-linux dnsperf)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # No package starts its service here (docker.io's would make docker0 and
    # iptables rules in the host's namespace): the tests start dockerd and
    # dnsmasq themselves, inside their own namespaces.
    norc=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        norc=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ -z "$norc" ] || rm -f /usr/sbin/policy-rc.d
fi
# 2 MiB hugepages for UMEMs (ports fall back to ordinary pages without them).
want=${VSWITCH_HUGEPAGES:-128}
have=$(cat /proc/sys/vm/nr_hugepages)
if [ "$have" -lt "$want" ]; then
    echo "$want" > /proc/sys/vm/nr_hugepages || echo "warning: could not reserve hugepages" >&2
fi
modprobe tun 2>/dev/null || true
[ -c /dev/net/tun ] || { mkdir -p /dev/net && mknod /dev/net/tun c 10 200; }
# AF_XDP rings and UMEM are locked memory.
ulimit -l unlimited 2>/dev/null || true
echo "dependencies ready (hugepages: $(cat /proc/sys/vm/nr_hugepages))"
