#!/usr/bin/env bash
# Makes the Debian package of gator-ota with cargo-deb, then checks it with
# lintian (no errors allowed):
#
#   bash deploy/package-deb.sh                     # amd64, built here -> dist/
#   bash deploy/package-deb.sh --target aarch64-unknown-linux-gnu --profile pi --no-build
#                                                  # arm64, from release.sh's build
#
# The package, dist/gator-ota_VERSION-REVISION_ARCH.deb, holds the binary
# (/usr/bin/gator-ota), the systemd unit (enabled on install, not started),
# /etc/gator-ota/settings.toml and gator-ota.env as conffiles, the man pages,
# bash/zsh/fish completions and the docs; its maintainer scripts create the
# gator-ota system user and /var/lib/gator-ota, and purge removes both.
# Installs cargo-deb and lintian if missing (deploy/install-deps.sh --packaging).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=deploy/release-common.sh
. "$root/deploy/release-common.sh"

usage() {
  cat <<EOF
Usage: bash deploy/package-deb.sh [--target TRIPLE] [--profile NAME] [--no-build]
                                  [--revision N] [--out DIR] [--no-lintian]

  --target TRIPLE  package the build for TRIPLE (one of: ${RELEASE_TARGETS[*]});
                   default: this machine (x86_64 -> amd64)
  --profile NAME   the Cargo profile to build or take the binary from (default
                   release; release.sh's Pi builds use pi)
  --no-build       package the binary already built (release.sh does this)
  --revision N     the Debian revision, VERSION-N (default 1)
  --out DIR        where the .deb goes (default: dist/, or \$GATOR_OTA_DIST)
  --no-lintian     skip the lintian check

Environment: CARGO_TARGET_DIR (where the binary is built or found),
GATOR_OTA_DEB_MAINTAINER ("Name <email>", overrides the one in Cargo.toml).
EOF
}

target=""
profile=release
build=1
revision=1
lint=1
out="${GATOR_OTA_DIST:-$root/dist}"
while [ $# -gt 0 ]; do
  case "$1" in
    --target) [ $# -ge 2 ] || die "--target needs a value"; target=$2; shift 2 ;;
    --target=*) target=${1#*=}; shift ;;
    --profile) [ $# -ge 2 ] || die "--profile needs a value"; profile=$2; shift 2 ;;
    --profile=*) profile=${1#*=}; shift ;;
    --no-build) build=0; shift ;;
    --revision) [ $# -ge 2 ] || die "--revision needs a value"; revision=$2; shift 2 ;;
    --revision=*) revision=${1#*=}; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a folder"; out=$2; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --no-lintian) lint=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
case "$revision" in
  "" | *[!0-9A-Za-z.+~]*) die "--revision '$revision' is not a Debian revision (digits, letters, . + ~)" ;;
esac

cd "$root"
bash "$root/deploy/install-deps.sh" --packaging
export PATH="$HOME/.cargo/bin:$PATH"
mkdir -p "$out"
out=$(cd "$out" && pwd)
target_dir=$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || die "cannot find cargo's target folder"

if [ -n "$target" ]; then
  target_info "$target"
  bin="$target_dir/$target/$profile/gator-ota"
  target_args=(--target "$target")
else
  bin="$target_dir/$profile/gator-ota"
  target_args=()
fi
if [ "$build" -eq 1 ]; then
  note "building gator-ota ${target:-for this machine} (profile $profile)"
  cargo build --profile "$profile" --locked -p gator-ota --bin gator-ota "${target_args[@]}" ||
    die "cargo build failed (see above)"
fi
[ -x "$bin" ] || die "$bin is missing: build it first (deploy/release.sh), or leave out --no-build"

# The man pages and completions: gator-ota-gen, built for this machine from
# the same CLI definition (the service's binary does not carry the generators).
note "building gator-ota-gen (man pages, completions) for this machine"
cargo build --locked -p gator-ota --bin gator-ota-gen || die "cargo build of gator-ota-gen failed"
gen="$target_dir/debug/gator-ota-gen"

# --- what cargo-deb takes from target/deb-assets/ (see Cargo.toml) ----------------
assets="$root/target/deb-assets"
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions" "$assets/unit"
"$gen" man --out "$assets/man" || die "gator-ota-gen man failed"
gzip -9 -n "$assets"/man/*.1
"$gen" completions bash >"$assets/completions/gator-ota"
"$gen" completions zsh >"$assets/completions/_gator-ota"
"$gen" completions fish >"$assets/completions/gator-ota.fish"
# The unit names /usr/local/bin (install.sh's place); a package's is /usr/bin.
sed 's#/usr/local/bin/gator-ota#/usr/bin/gator-ota#g' deploy/gator-ota.service \
  >"$assets/unit/gator-ota.service"
grep -q '/usr/local' "$assets/unit/gator-ota.service" &&
  die "the packaged unit still names /usr/local"

version=$(workspace_version "$root")
maintainer=${GATOR_OTA_DEB_MAINTAINER:-$(sed -n 's/^maintainer = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)}
epoch=$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)
{
  echo "gator-ota ($version-$revision) stable; urgency=medium"
  echo
  echo "  * gator-ota $version; changes: /usr/share/doc/gator-ota/README.md."
  echo
  echo " -- $maintainer  $(date -u -R -d "@$epoch")"
} >"$assets/changelog"

# --- the package --------------------------------------------------------------------
deb_args=(--no-build --profile "$profile" --deb-revision "$revision" --output "$out" "${target_args[@]}")
# The release profile keeps the symbol table (deploy/startup-order.sh reads
# it); cargo-deb strips the packaged copy. Other profiles strip at the link.
[ "$profile" = release ] || deb_args+=(--no-strip)
[ -z "${GATOR_OTA_DEB_MAINTAINER:-}" ] || deb_args+=(--maintainer "$GATOR_OTA_DEB_MAINTAINER")
note "cargo deb ${deb_args[*]}"
deb=$(SOURCE_DATE_EPOCH=$epoch cargo deb -p gator-ota "${deb_args[@]}" | tail -n 1) ||
  die "cargo deb failed (see above)"
[ -f "$deb" ] || die "cargo deb reported '$deb', which is not a file"

if [ "$lint" -eq 1 ]; then
  # Errors fail the package; warnings are shown.
  note "lintian $deb"
  lintian --no-tag-display-limit "$deb" | tee "$deb.lintian" || true
  if grep -q '^E:' "$deb.lintian"; then
    die "lintian reports errors for $deb (see above and $deb.lintian)"
  fi
fi
echo "$deb"
