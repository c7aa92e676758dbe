#!/usr/bin/env bash
# Installs the .deb that scripts/package.sh built, checks it, and removes it again (root only: it
# changes the system's packages). CI runs as root; elsewhere it says why it skips.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "package test: skipped (installing a .deb needs root)"
  exit 0
fi
if dpkg-query -W -f='${Status}' pdlb 2>/dev/null | grep -q "install ok installed"; then
  echo "package test: skipped (a pdlb package is already installed here; not touching it)"
  exit 0
fi
debs=(dist/pdlb_*.deb)
[ -f "${debs[0]}" ] || { echo "package test: no dist/pdlb_*.deb (run scripts/package.sh)"; exit 1; }
trap 'apt-get purge -y -qq pdlb >/dev/null 2>&1 || true' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq "./${debs[0]}" >/dev/null

fail() { echo "package test: FAILED: $*"; exit 1; }
version=$(/usr/bin/pdlb --version) || fail "/usr/bin/pdlb --version exited $?"
expected=$(dpkg-query -W -f='${Version}' pdlb)
[ "$version" = "pdlb $expected" ] || fail "/usr/bin/pdlb --version says '$version', the package is $expected"
files=$(dpkg -L pdlb)
for f in /usr/bin/pdlb /usr/bin/pdlb-sim /usr/bin/pdlb-bench /lib/systemd/system/pdlb.service \
         /etc/pdlb/pdlb.toml /usr/share/man/man1/pdlb.1.gz /usr/share/doc/pdlb/README.md \
         /usr/share/doc/pdlb/getting-started.md; do
  grep -qx "$f" <<<"$files" || fail "dpkg -L pdlb does not list $f"
  [ -e "$f" ] || fail "$f is listed but missing"
done
dpkg-query -W -f='${Conffiles}\n' pdlb | grep -q "/etc/pdlb/pdlb.toml" || fail "/etc/pdlb/pdlb.toml is not a conffile"
grep -q '^ExecStart=/usr/bin/pdlb --config /etc/pdlb/pdlb.toml$' /lib/systemd/system/pdlb.service ||
  fail "the installed unit does not run /usr/bin/pdlb --config /etc/pdlb/pdlb.toml"
systemd-analyze verify /lib/systemd/system/pdlb.service || fail "systemd-analyze verify on the installed unit"
# The installed config must be one the installed binary accepts.
/usr/bin/pdlb --config /etc/pdlb/pdlb.toml --check || fail "pdlb --check rejects /etc/pdlb/pdlb.toml"
apt-get purge -y -qq pdlb >/dev/null
trap - EXIT
[ ! -e /usr/bin/pdlb ] || fail "/usr/bin/pdlb is still there after apt-get purge"
echo "package test: passed (${debs[0]}: installed, --version, dpkg -L, systemd-analyze verify, removed)"
