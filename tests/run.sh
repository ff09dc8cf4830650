#!/usr/bin/env bash
# Runs every check and test of gator-ota: formatting, lints, unit and
# integration tests (which start their own mosquitto and S3 server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh --tests
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
bash deploy/test-install.sh

# The whole suite, then one line with the totals of every test binary.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ {
       for (i = 2; i <= NF; i++) {
         if ($i ~ /^passed;?$/) passed += $(i - 1)
         if ($i ~ /^failed;?$/) failed += $(i - 1)
       }
     }
     END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
