"""``kdlayout scan``: classify every page frame like makedumpfile's dump levels."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TextIO

import numpy as np

from ..dumpfile import open_dump
from ..memmodel import build_memmap
from ..png import write_indexed
from ..resolver import resolve
from ..scanner import CLASS_NAMES, ScanResult, primary_classes, scan
from .common import add_source_arguments, resolve_options

#: Palette of ``--png``: index -> (name, RGB). Documented in docs/scanner.md.
PNG_CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("free", (46, 160, 67)),            # green
    ("cache", (66, 133, 244)),          # blue
    ("cache_private", (0, 188, 212)),   # cyan
    ("user", (251, 140, 0)),            # orange
    ("hwpoison", (229, 57, 53)),        # red
    ("offline", (142, 36, 170)),        # purple
    ("zero", (255, 235, 59)),           # yellow
    ("kept", (240, 240, 240)),          # near white
    ("hole", (0, 0, 0)),                # black: no RAM in the dump
)
_LABELS = {
    "zero": "Pages filled with zero",
    "cache": "Non-private cache pages",
    "cache_private": "Private cache pages",
    "user": "User process data pages",
    "free": "Free pages",
    "hwpoison": "Hwpoison pages",
    "offline": "Offline pages",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "scan", help="classify every page frame like makedumpfile's dump levels",
        description="Resolve the crashed kernel's layout, locate its struct page array and "
                    "classify every page frame (zero, page cache, private cache, user data, free, "
                    "hwpoison, offline) as makedumpfile's -d dump levels do; report what a dump "
                    "at LEVEL keeps.")
    p.add_argument("vmcore", metavar="VMCORE")
    p.add_argument("-d", "--dump-level", type=int, default=31, metavar="LEVEL",
                   help="makedumpfile dump level 0-31 (default 31)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--png", metavar="FILE", help="draw physical memory coloured by class")
    p.add_argument("--png-pages", type=int, default=1, metavar="N",
                   help="pages per pixel of --png (default 1); a pixel shows its commonest class")
    p.add_argument("--png-width", type=int, default=512, metavar="PX",
                   help="pixels per row of --png (default 512)")
    p.add_argument("--window", type=int, metavar="PAGES",
                   help="scan this many pfns at a time, keeping only 2 bits per page")
    p.add_argument("--threads", type=int, default=2, metavar="N", help="worker threads (2)")
    add_source_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.dump_level <= 31:
        print("kdlayout: dump level must be 0..31", file=sys.stderr)
        return 2
    if args.png_pages < 1 or args.png_width < 1:
        print("kdlayout: --png-pages and --png-width must be positive", file=sys.stderr)
        return 2
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with open_dump(args.vmcore) as dump:
        timings["open"] = time.perf_counter() - t0
        t = time.perf_counter()
        result = resolve(dump, resolve_options(args))
        timings["resolve"] = time.perf_counter() - t
        t = time.perf_counter()
        memmap = build_memmap(dump, result.layout)
        timings["memmap"] = time.perf_counter() - t
        res = scan(dump, result.layout, dump_level=args.dump_level, window_pages=args.window,
                   threads=args.threads, memmap=memmap)
        timings.update(res.timings)
        if args.png:
            t = time.perf_counter()
            draw_png(args.png, res, args.png_pages, args.png_width)
            timings["png"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    res.timings = timings
    if args.json:
        out = res.to_json()
        out["release"] = result.layout.release
        out["vmcore"] = args.vmcore
        json.dump(out, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print_report(res, result.layout.release, sys.stdout)
    return 0


def pixel_classes(res: ScanResult) -> np.ndarray:
    """Per pfn, an index into :data:`PNG_CLASSES`."""
    valid = res.valid
    if res.codes is not None:
        cls = primary_classes(res.codes, res.dump_level)     # 0..6 excluded, 7 kept
    else:
        cls = np.where(res.dumpable, np.uint8(len(CLASS_NAMES)), np.uint8(0))
    out: np.ndarray = np.where(valid, cls, np.uint8(len(PNG_CLASSES) - 1)).astype(np.uint8)
    return out


def draw_png(path: str, res: ScanResult, pages_per_pixel: int, width: int) -> None:
    """Physical memory as an image: pfn 0 top left, rows of ``width`` pixels, each pixel the
    commonest class of its ``pages_per_pixel`` pages (palette :data:`PNG_CLASSES`)."""
    cls = pixel_classes(res)
    n = -(-len(cls) // pages_per_pixel)
    pad = n * pages_per_pixel - len(cls)
    if pad:
        cls = np.concatenate([cls, np.full(pad, len(PNG_CLASSES) - 1, np.uint8)])
    k = len(PNG_CLASSES)
    if pages_per_pixel == 1:
        pix = cls
    else:
        grid = cls.reshape(n, pages_per_pixel)
        votes = np.stack([(grid == i).sum(axis=1) for i in range(k)], axis=1)
        pix = votes.argmax(axis=1).astype(np.uint8)
    rows = -(-n // width)
    img = np.full(rows * width, k - 1, dtype=np.uint8)
    img[:n] = pix
    write_indexed(path, img.reshape(rows, width), [rgb for _, rgb in PNG_CLASSES])


def print_report(res: ScanResult, release: str | None, out: TextIO) -> None:
    """A report shaped like makedumpfile's ``--message-level 31`` summary."""
    ps = res.page_size
    valid = res.nr_valid
    excluded = sum(res.counts.values())

    def line(label: str, pages: int) -> str:
        return f"{label:<28}: 0x{pages:016x} {pages:>10} pages {pages * ps / 2**20:>10.1f} MiB\n"

    out.write(f"kernel {release or '?'}  dump level {res.dump_level}  page size {ps}\n\n")
    out.write(line("Original pages", valid))
    out.write(line("  Excluded pages", excluded))
    for name in ("zero", "cache", "cache_private", "user", "free", "hwpoison", "offline"):
        out.write(line(f"    {_LABELS[name]}", res.counts[name]))
    out.write(line("  Remaining pages", valid - excluded))
    if valid:
        out.write(f"  (The number of pages is reduced to {(valid - excluded) * 100 // valid}%.)\n")
    out.write(line("Memory Hole", res.max_pfn - valid))
    out.write("-" * 50 + "\n")
    out.write(line("Total pages", res.max_pfn))
    out.write(f"\npages with a struct page in the dump: {res.memmap_pages}\n")
    if res.anomalies:
        out.write(f"\n{len(res.anomalies)} anomaly kind(s) (pages kept):\n")
        for a in res.anomalies.values():
            ex = ", ".join(hex(p) for p in a.examples)
            out.write(f"  {a.kind}: {a.pages} page(s); {a.detail}"
                      f"{'; e.g. pfn ' + ex if ex else ''}\n")
    out.write("\nseconds: " + ", ".join(f"{k} {v:.3f}" for k, v in res.timings.items()) + "\n")
