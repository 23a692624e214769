"""``kdlayout dmesg``: the crashed kernel's log, as ``makedumpfile --dump-dmesg`` writes it.

``kdlayout dmesg VMCORE [OUT]`` writes to stdout by default; ``kdlayout dump --dump-dmesg VMCORE
DMESGFILE`` (makedumpfile's spelling, what kdump-tools runs) goes through :func:`dump_dmesg` too.
A file is written under a temporary name in its directory (mode 0600, like makedumpfile) and
renamed when complete; the input is never overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable

from ..dumpfile import open_dump
from ..errors import KdlayoutError
from ..printk import PrintkLog, iter_makedumpfile, read_log
from ..resolver import ResolveOptions, resolve
from ..writer import atomic_output, check_outputs
from .common import add_source_arguments, resolve_options


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dmesg", help="the crashed kernel's log buffer, as makedumpfile --dump-dmesg",
        description="Read the crashed kernel's printk log from VMCORE (any dump format kdlayout "
                    "reads) and write it like makedumpfile --dump-dmesg: to OUT (created "
                    "atomically, mode 0600) or to stdout.")
    p.add_argument("vmcore", metavar="VMCORE")
    p.add_argument("out", metavar="OUT", nargs="?", help="output file (default: stdout)")
    add_dmesg_arguments(p)
    p.add_argument("-f", dest="force", action="store_true",
                   help="overwrite OUT if it exists (refused otherwise)")
    p.add_argument("-x", dest="vmlinux", metavar="VMLINUX",
                   help="vmlinux with DWARF of the crashed kernel (same as --vmlinux)")
    add_source_arguments(p)
    p.set_defaults(func=run)


def add_dmesg_arguments(p: argparse.ArgumentParser) -> None:
    """The options that shape the text (shared with ``kdlayout dump --dump-dmesg``)."""
    p.add_argument("--caller-id", action="store_true",
                   help="print each record's caller ([      T<pid>] or [      C<cpu>]) after "
                        "the timestamp, as makedumpfile 1.7.5 and later do (1.7.2, Debian "
                        "bookworm's, does not)")
    p.add_argument("--partial-dmesg", action="store_true",
                   help="only the records since the log was last cleared (dmesg -c), as "
                        "makedumpfile --partial-dmesg")


def run(args: argparse.Namespace) -> int:
    """Run ``kdlayout dmesg``; returns the exit status."""
    dump_dmesg(args.vmcore, args.out, resolve_options(args), caller_id=args.caller_id,
               overwrite=args.force, partial=args.partial_dmesg)
    return 0


def dump_dmesg(vmcore: str, out: str | None, options: ResolveOptions, *,
               caller_id: bool = False, overwrite: bool = False,
               partial: bool = False) -> PrintkLog:
    """Read the log of ``vmcore`` and write its text to ``out`` (``None``: stdout);
    ``partial``: only the records since the log was last cleared (``--partial-dmesg``).

    Warnings (inconsistent records skipped) go to stderr. A log cut short by corruption is still
    written, then reported as an error (exit 2), as makedumpfile does.
    """
    if out is not None:
        check_outputs([vmcore], [out], overwrite=overwrite)
    with open_dump(vmcore) as dump:
        layout = resolve(dump, options).layout
        log = read_log(dump, layout, partial=partial)
    pieces = iter_makedumpfile(log, caller_id=caller_id)
    if out is None:
        stream = sys.stdout.buffer
        for piece in pieces:
            stream.write(piece)
        stream.flush()
    else:
        write_file_atomically(out, pieces, overwrite=overwrite)
    for warning in log.warnings:
        print(f"kdlayout: {vmcore}: warning: {warning}", file=sys.stderr)
    if not log.complete:
        raise KdlayoutError("the printk log is corrupt; the text written stops at the damage",
                            path=vmcore)
    return log


def write_file_atomically(path: str, pieces: Iterable[bytes], *, overwrite: bool = False) -> int:
    """Write ``pieces`` to ``path`` through a mode-0600 temporary file in the same directory.

    The file gets its name only when complete and synced; an existing ``path`` is kept unless
    ``overwrite`` (without it the name is taken with ``link()``, so a file that appeared meanwhile
    is not clobbered). Any error removes the temporary file. Returns the bytes written.
    """
    size = 0
    with atomic_output(path, overwrite=overwrite) as fd, \
            os.fdopen(fd, "wb", closefd=False) as f:
        for piece in pieces:
            f.write(piece)
            size += len(piece)
    return size
