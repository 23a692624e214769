#!/usr/bin/env python3
"""Benchmark the DWARF type source: time and memory to answer the whole catalogue.

Usage::

    tools/bench_dwarf.py VMLINUX [VMLINUX ...] [--repeat N] [--no-drgn] [--no-cold]
    tools/bench_dwarf.py --fixtures        # every fixture's vmlinux_dbg

Each measurement runs in a fresh Python process (no state carried over), so "cold" means a cold
process. With ``--cold`` (default on) the file's pages are also dropped from the page cache first
with ``posix_fadvise(POSIX_FADV_DONTNEED)`` — only that file's pages, nothing system-wide — so
the first run also pays for disk reads. Peak memory is the child's ``VmHWM`` (resident, including
the file pages it touched through the mapping) and its ``RssAnon`` at the end (private heap).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _child(kind: str, path: str) -> None:
    """Measure one source in this (fresh) process and print a JSON line."""
    from kdlayout.sources.base import type_facts

    t0 = time.perf_counter()
    if kind == "dwarf":
        from kdlayout.sources.dwarf import DwarfTypeSource

        src: Any = DwarfTypeSource(path)
    else:
        from kdlayout.sources.dwarf import DrgnTypeSource

        src = DrgnTypeSource(path)
    t_open = time.perf_counter() - t0
    facts = type_facts(src)
    total = time.perf_counter() - t0
    out: dict[str, Any] = {
        "kind": kind, "seconds": total, "open_seconds": t_open, "facts": len(facts),
        "hwm_mib": _status_kib("VmHWM") / 1024, "anon_mib": _status_kib("RssAnon") / 1024,
        "describe": src.describe(),
    }
    stats = getattr(src, "stats", None)
    if stats is not None:
        out.update(units_total=stats.units_total, units_indexed=len(stats.units_indexed),
                   dies=stats.dies_decoded, fallback_searches=stats.fallback_searches,
                   indexed=stats.units_indexed)
        info = src.sections.get(".debug_info")
        out["debug_info_mib"] = (info.size / 2**20) if info else 0.0
    print(json.dumps(out))


def _drop_file_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _run(kind: str, path: str, cold: bool) -> dict[str, Any]:
    if cold:
        _drop_file_cache(path)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, __file__, "--child", kind, path], capture_output=True,
                       text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{kind} on {path} failed: {r.stderr.strip().splitlines()[-1:]}")
    res: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    res["process_seconds"] = wall
    return res


def _label(path: str) -> str:
    """``vmlinux-<release>``, also for the newer ``lib/modules/<release>/vmlinux`` layout."""
    p = Path(path)
    return f"vmlinux-{p.parent.name}" if p.name == "vmlinux" else p.name


def _fixture_paths() -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from fixtures import load_fixtures  # type: ignore[import-not-found]

    out = []
    for fx in load_fixtures():
        p = fx.path("vmlinux_dbg")
        if p is not None:
            out.append(str(p))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one table row per (vmlinux, source, cache state)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("vmlinux", nargs="*")
    ap.add_argument("--fixtures", action="store_true", help="add every fixture's vmlinux_dbg")
    ap.add_argument("--repeat", type=int, default=2, help="warm runs per source (default 2)")
    ap.add_argument("--no-drgn", action="store_true", help="skip the drgn comparison")
    ap.add_argument("--no-cold", action="store_true", help="do not drop the file's page cache")
    ap.add_argument("--json", action="store_true", help="print raw JSON results too")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1])
        return 0
    paths = list(args.vmlinux) + (_fixture_paths() if args.fixtures else [])
    if not paths:
        ap.error("no vmlinux given (and no fixture has vmlinux_dbg)")
    kinds = ["dwarf"]
    if not args.no_drgn:
        try:
            import drgn  # noqa: F401
            kinds.append("drgn")
        except ImportError:
            print("drgn not installed: comparison skipped", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for path in paths:
        for kind in kinds:
            runs = []
            if not args.no_cold:
                runs.append(("cold", _run(kind, path, True)))
            for _ in range(max(1, args.repeat)):
                runs.append(("warm", _run(kind, path, False)))
            for state, res in runs:
                res.update(vmlinux=_label(path), state=state)
                rows.append(res)
    hdr = (f"{'vmlinux':34} {'source':6} {'cache':5} {'facts':>5} {'answer s':>8} "
           f"{'process s':>9} {'peak RSS MiB':>12} {'heap MiB':>8} {'units idx/total':>15} "
           f"{'DIEs':>7}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        units = (f"{r['units_indexed']}/{r['units_total']}" if "units_total" in r else "-")
        dies = str(r.get("dies", "-"))
        print(f"{r['vmlinux'][:34]:34} {r['kind']:6} {r['state']:5} {r['facts']:5d} "
              f"{r['seconds']:8.2f} {r['process_seconds']:9.2f} {r['hwm_mib']:12.0f} "
              f"{r['anon_mib']:8.0f} {units:>15} {dies:>7}")
    for path in paths:
        for r in rows:
            if r["vmlinux"] == _label(path) and r["kind"] == "dwarf":
                print(f"{r['vmlinux']}: .debug_info {r.get('debug_info_mib', 0):.0f} MiB, "
                      f"{r['describe'].split(' ', 1)[1]}; units indexed: "
                      f"{', '.join(r.get('indexed', []))}")
                break
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
