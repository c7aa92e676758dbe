#!/usr/bin/env python3
"""Per-directory line-coverage floors, in the manner of Envoy's per-directory thresholds.

Reads gcovr's --json-summary and fails (exit 1) when a group of source files falls below its floor,
so coverage cannot quietly fall. Every file of src/ belongs to exactly one group: a new file is
counted whether or not anyone remembers to list it. Floors start a little under what was measured
(docs/testing.md has the figures); raise them when coverage rises, never lower them to pass.

    scripts/coverage_floors.py build-coverage/coverage.json
"""
import fnmatch
import json
import sys

# The library's modules that touch sockets; every other file directly in src/ is a pure module.
SOCKET_MODULES = ["src/http_server.cpp", "src/upstream.cpp", "src/proxy.cpp", "src/main.cpp",
                  "src/pd_request.cpp", "src/service.cpp", "src/background.cpp", "src/discovery.cpp",
                  "src/worker_query.cpp", "src/systemd_notify.cpp"]

# (group, file patterns, floor in % of lines). The first group that matches a file takes it.
GROUPS = [
    ("src/ socket modules", SOCKET_MODULES, 85.0),
    ("src/ pure modules", ["src/*.cpp", "src/*.hpp"], 90.0),
    ("src/sim (pdlb-sim)", ["src/sim/*"], 85.0),
    ("src/bench (pdlb-bench)", ["src/bench/*"], 65.0),
]


def group_of(path):
    for name, patterns, _ in GROUPS:
        for pat in patterns:
            # fnmatch's * crosses '/', so src/*.cpp would also take src/sim/x.cpp: compare depth.
            if fnmatch.fnmatch(path, pat) and path.count("/") == pat.count("/"):
                return name
    return None


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        summary = json.load(f)
    totals = {name: [0, 0] for name, _, _ in GROUPS}
    unassigned = []
    for entry in summary["files"]:
        path = entry["filename"]
        name = group_of(path)
        if name is None:
            unassigned.append(path)
            continue
        totals[name][0] += entry["line_covered"]
        totals[name][1] += entry["line_total"]
    failed = False
    print("%-26s %8s %8s %8s  %s" % ("group", "lines", "covered", "percent", "floor"))
    for name, _, floor in GROUPS:
        covered, total = totals[name]
        if total == 0:
            print("%-26s no lines measured: FAIL" % name)
            failed = True
            continue
        pct = 100.0 * covered / total
        ok = pct >= floor
        failed |= not ok
        print("%-26s %8d %8d %7.1f%%  %.1f%% %s" % (name, total, covered, pct, floor,
                                                    "ok" if ok else "BELOW THE FLOOR"))
    for path in unassigned:
        print("no coverage group for %s: add it to scripts/coverage_floors.py" % path)
        failed = True
    if failed:
        print("coverage: FAILED (see docs/testing.md)")
        return 1
    print("coverage: every group at or above its floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
