#!/usr/bin/env bash
# Benchmarks gator-ota against the project's performance bars and prints the
# figures side by side. It is a measurement, not a test: it fails (exit 1) on
# a missed bar only with --strict.
#
#   bash tests/bench.sh [--strict] [--no-build] [--runs N] [--small-runs N] [--startup-runs N]
#                       [--perf FILE]
#
# What it does:
#   1. installs its apt needs (mosquitto, mosquitto-clients, curl, and what the
#      build needs, through deploy/install-deps.sh) and builds the release
#      binaries `gator-ota` and the testkit's `s3-dev-server` (--no-build:
#      use the ones already built);
#   2. starts mosquitto and two S3 servers (SigV4 on) on free loopback ports
#      over one folder holding a random 256 MiB and a random 1.5 MiB object:
#      `s3-dev-server` (s3s-fs, which reads 4 KiB at a time) and
#      `s3-dev-server --memory` (objects in memory, answered in 4 MiB
#      chunks). The work folder (BENCH_DIR, default a new folder under
#      $TMPDIR) must be on a real disk, not tmpfs, or the fsyncs cost nothing;
#   3. the server: curl of the 256 MiB object into /dev/null from each server,
#      --runs times alternating; the memory server must give curl at least 3x
#      the rate of s3s-fs, or the figures below would measure the server. All
#      later figures use the memory server;
#   4. start-up: spawns `gator-ota run` --startup-runs times (default 7) and
#      times spawn -> the "subscribed" log line;
#   5. starts `gator-ota run` once more and reads its idle RSS (VmRSS, 2 s
#      after subscribing). One mosquitto_pub (-l, fed by a FIFO) and one
#      mosquitto_sub (stamping each confirm_receipt with its arrival time,
#      %U) run throughout, so gator-ota's time is publish -> confirm, with no
#      client start-up in it;
#   6. 256 MiB, --runs times (default 5) each, alternating: curl from the
#      server into a file then `sync FILE` (fsync), timed around both
#      commands, and gator-ota publish -> confirm. Rates are the medians.
#      CPU: curl's and sync's user+system time (the shell's `time`), and
#      gator-ota's from /proc/PID/stat around each job;
#   7. 1.5 MiB (a real Data Gator image's size), --small-runs times (default
#      21) each, alternating, the same two clients; medians compared;
#   8. peak RSS: gator-ota's VmHWM after all of that; then the table of
#      figures, bars and PASS/FAIL.
#
# --perf FILE records gator-ota with `perf record` during the 256 MiB runs
# (not the warm-up) into FILE, for `perf report -i FILE`. perf's own cost
# lands in the CPU figures of that run.
#
# Every run starts with one untimed warm-up of each client. gator-ota's times
# include all its per-job costs: the journal, MQTT, the pointer file and
# every fsync (image, folders, pointer).
#
# Settings under test are the embedded defaults; GATOR_OTA__* variables in the
# caller's environment reach the service (e.g. GATOR_OTA__PIPELINE__WRITE_CHUNKS
# for experiments), except the ones that point it at this bench's broker and
# bucket.
set -euo pipefail
export LC_ALL=C

strict=0
build=1
runs=5
small_runs=21
startup_runs=7
perf_out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --strict) strict=1 ;;
    --no-build) build=0 ;;
    --runs) runs=$2; shift ;;
    --small-runs) small_runs=$2; shift ;;
    --startup-runs) startup_runs=$2; shift ;;
    --perf) perf_out=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

# The bars (README, "Performance").
bar_server_x=3        # curl from the memory server / from s3s-fs, at least
bar_rate_pct=95       # gator-ota 256 MiB rate / curl + fsync, at least
bar_small_pct=110     # gator-ota 1.5 MiB publish -> confirm / curl + fsync, at most
bar_cpu_pct=150       # gator-ota CPU per 256 MiB / curl's, at most
bar_peak_kib=$((24 * 1024))
bar_idle_kib=$((8 * 1024))
big_bytes=$((256 * 1024 * 1024))
small_bytes=$((3 * 512 * 1024))

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# --- dependencies and build ------------------------------------------------
bash deploy/install-deps.sh
if ! command -v mosquitto_pub >/dev/null 2>&1 || ! command -v mosquitto_sub >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: mosquitto-clients"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends mosquitto-clients >/dev/null
fi
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)

if [ "$build" -eq 1 ]; then
  echo "building release binaries..."
  nice -n 10 cargo build --release --quiet -p gator-ota -p gator-ota-testkit \
    --bin gator-ota --bin s3-dev-server
fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
gator="$target_dir/release/gator-ota"
s3server="$target_dir/release/s3-dev-server"

# --- work folder and clean-up ----------------------------------------------
if [ -n "${BENCH_DIR:-}" ]; then
  mkdir -p "$BENCH_DIR"
  work=$(mktemp -d "$BENCH_DIR/gator-bench.XXXXXX")
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/gator-bench.XXXXXX")
fi
pids=()
bars_missed=0  # set when --strict exits 1: a verdict, not a breakdown
TIMEFORMAT='%3U %3S'
cleanup() {
  local status=$?
  exec 7>&- 8>&- 9>&- 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" -ne 0 ] && [ "$bars_missed" -eq 0 ] && [ -d "$work" ]; then
    echo "bench.sh: failed; logs:" >&2
    for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "bench.sh: $*" >&2; exit 1; }
now_us() { echo "${EPOCHREALTIME/./}"; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Median of the numbers on stdin (the lower middle one for an even count).
median() { sort -g | awk '{v[NR]=$1} END {if (NR) print v[int((NR+1)/2)]}'; }
kib_field() { awk -v k="$1:" '$1==k {print $2}' "/proc/$2/status"; }
# User+system CPU time of a process so far, in ms.
cpu_ms() { awk -v t="$(getconf CLK_TCK)" '{print int(($14+$15)*1000/t)}' "/proc/$1/stat"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k/1024}'; }
# MiB/s for BYTES in MICROSECONDS.
rate() { awk -v b="$1" -v d="$2" 'BEGIN {printf "%.1f", b/1048576/(d/1e6)}'; }
ms() { awk -v d="$1" 'BEGIN {printf "%.1f", d/1000}'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.0f", 100*a/b}'; }

# --- mosquitto ---------------------------------------------------------------
mqtt_port=""
for _ in 1 2 3 4 5; do
  port=$((20000 + RANDOM % 40000))
  listening "$port" && continue
  {
    [ "$(id -u)" -eq 0 ] && echo "user root"
    echo "listener $port 127.0.0.1"
    echo "allow_anonymous true"
    echo "persistence false"
  } > "$work/mosquitto.conf"
  "$mosquitto_bin" -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 &
  mpid=$!
  for _ in $(seq 100); do
    listening "$port" && break
    kill -0 "$mpid" 2>/dev/null || break
    sleep 0.05
  done
  if kill -0 "$mpid" 2>/dev/null && listening "$port"; then
    pids+=("$mpid")
    mqtt_port=$port
    break
  fi
  kill "$mpid" 2>/dev/null || true
  wait "$mpid" 2>/dev/null || true
done
[ -n "$mqtt_port" ] || die "mosquitto did not start; see $work/mosquitto.log"

# --- the objects and the two S3 servers -------------------------------------------
bucket=firmware
big_key="bench/image-256m.bin"
small_key="bench/image-1.5m.bin"
s3root="$work/s3"
mkdir -p "$s3root/$bucket/bench"
b64url() { printf %s "$1" | base64 -w0 | tr '+/' '-_' | tr -d '='; }
# A random object, with the ETag sidecar s3s-fs writes itself (without it
# s3s-fs re-hashes the whole file on every GET).
seed_object() {
  head -c "$2" /dev/urandom > "$s3root/$bucket/$1"
  printf '{"e_tag":"%s"}' "$(md5sum "$s3root/$bucket/$1" | cut -d' ' -f1)" \
    > "$s3root/.bucket-$(b64url "$bucket").object-$(b64url "$1").internal.json"
}
echo "creating the 256 MiB and 1.5 MiB objects..."
seed_object "$big_key" "$big_bytes"
seed_object "$small_key" "$small_bytes"
big_sha=$(sha256sum "$s3root/$bucket/$big_key" | cut -d' ' -f1)
small_sha=$(sha256sum "$s3root/$bucket/$small_key" | cut -d' ' -f1)
sync

# Starts s3-dev-server with ARGS and sets started_port. (Not in a command
# substitution: its pid must reach `pids` for the cleanup to stop it.)
start_s3() {
  local name=$1 port="" pid
  shift
  "$s3server" --root "$s3root" --port 0 "$@" > "$work/$name.out" 2> "$work/$name.log" &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 400); do
    port=$(sed -n 's|^listening on http://127.0.0.1:\([0-9]*\)$|\1|p' "$work/$name.out" 2>/dev/null || true)
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$port" ] || die "s3-dev-server $* did not start; see $work/$name.log"
  started_port=$port
}
start_s3 s3fs
fs_endpoint="http://127.0.0.1:$started_port"
start_s3 s3mem --memory
endpoint="http://127.0.0.1:$started_port"
access_key=gator-test-access
secret_key=gator-test-secret-key-0123456789

# curl GET of KEY from ENDPOINT into OUT. curl before 8.x does not send
# x-amz-content-sha256 itself, and s3s requires it.
curl_get() {
  curl -sS --fail --aws-sigv4 "aws:amz:us-east-1:s3" --user "$access_key:$secret_key" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -o "$3" "$1/$bucket/$2"
}

# --- the server: curl from s3s-fs and from memory -------------------------------
echo "server: curl of 256 MiB into /dev/null from s3s-fs and from memory, $runs runs each..."
fs_rates=()
mem_rates=()
for i in $(seq 0 "$runs"); do
  t0=$(now_us); curl_get "$fs_endpoint" "$big_key" /dev/null; t1=$(now_us)
  f=$(rate "$big_bytes" $((t1 - t0)))
  t0=$(now_us); curl_get "$endpoint" "$big_key" /dev/null; t1=$(now_us)
  m=$(rate "$big_bytes" $((t1 - t0)))
  [ "$i" -eq 0 ] && continue
  printf '  run %d: s3s-fs %7s MiB/s | memory %7s MiB/s\n' "$i" "$f" "$m"
  fs_rates+=("$f")
  mem_rates+=("$m")
done
fs_med=$(printf '%s\n' "${fs_rates[@]}" | median)
mem_med=$(printf '%s\n' "${mem_rates[@]}" | median)

# --- the gateway's settings ------------------------------------------------------
data_dir="$work/data"
receive_topic=scarecro/firmware_image
confirm_topic=scarecro/confirm_receipt
unset GATOR_OTA_SETTINGS AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_ENDPOINT_URL
export GATOR_OTA_LOG=info
export GATOR_OTA__SYSTEM__ID=bench-gateway
export GATOR_OTA__SYSTEM__DATA_DIR="$data_dir"
export GATOR_OTA__CARRIERS__MQTT__URL="tcp://127.0.0.1:$mqtt_port"
export GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__BUCKET="s3://$bucket"
export GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ENDPOINT="$endpoint"
export GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ALLOW_HTTP=true
export GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__REGION=us-east-1
export GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ACCESS_KEY_ID="$access_key"
export GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__SECRET_ACCESS_KEY="$secret_key"
export GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__TIMEOUT=300s

# Drops a process that has ended from the clean-up list.
forget() {
  local p keep=()
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}
# Stops a gator-ota started by this script (SIGTERM, as systemd does).
stop_gator() {
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  forget "$1"
}

# --- start-up to subscribed ------------------------------------------------------
# The log is read through a FIFO as it is written, and the clock is read
# with $EPOCHREALTIME (no fork), so the figure is spawn -> "subscribed" line.
echo "start-up: $startup_runs runs..."
fifo="$work/startup.fifo"
mkfifo "$fifo"
exec 7<> "$fifo"  # read-write, so neither side blocks on open
startup_ms=()
for i in $(seq "$startup_runs"); do
  t0=$(now_us)
  "$gator" run > /dev/null 2> "$fifo" &
  gpid=$!
  pids+=("$gpid")
  t1=""
  while IFS= read -r -t 10 -u 7 line; do
    echo "$line" >> "$work/startup.log"
    case "$line" in *subscribed*) t1=$(now_us); break ;; esac
  done
  [ -n "$t1" ] || die "gator-ota did not subscribe within 10 s (run $i); see $work/startup.log"
  startup_ms+=("$(ms $((t1 - t0)))")
  printf '  run %d: %s ms\n' "$i" "${startup_ms[-1]}"
  stop_gator "$gpid"
  # Drain what it logged while stopping, so the next run starts clean.
  while IFS= read -r -t 0.2 -u 7 line; do echo "$line" >> "$work/startup.log"; done
done
exec 7>&-

# --- the gateway under load --------------------------------------------------------
"$gator" run > /dev/null 2> "$work/gator.log" &
gpid=$!
pids+=("$gpid")
for _ in $(seq 500); do
  grep -q subscribed "$work/gator.log" && break
  kill -0 "$gpid" 2>/dev/null || die "gator-ota exited; see $work/gator.log"
  sleep 0.02
done
grep -q subscribed "$work/gator.log" || die "gator-ota did not subscribe; see $work/gator.log"
sleep 2  # let start-up work settle: this is the idle figure
idle_kib=$(kib_field VmRSS "$gpid")
idle_threads=$(kib_field Threads "$gpid")
echo "idle: VmRSS $(mib "$idle_kib"), $idle_threads threads"
# Where it is: the process's own memory, and the pages of each mapped file
# (VmRSS counts a file's resident pages in full, shared or not).
idle_breakdown=$(awk '
  /^[0-9a-f]+-[0-9a-f]+ / { name = (NF >= 6) ? $6 : "[anon]"; sub(".*/", "", name); next }
  /^Rss:/ { if (name ~ /^\[/) anon += $2; else file[name] += $2 }
  END {
    printf "anonymous %.1f MiB", anon / 1024
    for (f in file) if (file[f] >= 256) printf ", %s %.1f MiB", f, file[f] / 1024
  }' "/proc/$gpid/smaps" 2>/dev/null || true)
echo "idle: ${idle_breakdown:-smaps not readable}"
# What the process adds to the machine: its private pages (USS), and its
# proportional share of the pages it shares with other processes (PSS).
idle_shares=$(awk '/^Pss:/ {pss = $2} /^Private_(Clean|Dirty):/ {uss += $2}
  END {printf "PSS %.1f MiB, private (USS) %.1f MiB", pss / 1024, uss / 1024}' \
  "/proc/$gpid/smaps_rollup" 2>/dev/null || true)
echo "idle: ${idle_shares:-smaps_rollup not readable}"
# deploy/startup-order.txt names one build configuration's symbols; for any
# other the binary's share of the idle figure grows back.
order_for="# gator-ota start-up order: $(rustc -V | cut -d' ' -f1-2), x86_64-unknown-linux-gnu release, Cargo.lock $(sha256sum Cargo.lock | cut -c1-16)"
if [ "$(head -n 1 deploy/startup-order.txt 2>/dev/null)" = "$order_for" ]; then
  echo "idle: deploy/startup-order.txt is this build's"
else
  echo "idle: deploy/startup-order.txt is not this build's (another compiler or Cargo.lock): regenerate it with bash deploy/startup-order.sh"
fi

# One publisher fed line by line through a FIFO, one subscriber that stamps
# each confirm_receipt with its arrival time (%U, the same wall clock as
# $EPOCHREALTIME) into another FIFO. A retained message on a side topic
# tells when the subscriber has subscribed.
ready_topic="bench/ready"
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -t "$ready_topic" -r -m ready
mkfifo "$work/pub.fifo" "$work/sub.fifo"
exec 9<> "$work/sub.fifo"
mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -F '%U %t %p' \
  -t "$ready_topic" -t "$confirm_topic" > "$work/sub.fifo" 2> "$work/sub.log" &
pids+=($!)
IFS= read -r -t 10 -u 9 line || die "mosquitto_sub did not subscribe; see $work/sub.log"
exec 8<> "$work/pub.fifo"
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 -t "$receive_topic" -l \
  < "$work/pub.fifo" 2> "$work/pub.log" &
pids+=($!)

image_dir="$data_dir/firmware_images"
curl_out="$work/curl.bin"
job=0
# Runs one gator-ota job for KEY as FILE_NAME; sets g_us (publish ->
# confirm) and g_cpu (ms of gator-ota CPU).
gator_job() {
  local key=$1 name=$2 line stamp c0 t0
  job=$((job + 1))
  rm -f "$image_dir/$name.bin"
  sync
  c0=$(cpu_ms "$gpid")
  t0=$(now_us)
  printf '{"id":"bench-%d","time":"%s","file_name":"%s","cloud_path":"%s"}\n' \
    "$job" "$(date -u +%FT%TZ)" "$name" "$key" >&8
  IFS= read -r -t 600 -u 9 line || die "no confirm_receipt for job $job; see $work/gator.log"
  case "$line" in *" $confirm_topic "*"\"$name\""*) ;; *) die "unexpected message: $line" ;; esac
  stamp=${line%% *}
  g_us=$(awk -v s="$stamp" -v t="$t0" 'BEGIN {printf "%d", s*1e6 - t}')
  g_cpu=$(($(cpu_ms "$gpid") - c0))
}
# curl GET of KEY into a file, then fsync; sets c_us and c_cpu.
curl_job() {
  local t0 t1
  rm -f "$curl_out"
  sync
  t0=$(now_us)
  { time { curl_get "$endpoint" "$1" "$curl_out"; sync "$curl_out"; }; } 2> "$work/curl.log"
  t1=$(now_us)
  c_us=$((t1 - t0))
  c_cpu=$(tail -n 1 "$work/curl.log" | awk '{printf "%d", ($1 + $2) * 1000}')
  [ "$(stat -c %s "$curl_out")" -eq "$2" ] || die "curl got a short file"
}

echo "256 MiB: $runs runs each of curl + fsync and gator-ota (plus one warm-up each)..."
curl_big=(); gator_big=(); curl_cpu=(); gator_cpu=()
for i in $(seq 0 "$runs"); do
  curl_job "$big_key" "$big_bytes"
  gator_job "$big_key" bench-big
  label="run $i"
  [ "$i" -eq 0 ] && label="warm-up"
  printf '  %-7s curl %7s MiB/s %5d ms CPU | gator-ota %7s MiB/s %5d ms CPU\n' "$label" \
    "$(rate "$big_bytes" "$c_us")" "$c_cpu" "$(rate "$big_bytes" "$g_us")" "$g_cpu"
  if [ "$i" -eq 0 ] && [ -n "$perf_out" ]; then
    perf record -q -p "$gpid" -o "$perf_out" 2> "$work/perf.log" &
    perf_pid=$!
    pids+=("$perf_pid")
    sleep 1  # perf attaches; nothing here is timed
  fi
  [ "$i" -eq 0 ] && continue
  curl_big+=("$(rate "$big_bytes" "$c_us")"); gator_big+=("$(rate "$big_bytes" "$g_us")")
  curl_cpu+=("$c_cpu"); gator_cpu+=("$g_cpu")
done
if [ -n "$perf_out" ]; then
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" 2>/dev/null || true
  forget "$perf_pid"
  echo "  perf: gator-ota's profile of the 256 MiB runs is in $perf_out"
fi
[ "$(sha256sum "$image_dir/bench-big.bin" | cut -d' ' -f1)" = "$big_sha" ] \
  || die "the installed 256 MiB image's sha256 differs from the object's"

echo "1.5 MiB: $small_runs runs each of curl + fsync and gator-ota (plus one warm-up each)..."
curl_small=(); gator_small=()
for i in $(seq 0 "$small_runs"); do
  curl_job "$small_key" "$small_bytes"
  gator_job "$small_key" bench-small
  [ "$i" -eq 0 ] && continue
  curl_small+=("$(ms "$c_us")"); gator_small+=("$(ms "$g_us")")
done
echo "  curl + fsync ms: ${curl_small[*]}"
echo "  gator-ota ms:    ${gator_small[*]}"
[ "$(sha256sum "$image_dir/bench-small.bin" | cut -d' ' -f1)" = "$small_sha" ] \
  || die "the installed 1.5 MiB image's sha256 differs from the object's"
peak_kib=$(kib_field VmHWM "$gpid")
after_kib=$(kib_field VmRSS "$gpid")
stop_gator "$gpid"

# --- the table ------------------------------------------------------------------
med() { printf '%s\n' "$@" | median; }
curl_med=$(med "${curl_big[@]}"); gator_med=$(med "${gator_big[@]}")
curl_cpu_med=$(med "${curl_cpu[@]}"); gator_cpu_med=$(med "${gator_cpu[@]}")
curl_small_med=$(med "${curl_small[@]}"); gator_small_med=$(med "${gator_small[@]}")
startup_med=$(med "${startup_ms[@]}")
server_x=$(awk -v m="$mem_med" -v f="$fs_med" 'BEGIN {printf "%.1f", m/f}')
rate_pct=$(pct "$gator_med" "$curl_med")
small_pct=$(pct "$gator_small_med" "$curl_small_med")
cpu_pct=$(pct "$gator_cpu_med" "$curl_cpu_med")

failed=0
# PASS or FAIL for an awk condition; a FAIL is remembered for --strict.
verdict() {
  if awk "BEGIN {exit !($1)}"; then result=PASS; else result=FAIL; failed=1; fi
}

echo
echo "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(uname -r), work folder on $(df -T "$work" | awk 'NR==2 {print $2}'); release build; $(date -u +%F); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "gator-ota: installed images' sha256 match; RSS idle after the downloads $(mib "$after_kib"); binary $(stat -c %s "$gator") bytes"
echo
fmt='%-44s %-38s %-10s %s\n'
printf "$fmt" figure value bar result
verdict "$server_x >= $bar_server_x"
printf "$fmt" "server: curl memory vs s3s-fs, 256 MiB" \
  "${server_x}x ($mem_med vs $fs_med MiB/s)" ">= ${bar_server_x}x" "$result"
verdict "$rate_pct >= $bar_rate_pct"
printf "$fmt" "256 MiB vs curl + fsync (median of $runs)" \
  "$rate_pct % ($gator_med vs $curl_med MiB/s)" ">= ${bar_rate_pct} %" "$result"
verdict "$small_pct <= $bar_small_pct"
printf "$fmt" "1.5 MiB publish->confirm vs curl + fsync" \
  "$small_pct % ($gator_small_med vs $curl_small_med ms)" "<= ${bar_small_pct} %" "$result"
verdict "$cpu_pct <= $bar_cpu_pct"
printf "$fmt" "CPU per 256 MiB vs curl + sync (medians)" \
  "$cpu_pct % ($gator_cpu_med vs $curl_cpu_med ms)" "<= ${bar_cpu_pct} %" "$result"
verdict "$peak_kib <= $bar_peak_kib"
printf "$fmt" "peak RSS (VmHWM)" "$(mib "$peak_kib")" "<= 24 MiB" "$result"
verdict "$idle_kib <= $bar_idle_kib"
printf "$fmt" "idle RSS, subscribed (VmRSS)" "$(mib "$idle_kib"), $idle_threads threads" "<= 8 MiB" "$result"
printf "$fmt" "start-up to subscribed (median of $startup_runs)" "$startup_med ms" "-" "-"

if [ "$failed" -ne 0 ] && [ "$strict" -eq 1 ]; then
  bars_missed=1
  exit 1
fi
exit 0
