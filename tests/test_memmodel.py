"""Memory model: page-table walks and the section/memmap walk.

Synthetic page tables test the walker's levels, large pages and error paths; real dumps check it
against independent translations: the kexec vmcore's own direct-map PT_LOAD headers, and drgn with
the kernel's -dbg DWARF (``pfn_to_page``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kdlayout.dumpfile import open_dump
from kdlayout.errors import MissingDataError, NotInDumpError, UnsupportedError
from kdlayout.memmodel import PageTables, build_memmap, kernel_page_tables
from kdlayout.physmem import DumpInfo, MemoryRange, PhysicalMemory
from kdlayout.resolver import ResolveOptions, resolve


class _Ram(PhysicalMemory):
    """A few MiB of synthetic physical memory with holes."""

    def __init__(self, size: int, holes: Sequence[tuple[int, int]] = ()) -> None:
        self.buf = bytearray(size)
        self.holes = list(holes)
        self.info = DumpInfo(path="synthetic", format="test", arch="x86_64")

    def ranges(self) -> list[MemoryRange]:
        out, pos = [], 0
        for start, end in sorted(self.holes):
            if start > pos:
                out.append(MemoryRange(pos, start - pos))
            pos = end
        if pos < len(self.buf):
            out.append(MemoryRange(pos, len(self.buf) - pos))
        return out

    def read(self, paddr: int, size: int) -> bytes:
        if not self.contains(paddr, size):
            raise self._not_in_dump(paddr, size)
        return bytes(self.buf[paddr:paddr + size])

    def set_entry(self, table: int, index: int, value: int) -> None:
        self.buf[table + 8 * index:table + 8 * index + 8] = value.to_bytes(8, "little")


PGD, PUD, PMD, PT = 0x1000, 0x2000, 0x3000, 0x4000
VA = 0xFFFF_8880_0000_0000   # a direct-map style address: PGD index 273, PUD 0, PMD 0


def _idx(va: int, shift: int) -> int:
    return (va >> shift) & 0x1FF


def _four_level(ram: _Ram) -> None:
    ram.set_entry(PGD, _idx(VA, 39), PUD | 0x63)
    ram.set_entry(PUD, _idx(VA, 30), PMD | 0x63)
    ram.set_entry(PMD, _idx(VA, 21), PT | 0x63)                     # 4 KiB pages below
    ram.set_entry(PMD, _idx(VA, 21) + 1, 0x200000 | 0x80 | 0x63)    # a 2 MiB page
    ram.set_entry(PT, 0, 0x10000 | 0x63)
    ram.set_entry(PT, 1, 0x11000 | 0x63)                            # contiguous with entry 0
    ram.set_entry(PT, 2, 0x30000 | 0x63)                            # not contiguous
    ram.set_entry(PUD, _idx(VA, 30) + 1, 0x40000000 | 0x80 | 0x63)  # a 1 GiB page


def test_walk_4k_2m_1g_pages() -> None:
    ram = _Ram(4 << 20)
    _four_level(ram)
    pt = PageTables(ram, PGD)
    assert pt.translate(VA + 0x123).paddr == 0x10123
    assert pt.translate(VA + 0x2004).paddr == 0x30004
    t = pt.translate(VA + 0x200000 + 0x1234)
    assert (t.paddr, t.size) == (0x201234, 0x200000 - 0x1234)
    assert pt.translate(VA + (1 << 30) + 0x5678).paddr == 0x40005678
    runs = list(pt.runs(VA + 0x800, 0x2000))
    assert [(r.paddr, r.size) for r in runs] == [(0x10800, 0x1800), (0x30000, 0x800)]


def test_sme_mask_is_cleared() -> None:
    ram = _Ram(4 << 20)
    sme = 1 << 47
    ram.set_entry(PGD, _idx(VA, 39), PUD | sme | 0x63)
    ram.set_entry(PUD, _idx(VA, 30), 0x40000000 | sme | 0x80 | 0x63)
    assert PageTables(ram, PGD, sme_mask=sme).translate(VA + 8).paddr == 0x40000008


def test_five_level_walk() -> None:
    ram = _Ram(4 << 20)
    va = 0xFF11_0000_0000_0000   # 5-level direct map base region
    p4d = 0x5000
    ram.set_entry(PGD, _idx(va, 48), p4d | 0x63)
    ram.set_entry(p4d, _idx(va, 39), PUD | 0x63)
    ram.set_entry(PUD, _idx(va, 30), 0x80000000 | 0x80 | 0x63)
    assert PageTables(ram, PGD, levels=5).translate(va + 0x42).paddr == 0x80000042
    with pytest.raises(MissingDataError, match="not a canonical address"):
        PageTables(ram, PGD, levels=4).translate(va)


def test_unmapped_and_missing_tables_are_clear_errors() -> None:
    ram = _Ram(4 << 20, holes=[(PMD, PMD + 0x1000)])
    _four_level(ram)
    pt = PageTables(ram, PGD)
    with pytest.raises(MissingDataError, match="not mapped"):
        pt.translate(VA + (5 << 30))
    with pytest.raises(NotInDumpError, match="page table at physical 0x3000 is not in the dump"):
        pt.translate(VA)
    with pytest.raises(UnsupportedError):
        PageTables(ram, PGD, levels=3)


def test_page_table_loop_terminates() -> None:
    # PUD and PMD entries pointing back at the PGD: the walk has a fixed depth, so it ends
    # with a translation into the table itself, never a hang.
    ram = _Ram(4 << 20)
    ram.set_entry(PGD, _idx(VA, 39), PUD | 0x63)
    ram.set_entry(PUD, _idx(VA, 30), PGD | 0x63)
    ram.set_entry(PGD, 0, PGD | 0x63)
    assert PageTables(ram, PGD).translate(VA + 0x10).paddr == PGD + 0x10


# ---- real dumps -----------------------------------------------------------------------------

def _layout(path: Path) -> Any:
    with open_dump(str(path)) as dump:
        return resolve(dump, ResolveOptions(use_cache=False)).layout


def test_walker_matches_kexec_direct_map_headers(fixture: Any) -> None:
    """kexec's /proc/vmcore describes RAM with direct-map p_vaddr: an independent translation."""
    path = fixture.path("vmcore")
    if path is None:
        pytest.skip(f"{fixture.name} has no kdump vmcore")
    with open_dump(str(path)) as dump:
        layout = resolve(dump, ResolveOptions(use_cache=False)).layout
        tables = kernel_page_tables(dump, layout)
        segs = [s for s in dump.segments if s.p_vaddr >= 0xFFFF_8000_0000_0000
                and s.p_vaddr < 0xFFFF_FFFF_8000_0000 and s.p_filesz]  # type: ignore[attr-defined]
        assert segs, "kexec vmcore without direct-map PT_LOADs"
        rng = random.Random(1)
        for _ in range(300):
            s = rng.choice(segs)
            off = rng.randrange(0, s.p_filesz) & ~7
            assert tables.translate(s.p_vaddr + off).paddr == s.p_paddr + off


def test_memmap_covers_ram(fixture: Any) -> None:
    """Every pfn the dump holds RAM for has its struct page located, and the section count
    agrees with the guest size the fixture was built with."""
    path = fixture.path("vmcore")
    if path is None:
        pytest.skip(f"{fixture.name} has no kdump vmcore")
    with open_dump(str(path)) as dump:
        layout = resolve(dump, ResolveOptions(use_cache=False)).layout
        mm = build_memmap(dump, layout)
        assert not mm.anomalies, mm.anomalies
        mib = int(fixture.manifest["guest_mem_mib"])
        assert mm.max_pfn >= (mib << 20) // 4096
        covered = np.zeros(mm.max_pfn, dtype=bool)
        for c in mm.chunks:
            covered[c.start_pfn:c.start_pfn + c.nr_pages] = True
        for r in dump.ranges():
            lo, hi = r.start // 4096, min(r.end // 4096, mm.max_pfn)
            assert covered[lo:hi].all(), f"RAM {r} without struct pages"


def test_struct_pages_equal_drgn(fixture: Any) -> None:
    """pfn -> struct page, checked against drgn's pfn_to_page with the kernel's DWARF."""
    from drgn_oracle import load_program

    path, vmlinux = fixture.path("vmcore"), fixture.path("vmlinux_dbg")
    if path is None or vmlinux is None:
        pytest.skip(f"{fixture.name}: needs the kdump vmcore and the --dbg vmlinux")
    from drgn.helpers.linux.mm import pfn_to_page

    prog = load_program(vmlinux, path)
    with open_dump(str(path)) as dump:
        layout = resolve(dump, ResolveOptions(use_cache=False)).layout
        mm = build_memmap(dump, layout)
        rng = random.Random(2)
        size = mm.page_struct_size
        for _ in range(500):
            c = rng.choice(mm.chunks)
            pfn = c.start_pfn + rng.randrange(c.nr_pages)
            page = pfn_to_page(prog, pfn)
            ours = dump.read(mm.page_paddr(pfn) or 0, size)
            assert prog.read(page.value_(), size) == ours, f"pfn {pfn:#x}"
