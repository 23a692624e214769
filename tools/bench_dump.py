#!/usr/bin/env python3
"""Benchmark: ``kdlayout dump`` against makedumpfile writing the same filtered dump.

For each codec, both tools run on the same vmcore in the same invocation, same dump level and
thread count: ``kdlayout dump -d LEVEL -X --num-threads N VMCORE OUT`` and
``makedumpfile -d LEVEL -X [--num-threads N] VMCORE OUT``. Each run is a child process; wall time
is measured around it and peak RSS comes from ``os.wait4``'s rusage of that child. The report
gives, per codec, both tools' wall time, output size and peak RSS, and kdlayout / makedumpfile
ratios (median of ``--repeat`` runs).

Usage: python tools/bench_dump.py [VMCORE] [--level 31] [--codecs c,l,z,p] [--threads N]
                                  [--repeat N] [--makedumpfile PATH] [--outdir DIR] [--json]
Default VMCORE: the largest fixture vmcore. ``--threads 0`` runs makedumpfile without
``--num-threads`` (its default, single-threaded) and kdlayout with one compression thread.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

CODEC_NAMES = {"c": "zlib", "l": "lzo", "z": "zstd", "p": "snappy"}


class Run(NamedTuple):
    """One child process run."""

    seconds: float
    size: int
    maxrss_kib: int
    status: int


def _largest_fixture() -> Path | None:
    from fixtures import load_fixtures

    cores = [p for f in load_fixtures(include_big=True) if (p := f.path("vmcore")) is not None]
    return max(cores, key=lambda p: p.stat().st_size, default=None)


def run_child(cmd: list[str], out: Path) -> Run:
    """Run ``cmd`` (writing ``out``); wall time, output size, peak RSS of that child."""
    if out.exists():
        out.unlink()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _pid, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(f"{' '.join(cmd)}: exit {proc.returncode}\n{err.decode(errors='replace')}")
    size = out.stat().st_size if out.exists() else 0
    return Run(seconds, size, int(ru.ru_maxrss), proc.returncode)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("vmcore", nargs="?")
    ap.add_argument("--level", type=int, default=31)
    ap.add_argument("--codecs", default="c,l,z", help="makedumpfile codec letters (c,l,z,p)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--makedumpfile", default="/usr/bin/makedumpfile")
    ap.add_argument("--outdir", help="where the outputs go (default: a temporary directory)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    vmcore = Path(args.vmcore) if args.vmcore else _largest_fixture()
    if vmcore is None:
        print("no VMCORE given and no fixture built", file=sys.stderr)
        return 2
    outdir = Path(args.outdir) if args.outdir else Path(tempfile.mkdtemp(prefix="bench_dump."))
    outdir.mkdir(parents=True, exist_ok=True)
    kd = [sys.executable, "-m", "kdlayout.cli", "dump"]
    rows: list[dict[str, Any]] = []
    try:
        for letter in args.codecs.split(","):
            name = CODEC_NAMES[letter]
            ours_out, theirs_out = outdir / f"kdlayout.{name}", outdir / f"makedumpfile.{name}"
            k_threads = ["--num-threads", str(max(1, args.threads))]
            m_threads = ["--num-threads", str(args.threads)] if args.threads > 0 else []
            ours, theirs = [], []
            for _ in range(args.repeat):
                ours.append(run_child([*kd, "-d", str(args.level), f"-{letter}", *k_threads, "--message-level", "0", str(vmcore), str(ours_out)], ours_out))
                theirs.append(run_child([args.makedumpfile, "-d", str(args.level), f"-{letter}",
                                         *m_threads, "--message-level", "0", str(vmcore),
                                         str(theirs_out)], theirs_out))

            def med(runs: list[Run], field: str) -> float:
                return float(statistics.median(getattr(r, field) for r in runs))

            row: dict[str, Any] = {"codec": name}
            for who, runs in (("kdlayout", ours), ("makedumpfile", theirs)):
                row[who] = {"seconds": med(runs, "seconds"), "bytes": med(runs, "size"),
                            "maxrss_kib": med(runs, "maxrss_kib"),
                            "ok": all(r.status == 0 for r in runs)}
            row["ratio"] = {k: (row["kdlayout"][k] / row["makedumpfile"][k]
                                if row["makedumpfile"][k] else None) for k in ("seconds", "bytes", "maxrss_kib")}
            rows.append(row)
    finally:
        if not args.outdir:
            shutil.rmtree(outdir, ignore_errors=True)
    if args.json:
        json.dump({"vmcore": str(vmcore), "level": args.level, "threads": args.threads,
                   "repeat": args.repeat, "rows": rows}, sys.stdout, indent=1)
        print()
        return 0
    print(f"vmcore {vmcore} ({vmcore.stat().st_size / 2**20:.0f} MiB), -d {args.level}, "
          f"threads {args.threads}, median of {args.repeat}")
    print(f"{'codec':<7} {'kdlayout s':>10} {'mdf s':>8} {'ratio':>6}   {'kdl MiB':>8} "
          f"{'mdf MiB':>8} {'ratio':>6}   {'kdl RSS':>8} {'mdf RSS':>8} {'ratio':>6}")
    for r in rows:
        k, m, q = r["kdlayout"], r["makedumpfile"], r["ratio"]

        def f(x: object) -> str:
            return f"{x:6.2f}" if isinstance(x, float) else "     -"

        print(f"{r['codec']:<7} {k['seconds']:>10.2f} {m['seconds']:>8.2f} {f(q['seconds'])}"
              f"   {k['bytes'] / 2**20:>8.1f} {m['bytes'] / 2**20:>8.1f} {f(q['bytes'])}"
              f"   {k['maxrss_kib'] / 1024:>7.0f}M {m['maxrss_kib'] / 1024:>7.0f}M "
              f"{f(q['maxrss_kib'])}")
        if not (k["ok"] and m["ok"]):
            print("  (a run failed, see stderr)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
