"""Independent references for the diskdump/flattened tests on real dumps.

Ground truth comes from other tools only: drgn (libkdumpfile) for kdump-compressed and ELF files,
pyelftools for ELF files drgn cannot open (no VMCOREINFO), and makedumpfile -R for flattened ones.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kdlayout.physmem import PhysicalMemory

PS = 4096
MAKEDUMPFILE = "/usr/bin/makedumpfile"
#: manifest keys of kdump-compressed files drgn reads directly
KDUMP_KEYS = ("md_zlib", "md_lzo", "md_snappy", "md_zstd")
#: manifest keys of files in the flattened layout
FLAT_KEYS = ("md_flat", "qemu_kdump")
#: which ELF file each dump was made from (QEMU's kdump is compared with QEMU's own ELF)
SOURCE_ELF = {"md_zlib": "vmcore", "md_lzo": "vmcore", "md_snappy": "vmcore",
              "md_zstd": "vmcore", "md_flat": "vmcore", "qemu_kdump": "qemu_elf"}


@dataclass(frozen=True)
class RealFile:
    """One real dump file of the fixture matrix."""

    fixture: str
    release: str          # the crashed kernel's release, from the fixture manifest
    key: str
    path: Path
    elf: Path | None


def load_real_files(keys: tuple[str, ...]) -> tuple[list[RealFile], str]:
    """Real fixture files under the given manifest keys, and why there are none (if so)."""
    try:
        from fixtures import load_fixtures  # type: ignore[import-not-found]
    except ImportError as exc:
        return [], f"tests/fixtures.py (fixture matrix helper) is not available: {exc}"
    try:
        fixtures = list(load_fixtures())
    except Exception as exc:  # the helper reports a missing/unbuilt matrix its own way
        return [], f"fixture matrix not loadable: {exc}"
    out: list[RealFile] = []
    for fx in fixtures:
        for key in keys:
            p = fx.path(key)
            if p is not None and Path(p).exists():
                elf = fx.path(SOURCE_ELF[key])
                out.append(RealFile(fx.name, fx.release, key, Path(p),
                                    Path(elf) if elf is not None and Path(elf).exists() else None))
    if not out:
        return [], (f"no real fixture provides {', '.join(keys)}: build them with "
                    "tools/build_fixtures.py (KDLAYOUT_CACHE)")
    return out, ""


def real_params(keys: tuple[str, ...]) -> list[Any]:
    """pytest params over real files, or one param that skips with the reason."""
    files, why = load_real_files(keys)
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(reason=why), id="no-fixture")]
    return [pytest.param(f, id=f"{f.fixture}-{f.key}", marks=pytest.mark.fixtures) for f in files]


def drgn_reader(path: Path, *, required: bool = True) -> Callable[[int, int], bytes | None] | None:
    """Physical reads through drgn; the reader returns None where drgn faults.

    Skips the test if drgn is missing. If drgn cannot open the file at all (libkdumpfile does not
    open QEMU-written kdump files: "KDUMP_ATTR_ARCH_NAME: Key has no value"), fails when
    ``required``, else returns None.
    """
    drgn = pytest.importorskip("drgn", reason="drgn (the libkdumpfile oracle) is not installed")
    prog = drgn.Program()
    try:
        prog.set_core_dump(str(path))
    except Exception:
        if required:
            raise
        return None

    def read(paddr: int, size: int) -> bytes | None:
        try:
            data: bytes = prog.read(paddr, size, True)
        except drgn.FaultError:
            return None
        return data
    return read


class ElfPages:
    """Physical reads from an ELF core's PT_LOAD segments via pyelftools (None if not stored)."""

    def __init__(self, path: Path) -> None:
        from elftools.elf.elffile import ELFFile
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        elf = ELFFile(self._f)
        self.segments = sorted(
            (int(s["p_paddr"]), int(s["p_filesz"]), int(s["p_offset"]))
            for s in elf.iter_segments() if s["p_type"] == "PT_LOAD" and s["p_filesz"])

    def read(self, paddr: int, size: int) -> bytes | None:
        for start, filesz, off in self.segments:
            if start <= paddr and paddr + size <= start + filesz:
                self._f.seek(off + paddr - start)
                return self._f.read(size)
        return None

    def pfns(self) -> Iterator[tuple[int, int]]:
        """(first pfn, last pfn + 1) of each stored segment."""
        for start, filesz, _off in self.segments:
            yield -(-start // PS), (start + filesz) // PS

    def close(self) -> None:
        self._f.close()


def sample_dumped_pfns(dump: PhysicalMemory, n: int, seed: int = 1) -> list[int]:
    """Up to ``n`` distinct random pfns the dump holds (uniform over dumped pages)."""
    starts = np.array([r.start // PS for r in dump.ranges()], dtype=np.int64)
    lens = np.array([r.size // PS for r in dump.ranges()], dtype=np.int64)
    total = int(lens.sum())
    if total == 0:
        return []
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(total, size=min(n, total), replace=False))
    cum = np.concatenate([[0], np.cumsum(lens)])
    run = np.searchsorted(cum, idx, side="right") - 1
    return (starts[run] + idx - cum[run]).tolist()


def sample_excluded_pfns(dump: PhysicalMemory, elf: ElfPages, n: int, seed: int = 2) -> list[int]:
    """Up to ``n`` random pfns the ELF source stores but the dump does not."""
    rng = np.random.default_rng(seed)
    cand: list[int] = []
    for lo, hi in elf.pfns():
        if hi > lo:
            cand.extend(rng.integers(lo, hi, size=min(4 * n, hi - lo)).tolist())
    out = sorted({p for p in cand if not dump.contains(p * PS, PS)})
    if len(out) > n:
        out = sorted(rng.choice(out, size=n, replace=False).tolist())
    return out


def _makedumpfile() -> str:
    if Path(MAKEDUMPFILE).exists():
        return MAKEDUMPFILE
    exe = shutil.which("makedumpfile")
    if exe is None:
        pytest.skip("makedumpfile is not installed (apt-get install makedumpfile)")
    return exe


def run_makedumpfile(args: list[str]) -> None:
    """Run makedumpfile with ``args``; skips if it is not installed."""
    subprocess.run([_makedumpfile(), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   check=True, timeout=900)


def makedumpfile_reassemble(flat: Path, out: Path) -> None:
    """``makedumpfile -R out < flat``; skips if makedumpfile is not installed."""
    exe = _makedumpfile()
    with open(flat, "rb") as fin:
        subprocess.run([exe, "-R", str(out)], stdin=fin, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, check=True, timeout=900)
