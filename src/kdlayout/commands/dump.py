"""``kdlayout dump``: write a filtered kdump-compressed dump, a drop-in for makedumpfile.

Option names and meanings follow makedumpfile (``makedumpfile -c -d 31 /proc/vmcore DUMPFILE``
as kdump-tools runs it): ``-d`` dump level, ``-c/-l/-p/-z`` page compression (none: pages stored
raw), ``-F`` flattened format on stdout, ``--num-threads``, ``-x`` vmlinux, ``-i`` VMCOREINFO file,
``--message-level``, ``-E`` (ELF output, uncompressed), ``--split`` (a set of files by pfn
range), ``--check-params``, ``--dry-run`` (everything but the output: no file, not even a
temporary one), ``--show-stats`` (the page report, message bit 16), ``--reassemble`` (a split
set joined into one file, see :mod:`kdlayout.splitset`), ``-D``; ``-b``,
``--cyclic-buffer``, ``--non-cyclic``, ``--splitblock-size`` and ``--work-dir`` are accepted and checked but tune only makedumpfile's
internals (no effect here); ``--dump-dmesg`` (the crashed kernel's log
to DUMPFILE instead of a dump, see ``kdlayout.commands.dmesg``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ..compress import backend_name, compressor_factory
from ..diskdump_write import FlatSink, OutOfSpace, SinkStats
from ..dumpfile import open_dump
from ..errors import KdlayoutError
from ..physmem import PhysicalMemory
from ..resolver import resolve
from ..splitset import reassemble_split
from ..writer import (
    CODEC_FLAGS,
    DEFAULT_THREADS,
    IncompleteDumpError,
    PageBitmaps,
    WriteOptions,
    WriteResult,
    check_outputs,
    level0_bitmaps,
    scan_bitmaps,
    split_ranges,
    write_dump_file,
    write_elf,
    write_kdump,
    write_split_files,
)
from .common import add_source_arguments, resolve_options
from .dmesg import add_dmesg_arguments, dump_dmesg

#: makedumpfile's --message-level bits.
ML_PROGRESS = 1
ML_COMMON = 2
ML_ERROR = 4
ML_REPORT = 16
DEFAULT_MESSAGE_LEVEL = ML_PROGRESS | ML_COMMON | ML_ERROR

_LABELS = (("zero", "Pages filled with zero"), ("cache", "Non-private cache pages"),
           ("cache_private", "Private cache pages"), ("user", "User process data pages"),
           ("free", "Free pages"), ("hwpoison", "Hwpoison pages"), ("offline", "Offline pages"))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dump", help="write a filtered kdump-compressed dump (makedumpfile drop-in)",
        description="Classify every page frame of VMCORE at dump level LEVEL and write the kept "
                    "pages to DUMPFILE in makedumpfile's kdump-compressed format (crash, drgn and "
                    "makedumpfile read it). The file appears under its name only when complete.")
    p.add_argument("vmcore", metavar="VMCORE")
    p.add_argument("dumpfile", metavar="DUMPFILE", nargs="?")
    p.add_argument("more_dumpfiles", metavar="DUMPFILE2", nargs="*",
                   help="with --split: the further files of the set")
    p.add_argument("-d", "--dump-level", type=int, default=0, metavar="LEVEL",
                   help="makedumpfile dump level 0-31 (default 0: every page)")
    comp = p.add_mutually_exclusive_group()
    comp.add_argument("-c", dest="codec", action="store_const", const="zlib",
                      help="compress pages with zlib")
    comp.add_argument("-l", dest="codec", action="store_const", const="lzo",
                      help="compress pages with LZO")
    comp.add_argument("-p", dest="codec", action="store_const", const="snappy",
                      help="compress pages with snappy")
    comp.add_argument("-z", dest="codec", action="store_const", const="zstd",
                      help="compress pages with zstd")
    p.add_argument("-F", dest="flatten", action="store_true",
                   help="write the flattened format to stdout (no DUMPFILE)")
    p.add_argument("-E", dest="elf", action="store_true",
                   help="ELF output: the input's notes and one PT_LOAD per run of kept pages")
    p.add_argument("-f", dest="force", action="store_true",
                   help="overwrite DUMPFILE if it exists (refused otherwise)")
    p.add_argument("--num-threads", type=int, default=None, metavar="N",
                   help="compression workers, forked processes (default 2 for every codec, 1 "
                        "without compression; 0 as 1: inline)")
    p.add_argument("--split", action="store_true",
                   help="write a split set VMCORE DUMPFILE1 DUMPFILE2 ... (kdump-compressed): "
                        "each file the pages of its own pfn range, about equal in pages")
    p.add_argument("--check-params", action="store_true",
                   help="only check the command line, then exit 0 (nothing read or written)")
    p.add_argument("--dry-run", action="store_true",
                   help="do everything but write: no DUMPFILE (nor a temporary file) is "
                        "created; the report still says how big it would be")
    p.add_argument("--reassemble", action="store_true",
                   help="join a --split set: kdlayout dump --reassemble DUMPFILE1 DUMPFILE2 ... "
                        "DUMPFILE (the files in any order; DUMPFILE is written)")
    p.add_argument("--show-stats", action="store_true",
                   help="print the page report (same as message level bit 16)")
    p.add_argument("-D", dest="debug", action="store_true",
                   help="debug messages (codec backend, threads, timings) on stderr")
    # makedumpfile options that tune its own internals: accepted, checked, no effect here
    # (docs/writer.md): bitmaps are 2 bits per pfn in memory, writes are batched in chunks of
    # 512 pages, split ranges are balanced by pages exactly
    p.add_argument("-b", dest="block_order", type=int, metavar="ORDER",
                   help="makedumpfile's write cache of 2^ORDER pages (no effect)")
    p.add_argument("--cyclic-buffer", type=int, metavar="KIB",
                   help="makedumpfile's bitmap buffer per cycle (no effect)")
    p.add_argument("--non-cyclic", action="store_true",
                   help="makedumpfile: whole bitmaps in memory (always so here; no effect)")
    p.add_argument("--splitblock-size", type=int, metavar="KIB",
                   help="makedumpfile's --split balancing granule (no effect: balanced exactly)")
    p.add_argument("--work-dir", metavar="DIR",
                   help="makedumpfile's directory for a bitmap file (no effect: in memory)")
    p.add_argument("-x", dest="vmlinux", metavar="VMLINUX",
                   help="vmlinux with DWARF of the crashed kernel (same as --vmlinux)")
    p.add_argument("--message-level", type=int, default=DEFAULT_MESSAGE_LEVEL, metavar="N",
                   help="makedumpfile message bits: 1 progress, 2 common, 4 errors, 16 report "
                        f"(default {DEFAULT_MESSAGE_LEVEL})")
    p.add_argument("--dump-dmesg", action="store_true",
                   help="write the crashed kernel's log buffer to DUMPFILE as text, like "
                        "makedumpfile --dump-dmesg (no dump is written)")
    add_dmesg_arguments(p)
    add_source_arguments(p)
    p.set_defaults(func=run, codec=None)


class _Progress:
    """One ``\\r``-updated line on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, label: str, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and done < total):
            return
        self.last = now
        pct = 100.0 * done / total if total else 100.0
        sys.stderr.write(f"\r{label:<16}: [{pct:5.1f} %]")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


class DiscardSink:
    """A sink that keeps nothing (``--dry-run``): it only counts what the image would hold."""

    def __init__(self) -> None:
        self.stats = SinkStats()

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        """Count ``data``; write nothing."""
        self.stats.bytes_written += memoryview(data).nbytes
        self.stats.records += 1

    def reserve(self, size: int) -> None:
        """Nothing to reserve."""

    def finish(self) -> None:
        """Nothing to flush."""


def run(args: argparse.Namespace) -> int:
    """Run ``kdlayout dump``; returns the exit status."""
    if args.show_stats:
        args.message_level |= ML_REPORT
    if args.dry_run and args.dump_dmesg:
        raise KdlayoutError("--dry-run cannot be used with --dump-dmesg")
    if args.partial_dmesg and not args.dump_dmesg:
        raise KdlayoutError("--partial-dmesg needs --dump-dmesg")
    if args.reassemble:
        return run_reassemble(args)
    if args.dump_dmesg:
        return run_dump_dmesg(args)
    if args.elf and args.codec:
        raise KdlayoutError("-E writes uncompressed ELF: give no -c/-l/-p/-z")
    check_compat_options(args)
    if args.split:
        if args.flatten or args.elf:
            raise KdlayoutError("--split writes kdump-compressed files: give no -F or -E")
        if args.dumpfile is None or not args.more_dumpfiles:
            raise KdlayoutError("--split needs at least two DUMPFILEs")
    elif args.more_dumpfiles:
        raise KdlayoutError("more than one DUMPFILE needs --split")
    if args.flatten:
        if args.dumpfile is not None:
            raise KdlayoutError("-F writes to stdout: give no DUMPFILE")
        if sys.stdout.isatty() and not args.dry_run:
            raise KdlayoutError("-F would write binary data to a terminal; redirect stdout")
    elif args.dumpfile is None:
        raise KdlayoutError("DUMPFILE is required (or -F for stdout)")
    ml = args.message_level
    threads = None if args.num_threads is None else max(1, args.num_threads)
    opts = WriteOptions(compression=CODEC_FLAGS[args.codec or "none"], threads=threads)
    compressor_factory(opts.compression)     # the codec's C library or Python package is there
    if args.check_params:
        if ml & ML_COMMON:
            sys.stderr.write("Commandline parameter is valid.\n")
        return 0
    paths = [] if args.flatten else [str(args.dumpfile), *args.more_dumpfiles]
    if args.dry_run:                 # refused as a real run would refuse them, up front
        check_outputs([args.vmcore], paths, overwrite=args.force)
    progress = _Progress(bool(ml & ML_PROGRESS))
    t0 = time.perf_counter()
    with open_dump(args.vmcore) as dump:
        if args.dump_level & ~1 == 0:
            bm = level0_bitmaps(dump, args.dump_level)
        else:
            layout = resolve(dump, resolve_options(args)).layout
            bm = scan_bitmaps(dump, layout, args.dump_level, threads=threads or 2,
                              progress=lambda d, t: progress("Excluding pages", d, t))

        def prog(done: int, total: int) -> None:
            progress("Copying data", done, total)

        if args.dry_run:
            res = dry_run(dump, bm, opts, prog, parts=len(paths) if args.split else 1,
                          elf=args.elf)
        elif args.flatten:
            sink = FlatSink(sys.stdout.buffer)
            res = (write_elf(dump, bm, sink, prog) if args.elf
                   else write_kdump(dump, bm, sink, opts, prog))
            if res.incomplete:
                raise OutOfSpace(28, f"{res.error}: {res.pages_written} of {res.pages_dumped} "
                                 "pages written", "<stdout>")
        else:
            try:
                if args.split:
                    parts = write_split_files(dump, bm, paths, opts, input_path=args.vmcore,
                                              progress=prog, overwrite=args.force)
                    res = _sum_results(parts)
                else:
                    res = write_dump_file(dump, bm, str(args.dumpfile), opts,
                                          input_path=args.vmcore, progress=prog, elf=args.elf,
                                          overwrite=args.force)
            except IncompleteDumpError:
                if ml & ML_COMMON:
                    sys.stderr.write("\nThe dumpfile is incomplete: not enough space.\n")
                raise
    elapsed = time.perf_counter() - t0
    if args.debug:
        sys.stderr.write(f"kdlayout dump: codec {args.codec or 'none'} via "
                         f"{backend_name(opts.compression)}, workers "
                         f"{threads or DEFAULT_THREADS.get(opts.compression, 1)}, "
                         f"{res.pages_written} pages, write {res.seconds:.3f} s "
                         + " ".join(f"{k} {v:.3f}" for k, v in res.timings.items()) + "\n")
    if ml & ML_REPORT:
        print_report(bm, res)
    if ml & ML_COMMON:
        where = "stdout" if args.flatten else ", ".join(paths)
        saved = (f"--dry-run: nothing written to {where}" if args.dry_run
                 else f"The dumpfile is saved to {where}")
        sys.stderr.write(f"\n{saved}.\n\n"
                         f"kdlayout dump completed in {elapsed:.1f} s.\n")
    return 0


def dry_run(dump: PhysicalMemory, bm: PageBitmaps, opts: WriteOptions,
            progress: Callable[[int, int], None] | None = None, *, parts: int = 1,
            elf: bool = False) -> WriteResult:
    """Build the image (pages read, zero-tested and compressed) into a :class:`DiscardSink`:
    what ``--dry-run`` does. ``parts`` > 1: a ``--split`` set, the files' results summed."""
    if elf:
        return write_elf(dump, bm, DiscardSink(), progress)
    if parts == 1:
        return write_kdump(dump, bm, DiscardSink(), opts, progress)
    return _sum_results([write_kdump(dump, bm, DiscardSink(), opts, progress, split=rng)
                         for rng in split_ranges(bm, parts)])


def _sum_results(parts: list[WriteResult]) -> WriteResult:
    """One result for a split set: page counts and sizes summed."""
    return replace(parts[0], pages_dumped=sum(r.pages_dumped for r in parts),
                   pages_written=sum(r.pages_written for r in parts),
                   zero_pages=sum(r.zero_pages for r in parts),
                   raw_pages=sum(r.raw_pages for r in parts),
                   data_bytes=sum(r.data_bytes for r in parts),
                   size=sum(r.size for r in parts))


def check_compat_options(args: argparse.Namespace) -> None:
    """Range checks of the makedumpfile options (also for --check-params)."""
    if not 0 <= args.dump_level <= 31:
        raise KdlayoutError(f"dump level {args.dump_level} is not in 0..31")
    if args.num_threads is not None and args.num_threads < 0:
        raise KdlayoutError("--num-threads must not be negative")
    if args.block_order is not None and not 0 <= args.block_order <= 30:
        raise KdlayoutError(f"-b {args.block_order}: the order is not in 0..30")
    for name in ("cyclic_buffer", "splitblock_size"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise KdlayoutError(f"--{name.replace('_', '-')} must be positive")
    if args.non_cyclic and args.cyclic_buffer is not None:
        raise KdlayoutError("--non-cyclic and --cyclic-buffer exclude each other")
    if args.work_dir is not None and not os.path.isdir(args.work_dir):
        raise KdlayoutError("--work-dir is not a directory", path=args.work_dir)


def run_dump_dmesg(args: argparse.Namespace) -> int:
    """``kdlayout dump --dump-dmesg VMCORE DMESGFILE`` (kdump-tools runs it after the dump)."""
    if args.flatten or args.elf:
        raise KdlayoutError("--dump-dmesg writes text: give no -F or -E")
    if args.dumpfile is None:
        raise KdlayoutError("--dump-dmesg needs DMESGFILE")
    dump_dmesg(args.vmcore, str(args.dumpfile), resolve_options(args),
               caller_id=args.caller_id, overwrite=args.force, partial=args.partial_dmesg)
    if args.message_level & ML_COMMON:
        sys.stderr.write(f"\nThe dmesg log is saved to {args.dumpfile}.\n")
    return 0


#: Set bits of each byte value.
_POPCOUNT: np.ndarray = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
#: Bitmap bytes counted per step (8 Mi pfns): no array grows with the RAM size.
_COUNT_STEP = 1 << 20


def count_bits(packed: np.ndarray) -> int:
    """Set bits of a packed bitmap, counted a bounded slice at a time (a table lookup per
    byte; never one byte per pfn)."""
    total = 0
    for lo in range(0, packed.size, _COUNT_STEP):
        total += int(_POPCOUNT[packed[lo:lo + _COUNT_STEP]].sum(dtype=np.int64))
    return total


def run_reassemble(args: argparse.Namespace) -> int:
    """``kdlayout dump --reassemble DUMPFILE1 DUMPFILE2 ... DUMPFILE`` (makedumpfile's)."""
    if args.dry_run:
        raise KdlayoutError("--dry-run cannot be used with --reassemble")
    for given, name in ((args.codec, "-c/-l/-p/-z"), (args.dump_level, "-d"),
                        (args.elf, "-E"), (args.flatten, "-F"), (args.split, "--split"),
                        (args.dump_dmesg, "--dump-dmesg"), (args.vmlinux, "-x"),
                        (args.vmcoreinfo, "-i")):
        if given:
            raise KdlayoutError(f"--reassemble copies the set's pages as stored: give no {name}")
    names = [args.vmcore, *([args.dumpfile] if args.dumpfile is not None else []),
             *args.more_dumpfiles]
    if len(names) < 2:
        raise KdlayoutError("--reassemble needs the files of a split set and DUMPFILE")
    check_compat_options(args)
    if args.check_params:
        if args.message_level & ML_COMMON:
            sys.stderr.write("Commandline parameter is valid.\n")
        return 0
    t0 = time.perf_counter()
    res = reassemble_split(names[:-1], names[-1], overwrite=args.force)
    if args.message_level & ML_REPORT:
        sys.stderr.write(f"\nPages           : {res.pages}\n"
                         f"  Zero pages sharing one page : {res.zero_pages}\n"
                         f"Write bytes     : {res.size}\n")
    if args.message_level & ML_COMMON:
        sys.stderr.write(f"\nThe dumpfile is saved to {names[-1]}.\n\n"
                         f"kdlayout dump completed in {time.perf_counter() - t0:.1f} s.\n")
    if res.incomplete:
        raise IncompleteDumpError(
            f"incomplete split set: {res.pages - res.unfilled} of {res.pages} pages saved; the "
            "header carries DUMP_DH_COMPRESSED_INCOMPLETE", path=names[-1])
    return 0


def print_report(bm: PageBitmaps, res: WriteResult) -> None:
    """A page count summary shaped like makedumpfile's report (on stderr)."""
    valid = count_bits(bm.valid)
    out = sys.stderr

    def line(label: str, pages: int) -> None:
        out.write(f"{label:<28}: 0x{pages:016x}\n")

    out.write(f"\nOriginal pages  : 0x{valid:016x}\n")
    kept = res.pages_dumped - (res.zero_pages if bm.dump_level & 1 else 0)
    excluded = valid - kept
    for key, label in _LABELS:
        n = res.zero_pages if key == "zero" and bm.dump_level & 1 else bm.excluded.get(key, 0)
        line(f"  {label}", n)
    line("  Excluded pages", excluded)
    line("  Remaining pages", kept)
    if valid:
        out.write(f"  (The number of pages is reduced to {kept * 100 // valid}%.)\n")
    line("Memory Hole", bm.max_pfn - valid)
    out.write("-" * 50 + "\n")
    line("Total pages", bm.max_pfn)
    out.write(f"  Zero pages sharing one page : {res.zero_pages}\n"
              f"  Pages stored uncompressed   : {res.raw_pages}\n"
              f"Write bytes     : {res.size}\n")
