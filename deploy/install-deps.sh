#!/usr/bin/env bash
# Installs what building and testing gator-ota needs on Debian: cmake (for the
# bundled paho MQTT C library), OpenSSL headers, and mosquitto (the broker the
# tests and the local run start). Does nothing when all are present.
#
#   bash deploy/install-deps.sh              # build and run
#   bash deploy/install-deps.sh --tests      # and test: chromium too
#                                            # (tests/fleet.rs renders the
#                                            # status page in it, headless)
#   bash deploy/install-deps.sh --packaging  # the Debian package: cargo-deb,
#                                            # lintian, dpkg-dev; mmdebstrap
#                                            # for deploy/test-deb.sh
set -euo pipefail

packaging=0
tests=0
case "${1:-}" in
  --packaging) packaging=1 ;;
  --tests) tests=1 ;;
  "") ;;
  *) echo "install-deps.sh: unknown argument '$1'" >&2; exit 1 ;;
esac

missing=()
if [ "$packaging" -eq 1 ]; then
  command -v lintian >/dev/null 2>&1 || missing+=(lintian)
  command -v dpkg-shlibdeps >/dev/null 2>&1 || missing+=(dpkg-dev)
  command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
else
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
  [ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
  # The host's own: with the Pi's libssl-dev:arm64/armhf also installed
  # (deploy/release.sh), a bare `dpkg -s libssl-dev` is ambiguous and fails.
  dpkg -s "libssl-dev:$(dpkg --print-architecture)" >/dev/null 2>&1 || missing+=(libssl-dev)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  if [ "$tests" -eq 1 ]; then
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# cargo-deb is a cargo subcommand, built from crates.io at the version its
# lock file pins.
if [ "$packaging" -eq 1 ] && ! cargo deb --version >/dev/null 2>&1; then
  echo "installing: cargo-deb (cargo install --locked)"
  cargo install cargo-deb --locked
fi
