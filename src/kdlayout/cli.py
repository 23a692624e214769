"""Command line: ``kdlayout info|resolve|scan|dump|dmesg``.

Each subcommand lives in its own module under ``kdlayout.commands`` and registers itself here. Every
error kdlayout raises on purpose ends as one line on stderr and exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from . import __version__
from .errors import KdlayoutError

# (subcommand, module under kdlayout.commands). A module provides ``register(subparsers)`` which adds
# its parser and sets ``func`` (taking the parsed namespace, returning an exit status).
_COMMANDS: tuple[tuple[str, str], ...] = (
    ("info", "info"),
    ("resolve", "resolve"),
    ("db", "db"),
    ("reassemble", "reassemble"),
    ("scan", "scan"),
    ("dump", "dump"),
    ("dmesg", "dmesg"),
)

EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdlayout",
        description="Kernel data layouts, page scans and filtered dumps from Linux crash dumps.")
    parser.add_argument("--version", action="version", version=f"kdlayout {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for _name, module in _COMMANDS:
        mod = importlib.import_module(f"kdlayout.commands.{module}")
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except KdlayoutError as exc:
        print(f"kdlayout: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (``| head``): not an error of ours. Point stdout at /dev/null so
        # the interpreter's final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"kdlayout: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("kdlayout: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
