"""``kdlayout resolve``: the crashed kernel's layout, fact by fact, with provenance."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from ..dumpfile import open_dump
from ..layout import Layout
from ..resolver import ResolveResult, resolve
from .common import add_source_arguments, resolve_options


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "resolve", help="resolve the crashed kernel's data layouts with provenance",
        description="Resolve struct offsets, page-flag bits, page-type encodings and symbols of "
                    "the crashed kernel from the dump's own VMCOREINFO, kallsyms and BTF, and "
                    "from optional files; show where each fact came from and where sources "
                    "disagree.")
    p.add_argument("vmcore", metavar="VMCORE")
    add_source_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with open_dump(args.vmcore) as dump:
        result = resolve(dump, resolve_options(args))
    if args.json:
        out = result.layout.to_json()
        out["sources"] = [vars(s) for s in result.sources]
        out["from_cache"] = result.from_cache
        json.dump(out, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        print_report(result, sys.stdout)
    return 0


def _value(v: object) -> str:
    if isinstance(v, bool) or not isinstance(v, int):
        return str(v)
    return hex(v) if abs(v) > 0xFFFF else str(v)


def print_report(result: ResolveResult, out: TextIO) -> None:
    """The human report: sources, then a fact · value · source · agreeing · conflicts table."""
    lay: Layout = result.layout
    out.write(f"kernel {lay.release or '?'}  build id {lay.build_id or '?'}"
              f"{'  (from cache)' if result.from_cache else ''}\n\nsources:\n")
    for s in result.sources:
        count = f" {s.facts} facts" if s.status == "used" else ""
        out.write(f"  {s.name:<11} {s.status:<8}{count}  ({s.seconds:.2f} s)  {s.detail}\n")
    rows = [("fact", "value", "source", "agreeing", "conflicts")]
    for key in sorted(lay):
        r = lay[key]
        conflicts = "; ".join(f"{c.source}={_value(c.value)}" for c in r.conflicts)
        rows.append((key, _value(r.value), r.chosen.source, ",".join(r.agreeing) or "-",
                     conflicts or "-"))
    widths = [min(max(len(row[i]) for row in rows), 48) for i in range(4)]
    out.write("\n")
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True))
                  + "  " + row[4] + "\n")
    if lay.warnings:
        out.write(f"\n{len(lay.warnings)} warning(s):\n")
        for w in lay.warnings:
            out.write(f"  {w}\n")
