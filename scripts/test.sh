#!/usr/bin/env bash
# The test command: installs what the tests need, checks formatting and lints,
# then runs every test (unit, in-memory scenarios, real namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo test --workspace --release
