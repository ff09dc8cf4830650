#!/usr/bin/env bash
# Builds gator-ota for Raspberry Pi gateways and packs, per target, an archive
# and a Debian package:
#
#   bash deploy/release.sh            # both targets -> dist/
#   bash deploy/release.sh --smoke    # ... then run each under qemu (deploy/smoke-qemu.sh)
#   bash deploy/release.sh --no-deb   # archives only
#
# Each archive, dist/gator-ota-VERSION-TARGET.tar.gz, holds the stripped
# binary (Cargo profile `pi`; it links the Pi's own OpenSSL 3, libssl3), the
# systemd unit, the default and example settings, the env file template,
# install.sh, the README and BUILD-INFO. Each package,
# dist/gator-ota_VERSION-1_ARCH.deb (arm64, armhf), is made from the same
# binary by deploy/package-deb.sh (cargo-deb, checked with lintian). The
# amd64 package: bash deploy/package-deb.sh. dist/SHA256SUMS lists them all.
# Installs what it needs (Debian's cross gcc and libc packages, the
# target's libssl-dev (multiarch) to link OpenSSL against; the
# target's Rust standard library with rustup, or else Debian's rustc-web and
# libstd-rust-web-dev:ARCH). Cross builds use their own target folder (CARGO_TARGET_DIR,
# default target/cross) so they never lock the main build.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=deploy/release-common.sh
. "$root/deploy/release-common.sh"

usage() {
  cat <<EOF
Usage: bash deploy/release.sh [--target TRIPLE]... [--out DIR] [--smoke] [--no-deb]

Builds stripped gator-ota release archives and Debian packages for Raspberry Pi OS.

  --target TRIPLE  build only this target (repeatable); default: all of
                   ${RELEASE_TARGETS[*]}
  --out DIR        where the archives and packages go (default: dist/, or \$GATOR_OTA_DIST)
  --smoke          afterwards, smoke-test each archive under qemu-user
                   (bash deploy/smoke-qemu.sh ARCHIVE...)
  --no-deb         skip the Debian packages (deploy/package-deb.sh)

Environment: CARGO_TARGET_DIR (default: target/cross); RUSTC, the compiler for
the targets (default: rustc on PATH with rustup's target, else Debian's
/usr/bin/rustc from rustc-web with libstd-rust-web-dev:ARCH). On a shared machine,
run it under 'nice -n 15'.
EOF
}

targets=()
smoke=0
deb=1
out="${GATOR_OTA_DIST:-$root/dist}"
while [ $# -gt 0 ]; do
  case "$1" in
    --target)
      [ $# -ge 2 ] || die "--target needs a value (one of: ${RELEASE_TARGETS[*]})"
      targets+=("$2")
      shift 2
      ;;
    --target=*) targets+=("${1#*=}"); shift ;;
    --out)
      [ $# -ge 2 ] || die "--out needs a folder"
      out=$2
      shift 2
      ;;
    --out=*) out=${1#*=}; shift ;;
    --smoke) smoke=1; shift ;;
    --no-deb) deb=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${RELEASE_TARGETS[@]}")
for t in "${targets[@]}"; do target_info "$t"; done # rejects unknown ones early

cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/cross}"
mkdir -p "$out"
out=$(cd "$out" && pwd)

# --- what the build needs -----------------------------------------------------
command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH; install a Rust toolchain on the build machine"
pkgs=(cmake make perl pkg-config binutils file)
for t in "${targets[@]}"; do
  target_info "$t"
  pkgs+=("${cross_pkgs[@]}" "libssl-dev:$deb_arch")
done
apt_ensure "${pkgs[@]}"

# --- which rustc builds each target ---------------------------------------------
# The rustc on PATH (usually rustup's) when its sysroot has the target's
# standard library or `rustup target add` fetches it. Otherwise Debian 12's
# own: rustc-web (bookworm-security) is /usr/bin/rustc, and
# libstd-rust-web-dev:ARCH, a multiarch package, puts the target's standard
# library into its sysroot (/usr/lib/rustlib/TRIPLE). RUSTC=... picks the
# compiler by hand; it must have the target's standard library, or be
# /usr/bin/rustc (which gets it as above).
debian_rustc=/usr/bin/rustc
has_std() { # has_std RUSTC TRIPLE
  local sysroot
  sysroot=$("$1" --print sysroot 2>/dev/null) && [ -d "$sysroot/lib/rustlib/$2/lib" ]
}
debian_std() { # debian_std TRIPLE: installs Debian's rustc-web and the target's std
  local sudo=""
  target_info "$1"
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  command -v dpkg >/dev/null 2>&1 || die "no rustc with the standard library for $1, and no dpkg to install Debian's"
  if [ "$deb_arch" != "$(dpkg --print-architecture)" ] &&
    ! dpkg --print-foreign-architectures | grep -qx "$deb_arch"; then
    note "adding the Debian architecture $deb_arch (for libstd-rust-web-dev:$deb_arch)"
    $sudo dpkg --add-architecture "$deb_arch" || die "dpkg --add-architecture $deb_arch failed"
  fi
  apt_ensure rustc-web "libstd-rust-web-dev:$deb_arch"
  has_std "$debian_rustc" "$1" ||
    die "$debian_rustc has no standard library for $1 although libstd-rust-web-dev:$deb_arch is installed"
}
# target_rustc TRIPLE: sets rustc_bin, the compiler that builds TRIPLE.
target_rustc() {
  local t=$1
  if [ -n "$rustc_choice" ]; then
    rustc_bin=$rustc_choice
    has_std "$rustc_bin" "$t" && return 0
    [ "$rustc_bin" = "$debian_rustc" ] ||
      die "RUSTC=$rustc_bin has no standard library for $t (unset RUSTC, or use RUSTC=$debian_rustc)"
  else
    rustc_bin=$(command -v rustc || true)
    if [ -n "$rustc_bin" ]; then
      has_std "$rustc_bin" "$t" && return 0
      if command -v rustup >/dev/null 2>&1; then
        note "adding the Rust target $t with rustup"
        rustup target add "$t" && has_std "$rustc_bin" "$t" && return 0
        note "'rustup target add $t' failed; using Debian's rustc-web and libstd-rust-web-dev instead"
      fi
    fi
    rustc_bin=$debian_rustc
  fi
  debian_std "$t"
}
# rustc_info RUSTC: its version, path and, for Debian's, the package version.
rustc_info() {
  local v pkg
  v="$("$1" --version), $1"
  if [ "$1" = "$debian_rustc" ] && pkg=$(dpkg-query -W -f='${Version}' rustc-web 2>/dev/null); then
    v="$v (Debian rustc-web $pkg)"
  fi
  echo "$v"
}
rustc_choice=${RUSTC:-}
# Host tools (package-deb.sh's gator-ota-gen, smoke-qemu.sh's S3 server) use
# the default toolchain; only the target builds get the rustc chosen here.
unset RUSTC
declare -A rustc_for
for t in "${targets[@]}"; do
  target_rustc "$t"
  rustc_for[$t]=$rustc_bin
  note "$t: $(rustc_info "$rustc_bin")"
done

for t in "${targets[@]}"; do
  target_info "$t"
  command -v "$gnu-gcc" >/dev/null 2>&1 || die "$gnu-gcc not found although ${cross_pkgs[0]} is installed"
  grep -q "^linker = \"$gnu-gcc\"" .cargo/config.toml ||
    die ".cargo/config.toml does not set $gnu-gcc as the linker for $t"
done

version=$(workspace_version "$root")
commit=$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ "$commit" != unknown ] && [ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  commit="$commit-dirty"
fi
epoch=$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)

# openssl_root TRIPLE: makes, and prints, a folder that holds the target's
# OpenSSL from its multiarch libssl-dev as a self-contained OpenSSL root
# (include/openssl, lib/libssl.so, lib/libcrypto.so; links into /usr) for
# openssl-sys and paho's cmake. Debian splits the headers between
# /usr/include/openssl and /usr/include/GNU/openssl (configuration.h), and
# passing /usr/include itself to a cross compiler would mix in this
# machine's C headers.
openssl_root() {
  local dir="$CARGO_TARGET_DIR/openssl/$1" f link
  target_info "$1"
  if [ ! -e "/usr/include/$gnu/openssl/configuration.h" ] || [ ! -e "/usr/lib/$gnu/libssl.so" ]; then
    die "no OpenSSL for $deb_arch in /usr/include/$gnu and /usr/lib/$gnu although libssl-dev:$deb_arch is installed"
  fi
  # Links are only added, never remade: openssl-sys rebuilds (and with it
  # paho) when this folder changes.
  mkdir -p "$dir/include/openssl" "$dir/lib"
  for f in /usr/include/openssl/* "/usr/include/$gnu/openssl"/* \
    "/usr/lib/$gnu/libssl.so" "/usr/lib/$gnu/libcrypto.so"; do
    case "$f" in
      *.so) link="$dir/lib/${f##*/}" ;;
      *) link="$dir/include/openssl/${f##*/}" ;;
    esac
    [ -L "$link" ] || ln -s "$f" "$link"
  done
  echo "$dir"
}

# --- build and pack -------------------------------------------------------------
archives=()
summary=()
for t in "${targets[@]}"; do
  target_info "$t"
  note "building gator-ota $version for $t ($pi_os) in $CARGO_TARGET_DIR"
  started=$SECONDS
  # OpenSSL (for paho's TLS) is the Pi's own libssl3, linked dynamically: its
  # security fixes come with apt, and the aarch64 binary is 4.9 MiB smaller
  # than with OpenSSL built in (the vendored-ssl feature, still there for systems
  # without OpenSSL 3). <TRIPLE>_OPENSSL_DIR points openssl-sys, and through
  # it paho's cmake, at the target's copy only.
  ssl_var="$(echo "$t" | tr 'a-z-' 'A-Z_')_OPENSSL_DIR"
  ssl_root=$(openssl_root "$t")
  env -u OPENSSL_STATIC -u OPENSSL_DIR "$ssl_var=$ssl_root" RUSTC="${rustc_for[$t]}" \
    cargo build --profile pi --locked --target "$t" -p gator-ota --bin gator-ota ||
    die "cargo build for $t failed (see above)"
  build_secs=$((SECONDS - started))
  bin="$CARGO_TARGET_DIR/$t/pi/gator-ota"
  [ -x "$bin" ] || die "the build reported success but $bin is missing"

  name="gator-ota-$version-$t"
  stage="$CARGO_TARGET_DIR/stage/$name"
  rm -rf "$stage"
  mkdir -p "$stage"
  install -m 0755 "$bin" "$stage/gator-ota"
  # The pi profile strips already; this makes sure of it.
  "$gnu-strip" --strip-all "$stage/gator-ota"
  desc=$(file -b "$stage/gator-ota")
  case "$desc" in
    *"$elf_desc"*", stripped"*) ;;
    *) die "$stage/gator-ota is not a stripped $elf_desc executable: $desc" ;;
  esac
  glibc=$(glibc_needed "$stage/gator-ota" "$gnu-objdump") ||
    die "cannot read the dynamic symbols of $stage/gator-ota with $gnu-objdump"
  [ -n "$glibc" ] || die "no GLIBC symbol versions found in $stage/gator-ota"
  version_le "$glibc" "$RELEASE_GLIBC_MAX" ||
    die "$t binary needs glibc $glibc, newer than Raspberry Pi OS Bookworm's $RELEASE_GLIBC_MAX"
  # Only the C library, libgcc and OpenSSL 3 from the Pi.
  needed=$("$gnu-readelf" -d "$stage/gator-ota" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
  for lib in $needed; do
    case "$lib" in
      libc.so.6 | libm.so.6 | libgcc_s.so.1 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux-*) ;;
      libssl.so.3 | libcrypto.so.3) ;;
      *) die "$t binary needs $lib from the Pi; expected only glibc, libgcc_s and OpenSSL 3" ;;
    esac
  done
  case " $needed " in
    *" libssl.so.3 "*) ;;
    *) die "$t binary does not link libssl.so.3: OpenSSL is not the system's (needed: $needed)" ;;
  esac
  size=$(stat -c %s "$stage/gator-ota")

  install -m 0644 deploy/gator-ota.service "$stage/gator-ota.service"
  install -m 0644 settings/default.toml "$stage/settings.default.toml"
  install -m 0644 deploy/settings.example.toml "$stage/settings.example.toml"
  install -m 0644 deploy/gator-ota.env.example "$stage/gator-ota.env.example"
  install -m 0755 deploy/install.sh "$stage/install.sh"
  install -m 0644 README.md "$stage/README.md"
  install -m 0644 deploy/INSTALL.md "$stage/INSTALL.md"
  cat >"$stage/BUILD-INFO" <<EOF
name=gator-ota
version=$version
target=$t
debian_arch=$deb_arch
os=$pi_os, Bookworm or newer
glibc_min=$glibc
needs=${needed% }
commit=$commit
rustc=$(rustc_info "${rustc_for[$t]}")
profile=pi
features=
openssl=system (libssl.so.3; Debian package libssl3, or libssl3t64 on Debian 13)
binary_bytes=$size
EOF
  chmod 0644 "$stage/BUILD-INFO"

  archive="$out/$name.tar.gz"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    -C "$(dirname "$stage")" -cf - "$name" | gzip -n -9 >"$archive.tmp"
  mv -f "$archive.tmp" "$archive"
  archives+=("$archive")
  summary+=("$(awk -v t="$t" -v s="$size" -v g="$glibc" -v b="$build_secs" -v a="${archive#"$root"/}" \
    'BEGIN { printf "%-32s %.2f MiB binary (%d bytes), glibc >= %s, built in %ds -> %s", t, s / 1048576, s, g, b, a }')")
  if [ "$deb" -eq 1 ]; then
    # The binary just checked, packaged as it is.
    package=$(bash "$root/deploy/package-deb.sh" --target "$t" --profile pi --no-build --out "$out" | tail -n 1) ||
      die "the Debian package for $t failed (see above)"
    summary+=("$(printf '%-32s %s' "" "-> ${package#"$root"/}")")
  fi
done

(
  cd "$out"
  shopt -s nullglob
  sha256sum -- gator-ota-*.tar.gz gator-ota_*.deb >SHA256SUMS.tmp
  mv -f SHA256SUMS.tmp SHA256SUMS
)

echo
echo "gator-ota $version release archives ($commit):"
printf '  %s\n' "${summary[@]}"
echo "  checksums: ${out#"$root"/}/SHA256SUMS"

if [ "$smoke" -eq 1 ]; then
  echo
  bash "$root/deploy/smoke-qemu.sh" "${archives[@]}"
fi
