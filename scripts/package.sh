#!/usr/bin/env bash
# Builds the Debian package: dist/pdlb_<version>_<arch>.deb (CPack; Depends from dpkg-shlibdeps).
#   scripts/package.sh            Release build in build-package/, then the .deb
# Install it with: apt install ./dist/pdlb_*.deb && systemctl enable --now pdlb
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${PDLB_PACKAGE_BUILD_DIR:-build-package}
# /usr: the binaries go to /usr/bin (what the unit's ExecStart names), the config to /etc/pdlb.
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr \
  -DPDLB_SYSTEMD_UNIT_DIR=/lib/systemd/system -DPDLB_BUILD_TESTS=OFF >/dev/null
cmake --build "$dir" -j "$(nproc)"
rm -f dist/pdlb_*.deb
(cd "$dir" && cpack -G DEB >/dev/null)
ls dist/pdlb_*.deb
