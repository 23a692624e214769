"""``kdlayout db add|check``: maintain the layout database (``layouts/``).

``db add VMCORE`` resolves the dump's layout from every source offered (never from the database
itself) and writes the kernel build's entry, ``<db>/<release>/<build-id>.json``. ``db check``
validates every entry of a database and prints one line per entry.
"""

from __future__ import annotations

import argparse
import sys

from ..dumpfile import open_dump
from ..errors import KdlayoutError
from ..resolver import resolve
from ..sources.db import default_db_dir, list_entries, read_entry, write_entry
from .common import add_source_arguments, resolve_options


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``db add`` and ``db check`` to the command line."""
    p = sub.add_parser("db", help="maintain the layout database",
                       description="Add resolved layouts of kernel builds to the layout database "
                                   "and validate it.")
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    add = dbsub.add_parser("add", help="resolve a dump and write its kernel build's entry",
                           description="Resolve the dump's layout (VMCOREINFO, kallsyms, BTF in "
                                       "the dump, and the files given) and write it to the "
                                       "database as <release>/<build-id>.json.")
    add.add_argument("vmcore", metavar="VMCORE")
    # The database itself is never a source of its own entries, and a new entry is never
    # taken from the layout cache.
    add_source_arguments(add, db=False, cache=False)
    add.add_argument("--db", metavar="DIR", help=f"database directory (default {default_db_dir()})")
    add.set_defaults(func=run_add)
    check = dbsub.add_parser("check", help="validate every entry of a database")
    check.add_argument("--db", metavar="DIR", help=f"database directory (default {default_db_dir()})")
    check.set_defaults(func=run_check)


def run_add(args: argparse.Namespace) -> int:
    """Resolve ``args.vmcore`` and write its entry; prints the entry path and fact counts."""
    options = resolve_options(args)
    options.db, options.use_cache = None, False
    with open_dump(args.vmcore) as dump:
        result = resolve(dump, options)
        arch = dump.info.arch or "x86_64"
    layout = result.layout
    sources = [(s.name, s.status, s.detail) for s in result.sources]
    path = write_entry(layout, args.db or default_db_dir(), arch=arch, sources=sources)
    stored = len(read_entry(path).facts)
    print(f"{path}: {stored} facts of {layout.release} (build id {layout.build_id or 'unknown'}); "
          f"{len(layout) - stored} per-boot or derived facts left out")
    for w in layout.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Validate every entry; exit status 2 when any is bad."""
    root = args.db or default_db_dir()
    bad = 0
    entries = list_entries(root)
    for p in entries:
        try:
            e = read_entry(p)
        except KdlayoutError as exc:
            bad += 1
            print(f"BAD  {exc}")
            continue
        print(f"ok   {p}: {e.release} build id {e.build_id or '-'}, {len(e.facts)} facts")
    print(f"{len(entries)} entries, {bad} bad")
    return 2 if bad else 0
