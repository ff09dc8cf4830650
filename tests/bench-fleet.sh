#!/usr/bin/env bash
# Benchmarks gator-ota's fleet view under a fleet of simulated Data Gators
# reporting to the local broker, and prints the figures. It is a
# measurement, not a test: it fails (exit 1) on a missed bar only with
# --strict.
#
#   bash tests/bench-fleet.sh [--strict] [--no-build] [--devices N]
#                             [--interval-ms MS] [--duration S]
#                             [--connections N] [--status-min-interval S]
#                             [--status-interval S]
#
# What it does:
#   1. installs its apt needs (what the build needs and mosquitto, through
#      deploy/install-deps.sh; mosquitto-clients from Debian) and builds the
#      release binaries `gator-ota` and the testkit's `fleet-load`
#      (--no-build: use the ones already built);
#   2. starts mosquitto on a free loopback port and `gator-ota run` over a
#      work folder (BENCH_DIR, default a new folder under $TMPDIR; it should
#      be on a real disk, not tmpfs, or fsyncs cost nothing) with a
#      `file://` bucket, the firmware server on a free loopback port (for
#      /metrics), `fleet.max_devices` at twice --devices, a send address
#      carrying fleet_status, and fleet_status at most every
#      --status-min-interval (default 5) and at least every
#      --status-interval (default 10) seconds;
#   3. installs a 64 KiB datagator_v1.0.1.bin through a firmware_image
#      message, so each device has a rollout state;
#   4. runs `fleet-load`: --devices (default 1000) simulated Data Gators,
#      each publishing a `version` ota_status and a telemetry message every
#      --interval-ms (default 2000) at QoS 0 (as the firmware's PubSubClient
#      does), spread evenly, through --connections (default 4) MQTT
#      connections, for --duration (default 60) seconds. A mosquitto_sub on
#      `datagator/#` receives the same stream: the reference figure, which
#      shows what the broker and the publisher deliver;
#   5. meanwhile samples gator-ota's VmRSS every 0.2 s and records every
#      fleet_status it sends (mosquitto_sub on its topic);
#   6. after the load, waits (up to 30 s) until gator-ota's
#      `gator_ota_device_messages_total` stops moving, then reads /metrics:
#      messages taken and dropped, the last fleet.json save (bytes, time to
#      serialise and to write), and gator-ota's CPU time (/proc/PID/stat)
#      from the load's start to the last message taken;
#   7. prints a table: figure, value, bar, PASS/FAIL.
#
# "handled" is what the device registry took, per second from the load's
# start to the last message taken; "lag" is how long after the load ended
# that was. The machine's load is printed with the figures: the publisher,
# the broker, gator-ota and whatever else runs share its cores.
set -euo pipefail
export LC_ALL=C

strict=0
build=1
devices=1000
interval_ms=2000
duration=60
connections=4
status_min=5
status_every=10
while [ $# -gt 0 ]; do
  case "$1" in
    --strict) strict=1 ;;
    --no-build) build=0 ;;
    --devices) devices=$2; shift ;;
    --interval-ms) interval_ms=$2; shift ;;
    --duration) duration=$2; shift ;;
    --connections) connections=$2; shift ;;
    --status-min-interval) status_min=$2; shift ;;
    --status-interval) status_every=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "bench-fleet.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

# The bars (issue: the fleet view, scale; README, "Performance").
bar_rss_kib=$((32 * 1024))
bar_handled_pct=99   # messages the registry took / messages the broker delivered
bar_lag_ms=2000      # last message taken after the load ended, at most

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
    --bin gator-ota --bin fleet-load
fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
gator="$target_dir/release/gator-ota"
loader="$target_dir/release/fleet-load"

# --- work folder and clean-up ----------------------------------------------
if [ -n "${BENCH_DIR:-}" ]; then
  mkdir -p "$BENCH_DIR"
  work=$(mktemp -d "$BENCH_DIR/gator-bench-fleet.XXXXXX")
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/gator-bench-fleet.XXXXXX")
fi
pids=()
bars_missed=0  # set when --strict exits 1: a verdict, not a breakdown
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" -ne 0 ] && [ "$bars_missed" -eq 0 ] && [ -d "$work" ]; then
    echo "bench-fleet.sh: failed; logs:" >&2
    for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "bench-fleet.sh: $*" >&2; exit 1; }
now_ms() { echo $(( ${EPOCHREALTIME/./} / 1000 )); }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local port
  for _ in $(seq 50); do
    port=$((20000 + RANDOM % 40000))
    listening "$port" || { echo "$port"; return; }
  done
  die "no free port found"
}
kib_field() { awk -v k="$1:" '$1==k {print $2}' "/proc/$2/status"; }
# User+system CPU time of a process so far, in ms.
cpu_ms() { awk -v t="$(getconf CLK_TCK)" '{print int(($14 + $15) * 1000 / t)}' "/proc/$1/stat"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k/1024}'; }
forget() {
  local p keep=()
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}

# Starts a server with the function $2 (given a port; it ends in `exec`) on
# a free port until one listens; sets started_pid and started_port.
start_on_free_port() {
  local name=$1 starter=$2 port pid
  for _ in 1 2 3 4 5; do
    port=$(free_port)
    "$starter" "$port" > "$work/$name.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
      listening "$port" && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null && listening "$port"; then
      pids+=("$pid")
      started_pid=$pid
      started_port=$port
      return
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  die "$name did not start; see $work/$name.log"
}

# --- mosquitto ---------------------------------------------------------------
{
  [ "$(id -u)" -eq 0 ] && echo "user root"
  echo "listener PORT 127.0.0.1"
  echo "allow_anonymous true"
  echo "persistence false"
} > "$work/mosquitto.conf.in"
mosquitto_start() {
  sed "s/PORT/$1/" "$work/mosquitto.conf.in" > "$work/mosquitto.conf"
  exec "$mosquitto_bin" -c "$work/mosquitto.conf"
}
start_on_free_port mosquitto mosquitto_start
mqtt_port=$started_port
mqtt=(-h 127.0.0.1 -p "$mqtt_port")

# --- gator-ota -----------------------------------------------------------------
name="datagator_v1.0.1.bin"
key="data-gator/$name"
bucket="$work/bucket"
data_dir="$work/data"
mkdir -p "$bucket/data-gator"
{ printf '\xe9'; head -c $((64 * 1024 - 1)) /dev/urandom; } > "$bucket/$key"
status_topic=scarecro/fleet_status
cat > "$work/settings.toml" <<EOF
[fleet]
max_devices = $((devices * 2))
status_min_interval = "${status_min}s"
status_interval = "${status_every}s"

[addresses.cloud_mqtt_fleet]
carrier = "mqtt"
send_or_receive = "send"
message_type = ["fleet_status"]
duration = "on_message"
topic = "$status_topic"
EOF
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_ENDPOINT_URL
export GATOR_OTA_SETTINGS="$work/settings.toml"
export GATOR_OTA_LOG=info
export GATOR_OTA__SYSTEM__ID=bench-gateway
export GATOR_OTA__SYSTEM__DATA_DIR="$data_dir"
export GATOR_OTA__CARRIERS__MQTT__URL="tcp://127.0.0.1:$mqtt_port"
export GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__BUCKET="file://$bucket"
export GATOR_OTA__HTTP__ENABLED=true
export GATOR_OTA__HTTP__LISTEN=127.0.0.1:0

"$gator" run > /dev/null 2> "$work/gator.log" &
gpid=$!
pids+=("$gpid")
for _ in $(seq 500); do
  grep -q subscribed "$work/gator.log" && break
  kill -0 "$gpid" 2>/dev/null || die "gator-ota exited; see $work/gator.log"
  sleep 0.02
done
grep -q subscribed "$work/gator.log" || die "gator-ota did not subscribe; see $work/gator.log"
gator_addr=$(sed -n 's/.*firmware server listening.*addr=\([^ ]*\).*/\1/p' "$work/gator.log" | head -n 1)
[ -n "$gator_addr" ] || die "gator-ota logged no firmware server address; see $work/gator.log"
idle_kib=$(kib_field VmRSS "$gpid")
metric() { curl -sS --fail "http://$gator_addr/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

# A retained message on a side topic tells when a mosquitto_sub has
# subscribed: it is delivered right after the SUBSCRIBE is acknowledged.
ready_topic="bench/ready"
mosquitto_pub "${mqtt[@]}" -t "$ready_topic" -r -m ready
# Starts a mosquitto_sub on the topics given, writing to $1, and waits
# until it has subscribed; sets sub_pid.
subscribe() {
  local out=$1
  shift
  mosquitto_sub "${mqtt[@]}" -v -t "$ready_topic" "$@" > "$out" &
  sub_pid=$!
  pids+=("$sub_pid")
  for _ in $(seq 500); do [ -s "$out" ] && break; sleep 0.01; done
  [ -s "$out" ] || die "mosquitto_sub did not subscribe"
}

subscribe "$work/confirm.out" -C 2 -W 60 -t scarecro/confirm_receipt
confirm_pid=$sub_pid
msg=$(printf '{"id":"bench-fleet","time":"%s","file_name":"%s","cloud_path":"%s","disk_path":"firmware_images/%s"}' \
  "$(date -u +%FT%TZ)" "$name" "$key" "$name")
echo "installing $name through a firmware_image message..."
mosquitto_pub "${mqtt[@]}" -q 1 -t scarecro/firmware_image -m "$msg"
wait "$confirm_pid" || die "no confirm_receipt; see $work/gator.log"
forget "$confirm_pid"
grep -q "\"$name\"" "$work/confirm.out" || die "unexpected confirm_receipt: $(cat "$work/confirm.out")"

# --- load ------------------------------------------------------------------------
# Prints every fleet_status line as "<arrival ms> <bytes>".
subscribe "$work/status.raw" -t "$status_topic" -F '%U %l'
status_pid=$sub_pid
subscribe "$work/reference.out" -t 'datagator/#' -F '%t'
reference_pid=$sub_pid

sample_rss() {
  local top=0 v
  while [ ! -e "$1" ]; do
    v=$(kib_field VmRSS "$gpid")
    [ "$v" -gt "$top" ] && top=$v
    sleep 0.2
  done
  echo "$top"
}
rm -f "$work/load.done"
sample_rss "$work/load.done" > "$work/rss.out" &
spid=$!
pids+=("$spid")

taken0=$(metric gator_ota_device_messages_total)
cpu0=$(cpu_ms "$gpid")
t0=$(now_ms)
echo "load: $devices devices, ota_status + tlm every $interval_ms ms, $connections connections, $duration s..."
"$loader" --url "tcp://127.0.0.1:$mqtt_port" --devices "$devices" --interval-ms "$interval_ms" \
  --duration-s "$duration" --connections "$connections" > "$work/load.out" 2> "$work/load.log" &
lpid=$!
pids+=("$lpid")
wait "$lpid" || die "fleet-load failed: $(cat "$work/load.log")"
forget "$lpid"
t_load=$(now_ms)
read -r sent load_secs offered behind < <(sed 's/[a-z_]*=//g' "$work/load.out")

# Waits until the registry has taken everything (the counter stops moving
# for 3 s, or reaches what was sent), keeping the time of its last move.
last=$(metric gator_ota_device_messages_total)
t_last=$(now_ms)
cpu_last=$(cpu_ms "$gpid")
while :; do
  [ $((last - taken0)) -ge "$sent" ] && break
  [ $(($(now_ms) - t_last)) -ge 3000 ] && break
  [ $(($(now_ms) - t_load)) -ge 30000 ] && break
  sleep 0.1
  n=$(metric gator_ota_device_messages_total)
  if [ "$n" != "$last" ]; then last=$n; t_last=$(now_ms); cpu_last=$(cpu_ms "$gpid"); fi
done
touch "$work/load.done"
wait "$spid"
forget "$spid"
rss_top=$(cat "$work/rss.out")
peak_kib=$(kib_field VmHWM "$gpid")
now_kib=$(kib_field VmRSS "$gpid")
kill -0 "$gpid" 2>/dev/null || die "gator-ota died under load; see $work/gator.log"
sleep 0.5
kill "$reference_pid" "$status_pid" 2>/dev/null || true
wait "$reference_pid" "$status_pid" 2>/dev/null || true
forget "$reference_pid"
forget "$status_pid"

taken=$((last - taken0))
dropped=$(metric gator_ota_device_messages_dropped_total)
reg_bytes=$(metric gator_ota_registry_bytes)
metrics_out=$(curl -sS --fail "http://$gator_addr/metrics")
ser_s=$(awk '$1 == "gator_ota_registry_save_seconds{step=\"serialise\"}" {print $2}' <<< "$metrics_out")
write_s=$(awk '$1 == "gator_ota_registry_save_seconds{step=\"write\"}" {print $2}' <<< "$metrics_out")
known=$(awk '$1 ~ /^gator_ota_devices\{/ {n += $2} END {print n + 0}' <<< "$metrics_out")
file_bytes=$(stat -c %s "$data_dir/.gator-ota/fleet.json" 2>/dev/null || echo 0)
reference=$(grep -c '^datagator/' "$work/reference.out" || true)
window_ms=$((t_last - t0))
lag_ms=$((t_last - t_load))
[ "$lag_ms" -lt 0 ] && lag_ms=0
cpu_used=$((cpu_last - cpu0))
# fleet_status messages sent during the load (the first line is the
# retained ready marker, which has no time stamp of its own to keep).
grep -v ' 5$' "$work/status.raw" | awk '$2 > 100' > "$work/status.out" || true
read -r st_count st_mean st_max st_gap < <(awk '
  {n++; s += $2; if ($2 > m) m = $2; t[n] = $1}
  END {gap = (n > 1 ? (t[n] - t[1]) / (n - 1) : 0); printf "%d %.0f %d %.1f\n", n, (n ? s/n : 0), m, gap}' "$work/status.out")

# --- the table ------------------------------------------------------------------
failed=0
verdict() {
  if awk "BEGIN {exit !($1)}"; then result=PASS; else result=FAIL; failed=1; fi
}
rate() { awk -v n="$1" -v ms="$2" 'BEGIN {printf "%.0f", (ms > 0 ? n * 1000 / ms : 0)}'; }

echo
echo "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(uname -r); load average $(cut -d' ' -f1-3 /proc/loadavg); release build; $(date -u '+%F %H:%M UTC')"
echo "load: $devices devices, ota_status + tlm each every $interval_ms ms ($(rate $((devices * 2)) "$interval_ms") msg/s offered), $connections connections, QoS 0, ${duration} s; fleet_status every ${status_min}-${status_every} s"
echo "fleet-load: sent $sent in $load_secs s ($offered msg/s), at most $behind ms behind its schedule"
echo "gator-ota: RSS $(mib "$idle_kib") idle before the load, $(mib "$now_kib") after it; $known devices known"
echo
fmt='%-54s %-30s %-10s %s\n'
printf "$fmt" figure value bar result
printf "$fmt" "reference: mosquitto_sub on datagator/#" "$reference msgs, $(rate "$reference" $((t_load - t0))) msg/s" "" ""
pct=$(awk -v a="$taken" -v b="$reference" 'BEGIN {printf "%.1f", (b > 0 ? 100 * a / b : 0)}')
verdict "$pct >= $bar_handled_pct"
printf "$fmt" "messages taken by the registry / reference" "$taken ($pct %)" ">= ${bar_handled_pct} %" "$result"
printf "$fmt" "messages/s handled (load start to last taken)" "$(rate "$taken" "$window_ms")" "" ""
verdict "$lag_ms <= $bar_lag_ms"
printf "$fmt" "lag: last taken after the load ended" "$lag_ms ms" "<= $bar_lag_ms ms" "$result"
verdict "${dropped:-0} == 0"
printf "$fmt" "device messages dropped (in-memory queue full)" "${dropped:-0}" "0" "$result"
printf "$fmt" "gator-ota CPU per 1,000 messages" \
  "$(awk -v c="$cpu_used" -v n="$taken" 'BEGIN {printf "%.3f s", (n > 0 ? c / n : 0)}')" "" ""
printf "$fmt" "gator-ota CPU, share of one core" \
  "$(awk -v c="$cpu_used" -v ms="$window_ms" 'BEGIN {printf "%.1f %%", (ms > 0 ? 100 * c / ms : 0)}')" "" ""
printf "$fmt" "fleet.json size" "$file_bytes bytes (last save ${reg_bytes:-0})" "" ""
printf "$fmt" "fleet.json last save: serialise + write" \
  "$(awk -v s="${ser_s:-0}" -v w="${write_s:-0}" 'BEGIN {printf "%.2f + %.2f ms", s * 1000, w * 1000}')" "" ""
printf "$fmt" "fleet_status sent during the load" "$st_count, every $st_gap s" "" ""
printf "$fmt" "fleet_status size (mean, largest)" "$st_mean, $st_max bytes" "" ""
verdict "$peak_kib <= $bar_rss_kib"
printf "$fmt" "peak RSS (VmHWM)" "$(mib "$peak_kib")" "<= 32 MiB" "$result"
verdict "$rss_top <= $bar_rss_kib"
printf "$fmt" "VmRSS during the load (largest sample)" "$(mib "$rss_top")" "<= 32 MiB" "$result"

if [ "$failed" -ne 0 ] && [ "$strict" -eq 1 ]; then
  bars_missed=1
  exit 1
fi
exit 0
