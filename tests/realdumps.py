"""Real-fixture plumbing shared by the ELF/dumpfile/info tests.

The fixture matrix is built by tools/build_fixtures.py and exposed by tests/fixtures.py
(``load_fixtures()``). When either is missing, the parametrised tests get one skipped case whose
reason says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

NO_FIXTURES = ("no real kdump fixtures: tests/fixtures.py is not importable or $KDLAYOUT_CACHE "
               "holds none (build them with tools/build_fixtures.py)")


def fixture_params(keys: tuple[str, ...]) -> list[Any]:
    """``pytest.param(fixture, key, path)`` for every fixture file of the given manifest keys."""
    try:
        from fixtures import load_fixtures  # type: ignore[import-not-found]
        fixtures = list(load_fixtures())
    except Exception as exc:  # the helper may be missing or fail: skip, saying so
        return [pytest.param(None, None, None, id="no-fixtures",
                             marks=pytest.mark.skip(reason=f"{NO_FIXTURES} ({exc!r})"))]
    params = []
    for fx in fixtures:
        for key in keys:
            p = fx.path(key)
            if p is not None and Path(p).exists():
                params.append(pytest.param(fx, key, Path(p), id=f"{fx.name}-{key}",
                                           marks=pytest.mark.fixtures))
    if not params:
        return [pytest.param(None, None, None, id="no-fixtures",
                             marks=pytest.mark.skip(reason=f"{NO_FIXTURES}: none has {keys}"))]
    return params


def readelf(*args: str) -> str:
    """Output of ``readelf -W args`` (skips the test if binutils' readelf is not installed)."""
    exe = shutil.which("readelf")
    if exe is None:
        pytest.skip("readelf (binutils) is not installed")
    out = subprocess.run([exe, "-W", *args], check=True, capture_output=True, text=True,
                         env={**os.environ, "LC_ALL": "C"}, timeout=120)
    return out.stdout


def readelf_loads(path: Path) -> list[tuple[int, int, int, int, int]]:
    """PT_LOAD rows (offset, vaddr, paddr, filesz, memsz) as readelf -l reports them."""
    rows = []
    for line in readelf("-l", str(path)).splitlines():
        parts = line.split()
        if parts and parts[0] == "LOAD":
            rows.append(tuple(int(x, 16) for x in parts[1:6]))
    return rows  # type: ignore[return-value]


def readelf_note_count(path: Path, description: str) -> int:
    """How many notes ``readelf -n`` lists with ``description`` (e.g. ``NT_PRSTATUS``)."""
    return sum(1 for line in readelf("-n", str(path)).splitlines() if description in line)
