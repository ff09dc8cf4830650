#!/usr/bin/env bash
# Installs gator-ota from an unpacked release archive (deploy/release.sh).
#
#   sudo ./install.sh                       # on the gateway
#   DESTDIR=/tmp/root ./install.sh          # into a folder: no user, no systemctl
#
# On the gateway it creates the `gator-ota` system user and its folders,
# installs the binary as $PREFIX/bin/gator-ota and the systemd unit, puts the
# example settings and env file in /etc/gator-ota only where none exist yet
# (an existing settings.toml or gator-ota.env is never touched), and prints the
# next step. Running it again (for example to upgrade) is safe; a running
# service is restarted on the new binary.
#
# Variables: DESTDIR (stage under this folder instead of /), PREFIX (default
# /usr/local), UNIT_DIR (default /etc/systemd/system).

# Started with sh: run again with bash (needs arrays and pipefail).
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail

die() {
  echo "install.sh: error: $*" >&2
  exit 1
}

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) die "unknown argument '$1' (see --help)" ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
DESTDIR="${DESTDIR:-}"
DESTDIR="${DESTDIR%/}"
PREFIX="${PREFIX:-/usr/local}"
PREFIX="${PREFIX%/}"
UNIT_DIR="${UNIT_DIR:-/etc/systemd/system}"
USER_NAME=gator-ota
CONF_DIR=/etc/gator-ota
STATE_DIR=/var/lib/gator-ota
DOC_DIR=/usr/share/doc/gator-ota
BIN="$PREFIX/bin/gator-ota"

case "$PREFIX" in /*) ;; *) die "PREFIX must be an absolute path, not '$PREFIX'" ;; esac
case "$UNIT_DIR" in /*) ;; *) die "UNIT_DIR must be an absolute path, not '$UNIT_DIR'" ;; esac
if [ -n "$DESTDIR" ]; then
  mkdir -p "$DESTDIR" || die "cannot create DESTDIR $DESTDIR"
  DESTDIR=$(cd "$DESTDIR" && pwd)
  [ "$DESTDIR" != / ] || DESTDIR=""
fi

for f in gator-ota gator-ota.service settings.example.toml settings.default.toml \
  gator-ota.env.example README.md INSTALL.md BUILD-INFO; do
  [ -f "$here/$f" ] || die "$here/$f is missing: run install.sh from an unpacked gator-ota release archive"
done
info() { sed -n "s/^$1=//p" "$here/BUILD-INFO" | head -n 1; }
version=$(info version)
target=$(info target)
want_arch=$(info debian_arch)

staged=0
[ -z "$DESTDIR" ] || staged=1

if [ "$staged" -eq 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "run as root: sudo $0 (or set DESTDIR=folder to stage the files somewhere else)"
  if command -v dpkg >/dev/null 2>&1 && [ -n "$want_arch" ]; then
    have_arch=$(dpkg --print-architecture)
    if [ "$have_arch" != "$want_arch" ]; then
      other="the other archive"
      case "$have_arch" in
        arm64) other="gator-ota-$version-aarch64-unknown-linux-gnu.tar.gz" ;;
        armhf) other="gator-ota-$version-armv7-unknown-linux-gnueabihf.tar.gz" ;;
      esac
      die "this archive is for $want_arch ($target) but this system's packages are $have_arch: use $other"
    fi
  fi
  # The binary links the system's OpenSSL 3 (libssl.so.3, libcrypto.so.3).
  if command -v ldconfig >/dev/null 2>&1; then
    for lib in $(info needs); do
      case "$lib" in
        libssl.so.* | libcrypto.so.*)
          ldconfig -p 2>/dev/null | grep -q "^[[:space:]]*$lib " ||
            die "gator-ota needs OpenSSL 3 ($lib), which is not installed: sudo apt install libssl3 (Debian 13 and newer: libssl3t64)"
          ;;
      esac
    done
  fi
  "$here/gator-ota" --version >/dev/null 2>&1 ||
    die "$here/gator-ota does not run on this machine ($(uname -m)); is this the right archive for it, is the system Debian 12 (Raspberry Pi OS Bookworm, glibc 2.36) or newer, and is OpenSSL 3 (libssl3) installed?"
fi

say() { echo "  $*"; }
echo "Installing gator-ota $version ($target)${DESTDIR:+ under $DESTDIR}"

# --- user -----------------------------------------------------------------------
if [ "$staged" -eq 1 ]; then
  say "user $USER_NAME: not created (DESTDIR install)"
elif getent passwd "$USER_NAME" >/dev/null; then
  say "user $USER_NAME: exists"
else
  nologin=/usr/sbin/nologin
  [ -x "$nologin" ] || nologin=/sbin/nologin
  [ -x "$nologin" ] || nologin=/bin/false
  if getent group "$USER_NAME" >/dev/null; then
    group_opt=(--gid "$USER_NAME")
  else
    group_opt=(--user-group)
  fi
  useradd --system "${group_opt[@]}" --home-dir "$STATE_DIR" --no-create-home \
    --shell "$nologin" --comment "gator-ota firmware delivery" "$USER_NAME" ||
    die "cannot create the system user $USER_NAME"
  say "user $USER_NAME: created"
fi

# --- folders ----------------------------------------------------------------------
install -d -m 0755 "$DESTDIR$PREFIX/bin" "$DESTDIR$CONF_DIR" "$DESTDIR$DOC_DIR" "$DESTDIR$UNIT_DIR"
install -d -m 0750 "$DESTDIR$STATE_DIR"
if [ "$staged" -eq 0 ]; then
  chown "$USER_NAME:$USER_NAME" "$STATE_DIR"
fi

# --- binary: replaced by a rename, so a running service keeps its old file ---------
install -m 0755 "$here/gator-ota" "$DESTDIR$BIN.new"
mv -f "$DESTDIR$BIN.new" "$DESTDIR$BIN"
say "binary: $BIN"

# --- systemd unit (ours: replaced on every install; customise with drop-ins) --------
unit_tmp=$(mktemp)
trap 'rm -f "$unit_tmp"' EXIT
sed "s#/usr/local/bin/gator-ota#$BIN#g" "$here/gator-ota.service" >"$unit_tmp"
unit="$DESTDIR$UNIT_DIR/gator-ota.service"
unit_changed=1
if [ -f "$unit" ] && cmp -s "$unit_tmp" "$unit"; then
  unit_changed=0
  say "unit: $UNIT_DIR/gator-ota.service (unchanged)"
else
  install -m 0644 "$unit_tmp" "$unit"
  say "unit: $UNIT_DIR/gator-ota.service"
fi

# --- reference copies (always refreshed) -------------------------------------------
for f in README.md INSTALL.md BUILD-INFO settings.default.toml settings.example.toml gator-ota.env.example; do
  install -m 0644 "$here/$f" "$DESTDIR$DOC_DIR/$f"
done
say "docs and examples: $DOC_DIR/"

# --- settings and secrets: never overwritten ---------------------------------------
settings="$CONF_DIR/settings.toml"
if [ -e "$DESTDIR$settings" ]; then
  say "settings: $settings (kept as it is)"
else
  install -m 0644 "$here/settings.example.toml" "$DESTDIR$settings"
  say "settings: $settings (new, from settings.example.toml: edit it)"
fi
envfile="$CONF_DIR/gator-ota.env"
if [ -e "$DESTDIR$envfile" ]; then
  say "secrets: $envfile (kept as it is)"
else
  # Readable by root only: systemd reads it before dropping to the service user.
  install -m 0600 "$here/gator-ota.env.example" "$DESTDIR$envfile"
  say "secrets: $envfile (new, from gator-ota.env.example: fill it in)"
fi

# --- systemd --------------------------------------------------------------------------
running=0
if [ "$staged" -eq 1 ]; then
  say "systemd: not touched (DESTDIR install)"
elif [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  if [ "$unit_changed" -eq 1 ]; then
    systemctl daemon-reload
  fi
  if systemctl is-active --quiet gator-ota; then
    systemctl restart gator-ota
    running=1
    say "systemd: gator-ota was running and has been restarted on the new binary"
  fi
else
  say "systemd: not running here; the unit is installed for the next boot"
fi

echo
if [ "$running" -eq 1 ]; then
  echo "Done. Follow the log with: journalctl -u gator-ota -f"
  exit 0
fi
cat <<EOF
Next:
  1. Put the gateway's values in $settings (system id, broker URL, bucket,
     topics; every key: $DOC_DIR/settings.default.toml) and its secrets
     (MQTT password, S3 keys) in $envfile.
  2. Check them:
       sudo sh -c 'set -a; . $envfile; exec $BIN check-config --settings $settings'
  3. Start the service, now and at every boot:
       sudo systemctl enable --now gator-ota
       journalctl -u gator-ota -f
EOF
