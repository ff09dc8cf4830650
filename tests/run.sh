#!/usr/bin/env bash
# Runs every check and test of gator-ota: formatting, lints, unit and
# integration tests (which start their own mosquitto and S3 server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
bash deploy/test-install.sh
cargo test --workspace
