# Shared by deploy/release.sh and deploy/smoke-qemu.sh (sourced, not run):
# the supported Raspberry Pi targets and small helpers.
# shellcheck shell=bash disable=SC2034  # (variables used by the scripts that source it)

# 64-bit Raspberry Pi OS first, then 32-bit.
RELEASE_TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

# Newest glibc symbol version a release binary may need: Raspberry Pi OS
# Bookworm (Debian 12) ships glibc 2.36.
RELEASE_GLIBC_MAX=2.36

die() {
  echo "${0##*/}: error: $*" >&2
  exit 1
}

note() {
  echo "${0##*/}: $*" >&2
}

# target_info TRIPLE: sets, for one supported target,
#   gnu       the GNU triple of Debian's cross tools (prefix of gcc, strip, ...)
#   deb_arch  the Debian/Pi OS architecture the binary runs on
#   pi_os     which Raspberry Pi OS that is
#   cross_pkgs Debian packages that cross-compile and link for it
#   qemu      the qemu-user program that runs it
#   loader    its ELF interpreter
#   elf_desc  what `file` says about its machine
target_info() {
  case "$1" in
    aarch64-unknown-linux-gnu)
      gnu=aarch64-linux-gnu
      deb_arch=arm64
      pi_os="Raspberry Pi OS (64-bit)"
      cross_pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
      qemu="qemu-aarch64"
      loader=/lib/ld-linux-aarch64.so.1
      elf_desc="ARM aarch64"
      ;;
    armv7-unknown-linux-gnueabihf)
      gnu=arm-linux-gnueabihf
      deb_arch=armhf
      pi_os="Raspberry Pi OS (32-bit)"
      cross_pkgs=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
      qemu="qemu-arm"
      loader=/lib/ld-linux-armhf.so.3
      elf_desc="ARM, EABI5"
      ;;
    *)
      die "unsupported target '$1'; supported: ${RELEASE_TARGETS[*]}"
      ;;
  esac
}

# Installs the Debian packages among "$@" that are not installed yet.
apt_ensure() {
  local missing=() p sudo=""
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 ||
    die "missing Debian packages: ${missing[*]}; this needs a Debian machine with apt-get"
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  note "installing with apt: ${missing[*]}"
  $sudo apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

# The workspace version (from [workspace.package] in Cargo.toml).
workspace_version() {
  local v
  v=$(sed -n 's/^version = "\([^"]*\)"$/\1/p' "$1/Cargo.toml" | head -n 1)
  [ -n "$v" ] || die "cannot read the version from $1/Cargo.toml"
  echo "$v"
}

# glibc_needed FILE [OBJDUMP]: newest GLIBC_x.y symbol version an ELF file
# needs ("" when none), from its dynamic symbol table.
glibc_needed() {
  local syms
  syms=$("${2:-objdump}" -T "$1") || return 1
  { printf '%s\n' "$syms" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -u -V | tail -n 1; } || true
}

# version_le A B: A <= B in version order.
version_le() {
  [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" = "$1" ]
}
