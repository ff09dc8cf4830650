#!/usr/bin/env bash
# shellcheck disable=SC2015  # `A && B || fail`: fail unless both hold
# Tests deploy/install.sh without a cross build: it packs the release files
# around a stand-in binary and installs them
#   - under a fake root (DESTDIR), twice, with and without PREFIX;
#   - as on a gateway (real-root mode: user, ownership, refusal of a non-root
#     caller and of a wrong-architecture archive), inside a private mount
#     namespace whose /etc, /usr and /var are throwaway overlays, so this
#     machine is left untouched. Skipped when not root or without unshare.
# Run by tests/run.sh; `bash deploy/smoke-qemu.sh` also runs install.sh from
# the real archives.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)

passed=0
pass() {
  passed=$((passed + 1))
  echo "  ok  $*"
}
fail() {
  echo "  FAIL $*" >&2
  [ -z "${2:-}" ] || [ ! -f "$2" ] || sed 's/^/  | /' "$2" >&2
  echo "test-install: $passed passed, 1 failed" >&2
  exit 1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/gator-ota-test-install.XXXXXX")
trap 'rm -rf "$work"' EXIT

arch=$(dpkg --print-architecture 2>/dev/null || echo unknown)
# pack DIR ARCH VERSION_TEXT: an unpacked "archive" as release.sh lays it out.
pack() {
  local d=$1
  mkdir -p "$d"
  printf '#!/bin/sh\necho "gator-ota %s"\n' "$3" >"$d/gator-ota"
  chmod 0755 "$d/gator-ota"
  cp "$root/deploy/gator-ota.service" "$d/gator-ota.service"
  cp "$root/settings/default.toml" "$d/settings.default.toml"
  cp "$root/deploy/settings.example.toml" "$d/settings.example.toml"
  cp "$root/deploy/gator-ota.env.example" "$d/gator-ota.env.example"
  cp "$root/deploy/install.sh" "$d/install.sh"
  cp "$root/README.md" "$root/deploy/INSTALL.md" "$d/"
  printf 'name=gator-ota\nversion=0.0.0-test\ntarget=test-target\ndebian_arch=%s\n' "$2" >"$d/BUILD-INFO"
}
pack "$work/pkg" "$arch" "v1"
chmod -R a+rX "$work"

echo "install.sh under a fake root (DESTDIR)"
fake="$work/fake"
DESTDIR="$fake" bash "$work/pkg/install.sh" >"$work/1.log" 2>&1 || fail "install.sh failed" "$work/1.log"
for f in usr/local/bin/gator-ota etc/gator-ota/settings.toml etc/gator-ota/gator-ota.env \
  etc/systemd/system/gator-ota.service usr/share/doc/gator-ota/README.md \
  usr/share/doc/gator-ota/settings.default.toml usr/share/doc/gator-ota/gator-ota.env.example; do
  [ -f "$fake/$f" ] || fail "/$f not installed" "$work/1.log"
done
[ -d "$fake/var/lib/gator-ota" ] || fail "/var/lib/gator-ota not created"
[ "$(stat -c %a "$fake/etc/gator-ota/gator-ota.env")" = 600 ] || fail "env file not mode 600"
[ "$(stat -c %a "$fake/usr/local/bin/gator-ota")" = 755 ] || fail "binary not mode 755"
[ "$(stat -c %a "$fake/var/lib/gator-ota")" = 750 ] || fail "state folder not mode 750"
cmp -s "$fake/etc/gator-ota/settings.toml" "$root/deploy/settings.example.toml" || fail "settings are not the example"
cmp -s "$fake/etc/systemd/system/gator-ota.service" "$root/deploy/gator-ota.service" || fail "unit differs"
grep -q 'systemctl enable --now gator-ota' "$work/1.log" || fail "next step not printed" "$work/1.log"
grep -q 'not created (DESTDIR install)' "$work/1.log" || fail "DESTDIR mode touched users" "$work/1.log"
pass "first install: files, modes, next step"

echo "# operator's edit" >>"$fake/etc/gator-ota/settings.toml"
echo "AWS_SECRET_ACCESS_KEY=operator-secret" >"$fake/etc/gator-ota/gator-ota.env"
cp "$fake/etc/gator-ota/settings.toml" "$work/settings.before"
pack "$work/pkg2" "$arch" "v2"
DESTDIR="$fake" bash "$work/pkg2/install.sh" >"$work/2.log" 2>&1 || fail "second install.sh failed" "$work/2.log"
cmp -s "$fake/etc/gator-ota/settings.toml" "$work/settings.before" || fail "settings overwritten"
[ "$(cat "$fake/etc/gator-ota/gator-ota.env")" = "AWS_SECRET_ACCESS_KEY=operator-secret" ] || fail "env file overwritten"
grep -q v2 "$fake/usr/local/bin/gator-ota" || fail "binary not upgraded"
grep -q 'settings.toml (kept as it is)' "$work/2.log" && grep -q 'gator-ota.env (kept as it is)' "$work/2.log" &&
  grep -q 'gator-ota.service (unchanged)' "$work/2.log" || fail "second run did not report kept files" "$work/2.log"
[ -z "$(find "$fake" -name '*.new')" ] || fail "a temporary file was left behind"
pass "second install: binary upgraded, settings and env file kept, unit unchanged"

DESTDIR="$work/fake-opt" PREFIX=/opt/gator-ota bash "$work/pkg/install.sh" >"$work/3.log" 2>&1 ||
  fail "install.sh with PREFIX failed" "$work/3.log"
[ -x "$work/fake-opt/opt/gator-ota/bin/gator-ota" ] || fail "PREFIX ignored for the binary"
unit="$work/fake-opt/etc/systemd/system/gator-ota.service"
grep -q '^ExecStart=/opt/gator-ota/bin/gator-ota run' "$unit" && ! grep -q /usr/local/bin "$unit" ||
  fail "the unit does not run \$PREFIX/bin/gator-ota" "$unit"
pass "PREFIX=/opt/gator-ota: binary and unit paths follow"

rc=0
DESTDIR="$work/bad" bash "$work/pkg/install.sh" --frobnicate >"$work/4.log" 2>&1 || rc=$?
[ "$rc" -ne 0 ] && grep -q "unknown argument" "$work/4.log" || fail "unknown argument accepted" "$work/4.log"
rm "$work/pkg2/settings.example.toml"
rc=0
DESTDIR="$work/bad" bash "$work/pkg2/install.sh" >"$work/5.log" 2>&1 || rc=$?
[ "$rc" -ne 0 ] && grep -q "settings.example.toml is missing" "$work/5.log" || fail "incomplete archive accepted" "$work/5.log"
pass "clear errors: unknown argument, incomplete archive"

if [ "$(id -u)" -ne 0 ] || ! command -v unshare >/dev/null 2>&1 ||
  ! unshare -m true 2>/dev/null; then
  echo "  skip real-root mode: needs root and mount namespaces (unshare)"
  echo "test-install: $passed passed, 0 failed"
  exit 0
fi

echo "install.sh as root on a gateway (private mount namespace, overlays over /etc /usr /var)"
# Runs inside the namespace. Everything it writes lands in tmpfs overlays.
cat >"$work/inside.sh" <<'EOF'
set -euo pipefail
work=$1
mount --make-rprivate /
mount -t tmpfs tmpfs "$work/ov"
for d in etc usr var; do
  mkdir -p "$work/ov/$d-up" "$work/ov/$d-work"
  if ! mount -t overlay overlay -o "lowerdir=/$d,upperdir=$work/ov/$d-up,workdir=$work/ov/$d-work" "/$d"; then
    echo "overlay-unavailable"
    exit 0
  fi
done
# Without a running systemd (no /run/systemd/system) install.sh leaves systemctl alone.
if [ -d /run/systemd/system ]; then mount -t tmpfs tmpfs /run/systemd; fi
! getent passwd gator-ota >/dev/null || { echo "user gator-ota already exists on this machine"; exit 3; }

bash "$work/pkg/install.sh" >"$work/r1.log" 2>&1 || { echo "real install failed"; cat "$work/r1.log"; exit 1; }
getent passwd gator-ota | grep -q ':/var/lib/gator-ota:' || { echo "user not created"; exit 1; }
[ "$(stat -c %U:%G /var/lib/gator-ota)" = gator-ota:gator-ota ] || { echo "state folder not owned by gator-ota"; exit 1; }
[ "$(stat -c %U:%a /etc/gator-ota/gator-ota.env)" = root:600 ] || { echo "env file not root:600"; exit 1; }
[ -x /usr/local/bin/gator-ota ] && [ -f /etc/systemd/system/gator-ota.service ] || { echo "files missing"; exit 1; }
grep -q 'user gator-ota: created' "$work/r1.log" || { echo "no user line"; cat "$work/r1.log"; exit 1; }
echo "# edited" >>/etc/gator-ota/settings.toml
cp /etc/gator-ota/settings.toml "$work/r-settings.before"
bash "$work/pkg/install.sh" >"$work/r2.log" 2>&1 || { echo "second real install failed"; cat "$work/r2.log"; exit 1; }
grep -q 'user gator-ota: exists' "$work/r2.log" || { echo "second run did not reuse the user"; cat "$work/r2.log"; exit 1; }
cmp -s /etc/gator-ota/settings.toml "$work/r-settings.before" || { echo "settings overwritten"; exit 1; }
[ "$(getent passwd | grep -c '^gator-ota:')" = 1 ] || { echo "user duplicated"; exit 1; }

# A non-root caller is refused before anything happens.
rc=0
setpriv --reuid=65534 --regid=65534 --clear-groups bash "$work/pkg/install.sh" >"$work/r3.log" 2>&1 || rc=$?
[ "$rc" -ne 0 ] && grep -q 'run as root' "$work/r3.log" || { echo "non-root caller not refused"; cat "$work/r3.log"; exit 1; }

# An archive for another architecture is refused, naming the right one.
rc=0
bash "$work/pkg-other/install.sh" >"$work/r4.log" 2>&1 || rc=$?
[ "$rc" -ne 0 ] && grep -q 'this archive is for' "$work/r4.log" || { echo "wrong architecture not refused"; cat "$work/r4.log"; exit 1; }
echo inside-ok
EOF
other=arm64
[ "$arch" != arm64 ] || other=armhf
pack "$work/pkg-other" "$other" "other"
mkdir -p "$work/ov"
chmod -R a+rX "$work"
unshare -m bash "$work/inside.sh" "$work" >"$work/inside.log" 2>&1 || fail "real-root mode" "$work/inside.log"
if grep -q overlay-unavailable "$work/inside.log"; then
  echo "  skip real-root mode: no overlay mounts here"
  echo "test-install: $passed passed, 0 failed"
  exit 0
fi
grep -q inside-ok "$work/inside.log" || fail "real-root mode did not finish" "$work/inside.log"
getent passwd gator-ota >/dev/null && ! grep -q 'already exists' "$work/inside.log" &&
  fail "the namespace leaked: user gator-ota now exists on this machine"
pass "real-root mode: user and group created once, ownership and modes, settings kept on rerun"
pass "real-root mode: refuses a non-root caller and an archive for $other"
echo "test-install: $passed passed, 0 failed"
