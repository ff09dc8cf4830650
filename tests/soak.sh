#!/usr/bin/env bash
# The long versions of tests/delivery.rs, outside CI: the broker restarted
# every 1-2.5 s for MINUTES (default 10) while jobs and status messages flow;
# 1,000 messages behind a full queue, then SIGKILL and SIGTERM; 300 jobs
# ending during an outage; a flood of 3,000 messages of 60 KiB while S3
# hangs. Prints messages reached / processed / confirmed, duplicates,
# restarts, peak RSS and any crash.
#
#   bash tests/soak.sh [MINUTES] [--release] [--kill] [--valgrind] [--rate N]
#
# --release   run the release build of the gateway (what a gateway runs)
# --kill      a broker that keeps no state, restarted with SIGKILL: in-flight
#             packets are cut and every session is lost (the broker loses
#             what it queued, so only crashes are counted then)
# --valgrind  run the gateway under valgrind (memcheck); any invalid read,
#             write or free ends it with exit code 99, which the test reports
# --rate N    firmware_image messages published per second (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=10 kill=0 rate=5 wrapper="" release=0
while [ $# -gt 0 ]; do
  case "$1" in
    --kill) kill=1 ;;
    --release) release=1 ;;
    --valgrind) wrapper="valgrind --error-exitcode=99 --errors-for-leak-kinds=none --quiet" ;;
    --rate) rate=$2; shift ;;
    [0-9]*) minutes=$1 ;;
    *) echo "usage: $0 [MINUTES] [--release] [--kill] [--valgrind] [--rate N]" >&2; exit 2 ;;
  esac
  shift
done

bash deploy/install-deps.sh
if [ -n "$wrapper" ] && ! command -v valgrind >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi
cargo build --workspace --tests -q
if [ "$release" = 1 ]; then
  cargo build --release -q --bin gator-ota
  export GATOR_OTA_TEST_BINARY="$PWD/target/release/gator-ota"
fi

export GATOR_OTA_TEST_WRAPPER="$wrapper"
echo "soak: broker flapping for $minutes min, $rate jobs/s, kill=$kill, wrapper='${wrapper:-none}'"
GATOR_OTA_SOAK_SECONDS=$((minutes * 60)) GATOR_OTA_SOAK_RATE=$rate GATOR_OTA_SOAK_KILL=$kill \
  cargo test -q --test delivery flapping -- --nocapture --test-threads 1 2>&1 \
  | grep -E '^(flapping broker:|test result:|thread .* panicked)|died|never confirmed'

echo "soak: 1000 messages behind a full queue, then SIGKILL / SIGTERM and a restart"
GATOR_OTA_STOP_MESSAGES=1000 \
  cargo test -q --test delivery full_queue -- --nocapture --test-threads 1 2>&1 \
  | grep -E '^(full queue|test result:|thread .* panicked)|never confirmed'

echo "soak: 300 jobs ending while the broker is down"
cargo test -q --test delivery confirms_made_while -- --nocapture 2>&1 \
  | grep -E '^(outage:|test result:|thread .* panicked)|never confirmed'

echo "soak: flood of 3000 messages of 60 KiB while S3 hangs"
GATOR_OTA_FLOOD_MESSAGES=3000 \
  cargo test -q --test delivery flood -- --nocapture --test-threads 1 2>&1 \
  | grep -E '^(flood:|test result:|thread .* panicked)|never confirmed'
