#!/usr/bin/env bash
# The test command: installs what the tests need, checks formatting and lints,
# then runs every test (unit, in-memory scenarios, real namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo fmt --all -- --check
# --all-features: the etcd backend is built and tested too.
cargo clippy --workspace --all-targets --all-features --release -- -D warnings
cargo clippy --workspace --all-targets --release -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-features --release 2>&1 | tee "$log"
# One closing line over every test binary (cargo prints one per binary,
# the last of which is often a crate's empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f; exit (f > 0 || p == 0) }' "$log"
