"""``kdlayout reassemble FLAT OUT``: turn a flattened dump into a kdump-compressed file.

The same result as ``makedumpfile -R OUT < FLAT``, byte for byte; the input is checked (record
headers, end marker) before anything is written, and OUT appears only once it is complete.
"""

from __future__ import annotations

import argparse
import sys

from ..flattened import reassemble


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``reassemble`` subcommand."""
    p = sub.add_parser("reassemble", help="rewrite a flattened dump as a kdump-compressed file",
                       description="Rewrite a flattened dump (makedumpfile -F, QEMU "
                                   "dump-guest-memory kdump-*) as the kdump-compressed file it "
                                   "encodes, like makedumpfile -R.")
    p.add_argument("flat", metavar="FLAT", help="flattened input file")
    p.add_argument("out", metavar="OUT", help="kdump-compressed output file (replaced)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Reassemble ``args.flat`` into ``args.out``; prints the output size."""
    try:
        size = reassemble(args.flat, args.out)
    except ValueError as exc:
        print(f"kdlayout: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {size} bytes")
    return 0
