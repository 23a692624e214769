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
from kdlayout.errors import CorruptError, MissingDataError, NotInDumpError, UnsupportedError
from kdlayout.kimage import START_KERNEL_MAP, in_kernel_image
from kdlayout.layout import Fact, Layout, Resolution
from kdlayout.memmodel import PageTables, build_memmap, kernel_page_tables, probe_paging_levels
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


def _kernel_image_tables(ram: _Ram, levels: int) -> tuple[int, int]:
    """The kernel image's mapping as head_64.S builds it: top-level entry 511, then (5 levels)
    p4d entry 511, pud entry 510, a 2 MiB pmd leaf. Returns (vaddr, paddr) of one image byte."""
    p4d, pud, pmd = 0x5000, 0x6000, 0x7000
    if levels == 5:
        ram.set_entry(PGD, 511, p4d | 0x63)
        ram.set_entry(p4d, 511, pud | 0x63)
    else:
        ram.set_entry(PGD, 511, pud | 0x63)
    ram.set_entry(pud, 511, 0x8000 | 0x63)        # what the fixmap's pmd would be
    ram.set_entry(pud, 510, pmd | 0x63)
    ram.set_entry(pmd, 8, 0x200000 | 0x80 | 0x63)
    va = START_KERNEL_MAP + 8 * 0x200000 + 0x1234
    return va, 0x201234


@pytest.mark.parametrize("levels", [4, 5])
def test_probe_tells_4_from_5_levels(levels: int) -> None:
    ram = _Ram(4 << 20)
    va, pa = _kernel_image_tables(ram, levels)
    assert PageTables(ram, PGD, levels=levels).translate(va).paddr == pa
    assert probe_paging_levels(ram, PGD, [(va, pa)]) == levels
    # a probe the tables do not confirm at any depth, or none at all: no answer
    assert probe_paging_levels(ram, PGD, [(va, pa + 0x1000)]) is None
    assert probe_paging_levels(ram, PGD, []) is None


def test_probe_needs_the_tables_in_the_dump() -> None:
    ram = _Ram(4 << 20, holes=[(0x6000, 0x7000)])
    va, pa = _kernel_image_tables(ram, 5)
    assert probe_paging_levels(ram, PGD, [(va, pa)]) is None


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


def _direct_map_segments(dump: PhysicalMemory) -> list[Any]:
    """kexec's PT_LOADs of RAM: kernel-half p_vaddr outside the kernel image. The direct map's
    base depends on the paging depth and on KASLR, so no base is assumed."""
    segments: list[Any] = getattr(dump, "segments")  # noqa: B009 - the ELF reader's attribute
    return [s for s in segments if s.p_vaddr >> 63 and not in_kernel_image(s.p_vaddr) and s.p_filesz]


def test_walker_matches_kexec_direct_map_headers(fixture: Any) -> None:
    """kexec's /proc/vmcore describes RAM with direct-map p_vaddr: an independent translation."""
    path = fixture.path("vmcore")
    if path is None:
        pytest.skip(f"{fixture.name} has no kdump vmcore")
    with open_dump(str(path)) as dump:
        layout = resolve(dump, ResolveOptions(use_cache=False)).layout
        tables = kernel_page_tables(dump, layout)
        if fixture.manifest.get("paging_levels"):
            assert tables.levels == fixture.manifest["paging_levels"], tables.levels_origin
        segs = _direct_map_segments(dump)
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


def _without(layout: Layout, key: str, value: int | None = None) -> Layout:
    """A copy of ``layout`` without ``key``, or with ``key`` set to ``value``."""
    out = Layout([r for k, r in layout.items() if k != key], release=layout.release,
                 build_id=layout.build_id)
    if value is not None:
        out.add(Resolution(key, Fact(key, value, "test")))
    return out


def test_paging_levels_from_the_tables_alone(fixture: Any) -> None:
    """Without NUMBER(pgtable_l5_enabled) the depth comes from the kernel image's own mapping,
    and a note that contradicts the tables is refused."""
    path = fixture.path("vmcore")
    if path is None:
        pytest.skip(f"{fixture.name} has no kdump vmcore")
    key = "NUMBER(pgtable_l5_enabled)"
    with open_dump(str(path)) as dump:
        layout = resolve(dump, ResolveOptions(use_cache=False)).layout
        stated = 5 if layout.optional_int(key) else 4
        probed = kernel_page_tables(dump, _without(layout, key))
        assert probed.levels == stated
        assert probed.levels_origin.startswith(f"no {key}; init_top_pgt maps the kernel image")
        with pytest.raises(CorruptError, match=f"maps the kernel image only as a {stated}-level"):
            kernel_page_tables(dump, _without(layout, key, 0 if stated == 5 else 1))


def _five_level(fixture: Any) -> Path:
    path: Path | None = fixture.path("vmcore")
    if fixture.manifest.get("paging_levels") != 5:
        pytest.skip(f"{fixture.name} was built with {fixture.manifest.get('paging_levels') or 4}-level "
                    "paging (guest CPU without LA57); trixie-la57 is the 5-level fixture")
    if path is None:
        pytest.skip(f"{fixture.name} has no kdump vmcore")
    return path


def test_five_level_fixture_uses_five_levels(fixture: Any) -> None:
    """The LA57 fixture really runs 5-level paging: the note says so, the tables walk only with
    five levels, and the direct map lies beyond the 48-bit address space."""
    path = _five_level(fixture)
    with open_dump(str(path)) as dump:
        layout = resolve(dump, ResolveOptions(use_cache=False)).layout
        assert layout.optional_int("NUMBER(pgtable_l5_enabled)") == 1
        assert layout.optional_int("NUMBER(MAX_PHYSMEM_BITS)") == 52
        tables = kernel_page_tables(dump, layout)
        assert tables.levels == 5
        assert "walks with as many levels" in tables.levels_origin
        top = layout.symbol("init_top_pgt")
        # the tables alone (no VMCOREINFO number) give the same depth
        assert probe_paging_levels(dump, tables.root, [(top, tables.root)]) == 5
        four = PageTables(dump, tables.root, levels=4)
        with pytest.raises(MissingDataError):
            four.translate(top)
        segs = _direct_map_segments(dump)
        assert segs
        for s in segs:
            # not canonical with 48 bits: only a 57-bit address space has it
            assert s.p_vaddr < 0xFFFF_8000_0000_0000, hex(s.p_vaddr)
            assert tables.translate(s.p_vaddr).paddr == s.p_paddr
            with pytest.raises(MissingDataError, match="not a canonical address"):
                four.translate(s.p_vaddr)


def test_five_level_translations_equal_drgn(fixture: Any) -> None:
    """Direct-map, vmemmap, vmalloc and kernel-image addresses translate as drgn's own walker
    (init_mm's page tables, with the -dbg DWARF) translates them."""
    path = _five_level(fixture)
    vmlinux = fixture.path("vmlinux_dbg")
    if vmlinux is None:
        pytest.skip(f"{fixture.name}: needs the --dbg vmlinux for drgn")
    from drgn.helpers.linux.mm import follow_phys, pfn_to_page

    from drgn_oracle import load_program

    prog = load_program(vmlinux, path)
    init_mm = prog["init_mm"].address_of_()
    with open_dump(str(path)) as dump:
        layout = resolve(dump, ResolveOptions(use_cache=False)).layout
        tables = kernel_page_tables(dump, layout)
        mm = build_memmap(dump, layout, tables)
        rng = random.Random(5)
        vaddrs: list[int] = [layout.symbol("init_top_pgt"), layout.symbol("_stext")]
        # direct map: page_offset_base is KASLR'd and 5-level dependent, read it from the dump
        page_offset = int(prog["page_offset_base"].value_())
        assert page_offset < 0xFFFF_8000_0000_0000
        for r in dump.ranges():
            vaddrs += [page_offset + r.start, page_offset + r.end - 8]
            vaddrs += [page_offset + rng.randrange(r.start, r.end) for _ in range(20)]
        # vmemmap: struct pages of random pfns
        for _ in range(50):
            c = rng.choice(mm.chunks)
            vaddrs.append(pfn_to_page(prog, c.start_pfn + rng.randrange(c.nr_pages)).value_())
        # vmalloc: the crashed task's stack (CONFIG_VMAP_STACK), below vmemmap
        sp = int(prog.crashed_thread().stack_trace()[0].registers()["rsp"])
        assert int(prog["vmalloc_base"].value_()) <= sp < int(prog["vmemmap_base"].value_())
        vaddrs.append(sp)
        for va in vaddrs:
            assert tables.translate(va).paddr == follow_phys(init_mm, va), hex(va)


#: ``struct QEMUCPUState`` of QEMU's x86 ``dump-guest-memory`` ELF notes (named "QEMU",
#: target/i386/arch_dump.c): version, size, 18 general registers, 10 segment descriptors of 24
#: bytes, then ``cr[5]``.
_QEMU_CR4 = 4 + 4 + 18 * 8 + 10 * 24 + 4 * 8
_CR4_LA57 = 1 << 12


def test_paging_levels_agree_with_the_cpus_cr4(fixture: Any) -> None:
    """The depth kdlayout derives from a QEMU ELF dump equals what the guest CPUs ran with:
    CR4.LA57 in QEMU's own per-CPU state notes, a witness outside the kernel's memory."""
    path = fixture.path("qemu_elf")
    if path is None:
        pytest.skip(f"{fixture.name} has no QEMU ELF dump")
    with open_dump(str(path)) as dump:
        states = [bytes(n.desc) for n in dump.notes if n.name == "QEMU"]
        if dump.vmcoreinfo is None:
            pytest.skip(f"{path.name}: QEMU dumped without the guest's VMCOREINFO")
        layout = resolve(dump, ResolveOptions(use_cache=False)).layout
        levels = kernel_page_tables(dump, layout).levels
    assert states, "QEMU ELF dump without QEMU CPU state notes"
    for desc in states:
        assert len(desc) >= _QEMU_CR4 + 8
        cr4 = int.from_bytes(desc[_QEMU_CR4:_QEMU_CR4 + 8], "little")
        assert bool(cr4 & _CR4_LA57) == (levels == 5), f"CR4 {cr4:#x}, {levels} levels"
