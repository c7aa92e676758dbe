#!/usr/bin/env bash
# Installs everything pdlb needs to build, test and benchmark, from Debian packages only.
# Idempotent: packages already present are not reinstalled; the package lists are refreshed once.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git curl
  libboost1.81-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libsimdjson-dev libmimalloc-dev libc-ares-dev
  clang-14 libclang-rt-14-dev
  python3 python3-fastapi python3-uvicorn python3-aiohttp python3-matplotlib
  nginx wrk procps dnsmasq-base gcovr prometheus
  libtomlplusplus-dev help2man systemd dpkg-dev file
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
echo "setup: installing ${missing[*]}"
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
