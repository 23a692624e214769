"""Test helper: a real vmlinux ELF (e.g. decompressed from a distribution vmlinuz) seen as the
physical memory of a machine that booted it without relocation (KERNELOFFSET 0).

Each PT_LOAD's file bytes are placed at its ``p_paddr``; ``segments`` exposes ``p_vaddr`` and
``p_paddr`` like the ELF core reader does, so :class:`kdlayout.kimage.KernelImage` derives
``phys_base`` from them. The kallsyms tables inside are the ones the kernel build linked in.
"""

from __future__ import annotations

import mmap
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from elftools.elf.elffile import ELFFile

from kdlayout.errors import NotInDumpError
from kdlayout.physmem import DumpInfo, MemoryRange, PhysicalMemory


class Seg(NamedTuple):
    p_vaddr: int
    p_paddr: int
    p_memsz: int
    p_offset: int
    p_filesz: int


class VmlinuxMemory(PhysicalMemory):
    """PhysicalMemory over the PT_LOAD segments of a vmlinux ELF file."""

    def __init__(self, path: str, vmcoreinfo: bytes | None = None) -> None:
        self.info = DumpInfo(path=path, format="vmlinux", arch="x86_64")
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
        elf = ELFFile(self._fh)
        segs = []
        for ph in elf.iter_segments():
            if ph["p_type"] == "PT_LOAD":
                segs.append(Seg(ph["p_vaddr"], ph["p_paddr"], ph["p_memsz"], ph["p_offset"],
                                ph["p_filesz"]))
        self.segments = tuple(segs)
        self._sorted = sorted(segs, key=lambda s: s.p_paddr)
        self._vmcoreinfo = vmcoreinfo

    @property
    def vmcoreinfo(self) -> bytes | None:
        return self._vmcoreinfo

    def ranges(self) -> Sequence[MemoryRange]:
        return [MemoryRange(s.p_paddr, s.p_filesz) for s in self._sorted]

    def read(self, paddr: int, size: int) -> bytes:
        for s in self._sorted:
            if s.p_paddr <= paddr and paddr + size <= s.p_paddr + s.p_filesz:
                off = s.p_offset + paddr - s.p_paddr
                return bytes(self._mm[off:off + size])
        raise self._not_in_dump(paddr, size)

    def close(self) -> None:
        self._mm.close()
        self._fh.close()


__all__ = ["NotInDumpError", "VmlinuxMemory", "elf_symbols"]


def elf_symbols(path: str | Path) -> dict[str, set[int]]:
    """``{name: {addresses}}`` from the ELF symbol table: ``nm`` (binutils) when installed,
    else pyelftools (same table, ~20x slower on a -dbg vmlinux)."""
    out: dict[str, set[int]] = {}
    nm = shutil.which("nm")
    if nm is not None:
        text = subprocess.run([nm, str(path)], check=True, capture_output=True, text=True,
                              env={**os.environ, "LC_ALL": "C"}).stdout
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3:
                out.setdefault(parts[2], set()).add(int(parts[0], 16))
        return out
    from elftools.elf.sections import SymbolTableSection

    with open(path, "rb") as fh:
        for sec in ELFFile(fh).iter_sections():
            if isinstance(sec, SymbolTableSection):
                for sym in sec.iter_symbols():
                    if sym.name:
                        out.setdefault(sym.name, set()).add(sym["st_value"])
    return out
