#!/usr/bin/env python3
"""Benchmark: kdlayout's page scan against makedumpfile's "Excluding unnecessary pages" step.

Both run on the same vmcore in the same invocation, repeated; the report gives medians and
ratios, and the floor any scanner has: reading the whole memmap once (a numpy sum over the
dump's views of every struct page, with one thread and with N; the faster counts). The floor is
taken with the memmap already mapped in (``memmap_read_floor_s``: memory bandwidth, the issue's
limit) and from an unmapped file (``memmap_first_read_s``: the page faults that any process
reading a dump it has just opened pays first); ``memmap_pread_copy_1thread_s`` copies the memmap
out of the file with ``preadv`` instead, as makedumpfile reads it. Every timed scan starts with
the dump unmapped, like a fresh process.

* kdlayout "classify": ``scan(dump, layout, dump_level=30, threads=N)`` (and with one thread, for
  reference) -- every ``struct page`` rule, no
  page content (makedumpfile's exclusion step does not read page content either; it tests zero
  pages while copying data).
* kdlayout "zero": the extra seconds of ``dump_level=31`` over 30 (page content of the pages still
  kept).
* makedumpfile: ``makedumpfile --message-level 31 -d 31 -c VMCORE OUT`` prints
  ``STEP [Excluding unnecessary pages] : S seconds`` once per pass over the memmap (it makes two:
  one to count, one to write); both are reported, the ratio uses the mean per pass.

Usage: python tools/bench_scan.py [VMCORE] [--makedumpfile PATH | --peer SUITE] [--repeat N]
                                  [--threads N] [--json]
Default VMCORE: the largest fixture vmcore. Default makedumpfile: /usr/bin/makedumpfile.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kdlayout.dumpfile import open_dump
from kdlayout.memmodel import build_memmap
from kdlayout.physmem import release_view
from kdlayout.resolver import ResolveOptions, resolve
from kdlayout.scanner import scan

_STEP = re.compile(r"STEP \[Excluding unnecessary pages\] : ([0-9.]+) seconds")


def _largest_fixture() -> Path | None:
    from fixtures import load_fixtures

    cores = [p for f in load_fixtures(include_big=True) if (p := f.path("vmcore")) is not None]
    return max(cores, key=lambda p: p.stat().st_size, default=None)


def _makedumpfile(exe: list[str], vmcore: Path) -> tuple[list[float], float]:
    """Seconds of each "Excluding unnecessary pages" pass, and the wall time of the run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dump"
        t = time.perf_counter()
        r = subprocess.run([*exe, "--message-level", "31", "-d", "31", "-c", str(vmcore),
                            str(out)], capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t
    steps = [float(x) for x in _STEP.findall(r.stdout + r.stderr)]
    if r.returncode != 0 or not steps:
        raise SystemExit(f"makedumpfile failed ({r.returncode}): {(r.stdout + r.stderr)[-400:]}")
    return steps, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("vmcore", nargs="?", type=Path)
    ap.add_argument("--makedumpfile", default="/usr/bin/makedumpfile",
                    help="makedumpfile command (split on spaces)")
    ap.add_argument("--peer", metavar="SUITE",
                    help="use the makedumpfile tools/peers.py unpacked from this Debian suite "
                         "(e.g. trixie: 1.7.6); offline, from the cache")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    vmcore = args.vmcore or _largest_fixture()
    if vmcore is None:
        raise SystemExit("no vmcore given and no fixture built")
    exe = args.makedumpfile.split()
    if args.peer:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from fixtures import cache_dir
        from peers import cached_peer

        tool = cached_peer("makedumpfile", "makedumpfile", args.peer, cache_dir())
        if tool is None:
            raise SystemExit(f"no unpacked makedumpfile peer for {args.peer}: run "
                             "tools/build_fixtures.py first")
        exe = list(tool.command)

    with open_dump(vmcore) as dump:
        t = time.perf_counter()
        layout = resolve(dump, ResolveOptions(use_cache=False)).layout
        t_resolve = time.perf_counter() - t
        t = time.perf_counter()
        mm = build_memmap(dump, layout)
        t_memmap = time.perf_counter() - t
        psize = mm.page_struct_size
        classify, classify1, zero, floor, md_steps, md_wall = [], [], [], [], [], []
        cold: list[float] = []
        copied: list[float] = []
        views = [dump.view(c.paddr, c.nr_pages * psize).view("<u8") for c in mm.chunks]
        pieces = [v[i:i + (1 << 20)] for v in views for i in range(0, len(v), 1 << 20)]

        def touch(part: list[np.ndarray]) -> int:
            return sum(int(p.sum(dtype=np.uint64)) for p in part)

        def unmap() -> None:
            # every timed run starts with no page of the dump mapped in this process, as a
            # fresh process would (the data stays in the page cache)
            for v in views:
                release_view(v, whole_mapping=True)

        def touch_all(cold: bool) -> float:
            if cold:
                unmap()
            t = time.perf_counter()
            touch(pieces)
            f1 = time.perf_counter() - t
            if cold:
                unmap()
            t = time.perf_counter()
            with ThreadPoolExecutor(max(1, args.threads)) as ex:
                list(ex.map(touch, [pieces[i::args.threads] for i in range(args.threads)]))
            return min(f1, time.perf_counter() - t)

        def copy_all() -> float:
            # what a reader that copies the memmap out of the file (pread) pays, one thread
            buf = np.empty(1 << 22, dtype=np.uint8)
            t = time.perf_counter()
            for c in mm.chunks:
                done, size = 0, c.nr_pages * psize
                while done < size:
                    n = min(size - done, len(buf))
                    dump.read_into(c.paddr + done, buf[:n])
                    done += n
            return time.perf_counter() - t

        for _ in range(args.repeat):
            # the floor: touch every struct page once, with one thread and with --threads
            # (numpy's sum releases the GIL); the faster is the limit. Measured twice: with the
            # pages already mapped in (memory bandwidth) and from an unmapped file (page faults
            # included, what any process reading the dump through mmap pays first)
            cold.append(touch_all(True))
            floor.append(touch_all(False))
            copied.append(copy_all())
            unmap()
            t = time.perf_counter()
            scan(dump, layout, dump_level=30, memmap=mm, threads=1)
            classify1.append(time.perf_counter() - t)
            unmap()
            t = time.perf_counter()
            scan(dump, layout, dump_level=30, memmap=mm, threads=args.threads)
            c30 = time.perf_counter() - t
            unmap()
            t = time.perf_counter()
            scan(dump, layout, dump_level=31, memmap=mm, threads=args.threads)
            c31 = time.perf_counter() - t
            classify.append(c30)
            zero.append(max(c31 - c30, 0.0))
            steps, wall = _makedumpfile(exe, vmcore)
            md_steps.append(statistics.fmean(steps))
            md_wall.append(wall)

    med = statistics.median
    res = {
        "vmcore": str(vmcore),
        "pages": mm.nr_pages,
        "repeat": args.repeat,
        "threads": args.threads,
        "makedumpfile": " ".join(exe),
        "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
        "kdlayout_resolve_s": round(t_resolve, 4),
        "kdlayout_memmap_s": round(t_memmap, 4),
        "kdlayout_classify_s": round(med(classify), 4),
        "kdlayout_classify_1thread_s": round(med(classify1), 4),
        "kdlayout_zero_s": round(med(zero), 4),
        "memmap_read_floor_s": round(med(floor), 4),
        "memmap_first_read_s": round(med(cold), 4),
        "memmap_pread_copy_1thread_s": round(med(copied), 4),
        "makedumpfile_exclude_step_s": round(med(md_steps), 4),
        "makedumpfile_wall_s": round(med(md_wall), 3),
        "ratio_classify_vs_makedumpfile": round(med(classify) / med(md_steps), 2),
        "ratio_classify_vs_floor": round(med(classify) / med(floor), 2),
        "ratio_makedumpfile_vs_floor": round(med(md_steps) / med(floor), 2),
        "ratio_classify_vs_first_read": round(med(classify) / med(cold), 2),
    }
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        for k, v in res.items():
            print(f"{k:34} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
