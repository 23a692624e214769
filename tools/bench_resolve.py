#!/usr/bin/env python3
"""Benchmark: resolving a layout from the dump alone, cold and from the on-disk cache.

For each fixture vmcore (or the files given), two fresh processes share an empty cache directory:
the first resolves cold (VMCOREINFO, kallsyms and the in-dump BTF decoded from scratch) and
stores the layout; the second is served from the cache. Each reports the seconds of the
``resolve()`` call itself (imports excluded), of every source, and the process's peak RSS
(VmHWM, MiB; imports included).

    python tools/bench_resolve.py [VMCORE ...] [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
from kdlayout.dumpfile import open_dump
from kdlayout.resolver import ResolveOptions, resolve
dump = open_dump(sys.argv[1])
t = time.perf_counter()
result = resolve(dump, ResolveOptions(cache_dir=sys.argv[2]))
seconds = time.perf_counter() - t
btf = [s for s in result.sources if s.name == "btf" and s.status == "used"]
with open("/proc/self/status") as f:
    hwm = [int(line.split()[1]) for line in f if line.startswith("VmHWM:")]
print(json.dumps({"seconds": seconds, "from_cache": result.from_cache, "facts": len(result.layout),
                  "peak_mib": hwm[0] / 1024 if hwm else None,
                  "sources": {s.name: s.seconds for s in result.sources if s.status == "used"},
                  "btf": btf[0].detail if btf else None}))
"""


def _run(vmcore: str, cache: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", CHILD, vmcore, cache], check=True,
                         capture_output=True, text=True)
    data: dict[str, object] = json.loads(out.stdout)
    return data


def _fixture_vmcores() -> list[str]:
    root = Path(os.environ.get("KDLAYOUT_CACHE") or Path.home() / ".cache" / "kdlayout")
    found = []
    for manifest in sorted((root / "fixtures").glob("*/manifest.json")):
        files = json.loads(manifest.read_text()).get("files", {})
        if files.get("vmcore"):
            found.append(str(manifest.parent / files["vmcore"]))
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("vmcores", nargs="*", help="default: every fixture's kdump vmcore")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each kind; the best is shown")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    vmcores = args.vmcores or _fixture_vmcores()
    if not vmcores:
        print("no vmcore given and no fixture built (python tools/build_fixtures.py)",
              file=sys.stderr)
        return 2
    rows = []
    for vmcore in vmcores:
        cold, warm = [], []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as cache:
                cold.append(_run(vmcore, cache))
                warm.append(_run(vmcore, cache))
        best_cold = min(cold, key=lambda r: float(r["seconds"]))  # type: ignore[arg-type]
        best_warm = min(warm, key=lambda r: float(r["seconds"]))  # type: ignore[arg-type]
        if best_cold["from_cache"] or not best_warm["from_cache"]:
            print(f"{vmcore}: the second process was not served from the cache (kdlayout's "
                  "sources changed between the runs?)", file=sys.stderr)
            return 1
        rows.append({"vmcore": vmcore, "cold_s": best_cold["seconds"],
                     "cached_s": best_warm["seconds"], "facts": best_cold["facts"],
                     "cold_peak_mib": max(float(r["peak_mib"] or 0) for r in cold),  # type: ignore[arg-type]
                     "cached_peak_mib": max(float(r["peak_mib"] or 0) for r in warm),  # type: ignore[arg-type]
                     "sources_s": best_cold["sources"], "btf": best_cold["btf"]})
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    print(f"{'vmcore':<58} {'cold s':>7} {'cached ms':>10} {'facts':>6} {'peak MiB':>13}  "
          "per source (cold, s)")
    for r in rows:
        per = " ".join(f"{k}={v:.2f}" for k, v in r["sources_s"].items())  # type: ignore[attr-defined]
        peak = f"{r['cold_peak_mib']:.0f}/{r['cached_peak_mib']:.0f}"
        print(f"{str(r['vmcore'])[-58:]:<58} {r['cold_s']:>7.2f} "
              f"{1000 * float(r['cached_s']):>10.1f} {r['facts']:>6} {peak:>13}  {per}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
