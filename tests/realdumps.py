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
        from fixtures import load_fixtures
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


# -- dumps made here by QEMU (an independent producer) ---------------------------------------------

QEMU = "qemu-system-x86_64"
SEABIOS = Path("/usr/share/seabios/bios-256k.bin")
_qemu_dumps: dict[str, Path] = {}


def _qmp(sock_path: Path, commands: list[dict[str, Any]], timeout: float) -> list[Any]:
    import json
    import socket
    import time

    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(str(sock_path))
            break
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise TimeoutError("QEMU's QMP socket did not appear") from None
            time.sleep(0.1)
    s.settimeout(timeout)
    replies = []
    with s, s.makefile("rw") as f:
        json.loads(f.readline())  # greeting
        for cmd in commands:
            f.write(json.dumps(cmd) + "\n")
            f.flush()
            while True:
                msg = json.loads(f.readline())
                if "event" not in msg:
                    break
            if "error" in msg:
                raise RuntimeError(f"QMP {cmd['execute']}: {msg['error']}")
            replies.append(msg.get("return"))
    return replies


def qemu_firmware_dumps(workdir: Path) -> dict[str, Path]:
    """QEMU ``dump-guest-memory`` outputs of a paused 2-CPU, 64 MiB guest that has only firmware.

    Returns ``{"elf": ..., "kdump_zlib": ...}``. The guest never ran, so the ELF holds zeroed RAM and
    SeaBIOS mapped at 0xfffc0000 (QEMU writes e_machine EM_386 because the CPU is in real mode).
    Skips the test when QEMU is not installed or fails. Made once per test session.
    """
    if _qemu_dumps:
        return _qemu_dumps
    exe = shutil.which(QEMU)
    if exe is None:
        pytest.skip(f"{QEMU} is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "qmp.sock"
    elf, kdump = workdir / "qemu.elf", workdir / "qemu.kdump"
    proc = subprocess.Popen(
        [exe, "-machine", "pc,accel=tcg", "-m", "64", "-smp", "2", "-S", "-display", "none",
         "-nodefaults", "-qmp", f"unix:{sock},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _qmp(sock, [
            {"execute": "qmp_capabilities"},
            {"execute": "dump-guest-memory",
             "arguments": {"paging": False, "protocol": f"file:{elf}"}},
            {"execute": "dump-guest-memory",
             "arguments": {"paging": False, "protocol": f"file:{kdump}", "format": "kdump-zlib"}},
            {"execute": "quit"},
        ], timeout=60)
        proc.wait(timeout=30)
    except (OSError, TimeoutError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        proc.kill()
        proc.wait()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        pytest.skip(f"QEMU could not produce a dump here: {exc} {err[:200]}")
    finally:
        if proc.stderr:
            proc.stderr.close()
    _qemu_dumps.update({"elf": elf, "kdump_zlib": kdump})
    return _qemu_dumps
