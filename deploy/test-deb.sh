#!/usr/bin/env bash
# shellcheck disable=SC2015,SC2016  # `A && B || fail`: fail unless both hold; dpkg's ${Field}s
# Tests a Debian package for real, in a throwaway Debian root (never on this
# machine itself):
#
#   sudo bash deploy/test-deb.sh               # amd64: builds the packages, then tests
#   sudo bash deploy/test-deb.sh --arch arm64  # arm64 (or armhf) under qemu-user
#   sudo bash deploy/test-deb.sh --keep        # ... and leaves the root for a look
#
# It makes two packages of the current build (revisions 1 and 2, with
# deploy/package-deb.sh; for arm64 and armhf, of the binary deploy/release.sh
# built), a minimal Debian root of that architecture with mmdebstrap from this
# machine's apt sources, and in it, through chroot and with apt-get as an
# operator would:
#   1. installs revision 1: the gator-ota user and /var/lib/gator-ota exist,
#      the unit is enabled but not started (the postinst says so), the
#      conffiles are registered, `check-config` passes on the shipped settings;
#   2. edits /etc/gator-ota/settings.toml and upgrades to revision 2: the edit
#      is kept, nothing is left beside it (.dpkg-new, .dpkg-dist);
#   3. removes it: the binary is gone, the unit masked, the conffiles, the
#      state folder and the user stay;
#   4. purges it: the conffiles, the state folder, the user, its group and
#      the unit's links are gone;
#   5. installs over the files the release archive's install.sh leaves: its
#      settings are kept and its unit, which would override the package's,
#      is named.
# No systemd runs in a chroot: the maintainer scripts must get by without it.
# An arm64 or armhf root runs its programs (dpkg, the maintainer scripts,
# gator-ota itself) through qemu-user-static's binfmt_misc entries, whose F
# flag lets the kernel find qemu from inside the chroot; the script installs
# qemu-user-static and, where no systemd-binfmt registered its entries (a
# container), mounts binfmt_misc and registers the one it needs.
# Takes a few minutes (mostly mmdebstrap); not part of tests/run.sh.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=deploy/release-common.sh
. "$root/deploy/release-common.sh"

keep=0
host_arch=$(dpkg --print-architecture)
arch=$host_arch
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) keep=1; shift ;;
    --arch) [ $# -ge 2 ] || die "--arch needs a value (arm64, armhf)"; arch=$2; shift 2 ;;
    --arch=*) arch=${1#*=}; shift ;;
    -h | --help) sed -n '3,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap and chroot need it): sudo bash $0"

# The release target of a foreign architecture, and what runs its programs.
target=""
if [ "$arch" != "$host_arch" ]; then
  for t in "${RELEASE_TARGETS[@]}"; do
    target_info "$t"
    if [ "$deb_arch" = "$arch" ]; then target=$t; break; fi
  done
  [ -n "$target" ] || die "--arch $arch: not $host_arch and no release target builds it"
  cpu=${qemu#qemu-}
  apt_ensure qemu-user-static arch-test # mmdebstrap checks a foreign root with arch-test
  binfmt=/proc/sys/fs/binfmt_misc
  if [ ! -e "$binfmt/register" ]; then
    note "mounting binfmt_misc on $binfmt (nothing has)"
    mount -t binfmt_misc binfmt_misc "$binfmt" || die "cannot mount binfmt_misc on $binfmt"
  fi
  if [ ! -e "$binfmt/qemu-$cpu" ]; then
    note "registering qemu-$cpu with binfmt_misc (/usr/lib/binfmt.d/qemu-$cpu.conf)"
    cat "/usr/lib/binfmt.d/qemu-$cpu.conf" >"$binfmt/register" ||
      die "cannot register /usr/lib/binfmt.d/qemu-$cpu.conf"
  fi
  grep -qx enabled "$binfmt/qemu-$cpu" && grep -q '^flags: [A-Z]*F' "$binfmt/qemu-$cpu" ||
    die "$binfmt/qemu-$cpu is not enabled with the F flag (qemu-user-binfmt's entry?); a chroot needs qemu-user-static's"
  # The binary release.sh built, in its target folder.
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/cross}"
fi

work=$(mktemp -d /tmp/gator-ota-test-deb.XXXXXX)
chroot_dir="$work/root"
cleanup() {
  if [ "$keep" -eq 1 ]; then
    note "kept the Debian root: $chroot_dir"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

step() { echo "--- $*"; }
fail() { die "FAILED: $*"; }
in_root() { chroot "$chroot_dir" "$@"; }
# As an operator types it; every dependency is in the root already, so apt
# has nothing to download. (Its --no-download refuses local packages.)
apt_in_root() {
  DEBIAN_FRONTEND=noninteractive chroot "$chroot_dir" apt-get -y -o Dpkg::Use-Pty=0 "$@"
}

step "packages: revisions 1 and 2 of the current build ($arch)"
if [ -n "$target" ]; then
  bash "$root/deploy/package-deb.sh" --target "$target" --profile pi --no-build --revision 1 --out "$work/r1" >/dev/null
  bash "$root/deploy/package-deb.sh" --target "$target" --profile pi --no-build --revision 2 --out "$work/r2" >/dev/null
else
  bash "$root/deploy/package-deb.sh" --revision 1 --out "$work/r1" >/dev/null
  bash "$root/deploy/package-deb.sh" --no-build --revision 2 --out "$work/r2" >/dev/null
fi
deb1=$(echo "$work"/r1/gator-ota_*-1_"$arch".deb)
deb2=$(echo "$work"/r2/gator-ota_*-2_"$arch".deb)
[ -f "$deb1" ] && [ -f "$deb2" ] || die "package-deb.sh made no packages in $work"
echo "$deb1"
echo "$deb2"

# The package's own dependencies go into the root when it is made, so
# installing needs no network inside the chroot.
deps=$(dpkg-deb -f "$deb1" Depends | sed 's/([^)]*)//g; s/|[^,]*//g; s/ //g')
sources=""
for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; do
  if [ -s "$f" ]; then sources=$f; break; fi
done
[ -n "$sources" ] || die "no apt sources in /etc/apt to make the Debian root from"
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:?}")
step "Debian root: mmdebstrap $suite $arch (apt variant, with $deps) from $sources"
mmdebstrap --quiet --mode=root --variant=apt --arch="$arch" --include="$deps" \
  "$suite" "$chroot_dir" "$sources" || die "mmdebstrap failed"
cp "$deb1" "$deb2" "$chroot_dir/tmp/"
[ ! -e "$chroot_dir/run/systemd/system" ] || fail "the root claims a running systemd"

step "1. install revision 1"
log=$(apt_in_root install "/tmp/${deb1##*/}" 2>&1) || { echo "$log"; fail "apt install revision 1"; }
echo "$log"
grep -q "enabled, but not started" <<<"$log" || fail "the postinst did not say the service is not started"
pw=$(in_root getent passwd gator-ota) || fail "no gator-ota user"
IFS=: read -r _ _ uid gid _ home shell <<<"$pw"
[ "$uid" -lt 1000 ] || fail "gator-ota is not a system user (uid $uid)"
[ "$home" = /var/lib/gator-ota ] || fail "gator-ota's home is $home"
case "$shell" in */nologin | */false) ;; *) fail "gator-ota has a login shell: $shell" ;; esac
[ "$(in_root getent group gator-ota | cut -d: -f3)" = "$gid" ] || fail "no gator-ota group"
# Numeric: this machine's user names are not the root's.
[ "$(stat -c '%u:%g %a' "$chroot_dir/var/lib/gator-ota")" = "$uid:$gid 750" ] ||
  fail "/var/lib/gator-ota is $(stat -c '%u:%g %a' "$chroot_dir/var/lib/gator-ota"), not $uid:$gid 750"
[ "$(stat -c '%u %a' "$chroot_dir/etc/gator-ota/gator-ota.env")" = "0 600" ] ||
  fail "the env file is not root's alone"
conffiles=$(in_root dpkg-query -W -f='${Conffiles}\n' gator-ota)
for f in /etc/gator-ota/settings.toml /etc/gator-ota/gator-ota.env; do
  grep -q " $f " <<<"$conffiles" || fail "$f is not a conffile: $conffiles"
done
unit=""
for u in "$chroot_dir"/{usr/,}lib/systemd/system/gator-ota.service; do
  if [ -f "$u" ]; then unit=$u; break; fi
done
[ -n "$unit" ] || fail "no unit installed"
grep -q '^ExecStart=/usr/bin/gator-ota run' "$unit" || fail "the unit does not run /usr/bin/gator-ota"
[ -L "$chroot_dir/etc/systemd/system/multi-user.target.wants/gator-ota.service" ] ||
  fail "the unit is not enabled"
for f in usr/share/man/man1/gator-ota.1.gz usr/share/man/man1/gator-ota-run.1.gz \
  usr/share/bash-completion/completions/gator-ota usr/share/zsh/vendor-completions/_gator-ota \
  usr/share/fish/vendor_completions.d/gator-ota.fish usr/share/doc/gator-ota/README.md \
  usr/share/doc/gator-ota/copyright; do
  [ -f "$chroot_dir/$f" ] || fail "/$f is missing"
done
[ "$(in_root dpkg --print-architecture)" = "$arch" ] || fail "the root is not $arch"
if [ -n "$target" ]; then
  file -b "$chroot_dir/usr/bin/gator-ota" | grep -qF "$elf_desc" || fail "/usr/bin/gator-ota is not an $elf_desc binary"
fi
in_root gator-ota check-config --settings /etc/gator-ota/settings.toml >/dev/null ||
  fail "check-config refuses the shipped settings"
in_root runuser -u gator-ota -- touch /var/lib/gator-ota/state-probe ||
  fail "gator-ota cannot write its state folder"
echo "ok: user $uid:$gid, state folder, conffiles, unit enabled, man pages, completions, check-config"

step "2. edit the settings, upgrade to revision 2"
sed -i 's/^id = "gateway-17"$/id = "edited-gateway"/' "$chroot_dir/etc/gator-ota/settings.toml"
grep -q '^id = "edited-gateway"$' "$chroot_dir/etc/gator-ota/settings.toml" || fail "the edit did not take"
log=$(apt_in_root install "/tmp/${deb2##*/}" 2>&1) || { echo "$log"; fail "apt install revision 2"; }
echo "$log"
[ "$(in_root dpkg-query -W -f='${Version}' gator-ota)" = "$(dpkg-deb -f "$deb2" Version)" ] ||
  fail "revision 2 is not installed"
grep -q '^id = "edited-gateway"$' "$chroot_dir/etc/gator-ota/settings.toml" ||
  fail "the upgrade overwrote the edited settings"
leftovers=$(find "$chroot_dir/etc/gator-ota" -name '*.dpkg-*')
[ -z "$leftovers" ] || fail "the upgrade left $leftovers"
grep -q "not started" <<<"$log" && fail "the upgrade repeated the first-install message"
[ -f "$chroot_dir/var/lib/gator-ota/state-probe" ] || fail "the upgrade lost the state folder's content"
[ -L "$chroot_dir/etc/systemd/system/multi-user.target.wants/gator-ota.service" ] ||
  fail "the upgrade disabled the unit"
echo "ok: $(in_root dpkg-query -W -f='${Version}' gator-ota) installed, edited settings kept, state kept"

step "3. remove"
apt_in_root remove gator-ota || fail "apt remove"
[ ! -e "$chroot_dir/usr/bin/gator-ota" ] || fail "the binary is still there"
[ -f "$chroot_dir/etc/gator-ota/settings.toml" ] || fail "remove deleted the settings (only purge may)"
in_root getent passwd gator-ota >/dev/null || fail "remove deleted the user (only purge may)"
[ -d "$chroot_dir/var/lib/gator-ota" ] || fail "remove deleted the state folder (only purge may)"
# The enable links outlive the unit file until purge; the mask keeps them inert.
[ "$(readlink "$chroot_dir/etc/systemd/system/gator-ota.service")" = /dev/null ] ||
  fail "the removed unit is not masked"
echo "ok: binary gone, unit masked; settings, state and user kept"

step "4. purge"
apt_in_root purge gator-ota || fail "apt purge"
[ ! -e "$chroot_dir/etc/gator-ota" ] || fail "/etc/gator-ota is still there: $(ls -A "$chroot_dir/etc/gator-ota")"
[ ! -e "$chroot_dir/var/lib/gator-ota" ] || fail "/var/lib/gator-ota is still there"
! in_root getent passwd gator-ota >/dev/null || fail "the user gator-ota is still there"
! in_root getent group gator-ota >/dev/null || fail "the group gator-ota is still there"
links=$(find "$chroot_dir/etc/systemd" -name 'gator-ota*' 2>/dev/null)
[ -z "$links" ] || fail "unit links left: $links"
echo "ok: settings, state folder, user, group and unit links gone"

step "5. install over what the release archive's install.sh left"
mkdir -p "$chroot_dir/etc/gator-ota"
printf '[system]\nid = "from-the-archive"\n' >"$chroot_dir/etc/gator-ota/settings.toml"
# install.sh's unit with its default PREFIX is the source as it is.
cp "$root/deploy/gator-ota.service" "$chroot_dir/etc/systemd/system/gator-ota.service"
# dpkg asks whether to keep the file it did not install; an operator keeps it.
log=$(apt_in_root -o Dpkg::Options::=--force-confold install "/tmp/${deb2##*/}" 2>&1) ||
  { echo "$log"; fail "apt install over the archive's files"; }
grep -q "overrides the" <<<"$log" || { echo "$log"; fail "no warning about the archive's unit"; }
grep -q '^id = "from-the-archive"$' "$chroot_dir/etc/gator-ota/settings.toml" ||
  fail "the archive's settings were replaced"
echo "ok: the archive's settings kept, its unit named"
echo
echo "test-deb.sh: all steps passed ($(dpkg-deb -f "$deb1" Package) $(dpkg-deb -f "$deb1" Version) -> $(dpkg-deb -f "$deb2" Version), Debian $suite $arch root)"
