#!/usr/bin/env bash
# Benchmarks gator-ota against the project's performance bar and prints the
# figures. It is a measurement, not a test: it fails (exit 1) on a missed bar
# only with --strict.
#
#   bash tests/bench.sh [--strict] [--runs N] [--startup-runs N] [--size-mib N]
#
# What it does:
#   1. installs its apt needs (mosquitto, mosquitto-clients, curl, and what the
#      build needs, through deploy/install-deps.sh) and builds the release
#      binaries `gator-ota` and the testkit's `s3-dev-server` (s3s-fs, SigV4);
#   2. starts mosquitto and s3-dev-server on free loopback ports, over a work
#      folder (BENCH_DIR, default a new folder under $TMPDIR, which must be a
#      real disk, not tmpfs, or the fsyncs cost nothing), and seeds a random
#      object of --size-mib MiB (default 256) straight into the server's root,
#      with the ETag sidecar s3s-fs writes itself (without it s3s-fs re-hashes
#      the whole file on every GET);
#   3. start-up: spawns `gator-ota run` --startup-runs times (default 7) and
#      times spawn -> the "subscribed" log line;
#   4. starts `gator-ota run` once more, reads its idle RSS (VmRSS), then
#      downloads the object --runs times (default 5): publish a firmware_image,
#      wait for the confirm_receipt; and as often with `curl` from the same
#      server into a file followed by `sync FILE`. Both are timed the same
#      way, around the whole command, and the medians are compared. The runs
#      alternate (curl, gator-ota, curl, ...) so drift on a shared machine hits
#      both alike. gator-ota's time includes its fixed costs per job (MQTT
#      round trips, the pointer file, four fsyncs), which a small --size-mib
#      makes visible. The peak RSS is gator-ota's VmHWM after its downloads;
#   5. prints one line per run and a table: figure, value, bar, PASS/FAIL.
#
# Settings under test are the embedded defaults; GATOR_OTA__* variables in the
# caller's environment reach the service (e.g. GATOR_OTA__PIPELINE__WRITE_CHUNKS
# for experiments), except the ones that point it at this bench's broker and
# bucket.
set -euo pipefail
export LC_ALL=C

strict=0
runs=5
startup_runs=7
size_mib=256
while [ $# -gt 0 ]; do
  case "$1" in
    --strict) strict=1 ;;
    --runs) runs=$2; shift ;;
    --startup-runs) startup_runs=$2; shift ;;
    --size-mib) size_mib=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

# The bars (README, "Performance").
bar_rate_pct=90
bar_peak_kib=$((32 * 1024))
bar_idle_kib=$((8 * 1024))
bar_startup_ms=50

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

echo "building release binaries..."
nice -n 10 cargo build --release --quiet -p gator-ota -p gator-ota-testkit \
  --bin gator-ota --bin s3-dev-server
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
  exec 7>&-
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

# --- S3 server and the object --------------------------------------------------
bucket=firmware
key="bench/image-${size_mib}m.bin"
s3root="$work/s3"
mkdir -p "$s3root/$bucket/bench"
echo "creating the ${size_mib} MiB object..."
head -c $((size_mib * 1024 * 1024)) /dev/urandom > "$s3root/$bucket/$key"
b64url() { printf %s "$1" | base64 -w0 | tr '+/' '-_' | tr -d '='; }
etag=$(md5sum "$s3root/$bucket/$key" | cut -d' ' -f1)
printf '{"e_tag":"%s"}' "$etag" \
  > "$s3root/.bucket-$(b64url "$bucket").object-$(b64url "$key").internal.json"
source_sha=$(sha256sum "$s3root/$bucket/$key" | cut -d' ' -f1)
sync

"$s3server" --root "$s3root" --port 0 > "$work/s3.out" 2> "$work/s3.log" &
pids+=($!)
s3pid=$!
s3_port=""
for _ in $(seq 200); do
  s3_port=$(sed -n 's|^listening on http://127.0.0.1:\([0-9]*\)$|\1|p' "$work/s3.out")
  [ -n "$s3_port" ] && break
  kill -0 "$s3pid" 2>/dev/null || break
  sleep 0.05
done
[ -n "$s3_port" ] || die "s3-dev-server did not start; see $work/s3.log"
endpoint="http://127.0.0.1:$s3_port"
access_key=gator-test-access
secret_key=gator-test-secret-key-0123456789

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
if [ "$size_mib" -gt 256 ]; then  # above the default firmware.max_image_bytes
  export GATOR_OTA__FIRMWARE__MAX_IMAGE_BYTES=$((size_mib * 1024 * 1024))
fi

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
  ms=$(awk -v d=$((t1 - t0)) 'BEGIN {printf "%.1f", d/1000}')
  startup_ms+=("$ms")
  printf '  run %d: %s ms\n' "$i" "$ms"
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
echo "idle: VmRSS $(mib "$idle_kib")"

# A retained message on a side topic tells when a mosquitto_sub has
# subscribed: it is delivered right after the SUBSCRIBE is acknowledged.
ready_topic="bench/ready"
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -t "$ready_topic" -r -m ready

image_dir="$data_dir/firmware_images"
file_name="bench-image"
curl_out="$work/curl.bin"
curl_mibs=()
gator_mibs=()
# Each download once untimed first: warms the object into the page cache and
# the binaries into memory for both clients alike.
echo "downloads: $runs runs each of curl and gator-ota (plus one warm-up each)..."
for i in $(seq 0 "$runs"); do
  # curl: the same server, the same object, into a file, then fsync. curl
  # before 8.x does not send x-amz-content-sha256 itself, and s3s requires it.
  rm -f "$curl_out"
  sync
  t0=$(now_us)
  # `time` (the keyword) reports the CPU curl and sync used, for comparison.
  { time {
    curl -sS --fail --aws-sigv4 "aws:amz:us-east-1:s3" --user "$access_key:$secret_key" \
      -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -o "$curl_out" "$endpoint/$bucket/$key"
    sync "$curl_out"
  }; } 2> "$work/curl.log"
  t1=$(now_us)
  c_cpu=$(tail -n 1 "$work/curl.log" | awk '{printf "%d", ($1 + $2) * 1000}')
  [ "$(stat -c %s "$curl_out")" -eq $((size_mib * 1024 * 1024)) ] || die "curl got a short file"
  c_rate=$(awk -v s="$size_mib" -v d=$((t1 - t0)) 'BEGIN {printf "%.1f", s/(d/1e6)}')
  c_s=$(awk -v d=$((t1 - t0)) 'BEGIN {printf "%.2f", d/1e6}')
  rm -f "$curl_out"

  # gator-ota: publish a firmware_image, wait for its confirm_receipt.
  rm -f "$image_dir/$file_name.bin"
  sync
  sub_out="$work/sub.$i"
  mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -v -C 2 -W 600 \
    -t "$ready_topic" -t "$confirm_topic" > "$sub_out" &
  subpid=$!
  pids+=("$subpid")
  for _ in $(seq 500); do [ -s "$sub_out" ] && break; sleep 0.01; done
  [ -s "$sub_out" ] || die "mosquitto_sub did not subscribe"
  cpu0=$(cpu_ms "$gpid")
  msg=$(printf '{"id":"bench-%d","time":"%s","file_name":"%s","cloud_path":"%s"}' \
    "$i" "$(date -u +%FT%TZ)" "$file_name" "$key")
  t0=$(now_us)
  mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 -t "$receive_topic" -m "$msg"
  wait "$subpid" || die "no confirm_receipt for run $i; see $work/gator.log"
  t1=$(now_us)
  forget "$subpid"
  cpu1=$(cpu_ms "$gpid")
  grep -q "^$confirm_topic .*\"$file_name\"" "$sub_out" || die "unexpected confirm_receipt: $(cat "$sub_out")"
  g_rate=$(awk -v s="$size_mib" -v d=$((t1 - t0)) 'BEGIN {printf "%.1f", s/(d/1e6)}')
  g_s=$(awk -v d=$((t1 - t0)) 'BEGIN {printf "%.2f", d/1e6}')

  label="run $i"
  [ "$i" -eq 0 ] && label="warm-up"
  printf '  %-7s curl %5s s %6s MiB/s %5d ms CPU | gator-ota %5s s %6s MiB/s %5d ms CPU\n' \
    "$label" "$c_s" "$c_rate" "$c_cpu" "$g_s" "$g_rate" $((cpu1 - cpu0))
  if [ "$i" -gt 0 ]; then
    curl_mibs+=("$c_rate")
    gator_mibs+=("$g_rate")
  fi
done
peak_kib=$(kib_field VmHWM "$gpid")
after_kib=$(kib_field VmRSS "$gpid")
installed_sha=$(sha256sum "$image_dir/$file_name.bin" | cut -d' ' -f1)
[ "$installed_sha" = "$source_sha" ] || die "the installed image's sha256 differs from the object's"
stop_gator "$gpid"

# --- the table ------------------------------------------------------------------
curl_med=$(printf '%s\n' "${curl_mibs[@]}" | median)
gator_med=$(printf '%s\n' "${gator_mibs[@]}" | median)
rate_pct=$(awk -v g="$gator_med" -v c="$curl_med" 'BEGIN {printf "%.0f", 100*g/c}')
startup_med=$(printf '%s\n' "${startup_ms[@]}" | median)

failed=0
# PASS or FAIL for an awk condition; a FAIL is remembered for --strict.
verdict() {
  if awk "BEGIN {exit !($1)}"; then result=PASS; else result=FAIL; failed=1; fi
}

echo
echo "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(uname -r), work folder on $(df -T "$work" | awk 'NR==2 {print $2}'); release build; $(date -u +%F)"
echo "gator-ota: installed image sha256 matches; RSS idle after the downloads $(mib "$after_kib")"
echo
fmt='%-42s %-36s %-10s %s\n'
printf "$fmt" figure value bar result
verdict "$rate_pct >= $bar_rate_pct"
printf "$fmt" "download ${size_mib} MiB vs curl (median of $runs)" \
  "$rate_pct % ($gator_med vs $curl_med MiB/s)" ">= ${bar_rate_pct} %" "$result"
verdict "$peak_kib <= $bar_peak_kib"
printf "$fmt" "peak RSS while downloading (VmHWM)" "$(mib "$peak_kib")" "<= 32 MiB" "$result"
verdict "$idle_kib <= $bar_idle_kib"
printf "$fmt" "idle RSS, subscribed (VmRSS)" "$(mib "$idle_kib")" "<= 8 MiB" "$result"
verdict "$startup_med <= $bar_startup_ms"
printf "$fmt" "start-up to subscribed (median of $startup_runs)" "$startup_med ms" "<= ${bar_startup_ms} ms" "$result"

if [ "$failed" -ne 0 ] && [ "$strict" -eq 1 ]; then
  bars_missed=1
  exit 1
fi
exit 0
