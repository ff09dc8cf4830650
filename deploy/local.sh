#!/usr/bin/env bash
# Runs gator-ota on its embedded local defaults and shows one firmware
# delivery end to end: a local mosquitto (started here unless one already
# listens on 127.0.0.1:1883), a local folder standing in for the bucket, a
# sample image, its download, the pointer file and the confirm_receipt, then
# what a Data Gator fetches from the firmware server (curl over HTTP/1.0).
# The service keeps running afterwards; stop it with Ctrl-C.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash deploy/install-deps.sh
cargo build --release --quiet --bin gator-ota
bin="$root/target/release/gator-ota"

work="${GATOR_OTA_LOCAL_DIR:-$root/local}"
mkdir -p "$work"
cd "$work"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

listening() { (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; }
if listening; then
  echo "using the broker already listening on 127.0.0.1:1883"
else
  mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  printf 'listener 1883 127.0.0.1\nallow_anonymous true\npersistence false\n' > mosquitto.conf
  "$mosquitto_bin" -c mosquitto.conf > mosquitto.log 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do listening && break; sleep 0.1; done
  listening || { echo "mosquitto did not start; see $work/mosquitto.log"; exit 1; }
  echo "started mosquitto on 127.0.0.1:1883"
fi

"$bin" run > gator-ota.log 2>&1 &
pids+=($!)
tail -n +1 -f gator-ota.log &
pids+=($!)
for _ in $(seq 100); do grep -q subscribed gator-ota.log && break; sleep 0.1; done
grep -q subscribed gator-ota.log || { echo "gator-ota did not subscribe; see $work/gator-ota.log"; exit 1; }

echo
"$bin" publish-sample
http=$(sed -n 's/.*firmware server listening addr=\([^ ]*\).*/\1/p' gator-ota.log | head -n 1)
if [ -n "$http" ]; then
  echo
  echo "firmware server on http://$http; what a Data Gator fetches:"
  name=$(curl -0 -sS "http://$http/current_version.txt")
  echo "  GET /current_version.txt -> $name"
  echo "  GET /$name (as HTTPUpdate, HTTP/1.0):"
  curl -0 -sS -A ESP32-http-Update -H "x-ESP32-STA-MAC: 24:6F:28:00:00:01" -o /dev/null -D - \
    "http://$http/$name" | tr -d '\r' | grep -iE '^(HTTP/|content-length|x-md5|x-sha256|etag)' | sed 's/^/    /'
  echo
  echo "the fleet view (gator-ota status; in a browser: http://$http/):"
  for _ in $(seq 50); do "$bin" status 2>/dev/null | grep -qi 24:6F:28:00:00:01 && break; sleep 0.1; done
  "$bin" status | sed 's/^/  /' || true
fi
echo
echo "gator-ota is running on the local defaults (data in $work/gator-ota-data; firmware server http://${http:-off}). Ctrl-C stops it."
wait "${pids[0]}"
