#!/usr/bin/env python3
"""Benchmark kdlayout.btf: cold parse and the resolver's typical member queries.

Usage: tools/bench_btf.py [FILE ...] [--scan IMAGE ...]   (default /sys/kernel/btf/vmlinux; FILE may be raw BTF, a
vmlinux ELF or a vmlinuz; a vmlinuz is decompressed first and that time is reported apart).

For each input prints one row: size of the BTF, number of types, parse time, name-index build,
50 struct page/zone/free_area/... member queries (cold: first query builds the name index;
warm: the same 50 again), enumerator lookups, the full vectorised check(), and decoding every type.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kdlayout.btf import Btf
from kdlayout.errors import KdlayoutError, MissingDataError

# 50 queries the resolver and scanner make (member paths through anonymous unions included).
QUERIES: list[tuple[str, str]] = [
    ("page", p) for p in (
        "flags", "compound_head", "compound_info", "_mapcount", "page_type", "lru", "lru.next",
        "lru.prev", "mapping", "private", "index", "__folio_index", "_refcount", "memcg_data",
        "buddy_list", "pcp_list", "pp_magic", "dma_addr", "zone_device_data", "callback_head",
        "flags.f")
] + [
    ("zone", p) for p in (
        "free_area", "free_area[0].free_list", "free_area[3].nr_free", "zone_start_pfn",
        "spanned_pages", "present_pages", "managed_pages", "name", "zone_pgdat", "lock",
        "_watermark", "vm_stat", "node")
] + [
    ("free_area", p) for p in ("free_list", "nr_free")
] + [
    ("pglist_data", p) for p in ("node_zones", "node_start_pfn", "node_present_pages",
                                 "node_spanned_pages", "node_id", "nr_zones")
] + [
    ("folio", p) for p in ("flags", "lru", "mapping", "index", "_mapcount", "_refcount",
                           "_large_mapcount", "_folio_nr_pages")
]
QUERIES = QUERIES[:50]
ENUMERATORS = ["PG_locked", "PG_slab", "PG_head", "PG_buddy", "PGTY_buddy", "PGTY_slab",
               "__NR_PAGEFLAGS", "ZONE_NORMAL", "MAX_NR_ZONES", "NR_FREE_PAGES"]


def scan(path: Path) -> tuple[int, int, int, float]:
    """find_btf_blob over ``path`` (e.g. a vmcore) mapped read-only: (offset, bytes, types, s)."""
    import mmap

    from kdlayout.btf import find_btf_blob

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        t0 = time.perf_counter()
        off, btf = find_btf_blob(m, source=str(path))
        took = time.perf_counter() - t0
    return off, btf.header.blob_size, btf.nr_types - 1, took


def _load(path: Path) -> tuple[bytes, float, str]:
    """Raw BTF bytes of ``path`` and how long getting them took (decompression included)."""
    from kdlayout.vmlinuz import elf_section, extract_vmlinux

    t0 = time.perf_counter()
    data = path.read_bytes()
    kind = "raw"
    if data[:4] == b"\x7fELF":
        data = bytes(elf_section(data, ".BTF", source=str(path))[1])
        kind = "elf"
    elif data[:2] not in (b"\x9f\xeb", b"\xeb\x9f"):
        elf = extract_vmlinux(data, source=str(path))
        data = bytes(elf_section(elf, ".BTF", source=str(path))[1])
        kind = "vmlinuz"
    return data, time.perf_counter() - t0, kind


def bench(path: Path) -> dict[str, float | int | str]:
    """Measure one input; returns the row."""
    data, load_s, kind = _load(path)
    t0 = time.perf_counter()
    btf = Btf.parse(data, source=str(path))
    parse_s = time.perf_counter() - t0

    def run_queries() -> tuple[float, int]:
        ok = 0
        t = time.perf_counter()
        for struct_name, member in QUERIES:
            try:
                btf.member_offset(struct_name, member)
                ok += 1
            except MissingDataError:
                pass
        return time.perf_counter() - t, ok

    cold_s, answered = run_queries()
    warm_s, _ = run_queries()
    t0 = time.perf_counter()
    enums = 0
    for e in ENUMERATORS:
        try:
            btf.enum_value(None, e)
            enums += 1
        except MissingDataError:
            pass
    enum_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    btf.check()
    check_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in btf:
        pass
    decode_s = time.perf_counter() - t0
    return {"input": f"{path} ({kind})", "bytes": len(data), "types": btf.nr_types - 1,
            "load_s": load_s, "parse_s": parse_s, "q50_cold_s": cold_s, "q50_warm_s": warm_s,
            "answered": answered, "enum_s": enum_s, "enums": enums, "check_s": check_s,
            "decode_all_s": decode_s}


def main(argv: list[str] | None = None) -> int:
    """Print the table; exit 1 if an input fails to parse."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path, default=[Path("/sys/kernel/btf/vmlinux")])
    ap.add_argument("--scan", nargs="*", type=Path, default=[], metavar="IMAGE",
                    help="also time find_btf_blob over these files (vmcores, memory images)")
    args = ap.parse_args(argv)
    cols = [("bytes", "{:>9}"), ("types", "{:>7}"), ("load_s", "{:>7.3f}"),
            ("parse_s", "{:>8.3f}"), ("q50_cold_s", "{:>10.3f}"), ("q50_warm_s", "{:>10.4f}"),
            ("answered", "{:>8}"), ("enum_s", "{:>7.4f}"), ("check_s", "{:>8.3f}"),
            ("decode_all_s", "{:>12.3f}")]
    print(" ".join(f"{c:>{len(fmt.format(0) if 'f' not in fmt else fmt.format(0.0))}}"
                   for c, fmt in cols) + "  input")
    rc = 0
    for f in args.files:
        try:
            row = bench(f)
        except (KdlayoutError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            rc = 1
            continue
        print(" ".join(fmt.format(row[c]) for c, fmt in cols) + f"  {row['input']}")
    if args.scan:
        print(f"\n{'found at':>12} {'bytes':>9} {'types':>7} {'scan_s':>7}  scanned file")
    for f in args.scan:
        try:
            off, size, ntypes, took = scan(f)
        except (KdlayoutError, OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            rc = 1
            continue
        print(f"{off:>#12x} {size:>9} {ntypes:>7} {took:>7.3f}  {f}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
