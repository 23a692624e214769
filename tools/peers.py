"""Peer tools fetched from the Debian archive (e.g. newer makedumpfile) for fixtures, tests, benchmarks.

A peer binary is unpacked with its library closure under
``$KDLAYOUT_CACHE/peers/<package>-<version>/root`` and run through the
unpacked dynamic loader with ``--library-path`` so that a binary built for a
newer Debian release runs on an older host.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fixture_debian as deb

_LIB_RE = re.compile(r"^(lib|zlib)")
_lock = threading.Lock()


@dataclass(frozen=True)
class PeerTool:
    """An unpacked peer binary and the argv prefix that runs it."""

    package: str
    version: str
    suite: str
    root: Path
    command: tuple[str, ...]


def fetch_peer(package: str, binary: str, suite: str, cache: Path) -> PeerTool:
    """Unpack ``package`` from ``suite`` (plus its lib* Depends) and return how to run ``binary``.

    ``binary`` is the program name, looked up in usr/sbin, usr/bin, sbin and bin.
    """
    with _lock:
        idx = deb.load_index(suite, cache)
        rec = idx.get(package)
        if rec is None:
            raise deb.ArchiveError(f"{suite}: package {package} not in the index")
        pdir = cache / "peers" / f"{package}-{rec.version.replace(':', '_')}-{suite}"
        root = pdir / "root"
        stamp = pdir / ".unpacked"
        if not stamp.exists():
            for r in [rec, *[p for p in idx.closure(package, _LIB_RE) if p.name != package]]:
                deb.extract_deb(deb.fetch_deb(r, cache), root)
            stamp.write_text(rec.version + "\n")
        return _tool(package, binary, rec.version, suite, root)


def _tool(package: str, binary: str, version: str, suite: str, root: Path) -> PeerTool:
    exe = next((root / d / binary for d in ("usr/sbin", "usr/bin", "sbin", "bin") if (root / d / binary).is_file()),
               root / "usr/bin" / binary)
    loaders = sorted(root.glob("**/ld-linux-x86-64.so.2"))
    libdirs = [str(root / d) for d in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu") if (root / d).is_dir()]
    if loaders and libdirs:
        cmd: tuple[str, ...] = (str(loaders[0]), "--library-path", ":".join(libdirs), str(exe))
    else:
        cmd = (str(exe),)
    return PeerTool(package, version, suite, root, cmd)


def cached_peer(package: str, binary: str, suite: str, cache: Path) -> PeerTool | None:
    """An already unpacked peer (newest version) without touching the network, or None."""
    best: tuple[str, Path] | None = None
    for stamp in (cache / "peers").glob(f"{package}-*-{suite}/.unpacked"):
        version = stamp.read_text().strip()
        if best is None or deb.version_compare(version, best[0]) > 0:
            best = (version, stamp.parent / "root")
    if best is None:
        return None
    return _tool(package, binary, best[0], suite, best[1])


def makedumpfile(suite: str, cache: Path, refresh: bool = False) -> PeerTool:
    """makedumpfile from a Debian suite (trixie: 1.7.6, sid: 1.7.8 at the time of writing).

    Uses an already unpacked copy unless refresh is set (then the suite's
    current version is fetched).  Raises ArchiveError if it does not run here.
    Note: Debian builds makedumpfile without snappy (-p is refused).
    """
    tool = None if refresh else cached_peer("makedumpfile", "makedumpfile", suite, cache)
    if tool is None:
        tool = fetch_peer("makedumpfile", "makedumpfile", suite, cache)
    r = subprocess.run([*tool.command, "-v"], capture_output=True, text=True, timeout=30)
    if "makedumpfile" not in (r.stdout + r.stderr):
        raise deb.ArchiveError(f"peer makedumpfile from {suite} does not run: {(r.stdout + r.stderr).strip()[:200]}")
    return tool
