"""``kdlayout info VMCORE [--json]``: what a crash dump is and what it holds.

The JSON output (``--json``) is one object with these keys (stable; absent facts are ``null``):

``path``          the dump path as given
``format``        ``elf-kexec``, ``elf-qemu``, ``diskdump``, ``flattened``, ...
``arch``          e.g. ``x86_64``
``release``       crashed kernel's ``uname -r`` (VMCOREINFO ``OSRELEASE``, else the format header)
``release_source``  ``"vmcoreinfo"``, ``"header"`` or ``null``
``build_id``      VMCOREINFO ``BUILD-ID`` (hex text)
``crash_time``    ``{"epoch": int, "iso": "YYYY-MM-DDTHH:MM:SSZ"}`` from VMCOREINFO ``CRASHTIME``
``page_size``     bytes (VMCOREINFO ``PAGESIZE``, else the format's)
``nr_cpus``       number of ``NT_PRSTATUS`` notes, else the format header's CPU count
``nr_cpus_source``  ``"prstatus"``, ``"header"`` or ``null``
``cpus``          ``[{"pid", "rip", "rsp"}]`` from each x86_64 ``NT_PRSTATUS`` (``pr_pid``, ``pr_reg``)
``dump_level``    makedumpfile dump level if the format records it
``incomplete``    true if the format marks the dump as incomplete
``memory``        ``{"count", "total_bytes", "total_pages", "ranges": [{"start", "end", "size"}]}``
                  (physical ranges held by the dump; integers)
``notes``         ``{"count": int, "types": {type name: count}}``
``vmcoreinfo``    ``null`` or ``{"keys", "warnings", "offset", "page_size", "kernel_offset",
                  "phys_base", "pgtable_l5_enabled", "symbols": {name: address}}``
``extra``         format-specific facts (``DumpInfo.extra``)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from typing import Any, TextIO

from ..dumpfile import open_dump
from ..errors import CorruptError
from ..notes import count_by_type, decode_prstatus_x86_64, find_vmcoreinfo, prstatus_notes
from ..physmem import PhysicalMemory
from ..vmcoreinfo import VmcoreInfo

#: Symbols shown in the VMCOREINFO summary when present.
KEY_SYMBOLS = ("init_uts_ns", "swapper_pg_dir", "init_top_pgt", "_stext", "mem_section",
               "vmemmap_base", "page_offset_base", "vmalloc_base", "node_data",
               "contig_page_data", "kallsyms_names")

#: Ranges printed by the text output unless ``--all-ranges``.
MAX_TEXT_RANGES = 32


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``info`` subcommand."""
    p = sub.add_parser(
        "info", help="show the format, kernel, CPUs and memory ranges of a crash dump",
        description="Show what a crash dump is: format, crashed kernel release and build id, "
                    "crash time, CPUs, stored physical memory ranges and a VMCOREINFO summary. "
                    "See the module docstring of kdlayout.commands.info or docs/formats.md for "
                    "the --json keys.")
    p.add_argument("vmcore", metavar="VMCORE")
    p.add_argument("--json", action="store_true", help="machine-readable output (one object)")
    p.add_argument("--all-ranges", action="store_true",
                   help=f"list every memory range (default: the first {MAX_TEXT_RANGES})")
    p.set_defaults(func=run)


def _vmcoreinfo_of(mem: PhysicalMemory) -> VmcoreInfo | None:
    note = find_vmcoreinfo(mem.notes)
    if note is not None:
        return VmcoreInfo.from_note(note, path=mem.info.path)
    raw = mem.vmcoreinfo
    if raw is not None:
        return VmcoreInfo.parse(raw, path=mem.info.path)
    return None


def _iso(epoch: int) -> str | None:
    try:
        return _dt.datetime.fromtimestamp(epoch, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return None


def collect(mem: PhysicalMemory) -> dict[str, Any]:
    """The ``info`` facts of an open dump as the stable JSON dict described in this module."""
    info = mem.info
    vi = _vmcoreinfo_of(mem)
    notes = list(mem.notes)

    release, release_source = None, None
    if vi is not None and vi.osrelease:
        release, release_source = vi.osrelease, "vmcoreinfo"
    elif info.release:
        release, release_source = info.release, "header"

    crash_time = None
    if vi is not None and vi.crash_time is not None:
        crash_time = {"epoch": vi.crash_time, "iso": _iso(vi.crash_time)}

    prs = prstatus_notes(notes)
    nprs = len(prs)
    cpus: list[dict[str, int]] = []
    if info.arch == "x86_64":
        for note in prs:
            try:
                pr = decode_prstatus_x86_64(note, path=info.path)
            except CorruptError:
                continue
            cpus.append({"pid": pr.pr_pid, "rip": pr.pr_reg.rip, "rsp": pr.pr_reg.rsp})
    if nprs:
        nr_cpus, cpus_source = nprs, "prstatus"
    elif info.nr_cpus is not None:
        nr_cpus, cpus_source = info.nr_cpus, "header"
    else:
        nr_cpus, cpus_source = None, None

    page_size = (vi.page_size if vi is not None and vi.page_size else None) or info.page_size
    ranges = list(mem.ranges())
    total = sum(r.size for r in ranges)

    vsum: dict[str, Any] | None = None
    if vi is not None:
        vsum = {
            "keys": len(vi),
            "warnings": len(vi.warnings),
            "offset": vi.base_offset,
            "page_size": vi.page_size,
            "kernel_offset": vi.kernel_offset,
            "phys_base": vi.phys_base,
            "pgtable_l5_enabled": vi.number("pgtable_l5_enabled"),
            "symbols": {s: vi.symbol(s) for s in KEY_SYMBOLS if vi.symbol(s) is not None},
        }

    return {
        "path": info.path,
        "format": info.format,
        "arch": info.arch,
        "release": release,
        "release_source": release_source,
        "build_id": vi.build_id if vi is not None else None,
        "crash_time": crash_time,
        "page_size": page_size,
        "nr_cpus": nr_cpus,
        "nr_cpus_source": cpus_source,
        "cpus": cpus,
        "dump_level": info.dump_level,
        "incomplete": info.incomplete,
        "memory": {
            "count": len(ranges),
            "total_bytes": total,
            "total_pages": total // page_size if page_size else None,
            "ranges": [{"start": r.start, "end": r.end, "size": r.size} for r in ranges],
        },
        "notes": {"count": len(notes), "types": count_by_type(notes)},
        "vmcoreinfo": vsum,
        "extra": {k: v for k, v in info.extra.items()
                  if isinstance(v, str | int | float | bool) or v is None},
    }


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def _hex(v: int | None) -> str:
    return "-" if v is None else f"{v:#x}"


def print_text(d: dict[str, Any], out: TextIO, *, all_ranges: bool = False) -> None:
    """The human-readable report of :func:`collect`'s dict."""
    ct = d["crash_time"]
    rows = [
        ("file", d["path"]),
        ("format", d["format"]),
        ("arch", d["arch"]),
        ("release", f"{d['release'] or '-'}"
                    + (f"  (from {d['release_source']})" if d["release_source"] else "")),
        ("build id", d["build_id"] or "-"),
        ("crash time", f"{ct['iso'] or '?'}  (epoch {ct['epoch']})" if ct else "-"),
        ("page size", str(d["page_size"])),
        ("cpus", f"{d['nr_cpus']}  (from {d['nr_cpus_source']})" if d["nr_cpus"] else "-"),
        ("dump level", "-" if d["dump_level"] is None else str(d["dump_level"])),
        ("incomplete", "yes" if d["incomplete"] else "no"),
    ]
    for k, v in rows:
        out.write(f"{k + ':':<12} {v}\n")
        if k == "cpus":
            for i, cpu in enumerate(d["cpus"]):
                out.write(f"{'':12} NT_PRSTATUS {i}: pid {cpu['pid']}  rip {cpu['rip']:#x}  "
                          f"rsp {cpu['rsp']:#x}\n")
    mem = d["memory"]
    out.write(f"\nmemory: {mem['count']} range(s), {mem['total_bytes']} bytes "
              f"({_size(mem['total_bytes'])}), {mem['total_pages']} pages\n")
    shown = mem["ranges"] if all_ranges else mem["ranges"][:MAX_TEXT_RANGES]
    if shown:
        out.write(f"  {'start':>18}  {'end':>18}  {'size':>12}\n")
        for r in shown:
            out.write(f"  {r['start']:#18x}  {r['end']:#18x}  {_size(r['size']):>12}\n")
    if len(shown) < mem["count"]:
        out.write(f"  ... {mem['count'] - len(shown)} more (--all-ranges)\n")
    notes = d["notes"]
    types = ", ".join(f"{k} x{v}" for k, v in notes["types"].items())
    out.write(f"\nnotes: {notes['count']}" + (f"  ({types})" if types else "") + "\n")
    vi = d["vmcoreinfo"]
    if vi is None:
        out.write("\nvmcoreinfo: none\n")
        return
    out.write(f"\nvmcoreinfo: {vi['keys']} keys at offset {vi['offset']:#x}"
              + (f", {vi['warnings']} warning(s)" if vi["warnings"] else "") + "\n")
    out.write(f"  PAGESIZE={vi['page_size']}  KERNELOFFSET={_hex(vi['kernel_offset'])}  "
              f"phys_base={_hex(vi['phys_base'])}  "
              f"pgtable_l5_enabled={vi['pgtable_l5_enabled']}\n")
    for name, addr in vi["symbols"].items():
        out.write(f"  SYMBOL({name})={addr:#x}\n")


def run(args: argparse.Namespace) -> int:
    """Open the dump, print its facts; errors propagate to the CLI (one line, exit 2)."""
    with open_dump(args.vmcore) as mem:
        d = collect(mem)
    try:
        if args.json:
            json.dump(d, sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            print_text(d, sys.stdout, all_ranges=args.all_ranges)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``| head``): not an error; silence the flush at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 0
