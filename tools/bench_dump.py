#!/usr/bin/env python3
"""Benchmark: ``kdlayout dump`` against makedumpfile writing the same filtered dump.

For each codec, the tools run on the same vmcore in the same invocation, same dump level,
interleaved (kdlayout, makedumpfile, makedumpfile threaded, then again): ``kdlayout dump -d LEVEL
-X [--num-threads N] VMCORE OUT``, ``makedumpfile -d LEVEL -X VMCORE OUT`` (its default: no
threads) and ``makedumpfile -d LEVEL -X --num-threads M VMCORE OUT``. Each run is a child process;
wall time is measured around it and peak RSS is the child's ``VmHWM`` (polled; see
:func:`peak_rss_kib`), with the peak sums of ``VmRSS`` and ``Pss`` over it and its own children
(kdlayout's compression worker processes) beside it. The
report gives, per codec, wall time, output size and peak RSS of each, and the kdlayout /
makedumpfile ratios (median of ``--repeat`` runs).

Usage: python tools/bench_dump.py [VMCORE] [--level 31] [--codecs c,l,z,p] [--threads N]
                                  [--mdf-threads M] [--repeat N] [--makedumpfile PATH]
                                  [--outdir DIR] [--json] [--no-cache]
``--no-cache``: kdlayout resolves the layout afresh in every run (a cold resolve, as in a kdump
capture kernel), so its peak memory is measured too.
Default VMCORE: the largest fixture vmcore. Without ``--threads`` kdlayout picks its per-codec
default; ``--mdf-threads 0`` leaves out the threaded makedumpfile run (default 2).

``--rss-sizes 1,4,16`` instead measures kdlayout alone on synthetic sparse ELF cores of those
sizes in GiB (one PT_LOAD from 0; every 64th page holds data, the rest is zeros in file holes;
``-d 1``), to show that time grows with the size and peak RSS does not.

kdlayout's byte code is compiled first (``compileall``; ``PYTHONDONTWRITEBYTECODE`` only stops
writing it), as an installed package has it: otherwise every run would compile ~0.2 s of source.
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
    tree_rss_kib: int = 0       # peak sum of VmRSS of the child and its children (workers)
    tree_pss_kib: int = 0       # peak sum of their Pss (shared pages split between them)


def _largest_fixture() -> Path | None:
    from fixtures import load_fixtures

    cores = [p for f in load_fixtures(include_big=True) if (p := f.path("vmcore")) is not None]
    return max(cores, key=lambda p: p.stat().st_size, default=None)


def _status_kib(pid: int, key: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Peaks(NamedTuple):
    """Peak memory of a run: the child's ``VmHWM``; the peak sums over it and its own children
    (kdlayout's compression workers) of ``VmRSS`` (shared pages counted in each) and of
    ``Pss`` (shared pages split between the processes sharing them)."""

    hwm_kib: int
    tree_rss_kib: int
    tree_pss_kib: int


def peak_rss_kib(proc: subprocess.Popen[bytes]) -> Peaks:
    """Peak RSS of a running child: its ``VmHWM``, polled every 2 ms until it exits (left
    unreaped for the caller). ``wait4``'s ``ru_maxrss`` is no use here: Linux folds the RSS of
    the memory the child had before ``exec`` into it, and with ``vfork`` that is this (parent)
    process's peak. The sums over the child and its children are polled too (``Pss`` every
    20 ms: reading it walks the page tables)."""
    peak = tree = pss = 0
    polls = 0
    while True:
        peak = max(peak, _status_kib(proc.pid, "VmHWM:"))
        kids = _children(proc.pid)
        tree = max(tree, sum(_status_kib(p, "VmRSS:") for p in [proc.pid, *kids]))
        if polls % 10 == 0:
            pss = max(pss, sum(_pss_kib(p) for p in [proc.pid, *kids]))
        polls += 1
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return Peaks(peak, tree, pss)
        time.sleep(0.002)


def run_child(cmd: list[str], out: Path) -> Run:
    """Run ``cmd`` (writing ``out``); wall time, output size, peak RSS of that child."""
    if out.exists():
        out.unlink()
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        peaks = peak_rss_kib(proc)
        status = proc.wait()
        seconds = time.perf_counter() - t0
        if status != 0:
            err.seek(0)
            sys.stderr.write(f"{' '.join(cmd)}: exit {status}\n"
                             f"{err.read().decode(errors='replace')}")
    size = out.stat().st_size if out.exists() else 0
    return Run(seconds, size, peaks.hwm_kib, status, peaks.tree_rss_kib, peaks.tree_pss_kib)


def sparse_core(path: Path, gib: int) -> None:
    """A sparse ELF64 x86_64 core of ``gib`` GiB of RAM at physical address 0: every 64th page
    holds compressible non-zero bytes, the others are file holes (zeros)."""
    from synth import EHDR, PHDR, PT_LOAD, PT_NOTE, SAMPLE_VMCOREINFO, note_bytes, prstatus_desc

    notes = (note_bytes("CORE", 1, prstatus_desc(1))
             + note_bytes("VMCOREINFO", 0, SAMPLE_VMCOREINFO.encode()))
    ps = 4096
    size = gib << 30
    data_off = -(-(64 + 2 * 56 + len(notes)) // ps) * ps
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    head = (EHDR.pack(ident, 4, 62, 1, 0, 64, 0, 0, 64, 56, 2, 0, 0, 0)
            + PHDR.pack(PT_NOTE, 0, 64 + 2 * 56, 0, 0, len(notes), len(notes), 0)
            + PHDR.pack(PT_LOAD, 7, data_off, 0, 0, size, size, 0) + notes)
    page = (bytes(range(256)) * (ps // 256))[:ps // 2] + bytes(ps // 2)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(data_off + size)
        for pfn in range(0, size // ps, 64):
            f.seek(data_off + pfn * ps)
            f.write(page)


def rss_scan(sizes: list[int], codecs: list[str], outdir: Path) -> int:
    """kdlayout ``-d 1`` on sparse cores of ``sizes`` GiB: wall time, output size, peak RSS."""
    kd = [sys.executable, "-m", "kdlayout.cli", "dump"]
    print(f"{'GiB':>4} {'codec':<7} {'s':>6} {'MiB':>7} {'RSS MiB':>8} {'tree PSS':>8}")
    for gib in sizes:
        core = outdir / f"sparse{gib}.core"
        sparse_core(core, gib)
        with open(core, "rb") as f:                # page cache warm, as for the fixtures
            while f.read(1 << 24):
                pass
        try:
            for letter in codecs:
                out = outdir / f"sparse{gib}.{letter}"
                r = run_child([*kd, "-d", "1", f"-{letter}", "--message-level", "0", str(core),
                               str(out)], out)
                print(f"{gib:>4} {CODEC_NAMES[letter]:<7} {r.seconds:>6.2f} "
                      f"{r.size / 2**20:>7.1f} {r.maxrss_kib / 1024:>8.0f} "
                      f"{r.tree_pss_kib / 1024:>8.0f}"
                      + ("" if r.status == 0 else "  (failed)"))
                out.unlink(missing_ok=True)
        finally:
            core.unlink()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("vmcore", nargs="?")
    ap.add_argument("--level", type=int, default=31)
    ap.add_argument("--codecs", default="c,l,z", help="makedumpfile codec letters (c,l,z,p)")
    ap.add_argument("--threads", type=int, default=None,
                    help="kdlayout --num-threads (default: its per-codec default)")
    ap.add_argument("--mdf-threads", type=int, default=2,
                    help="makedumpfile --num-threads of the threaded run (0: no such run)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--makedumpfile", default="/usr/bin/makedumpfile")
    ap.add_argument("--outdir", help="where the outputs go (default: a temporary directory)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-cache", action="store_true",
                    help="kdlayout resolves the layout afresh in every run (no layout cache)")
    ap.add_argument("--rss-sizes", help="GiB list: kdlayout alone on sparse synthetic cores")
    args = ap.parse_args()
    if args.rss_sizes:
        outdir = Path(args.outdir or tempfile.mkdtemp(prefix="bench_dump."))
        outdir.mkdir(parents=True, exist_ok=True)
        try:
            return rss_scan([int(x) for x in args.rss_sizes.split(",")],
                            args.codecs.split(","), outdir)
        finally:
            if not args.outdir:
                shutil.rmtree(outdir, ignore_errors=True)
    vmcore = Path(args.vmcore) if args.vmcore else _largest_fixture()
    if vmcore is None:
        print("no VMCORE given and no fixture built", file=sys.stderr)
        return 2
    outdir = Path(args.outdir) if args.outdir else Path(tempfile.mkdtemp(prefix="bench_dump."))
    outdir.mkdir(parents=True, exist_ok=True)
    import compileall

    import kdlayout
    compileall.compile_dir(str(Path(kdlayout.__file__).parent), quiet=1)
    kd = [sys.executable, "-m", "kdlayout.cli", "dump"]
    if args.no_cache:       # a cold resolve every run, as in a kdump capture kernel
        kd.append("--no-cache")
    mdf_variants: list[tuple[str, list[str]]] = [("makedumpfile", [])]
    if args.mdf_threads > 0:
        mdf_variants.append((f"makedumpfile_t{args.mdf_threads}",
                             ["--num-threads", str(args.mdf_threads)]))
    rows: list[dict[str, Any]] = []
    try:
        for letter in args.codecs.split(","):
            name = CODEC_NAMES[letter]
            ours_out = outdir / f"kdlayout.{name}"
            k_threads = ["--num-threads", str(args.threads)] if args.threads is not None else []
            runs: dict[str, list[Run]] = {"kdlayout": []}
            runs.update({who: [] for who, _ in mdf_variants})
            common = ["-d", str(args.level), f"-{letter}", "--message-level", "0", str(vmcore)]
            for _ in range(args.repeat):
                runs["kdlayout"].append(run_child([*kd, *k_threads, *common, str(ours_out)],
                                                  ours_out))
                for who, extra in mdf_variants:
                    out = outdir / f"{who}.{name}"
                    runs[who].append(run_child([args.makedumpfile, *extra, *common, str(out)],
                                               out))

            def med(rs: list[Run], field: str) -> float:
                return float(statistics.median(getattr(r, field) for r in rs))

            row: dict[str, Any] = {"codec": name}
            for who, rs in runs.items():
                row[who] = {"seconds": med(rs, "seconds"), "bytes": med(rs, "size"),
                            "maxrss_kib": med(rs, "maxrss_kib"),
                            "tree_rss_kib": med(rs, "tree_rss_kib"),
                            "tree_pss_kib": med(rs, "tree_pss_kib"),
                            "ok": all(r.status == 0 for r in rs)}
            for who, _ in mdf_variants:
                row[f"ratio_{who}"] = {
                    k: (row["kdlayout"][k] / row[who][k] if row[who][k] else None)
                    for k in ("seconds", "bytes", "maxrss_kib")}
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
          f"kdlayout threads {args.threads if args.threads is not None else 'default'}, "
          f"median of {args.repeat}; ratio = kdlayout / makedumpfile")
    print(f"{'codec':<7} {'tool':<16} {'s':>6} {'MiB':>7} {'RSS MiB':>8} {'tree RSS':>8} "
          f"{'tree PSS':>8}   {'time':>6} {'size':>6} {'RSS':>6}")

    def f(x: object) -> str:
        return f"{x:6.2f}" if isinstance(x, float) else "     -"

    for r in rows:
        for who in ("kdlayout", *(w for w, _ in mdf_variants)):
            m = r[who]
            q = r.get(f"ratio_{who}")
            ratios = (f"   {f(q['seconds'])} {f(q['bytes'])} {f(q['maxrss_kib'])}"
                      if q else "")
            print(f"{r['codec']:<7} {who:<16} {m['seconds']:>6.2f} {m['bytes'] / 2**20:>7.1f} "
                  f"{m['maxrss_kib'] / 1024:>8.0f} {m['tree_rss_kib'] / 1024:>8.0f} "
                  f"{m['tree_pss_kib'] / 1024:>8.0f}{ratios}")
            if not m["ok"]:
                print("  (a run failed, see stderr)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
