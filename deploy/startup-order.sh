#!/usr/bin/env bash
# Writes deploy/startup-order.txt: the functions `gator-ota run` executes
# from start until it idles, subscribed, through a job and its stop, and
# again on a restart over the state that left. build.rs
# hands the list to the linker (lld's --symbol-ordering-file), which places
# those functions together, so an idle gateway keeps about 1 MiB of the
# binary's code resident instead of nearly all of it (README,
# "Performance").
#
#   bash deploy/startup-order.sh
#
# The list names the symbols of one build configuration: the host's release
# profile, this Cargo.lock and this compiler. After a change to any of them
# the names stop matching (nothing breaks; the idle figure of
# tests/bench.sh grows back) and this script is run again. The list's first
# line records the configuration, and tests/bench.sh says when it differs.
#
# How: builds the release binary (its symbol table is kept for this) and
# runs it three times under valgrind's callgrind, against a mosquitto on a
# free loopback port and the testkit's S3 server: a first start until 3 s
# after "subscribed"; a start, one firmware_image job to its
# confirm_receipt and 3 s idle; and a restart over the data folder that
# left (journal, index, pointer, fleet registry) until 3 s after
# "subscribed". Each is stopped with SIGTERM, as systemd does. The list is
# the binary's functions that ran in the first or the last, then those only
# the job ran.
set -euo pipefail
export LC_ALL=C
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

die() { echo "startup-order.sh: $*" >&2; exit 1; }
bash deploy/install-deps.sh
if ! command -v valgrind >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: valgrind mosquitto-clients"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends valgrind mosquitto-clients >/dev/null
fi
command -v mosquitto_pub >/dev/null 2>&1 || die "mosquitto_pub is missing (apt install mosquitto-clients)"

echo "building the release binary..."
# The same packages as tests/bench.sh builds, so the same features.
cargo build --release --quiet -p gator-ota -p gator-ota-testkit --bin gator-ota --bin s3-dev-server
bin="${CARGO_TARGET_DIR:-$root/target}/release/gator-ota"
s3server="${CARGO_TARGET_DIR:-$root/target}/release/s3-dev-server"
nm --defined-only "$bin" >/dev/null 2>&1 || die "$bin has no symbol table (profile.release.strip?)"

work=$(mktemp -d "${TMPDIR:-/tmp}/gator-order.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port=""
for _ in 1 2 3 4 5; do
  try=$((20000 + RANDOM % 40000))
  listening "$try" && continue
  {
    [ "$(id -u)" -eq 0 ] && echo "user root"
    echo "listener $try 127.0.0.1"
    echo "allow_anonymous true"
    echo "persistence false"
  } >"$work/mosquitto.conf"
  mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
  mpid=$!
  for _ in $(seq 100); do
    listening "$try" && break
    sleep 0.05
  done
  if listening "$try"; then pids+=("$mpid"); port=$try; break; fi
  kill "$mpid" 2>/dev/null || true
done
[ -n "$port" ] || die "mosquitto did not start; see $work/mosquitto.log"

# A 64 KiB object for the job, in the S3 server's folder.
mkdir -p "$work/s3/firmware/fw"
head -c 65536 /dev/urandom >"$work/s3/firmware/fw/order.bin"
"$s3server" --root "$work/s3" --port 0 --memory >"$work/s3.out" 2>"$work/s3.log" &
pids+=($!)
s3port=""
for _ in $(seq 200); do
  s3port=$(sed -n 's|^listening on http://127.0.0.1:\([0-9]*\)$|\1|p' "$work/s3.out")
  [ -n "$s3port" ] && break
  sleep 0.05
done
[ -n "$s3port" ] || die "s3-dev-server did not start; see $work/s3.log"

# The embedded defaults, as tests/bench.sh runs them.
unset GATOR_OTA_SETTINGS AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_ENDPOINT_URL
export GATOR_OTA_LOG=info
export GATOR_OTA__SYSTEM__ID=startup-order
export GATOR_OTA__SYSTEM__DATA_DIR="$work/data"
export GATOR_OTA__CARRIERS__MQTT__URL="tcp://127.0.0.1:$port"
export GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__BUCKET=s3://firmware
export GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ENDPOINT="http://127.0.0.1:$s3port"
export GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ALLOW_HTTP=true
export GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__REGION=us-east-1
export GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ACCESS_KEY_ID=gator-test-access
export GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__SECRET_ACCESS_KEY=gator-test-secret-key-0123456789

# Starts gator-ota under callgrind (output $1), waits for "subscribed" and
# 3 s of idle; sets gpid.
start_traced() {
  : >"$work/gator.log"
  valgrind --tool=callgrind --demangle=no --callgrind-out-file="$1" \
    "$bin" run >/dev/null 2>"$work/gator.log" &
  gpid=$!
  pids+=("$gpid")
  for _ in $(seq 600); do
    grep -q subscribed "$work/gator.log" && break
    kill -0 "$gpid" 2>/dev/null || die "gator-ota exited; see $work/gator.log"
    sleep 0.1
  done
  grep -q subscribed "$work/gator.log" || die "gator-ota did not subscribe within 60 s"
  sleep 3  # idle: what runs while nothing happens belongs in the list too
}
stop_traced() {
  kill -TERM "$gpid"
  wait "$gpid" || die "gator-ota did not stop cleanly; see $work/gator.log"
}

echo "under callgrind: a first start to idle..."
start_traced "$work/callgrind.start"
stop_traced
echo "under callgrind: a start, one job, idle..."
start_traced "$work/callgrind.job"
mosquitto_sub -h 127.0.0.1 -p "$port" -t scarecro/confirm_receipt -C 1 -W 120 \
  >"$work/confirm" 2>"$work/sub.log" &
subpid=$!
pids+=("$subpid")
sleep 1  # mosquitto_sub subscribes; nothing here is measured
mosquitto_pub -h 127.0.0.1 -p "$port" -q 1 -t scarecro/firmware_image \
  -m "{\"id\":\"order-1\",\"time\":\"$(date -u +%FT%T.000000)\",\"file_name\":\"order_v1.0.0\",\"cloud_path\":\"fw/order.bin\"}"
wait "$subpid" || die "no confirm_receipt within 120 s; see $work/gator.log"
sleep 3
stop_traced
echo "under callgrind: a restart over the state that left, to idle..."
start_traced "$work/callgrind.restart"
stop_traced

# callgrind names each function once, as `fn=(id) name` or `cfn=(id) name`.
ran() { sed -nE 's/^c?fn=\([0-9]+\) (.+)$/\1/p' "$@" | sort -u; }
ran "$work/callgrind.start" "$work/callgrind.restart" >"$work/idle"
ran "$work/callgrind.job" | comm -23 - "$work/idle" >"$work/job"
nm --defined-only "$bin" | awk '$2 ~ /^[tTW]$/ {print $3}' | sort -u >"$work/functions"
out="$root/deploy/startup-order.txt"
{
  echo "# gator-ota start-up order: $(rustc -V | cut -d' ' -f1-2), x86_64-unknown-linux-gnu release, Cargo.lock $(sha256sum Cargo.lock | cut -c1-16)"
  # What runs up to idle first, then what only a job adds: at idle the
  # second part stays on the disk.
  comm -12 "$work/idle" "$work/functions"
  comm -12 "$work/job" "$work/functions"
} >"$out"
echo "wrote $out: $(($(wc -l <"$out") - 1)) functions"
echo "rebuilding with it..."
cargo build --release --quiet -p gator-ota -p gator-ota-testkit --bin gator-ota --bin s3-dev-server
