#!/usr/bin/env bash
# Benchmarks gator-ota's firmware server against nginx serving the same
# folder, as many Data Gators downloading one image at once, and prints the
# figures. It is a measurement, not a test: it fails (exit 1) on a missed bar
# only with --strict.
#
#   bash tests/bench-http.sh [--strict] [--duration SECONDS] [--runs N]
#                            [--connections "50 200"] [--size-kib N]
#                            [--nginx-workers N]
#
# What it does:
#   1. installs its apt needs (what the build needs and mosquitto, through
#      deploy/install-deps.sh; mosquitto-clients, nginx and wrk from Debian)
#      and builds the release binary `gator-ota`;
#   2. starts mosquitto on a free loopback port and `gator-ota run` over a
#      work folder (BENCH_DIR, default a new folder under $TMPDIR), with a
#      `file://` bucket in it and its firmware server on a free loopback port;
#   3. installs a real image of --size-kib KiB (default 1536, random bytes
#      after the ESP32 image magic 0xE9) through a firmware_image message and
#      its confirm_receipt, and checks the installed bytes;
#   4. starts nginx (Debian's, `sendfile on`, `worker_processes` as Debian's
#      own config has it, `auto`, unless --nginx-workers) as a private
#      instance with its own config, pid and logs in the work folder, on a
#      free loopback port, serving the installed image's folder;
#   5. fetches the image once from each with curl (a sanity figure; the
#      bytes must match), then drives both with the same wrk (HTTP/1.1
#      keep-alive, 2 threads) on the image's URL: for each --connections
#      count (default 50 and 200), --runs rounds (default 3) of --duration
#      seconds (default 10) each, alternating gator-ota and nginx so drift on
#      a shared machine hits both alike; the medians are compared;
#   6. samples gator-ota's VmRSS every 0.1 s during its runs at the largest
#      connection count, and reads its VmHWM (peak) after them;
#   7. prints one line per run and a table: figure, value, bar, PASS/FAIL.
#
# Throughput is the image's bytes times the responses wrk counted per second
# (bodies only, headers left out), in MiB/s. The machine's load is printed
# with the figures: the client, both servers and whatever else runs share
# its cores.
#
# Note: Debian's nginx package starts the system nginx on port 80 when it is
# installed, unless the machine's policy-rc.d forbids it (containers); this
# script never uses that one and leaves it alone.
set -euo pipefail
export LC_ALL=C

strict=0
duration=10
runs=3
connections="50 200"
size_kib=1536
nginx_workers=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --strict) strict=1 ;;
    --duration) duration=$2; shift ;;
    --runs) runs=$2; shift ;;
    --connections) connections=$2; shift ;;
    --size-kib) size_kib=$2; shift ;;
    --nginx-workers) nginx_workers=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "bench-http.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

# The bars (issue: the firmware server's benchmark; README, "Serving the
# Data Gators").
bar_ratio_pct=80
bar_rss_kib=$((32 * 1024))
wrk_threads=2

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# --- dependencies and build ------------------------------------------------
bash deploy/install-deps.sh
missing=()
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

echo "building the release binary..."
nice -n 10 cargo build --release --quiet -p gator-ota --bin gator-ota
target_dir=${CARGO_TARGET_DIR:-$root/target}
gator="$target_dir/release/gator-ota"

# --- work folder and clean-up ----------------------------------------------
if [ -n "${BENCH_DIR:-}" ]; then
  mkdir -p "$BENCH_DIR"
  work=$(mktemp -d "$BENCH_DIR/gator-bench-http.XXXXXX")
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/gator-bench-http.XXXXXX")
fi
pids=()
bars_missed=0  # set when --strict exits 1: a verdict, not a breakdown
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" -ne 0 ] && [ "$bars_missed" -eq 0 ] && [ -d "$work" ]; then
    echo "bench-http.sh: failed; logs:" >&2
    for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "bench-http.sh: $*" >&2; exit 1; }
now_us() { echo "${EPOCHREALTIME/./}"; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local port
  for _ in $(seq 50); do
    port=$((20000 + RANDOM % 40000))
    listening "$port" || { echo "$port"; return; }
  done
  die "no free port found"
}
# Median of the numbers on stdin (the lower middle one for an even count).
median() { sort -g | awk '{v[NR]=$1} END {if (NR) print v[int((NR+1)/2)]}'; }
kib_field() { awk -v k="$1:" '$1==k {print $2}' "/proc/$2/status"; }
# User+system CPU time of processes so far, in ms.
cpu_ms() {
  local p
  for p in "$@"; do cat "/proc/$p/stat"; done \
    | awk -v t="$(getconf CLK_TCK)" '{n += $14 + $15} END {print int(n * 1000 / t)}'
}
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k/1024}'; }
# Drops a process that has ended from the clean-up list.
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

# --- the image in a file:// bucket -------------------------------------------
name="datagator_v1.0.1.bin"
key="data-gator/$name"
bucket="$work/bucket"
data_dir="$work/data"
image_dir="$data_dir/firmware_images"
mkdir -p "$bucket/data-gator"
size=$((size_kib * 1024))
{ printf '\xe9'; head -c $((size - 1)) /dev/urandom; } > "$bucket/$key"
source_sha=$(sha256sum "$bucket/$key" | cut -d' ' -f1)

# --- gator-ota ---------------------------------------------------------------------
receive_topic=scarecro/firmware_image
confirm_topic=scarecro/confirm_receipt
unset GATOR_OTA_SETTINGS AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_ENDPOINT_URL
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

# A retained message on a side topic tells when mosquitto_sub has subscribed:
# it is delivered right after the SUBSCRIBE is acknowledged.
ready_topic="bench/ready"
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -t "$ready_topic" -r -m ready
sub_out="$work/confirm.out"
mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -v -C 2 -W 60 \
  -t "$ready_topic" -t "$confirm_topic" > "$sub_out" &
subpid=$!
pids+=("$subpid")
for _ in $(seq 500); do [ -s "$sub_out" ] && break; sleep 0.01; done
[ -s "$sub_out" ] || die "mosquitto_sub did not subscribe"
msg=$(printf '{"id":"bench-http","time":"%s","file_name":"%s","cloud_path":"%s","disk_path":"firmware_images/%s"}' \
  "$(date -u +%FT%TZ)" "$name" "$key" "$name")
echo "installing $name ($size_kib KiB) through a firmware_image message..."
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 -t "$receive_topic" -m "$msg"
wait "$subpid" || die "no confirm_receipt; see $work/gator.log"
forget "$subpid"
grep -q "^$confirm_topic .*\"$name\"" "$sub_out" || die "unexpected confirm_receipt: $(cat "$sub_out")"
[ "$(sha256sum "$image_dir/$name" | cut -d' ' -f1)" = "$source_sha" ] \
  || die "the installed image's sha256 differs from the object's"
pointer=$(curl -sS --fail "http://$gator_addr/current_version.txt")
[ "$pointer" = "$name" ] || die "/current_version.txt says '$pointer', not $name"

# --- nginx -----------------------------------------------------------------------
mkdir -p "$work/nginx"
{
  [ "$(id -u)" -eq 0 ] && echo "user root;"
  echo "worker_processes $nginx_workers;"
  echo "daemon off;"
  echo "pid $work/nginx/nginx.pid;"
  echo "error_log $work/nginx-error.log;"
  echo "events { worker_connections 1024; }"
  echo "http {"
  echo "  access_log off;"
  echo "  sendfile on;"
  echo "  tcp_nopush on;"
  echo "  default_type application/octet-stream;"
  for t in client_body proxy fastcgi uwsgi scgi; do echo "  ${t}_temp_path $work/nginx/$t;"; done
  echo "  server {"
  echo "    listen 127.0.0.1:PORT;"
  echo "    root $image_dir;"
  echo "  }"
  echo "}"
} > "$work/nginx.conf.in"
nginx_start() {
  sed "s/PORT/$1/" "$work/nginx.conf.in" > "$work/nginx.conf"
  exec "$nginx_bin" -p "$work/nginx" -e "$work/nginx-error.log" -c "$work/nginx.conf"
}
start_on_free_port nginx nginx_start
npid=$started_pid
nginx_addr="127.0.0.1:$started_port"

# --- one curl download from each ------------------------------------------------
declare -A addr=([gator-ota]=$gator_addr [nginx]=$nginx_addr)
declare -A curl_rate
for server in gator-ota nginx; do
  out="$work/curl.bin"
  t0=$(now_us)
  curl -sS --fail -o "$out" "http://${addr[$server]}/$name"
  t1=$(now_us)
  [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$source_sha" ] || die "$server served other bytes"
  curl_rate[$server]=$(awk -v s="$size" -v d=$((t1 - t0)) 'BEGIN {printf "%.1f", s/1048576/(d/1e6)}')
  rm -f "$out"
done
echo "curl, one download: gator-ota ${curl_rate[gator-ota]} MiB/s, nginx ${curl_rate[nginx]} MiB/s (bytes match)"

# --- load ---------------------------------------------------------------------------
# Runs wrk against a server; sets r (requests/s), m (MiB/s) and e (errors).
load() {
  local server=$1 conns=$2 out="$work/wrk.out"
  # In the background, so a signal ends the run at once (bash runs a trap
  # only between commands, but interrupts `wait`).
  wrk -t "$wrk_threads" -c "$conns" -d "${duration}s" --timeout 30s \
    "http://${addr[$server]}/$name" > "$out" 2>&1 &
  local wpid=$!
  pids+=("$wpid")
  wait "$wpid" || die "wrk failed: $(cat "$out")"
  forget "$wpid"
  read -r r m e < <(awk -v size="$size" '
    /^Requests\/sec:/ {rps = $2}
    /Socket errors:/ {for (i = 3; i <= NF; i += 2) {gsub(",", "", $(i + 1)); err += $(i + 1)}}
    /Non-2xx or 3xx responses:/ {err += $NF}
    END {printf "%.1f %.1f %d\n", rps, rps * size / 1048576, err}' "$out")
}
# Samples gator-ota's VmRSS and thread count until the file $1 exists;
# prints the largest of each.
sample_rss() {
  local top=0 threads=0 v
  while [ ! -e "$1" ]; do
    v=$(kib_field VmRSS "$gpid")
    [ "$v" -gt "$top" ] && top=$v
    v=$(kib_field Threads "$gpid")
    [ "$v" -gt "$threads" ] && threads=$v
    sleep 0.1
  done
  echo "$top $threads"
}
# The processes that serve for a server: gator-ota, or nginx's master and
# workers.
server_pids() {
  if [ "$1" = gator-ota ]; then echo "$gpid"; else echo "$npid $(pgrep -P "$npid" | tr '\n' ' ')"; fi
}

max_conns=0
for c in $connections; do [ "$c" -gt "$max_conns" ] && max_conns=$c; done
declare -A mibs rps errors cores_of
rss_top=0
threads_top=0
echo "load: wrk, $wrk_threads threads, ${duration} s a run, $runs runs per server and connection count..."
for c in $connections; do
  for i in $(seq "$runs"); do
    for server in gator-ota nginx; do
      # shellcheck disable=SC2046 # one pid per word
      cpu0=$(cpu_ms $(server_pids "$server"))
      if [ "$server" = gator-ota ] && [ "$c" -eq "$max_conns" ]; then
        rm -f "$work/load.done"
        sample_rss "$work/load.done" > "$work/rss.out" &
        spid=$!
        pids+=("$spid")
        load "$server" "$c"
        touch "$work/load.done"
        wait "$spid"
        forget "$spid"
        read -r top threads < "$work/rss.out"
        [ "$top" -gt "$rss_top" ] && rss_top=$top
        [ "$threads" -gt "$threads_top" ] && threads_top=$threads
      else
        load "$server" "$c"
      fi
      # shellcheck disable=SC2046
      cpu1=$(cpu_ms $(server_pids "$server"))
      cores=$(awk -v d=$((cpu1 - cpu0)) -v s="$duration" 'BEGIN {printf "%.2f", d / 1000 / s}')
      printf '  %3d connections, run %d: %-9s %8s req/s %8s MiB/s %4d errors, %s cores\n' \
        "$c" "$i" "$server" "$r" "$m" "$e" "$cores"
      cores_of[$server.$c]+="$cores "
      mibs[$server.$c]+="$m "
      rps[$server.$c]+="$r "
      errors[$server.$c]=$((${errors[$server.$c]:-0} + e))
    done
  done
done
peak_kib=$(kib_field VmHWM "$gpid")
now_kib=$(kib_field VmRSS "$gpid")
kill -0 "$gpid" 2>/dev/null || die "gator-ota died under load; see $work/gator.log"

# --- the table ------------------------------------------------------------------
failed=0
# PASS or FAIL for an awk condition; a FAIL is remembered for --strict.
verdict() {
  if awk "BEGIN {exit !($1)}"; then result=PASS; else result=FAIL; failed=1; fi
}
med() { printf '%s\n' $1 | median; }

echo
echo "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(uname -r); load average $(cut -d' ' -f1-3 /proc/loadavg); release build; $(date -u +%F)"
echo "nginx $("$nginx_bin" -v 2>&1 | sed 's|.*/||'), worker_processes $nginx_workers, sendfile on; $(wrk --version 2>&1 | head -n 1 | cut -d' ' -f1-2); image $size_kib KiB"
echo "gator-ota: RSS $(mib "$idle_kib") idle before the load, $(mib "$now_kib") after it; at most $threads_top threads during the $max_conns-connection runs"
echo
echo "medians of $runs runs; cores: CPU time the server used per second of load"
printf '%-12s %-36s %-36s %s\n' connections "gator-ota" nginx "gator-ota / nginx"
for c in $connections; do
  g=$(med "${mibs[gator-ota.$c]}")
  n=$(med "${mibs[nginx.$c]}")
  printf '%-12s %-36s %-36s %s\n' "$c" \
    "$g MiB/s $(med "${rps[gator-ota.$c]}") req/s $(med "${cores_of[gator-ota.$c]}") cores" \
    "$n MiB/s $(med "${rps[nginx.$c]}") req/s $(med "${cores_of[nginx.$c]}") cores" \
    "$(awk -v g="$g" -v n="$n" 'BEGIN {printf "%.2f", (n > 0 ? g/n : 0)}')"
done
echo
fmt='%-52s %-28s %-10s %s\n'
printf "$fmt" figure value bar result
for c in $connections; do
  g=$(med "${mibs[gator-ota.$c]}")
  n=$(med "${mibs[nginx.$c]}")
  pct=$(awk -v g="$g" -v n="$n" 'BEGIN {printf "%.0f", (n > 0 ? 100*g/n : 0)}')
  verdict "$pct >= $bar_ratio_pct && ${errors[gator-ota.$c]} == 0"
  printf "$fmt" "throughput vs nginx, $c connections (median of $runs)" \
    "$pct % (${errors[gator-ota.$c]} errors)" ">= ${bar_ratio_pct} %" "$result"
done
verdict "$peak_kib <= $bar_rss_kib"
printf "$fmt" "peak RSS (VmHWM), $max_conns downloads at once" "$(mib "$peak_kib")" "<= 32 MiB" "$result"
verdict "$rss_top <= $bar_rss_kib"
printf "$fmt" "VmRSS during $max_conns downloads (largest sample)" "$(mib "$rss_top")" "<= 32 MiB" "$result"

if [ "$failed" -ne 0 ] && [ "$strict" -eq 1 ]; then
  bars_missed=1
  exit 1
fi
exit 0
