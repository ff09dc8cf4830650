#!/usr/bin/env bash
# shellcheck disable=SC2015,SC2016  # `A && B || fail`: fail unless both hold
# Smoke-tests Raspberry Pi release archives on this x86_64 machine under
# qemu-user, with the real services around them:
#
#   bash deploy/smoke-qemu.sh                 # every target's archive in dist/
#   bash deploy/smoke-qemu.sh dist/gator-ota-0.1.0-aarch64-unknown-linux-gnu.tar.gz
#
# (`bash deploy/release.sh --smoke` builds the archives and then runs this.)
#
# For each archive: unpack it, run its install.sh twice into a fake root (the
# second run must keep the edited settings and env file), then, with the
# installed emulated binary and the installed settings:
#   1. `check-config` passes (and a bad value exits 2);
#   2. `run` against a local mosquitto and a local S3-protocol server (the
#      testkit's s3-dev-server, built for the host: s3s-fs with SigV4)
#      completes a firmware_image round trip: the installed image is
#      byte-identical, the pointer file names it, the confirm_receipt arrives
#      (observed with mosquitto_sub), a device-style fetch with curl over
#      HTTP/1.0 from the emulated binary's firmware server gets the pointer
#      (/current_version.txt) and then the image with its x-MD5, and SIGTERM
#      stops it cleanly;
#   3. over TLS (ssl://), OpenSSL refuses the broker while its CA
#      is not in /etc/ssl/certs, and with the CA added there (a hash link, as
#      update-ca-certificates makes) completes a second round trip. The CA
#      is added in a private mount namespace (unshare -m, a copy of
#      /etc/ssl/certs bind-mounted over it), so this machine's store is
#      never changed. (qemu's -L cannot stand in for it: qemu 7.2 does not
#      remap statx, which 32-bit glibc's stat() uses.)
#
# qemu-aarch64 / qemu-arm are run explicitly (no binfmt needed). The binary
# links the target's OpenSSL 3: the script installs Debian's multiarch
# libssl3:ARCH (with it the target's multiarch libc), and qemu runs without -L
# so the program loads both from /usr/lib/<triple>. Without a multiarch libc,
# -L /usr/<triple> gives it the cross libc (enough only for a binary built
# with the vendored-ssl feature).
# (-L with the multiarch libc installed mixes two C libraries and hangs.)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=deploy/release-common.sh
. "$root/deploy/release-common.sh"

usage() {
  cat <<EOF
Usage: bash deploy/smoke-qemu.sh [--keep] [ARCHIVE...]

Runs each gator-ota release archive under qemu-user against a local mosquitto
and a local S3-protocol server. Without ARCHIVE, tests
dist/gator-ota-VERSION-TARGET.tar.gz for ${RELEASE_TARGETS[*]}
(build them with: bash deploy/release.sh).

  --keep   keep the work folder (logs, fake roots) instead of deleting it
EOF
}

keep=0
archives=()
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) keep=1; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) archives+=("$1"); shift ;;
  esac
done
version=$(workspace_version "$root")
if [ ${#archives[@]} -eq 0 ]; then
  for t in "${RELEASE_TARGETS[@]}"; do
    archives+=("${GATOR_OTA_DIST:-$root/dist}/gator-ota-$version-$t.tar.gz")
  done
fi
for a in "${archives[@]}"; do
  [ -f "$a" ] || die "archive $a is missing: build it with 'bash deploy/release.sh' (or run 'bash deploy/release.sh --smoke')"
done

# archive_target ARCHIVE: the target triple its name ends with.
archive_target() {
  local base t
  base=$(basename "$1" .tar.gz)
  for t in "${RELEASE_TARGETS[@]}"; do
    case "$base" in *-"$t") echo "$t"; return 0 ;; esac
  done
  die "$1: not a gator-ota release archive (its name ends with none of ${RELEASE_TARGETS[*]})"
}

# --- what the test needs ---------------------------------------------------------
pkgs=(qemu-user mosquitto mosquitto-clients openssl ca-certificates jq file tar gzip coreutils util-linux curl)
for a in "${archives[@]}"; do
  t=$(archive_target "$a")
  target_info "$t"
  pkgs+=("libc6-${deb_arch}-cross" "libgcc-s1-${deb_arch}-cross" "libssl3:${deb_arch}")
done
apt_ensure "${pkgs[@]}"
bash "$root/deploy/install-deps.sh" # cmake, libssl-dev, ... for the host build below

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/cross}"
note "building the host's s3-dev-server (gator-ota-testkit) in $CARGO_TARGET_DIR"
(cd "$root" && cargo build --locked --quiet -p gator-ota-testkit --bin s3-dev-server) ||
  die "cannot build s3-dev-server"
s3_server="$CARGO_TARGET_DIR/debug/s3-dev-server"
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$mosquitto_bin" ] || die "mosquitto is not installed"

# Constants of the testkit's S3 server (tests/testkit/src/s3.rs).
S3_ACCESS_KEY=gator-test-access
S3_SECRET_KEY=gator-test-secret-key-0123456789
BUCKET=firmware
# From the installed deploy/settings.example.toml.
PREFIX_KEY="data-gator"
RECEIVE_TOPIC=scarecro/gateway-17/firmware_image
CONFIRM_TOPIC=scarecro/gateway-17/confirm_receipt

work=$(mktemp -d "${TMPDIR:-/tmp}/gator-ota-smoke.XXXXXX")
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]+"${pids[@]}"}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]+"${pids[@]}"}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$keep" -eq 1 ] || [ "$rc" -ne 0 ]; then
    echo "work folder kept: $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

passed=0
pass() {
  passed=$((passed + 1))
  echo "  ok  $*"
}
# fail MESSAGE [LOG...]: prints the message and the end of each log, exits.
fail() {
  local msg=$1 f
  shift
  echo "  FAIL $msg" >&2
  for f in "$@"; do
    [ -f "$f" ] || continue
    echo "  --- last lines of $f:" >&2
    tail -n 30 "$f" | sed 's/^/  | /' >&2
  done
  echo "smoke-qemu: $passed passed, 1 failed" >&2
  exit 1
}

# wait_for FILE TEXT SECONDS [PID]: until FILE contains TEXT; false on timeout
# or when PID exits first.
wait_for() {
  local file=$1 text=$2 deadline=$((SECONDS + $3)) pid=${4:-}
  while [ $SECONDS -lt $deadline ]; do
    grep -qF -- "$text" "$file" 2>/dev/null && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      grep -qF -- "$text" "$file" 2>/dev/null && return 0
      return 1
    fi
    sleep 0.2
  done
  return 1
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 40000))
    listening "$p" || { echo "$p"; return 0; }
  done
  die "no free loopback port found"
}

# forget PID: a reaped process is no longer ours to kill on exit.
forget() {
  local keep=() p
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}

# stop PID: SIGTERM (SIGKILL after 30 s); its exit status in stop_rc.
stop() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  stop_rc=0
  wait "$pid" 2>/dev/null || stop_rc=$?
  forget "$pid"
}

echo "smoke-testing ${#archives[@]} archive(s) under qemu-user; work folder $work"

# --- TLS material: a private CA and a broker certificate it signed ----------------
tls="$work/tls"
mkdir -p "$tls"
(
  cd "$tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=gator-ota smoke CA" \
    -keyout ca.key -out ca.crt
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
    -extfile server.ext -out server.crt
) >"$work/openssl.log" 2>&1 || fail "cannot make the test certificates" "$work/openssl.log"
ca_hash=$(openssl x509 -hash -noout -in "$tls/ca.crt")
# The system store plus the test CA, as after update-ca-certificates.
[ -d /etc/ssl/certs ] || fail "/etc/ssl/certs is missing (Debian package ca-certificates)"
cp -a /etc/ssl/certs "$tls/certs-with-ca"
cp "$tls/ca.crt" "$tls/certs-with-ca/gator-ota-smoke-ca.pem"
ln -sfn gator-ota-smoke-ca.pem "$tls/certs-with-ca/$ca_hash.0"
# A private mount namespace to show it as /etc/ssl/certs: root, or a user
# namespace where the kernel allows one.
if [ "$(id -u)" -eq 0 ]; then ns=(unshare -m); else ns=(unshare -r -m); fi
if "${ns[@]}" mount --bind "$tls/certs-with-ca" /etc/ssl/certs 2>"$work/unshare.log"; then
  tls_ok=1
else
  tls_ok=0
  note "no private mount namespace here ($(head -n 1 "$work/unshare.log")): the TLS part is skipped"
fi

# --- mosquitto: a plain and a TLS listener -------------------------------------------
broker_pid=""
for _ in 1 2 3; do
  port=$(free_port)
  tls_port=$(free_port)
  [ "$port" != "$tls_port" ] || continue
  user_line=""
  [ "$(id -u)" -ne 0 ] || user_line="user root"
  cat >"$work/mosquitto.conf" <<EOF
$user_line
allow_anonymous true
persistence false
log_dest file $work/mosquitto.log
listener $port 127.0.0.1
listener $tls_port 127.0.0.1
cafile $tls/ca.crt
certfile $tls/server.crt
keyfile $tls/server.key
EOF
  "$mosquitto_bin" -c "$work/mosquitto.conf" >"$work/mosquitto.stderr" 2>&1 &
  broker_pid=$!
  pids+=("$broker_pid")
  for _ in $(seq 100); do
    listening "$port" && listening "$tls_port" && break
    kill -0 "$broker_pid" 2>/dev/null || break
    sleep 0.1
  done
  if listening "$port" && listening "$tls_port"; then break; fi
  stop "$broker_pid"
  broker_pid=""
done
[ -n "$broker_pid" ] || fail "mosquitto did not start" "$work/mosquitto.stderr" "$work/mosquitto.log"

# --- the S3-protocol server -------------------------------------------------------------
"$s3_server" --root "$work/s3" --port 0 --bucket "$BUCKET" >"$work/s3.out" 2>"$work/s3.log" &
s3_pid=$!
pids+=("$s3_pid")
wait_for "$work/s3.out" "listening on " 30 "$s3_pid" || fail "s3-dev-server did not start" "$work/s3.log"
endpoint=$(sed -n 's/^listening on //p' "$work/s3.out" | head -n 1)
echo "mosquitto on 127.0.0.1:$port (TLS :$tls_port), S3 server on $endpoint"
# The firmware server's port (the installed settings say 0.0.0.0:80).
http_port=$(free_port)

# round_trip NAME RUN_LOG: publishes a firmware_image for a fresh random image
# and checks image, pointer and confirm_receipt. Uses $dir, $data, $system_id.
round_trip() {
  local name=$1 log=$2 size=$((3 * 1024 * 1024 + 4099))
  local key="$PREFIX_KEY/$name.bin" sub_out="$dir/sub-$name.out" sub_pid
  mkdir -p "$work/s3/$BUCKET/$PREFIX_KEY"
  head -c "$size" /dev/urandom >"$work/s3/$BUCKET/$key"
  # Line-buffered, so the SUBACK line shows as soon as it is subscribed.
  stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$port" -q 1 -t "$CONFIRM_TOPIC" -C 1 -W 120 -d >"$sub_out" 2>&1 &
  sub_pid=$!
  pids+=("$sub_pid")
  wait_for "$sub_out" "SUBACK" 20 "$sub_pid" || fail "mosquitto_sub did not subscribe" "$sub_out"
  local msg
  msg=$(jq -cn --arg id "smoke-$name" --arg f "$name" --arg k "$key" --arg t "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    '{id: $id, time: $t, file_name: $f, cloud_path: $k, confirm_receipt: true}')
  mosquitto_pub -h 127.0.0.1 -p "$port" -q 1 -t "$RECEIVE_TOPIC" -m "$msg" ||
    fail "mosquitto_pub failed"
  local started=$SECONDS
  local sub_rc=0
  wait "$sub_pid" || sub_rc=$?
  forget "$sub_pid"
  [ "$sub_rc" -eq 0 ] || fail "no confirm_receipt for $name within 120 s" "$sub_out" "$log"
  local confirm
  confirm=$(grep '^{' "$sub_out" | head -n 1)
  echo "$confirm" | jq -e --arg id "$system_id" --arg f "$name" \
    '.id == $id and .file_name == $f and .confirm_receipt == true' >/dev/null ||
    fail "unexpected confirm_receipt: $confirm" "$log"
  pass "confirm_receipt after $((SECONDS - started)) s: $confirm"
  local installed="$data/firmware_images/$name.bin"
  cmp -s "$work/s3/$BUCKET/$key" "$installed" ||
    fail "installed image $installed differs from the object" "$log"
  pass "image $name.bin ($size bytes) identical: sha256 $(sha256sum "$installed" | cut -c1-16)..."
  local pointer
  pointer=$(cat "$data/latest_firmware.json" 2>/dev/null || true)
  [ "$pointer" = "$name" ] || fail "pointer file holds '$pointer', expected '$name'" "$log"
  pass "pointer latest_firmware.json names $name"
  # What a Data Gator does next: the pointer, then the image it names.
  local served="$dir/served-$name" headers="$dir/served-$name.head"
  pointer=$(curl -0 -sS --max-time 30 "http://127.0.0.1:$http_port/current_version.txt") ||
    fail "cannot fetch /current_version.txt from the firmware server" "$log"
  [ "$pointer" = "$name" ] || fail "/current_version.txt is '$pointer', expected '$name'" "$log"
  curl -0 -sS --max-time 60 -A ESP32-http-Update -H "x-ESP32-STA-MAC: 24:6F:28:00:00:01" \
    -D "$headers" -o "$served" "http://127.0.0.1:$http_port/$pointer" ||
    fail "cannot fetch /$pointer from the firmware server" "$log"
  cmp -s "$installed" "$served" || fail "the served image differs from the installed one" "$log"
  grep -qi "^x-md5: $(md5sum "$installed" | cut -d' ' -f1)" "$headers" ||
    fail "the image was served without the right x-MD5" "$headers"
  pass "firmware server: /current_version.txt names $pointer; /$pointer byte-identical, x-MD5 right"
}

# gw_exec ARGS...: replaces the calling (sub)shell with the installed,
# emulated gator-ota, the installed env file loaded the way the unit's
# EnvironmentFile= does, plus the smoke overrides. Replacing (not forking)
# means the PID of `gw_exec ... &` is gator-ota's own, so signals reach it.
# With $certs set, it runs in a private mount namespace where that folder
# is /etc/ssl/certs (unshare and the mount do not fork: same PID).
gw_exec() {
  local pre=()
  if [ -n "${certs:-}" ]; then
    pre=("${ns[@]}" bash -c 'mount --bind "$0" /etc/ssl/certs && exec "$@"' "$certs")
  fi
  exec "${pre[@]}" env -i PATH="$PATH" HOME="$dir" LANG=C.UTF-8 GATOR_OTA_LOG=info "${overrides[@]}" \
    bash -c 'set -a; . "$0"; set +a; exec "$@"' "$envfile" \
    "$qemu" "${qemu_args[@]}" "$bin" "$@"
}
gw() { (gw_exec "$@"); }

# start_gateway LOG: `run` in the background; sets gw_pid.
start_gateway() {
  gw_exec run --settings "$settings" >/dev/null 2>"$1" &
  gw_pid=$!
  pids+=("$gw_pid")
}

total_started=$SECONDS
for archive in "${archives[@]}"; do
  t=$(archive_target "$archive")
  target_info "$t"
  target_started=$SECONDS
  echo
  echo "== $t ($pi_os) under $qemu"
  dir="$work/$t"
  mkdir -p "$dir"
  tar -xzf "$archive" -C "$dir" || fail "cannot unpack $archive"
  pkg="$dir/$(basename "$archive" .tar.gz)"
  [ -d "$pkg" ] || fail "$archive does not hold $(basename "$pkg")/"
  grep -qx "target=$t" "$pkg/BUILD-INFO" || fail "$pkg/BUILD-INFO names another target"
  desc=$(file -b "$pkg/gator-ota")
  case "$desc" in
    *"$elf_desc"*", stripped"*) pass "binary: $(stat -c %s "$pkg/gator-ota") bytes, $desc" ;;
    *) fail "the binary is not a stripped $elf_desc executable: $desc" ;;
  esac

  # install.sh into a fake root, twice.
  fake="$dir/root"
  DESTDIR="$fake" bash "$pkg/install.sh" >"$dir/install-1.log" 2>&1 ||
    fail "install.sh into $fake failed" "$dir/install-1.log"
  bin="$fake/usr/local/bin/gator-ota"
  settings="$fake/etc/gator-ota/settings.toml"
  envfile="$fake/etc/gator-ota/gator-ota.env"
  data="$fake/var/lib/gator-ota"
  for f in "$bin" "$settings" "$envfile" "$fake/etc/systemd/system/gator-ota.service" \
    "$fake/usr/share/doc/gator-ota/settings.default.toml"; do
    [ -f "$f" ] || fail "install.sh did not install $f" "$dir/install-1.log"
  done
  [ "$(stat -c %a "$envfile")" = 600 ] || fail "the env file is not mode 600"
  grep -q "systemctl enable --now gator-ota" "$dir/install-1.log" ||
    fail "install.sh did not print the next step" "$dir/install-1.log"
  # What an operator does next: fill in the secrets (the rest comes from the
  # smoke overrides below), edit the settings.
  cat >"$envfile" <<EOF
# filled in by the smoke test
AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY
AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
AWS_REGION=us-east-1
EOF
  echo "# edited by the operator" >>"$settings"
  cp "$settings" "$dir/settings.before"
  cp "$envfile" "$dir/env.before"
  DESTDIR="$fake" bash "$pkg/install.sh" >"$dir/install-2.log" 2>&1 ||
    fail "install.sh, run again, failed" "$dir/install-2.log"
  cmp -s "$settings" "$dir/settings.before" && cmp -s "$envfile" "$dir/env.before" ||
    fail "install.sh, run again, changed the settings or env file" "$dir/install-2.log"
  cmp -s "$bin" "$pkg/gator-ota" || fail "installed binary differs from the archive's"
  pass "install.sh into a fake root, twice: files in place, settings and env file kept"

  # How qemu finds the target's C library.
  if [ -e "/lib/$gnu/libc.so.6" ] || [ -e "/usr/lib/$gnu/libc.so.6" ]; then
    qemu_args=()
    libc_note="Debian's multiarch libc ($deb_arch), no -L"
  else
    [ -e "/usr/$gnu$loader" ] || fail "no $deb_arch C library: neither multiarch nor /usr/$gnu$loader"
    qemu_args=(-L "/usr/$gnu")
    libc_note="the cross libc: -L /usr/$gnu"
  fi
  certs=""
  command -v "$qemu" >/dev/null 2>&1 || fail "$qemu not found (Debian package qemu-user)"
  version_out=$(gw --version 2>&1) || fail "the emulated binary does not start: $version_out"
  pass "$qemu runs it with $libc_note: $version_out"

  system_id="smoke-$deb_arch"
  overrides=(
    "GATOR_OTA__SYSTEM__ID=$system_id"
    "GATOR_OTA__SYSTEM__DATA_DIR=$data"
    "GATOR_OTA__CARRIERS__MQTT__URL=tcp://127.0.0.1:$port"
    "GATOR_OTA__CARRIERS__MQTT__CLIENT_ID=gator-ota-$system_id"
    "GATOR_OTA__CARRIERS__MQTT__RECONNECT_MIN=200ms"
    "GATOR_OTA__CARRIERS__MQTT__RECONNECT_MAX=2s"
    "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__BUCKET=s3://$BUCKET"
    "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ENDPOINT=$endpoint"
    "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ALLOW_HTTP=true"
    "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__CONNECT_TIMEOUT=5s"
    "GATOR_OTA__HTTP__LISTEN=127.0.0.1:$http_port"
  )

  # 1. check-config
  gw check-config --settings "$settings" >"$dir/check-config.out" 2>&1 ||
    fail "check-config failed" "$dir/check-config.out"
  grep -q 'settings: valid' "$dir/check-config.out" && grep -q "\"$system_id\"" "$dir/check-config.out" ||
    fail "check-config printed something unexpected" "$dir/check-config.out"
  ! grep -qF "$S3_SECRET_KEY" "$dir/check-config.out" || fail "check-config printed the S3 secret"
  pass "check-config: valid, secrets redacted"
  rc=0
  overrides+=("GATOR_OTA__CARRIERS__MQTT__QOS=7")
  gw check-config --settings "$settings" >"$dir/check-config-bad.out" 2>&1 || rc=$?
  unset 'overrides[${#overrides[@]}-1]'
  [ "$rc" -eq 2 ] || fail "check-config with qos = 7 exited $rc, expected 2" "$dir/check-config-bad.out"
  pass "check-config with a bad value exits 2: $(grep -o 'qos.*' "$dir/check-config-bad.out" | head -n 1 | cut -c1-90)"

  # 2. a round trip over plain MQTT
  log="$dir/run-tcp.log"
  start_gateway "$log"
  started=$SECONDS
  wait_for "$log" "subscribed" 90 "$gw_pid" || fail "gator-ota run did not subscribe" "$log"
  pass "run: connected and subscribed after $((SECONDS - started)) s"
  round_trip "gator-fw-$deb_arch-1" "$log"
  stop "$gw_pid"
  [ "$stop_rc" -eq 0 ] && grep -q "stopped" "$log" || fail "run did not stop cleanly on SIGTERM (exit $stop_rc)" "$log"
  pass "SIGTERM: clean exit"

  # 3. TLS: refused without the CA in /etc/ssl/certs, round trip with it.
  if [ "$tls_ok" -eq 0 ]; then
    echo "  skip TLS: needs a private mount namespace (run as root)"
    echo "== $t passed in $((SECONDS - target_started)) s"
    continue
  fi
  overrides+=("GATOR_OTA__CARRIERS__MQTT__URL=ssl://127.0.0.1:$tls_port")
  certs="" # this machine's own store, without the test CA
  rejections=$(grep -c "alert unknown ca" "$work/mosquitto.log" || true)
  log="$dir/run-tls-untrusted.log"
  start_gateway "$log"
  wait_for "$log" "cannot reach the broker" 90 "$gw_pid" ||
    fail "with an untrusted broker certificate, no connection failure was logged" "$log"
  ! grep -q "subscribed" "$log" || fail "connected to a broker whose CA is not trusted" "$log"
  stop "$gw_pid"
  # The broker's side says why: the client rejected its certificate.
  for _ in $(seq 50); do
    [ "$(grep -c "alert unknown ca" "$work/mosquitto.log" || true)" -gt "$rejections" ] && break
    sleep 0.2
  done
  [ "$(grep -c "alert unknown ca" "$work/mosquitto.log" || true)" -gt "$rejections" ] ||
    fail "the broker did not see the client reject its certificate" "$work/mosquitto.log" "$log"
  pass "TLS: the broker's certificate is refused (\"unknown ca\") while its CA is not in /etc/ssl/certs"
  certs="$tls/certs-with-ca"
  log="$dir/run-tls.log"
  start_gateway "$log"
  started=$SECONDS
  wait_for "$log" "subscribed" 90 "$gw_pid" || fail "gator-ota run did not subscribe over TLS" "$log"
  pass "TLS: verified the broker through /etc/ssl/certs/$ca_hash.0, subscribed after $((SECONDS - started)) s"
  round_trip "gator-fw-$deb_arch-2" "$log"
  stop "$gw_pid"
  [ "$stop_rc" -eq 0 ] && grep -q "stopped" "$log" || fail "run over TLS did not stop cleanly (exit $stop_rc)" "$log"
  pass "SIGTERM: clean exit"
  unset 'overrides[${#overrides[@]}-1]'
  certs=""
  echo "== $t passed in $((SECONDS - target_started)) s"
done

echo
echo "all ${#archives[@]} archive(s) passed in $((SECONDS - total_started)) s"
echo "smoke-qemu: $passed passed, 0 failed"
