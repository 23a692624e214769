"""Command-line pieces shared by the subcommands that resolve a layout."""

from __future__ import annotations

import argparse

from ..resolver import ResolveOptions


def add_source_arguments(p: argparse.ArgumentParser, *, db: bool = True,
                         cache: bool = True) -> None:
    """The layout-source options every resolving subcommand accepts."""
    p.add_argument("--vmlinux", metavar="F", help="vmlinux with DWARF of the crashed kernel")
    p.add_argument("--btf", metavar="F", help="BTF: raw, a vmlinux .BTF section, or a vmlinuz")
    p.add_argument("--headers", metavar="DIR", help="linux-headers tree of the crashed kernel")
    if db:
        p.add_argument("--db", metavar="DIR", help="layout database directory")
    p.add_argument("-i", "--vmcoreinfo", metavar="FILE", help="VMCOREINFO text file")
    if cache:
        p.add_argument("--no-cache", action="store_true", help="ignore the on-disk layout cache")


def resolve_options(args: argparse.Namespace) -> ResolveOptions:
    """:class:`ResolveOptions` from the arguments :func:`add_source_arguments` added."""
    return ResolveOptions(vmlinux=args.vmlinux, btf=args.btf, headers=args.headers,
                          db=getattr(args, "db", None), vmcoreinfo=args.vmcoreinfo,
                          use_cache=not getattr(args, "no_cache", False))
