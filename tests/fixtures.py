"""Access to the real kdump fixture matrix built by tools/build_fixtures.py.

Fixtures live in ``$KDLAYOUT_CACHE/fixtures/<name>/`` (default cache
``~/.cache/kdlayout``); a fixture counts only once its ``manifest.json`` exists
(the builder writes it last, atomically).  Paths in the manifest are relative
to the manifest's directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NOT_BUILT = "fixture matrix not built: run python tools/build_fixtures.py"

# Keys of manifest["files"]; vmlinuz/config/vmlinux_dbg are top-level keys.
FILE_KEYS = ("vmcore", "qemu_elf", "qemu_kdump", "md_zlib", "md_lzo", "md_flat", "md_snappy", "md_zstd",
             "console_log")
TOP_KEYS = ("vmlinuz", "config", "vmlinux_dbg")


def cache_dir() -> Path:
    """The fixture cache root: $KDLAYOUT_CACHE, else ~/.cache/kdlayout."""
    env = os.environ.get("KDLAYOUT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kdlayout"


@dataclass(frozen=True)
class Fixture:
    """One built fixture: a real kdump vmcore plus QEMU dumps and makedumpfile outputs."""

    name: str
    suite: str
    release: str
    dir: Path
    manifest: dict[str, Any] = field(repr=False, compare=False)

    @property
    def capture_release(self) -> str:
        """uname -r of the kdump capture kernel (differs from release in variants)."""
        return str(self.manifest.get("capture_release", self.release))

    @property
    def workload(self) -> dict[str, Any]:
        """What the guest workload created (pids, sizes, some pfns), as it reported it."""
        w = self.manifest.get("workload") or {}
        return dict(w)

    def path(self, key: str) -> Path | None:
        """Absolute path of a fixture file by manifest key, or None if absent.

        key is one of FILE_KEYS (``vmcore``, ``qemu_elf``, ``md_zlib``, ...) or
        TOP_KEYS (``vmlinuz``, ``config``, ``vmlinux_dbg``).
        """
        rel = self.manifest.get(key) if key in TOP_KEYS else (self.manifest.get("files") or {}).get(key)
        if not rel:
            return None
        p = self.dir / str(rel)
        return p if p.exists() else None


#: Guest size of the test matrix; bigger guests (benchmark fixtures, e.g. 16 GiB) are left out of
#: the tests unless $KDLAYOUT_BIG_FIXTURES is 1, so a benchmark fixture never slows the suite.
MATRIX_MEM_MIB = 1024


def load_fixtures(cache: Path | None = None, *, include_big: bool | None = None) -> list[Fixture]:
    """All complete fixtures under the cache, sorted by name (empty list if none).

    Fixtures of guests bigger than :data:`MATRIX_MEM_MIB` count only with ``include_big`` (default:
    $KDLAYOUT_BIG_FIXTURES == "1").
    """
    if include_big is None:
        include_big = os.environ.get("KDLAYOUT_BIG_FIXTURES") == "1"
    root = (cache or cache_dir()) / "fixtures"
    out: list[Fixture] = []
    if not root.is_dir():
        return out
    for m in sorted(root.glob("*/manifest.json")):
        try:
            manifest = json.loads(m.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(manifest, dict) or "release" not in manifest:
            continue
        if not include_big and int(manifest.get("guest_mem_mib", MATRIX_MEM_MIB)) > MATRIX_MEM_MIB:
            continue
        out.append(Fixture(str(manifest.get("name", m.parent.name)), str(manifest.get("suite", "")),
                           str(manifest["release"]), m.parent, manifest))
    return out


def get_fixture(name: str, cache: Path | None = None) -> Fixture | None:
    """The fixture with this name, or None."""
    return next((f for f in load_fixtures(cache) if f.name == name), None)
