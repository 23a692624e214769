"""Memory model: where each ``struct page`` of the crashed kernel lives in the dump.

Two pieces, both driven by the resolved :class:`~kdlayout.layout.Layout`:

* :class:`PageTables` — an x86_64 page-table walker (4 and 5 levels, 2 MiB and 1 GiB pages) over
  the dump's physical memory, rooted at the crashed kernel's ``init_top_pgt``. Direct-map,
  vmalloc and vmemmap addresses are translated with the kernel's own tables, never with assumed
  offsets.
* :class:`MemMap` — the SPARSEMEM (static or EXTREME, with or without VMEMMAP) section walk, or
  FLATMEM's single ``mem_map``, turned into :class:`MemmapChunk` runs: ranges of pfns whose
  ``struct page`` entries are physically contiguous in the dump, ready for zero-copy numpy views.

Whatever cannot be found (a section root outside the dump, a memmap page the dump lacks, a
section whose memmap pointer does not translate) becomes an :class:`Anomaly` and is reported; the
scanner keeps the pages it cannot classify.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import cachetools
import numpy as np

from .errors import CorruptError, KdlayoutError, MissingDataError, NotInDumpError, UnsupportedError
from .kimage import KernelImage
from .layout import Layout
from .physmem import PhysicalMemory
from .semantics import MemoryModel, MemoryModelRules, derive_memory_model

_MASK64 = (1 << 64) - 1
_PRESENT = 1 << 0
_PSE = 1 << 7            # "page size": a leaf at the PUD (1 GiB) or PMD (2 MiB) level
_PHYS_MASK = 0x000F_FFFF_FFFF_F000
_ENTRIES = 512


@dataclass(frozen=True)
class PhysRun:
    """``size`` bytes of virtual memory at ``vaddr`` that are physically contiguous at ``paddr``."""

    vaddr: int
    paddr: int
    size: int


@dataclass(frozen=True)
class Anomaly:
    """Something the memory model could not resolve; the affected pages are kept, not guessed."""

    kind: str
    detail: str
    section: int | None = None
    pfn: int | None = None


class PageTables:
    """Walk the crashed kernel's x86_64 page tables through a :class:`PhysicalMemory`.

    ``root`` is the physical address of the top-level table (``init_top_pgt``, a ``pgd_t[512]``,
    or the ``p4d`` level's parent with 5-level paging). ``sme_mask`` is AMD SME's encryption bit
    (VMCOREINFO ``NUMBER(sme_mask)``), cleared from every entry before use.
    """

    def __init__(self, mem: PhysicalMemory, root: int, *, levels: int = 4,
                 sme_mask: int = 0, levels_origin: str = "given by the caller") -> None:
        if levels not in (4, 5):
            raise UnsupportedError(f"{levels}-level paging is not x86_64", path=mem.info.path)
        self.mem = mem
        self.root = root
        self.levels = levels
        #: Where :attr:`levels` came from (VMCOREINFO, a probe of the tables, a default).
        self.levels_origin = levels_origin
        self._addr_mask = _PHYS_MASK & ~sme_mask & _MASK64
        self._tables: cachetools.LRUCache[int, np.ndarray] = cachetools.LRUCache(maxsize=4096)

    def _table(self, paddr: int) -> np.ndarray:
        table = self._tables.get(paddr)
        if table is None:
            try:
                raw = self.mem.read(paddr, _ENTRIES * 8)
            except NotInDumpError:
                raise NotInDumpError(f"page table at physical {paddr:#x} is not in the dump",
                                     paddr=paddr, path=self.mem.info.path) from None
            table = np.frombuffer(raw, dtype="<u8")
            self._tables[paddr] = table
        return table

    def _canonical(self, vaddr: int) -> bool:
        bits = 57 if self.levels == 5 else 48
        top = vaddr >> (bits - 1)
        return top == 0 or top == (1 << (65 - bits)) - 1

    def translate(self, vaddr: int) -> PhysRun:
        """The mapping containing ``vaddr``: its physical address and the rest of its page.

        Raises :class:`MissingDataError` when ``vaddr`` is not mapped, and
        :class:`NotInDumpError` when a page table on the way is not in the dump.
        """
        vaddr &= _MASK64
        if not self._canonical(vaddr):
            raise MissingDataError(f"{vaddr:#x} is not a canonical address",
                                   path=self.mem.info.path)
        table = self.root
        shift = 39 + 9 * (self.levels - 4)
        for level in range(self.levels, 0, -1):
            entry = int(self._table(table)[(vaddr >> shift) & 0x1FF])
            if not entry & _PRESENT:
                raise MissingDataError(f"{vaddr:#x} is not mapped (level {level} entry "
                                       f"{entry:#x} not present)", path=self.mem.info.path)
            if (level in (2, 3) and entry & _PSE) or level == 1:
                size = 1 << shift
                base = entry & self._addr_mask & ~(size - 1)
                offset = vaddr & (size - 1)
                return PhysRun(vaddr, base + offset, size - offset)
            table = entry & self._addr_mask
            shift -= 9
        raise AssertionError("unreachable")

    def runs(self, vaddr: int, size: int) -> Iterator[PhysRun]:
        """Physically contiguous pieces of ``[vaddr, vaddr + size)``, merged where adjacent."""
        pending: PhysRun | None = None
        end = vaddr + size
        while vaddr < end:
            t = self.translate(vaddr)
            n = min(t.size, end - vaddr)
            if pending is not None and pending.paddr + pending.size == t.paddr:
                pending = PhysRun(pending.vaddr, pending.paddr, pending.size + n)
            else:
                if pending is not None:
                    yield pending
                pending = PhysRun(vaddr, t.paddr, n)
            vaddr += n
        if pending is not None:
            yield pending

    def read(self, vaddr: int, size: int) -> bytes:
        """``size`` bytes of kernel virtual memory at ``vaddr``."""
        return b"".join(self.mem.read(r.paddr, r.size) for r in self.runs(vaddr, size))

    def read_u64(self, vaddr: int) -> int:
        return int.from_bytes(self.read(vaddr, 8), "little")


@dataclass(frozen=True)
class Section:
    """One present memory section (``struct mem_section``)."""

    nr: int
    start_pfn: int
    nr_pages: int
    section_mem_map: int    # the raw field, flags in its low bits
    mem_map: int            # virtual address of the struct page of start_pfn


@dataclass(frozen=True)
class MemmapChunk:
    """``nr_pages`` struct pages from ``start_pfn`` on, contiguous at physical ``paddr``."""

    start_pfn: int
    nr_pages: int
    paddr: int


@dataclass
class MemMap:
    """Where the crashed kernel's ``struct page`` array lies in the dump."""

    rules: MemoryModelRules
    page_struct_size: int
    sections: list[Section] = field(default_factory=list)
    chunks: list[MemmapChunk] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)

    @property
    def nr_pages(self) -> int:
        return sum(c.nr_pages for c in self.chunks)

    @property
    def max_pfn(self) -> int:
        """One past the highest pfn any present section covers."""
        return max((s.start_pfn + s.nr_pages for s in self.sections), default=0)

    def page_paddr(self, pfn: int) -> int | None:
        """Physical address of ``struct page`` for ``pfn``, if its memmap is in the dump."""
        lo, hi = 0, len(self.chunks)
        while lo < hi:
            mid = (lo + hi) // 2
            c = self.chunks[mid]
            if pfn < c.start_pfn:
                hi = mid
            elif pfn >= c.start_pfn + c.nr_pages:
                lo = mid + 1
            else:
                return c.paddr + (pfn - c.start_pfn) * self.page_struct_size
        return None


def probe_paging_levels(mem: PhysicalMemory, root: int, probes: Sequence[tuple[int, int]], *,
                        sme_mask: int = 0) -> int | None:
    """4 or 5: the walk depth under which the tables at ``root`` map every probe correctly.

    ``probes`` are ``(vaddr, paddr)`` pairs known independently of the tables — kernel-image
    addresses and their ``__pa_symbol()``. The two depths read different entries: the image's
    top-level entry (index 511) leads to ``level3_kernel_pgt`` with 4 levels and to
    ``level4_kernel_pgt`` with 5, and walking either as the other hits empty entries (a 4-level
    walk of 5-level tables reads the p4d table's entry 510; a 5-level walk of 4-level tables
    reads the fixmap pmd's entry 510). ``None`` when neither or both depths fit, or a table on
    the way is not in the dump.
    """
    if not probes:
        return None
    fits: list[int] = []
    for levels in (4, 5):
        tables = PageTables(mem, root, levels=levels, sme_mask=sme_mask)
        try:
            ok = all(tables.translate(va).paddr == pa for va, pa in probes)
        except KdlayoutError:
            ok = False
        if ok:
            fits.append(levels)
    return fits[0] if len(fits) == 1 else None


def kernel_page_tables(mem: PhysicalMemory, layout: Layout) -> PageTables:
    """The crashed kernel's page tables, rooted at ``SYMBOL(init_top_pgt)``.

    The depth is the kernel's runtime choice (a CONFIG_X86_5LEVEL kernel runs with 4 levels on a
    CPU without LA57, or with ``no5lvl``): VMCOREINFO ``NUMBER(pgtable_l5_enabled)``, written by
    x86_64 ``arch_crash_save_vmcoreinfo()``, checked against a walk of the kernel image's own
    mapping (:func:`probe_paging_levels`), which alone decides when the note lacks the number.
    A note that contradicts the tables is a :class:`CorruptError`. With neither, 4 levels.
    """
    image = KernelImage(mem)
    l5 = layout.optional_int("NUMBER(pgtable_l5_enabled)")
    sme = layout.optional_int("NUMBER(sme_mask)") or 0
    top = layout.symbol("init_top_pgt")
    root = image.pa(top)
    probes = [(top, root)]
    if layout.has("SYMBOL(_stext)"):
        stext = layout.symbol("_stext")
        probes.append((stext, image.pa(stext)))
    probed = probe_paging_levels(mem, root, probes, sme_mask=sme)
    if l5 is not None:
        stated = 5 if l5 else 4
        if probed is not None and probed != stated:
            raise CorruptError(
                f"VMCOREINFO NUMBER(pgtable_l5_enabled)={l5} means {stated}-level paging, but "
                f"init_top_pgt at physical {root:#x} maps the kernel image only as a {probed}-level "
                "table", path=mem.info.path)
        origin = f"NUMBER(pgtable_l5_enabled)={l5}" + (
            "; the kernel image's mapping walks with as many levels" if probed else
            "; not checked: the kernel image's mapping did not walk")
        return PageTables(mem, root, levels=stated, sme_mask=sme, levels_origin=origin)
    if probed is not None:
        return PageTables(mem, root, levels=probed, sme_mask=sme, levels_origin=(
            f"no NUMBER(pgtable_l5_enabled); init_top_pgt maps the kernel image only as a "
            f"{probed}-level table"))
    return PageTables(mem, root, levels=4, sme_mask=sme, levels_origin=(
        "no NUMBER(pgtable_l5_enabled) and the kernel image's mapping did not walk: 4 assumed"))


def build_memmap(mem: PhysicalMemory, layout: Layout,
                 tables: PageTables | None = None) -> MemMap:
    """Locate every present section's memmap (SPARSEMEM) or ``mem_map`` (FLATMEM) in ``mem``."""
    rules, _ = derive_memory_model(layout)
    tables = tables or kernel_page_tables(mem, layout)
    mm = MemMap(rules, layout.size("page"))
    if rules.model == MemoryModel.FLATMEM:
        _flatmem(mem, layout, tables, mm)
    else:
        _sparsemem(layout, tables, mm)
    _chunks(tables, mm)
    return mm


def _sparsemem(layout: Layout, tables: PageTables, mm: MemMap) -> None:
    rules = mm.rules
    assert rules.sections_per_root and rules.nr_section_roots and rules.mem_section_size
    assert rules.pages_per_section and rules.section_flags and rules.nr_mem_sections
    per_root, size = rules.sections_per_root, rules.mem_section_size
    field_off = layout.offset("mem_section", "section_mem_map")
    if field_off + 8 > size:
        raise CorruptError(f"OFFSET(mem_section.section_mem_map)={field_off} does not fit in "
                           f"SIZE(mem_section)={size}")
    flags = rules.section_flags
    # VMCOREINFO's SYMBOL(mem_section) is the address of the section roots themselves (the
    # pointer's value under SPARSEMEM_EXTREME): Linux kernel commit a0b1280368d1 ("kdump: write
    # correct address of mem_section into vmcoreinfo") (in v4.15).
    base = layout.symbol("mem_section")
    if rules.model == MemoryModel.SPARSEMEM_EXTREME:
        try:
            roots = np.frombuffer(tables.read(base, rules.nr_section_roots * 8), dtype="<u8")
        except KdlayoutError as exc:
            raise MissingDataError(f"mem_section root array at {base:#x}: {exc}") from None
        root_addrs = [(i, int(a)) for i, a in enumerate(roots) if a]
    else:
        root_addrs = [(i, base + i * size) for i in range(rules.nr_section_roots)]
    for root_nr, addr in root_addrs:
        try:
            raw = tables.read(addr, per_root * size)
        except KdlayoutError as exc:
            mm.anomalies.append(Anomaly("section-root", f"root {root_nr} at {addr:#x}: {exc}",
                                        section=root_nr * per_root))
            continue
        words = np.frombuffer(raw, dtype="<u8").reshape(per_root, size // 8)[:, field_off // 8]
        want = flags.marked_present | flags.has_mem_map
        for j in np.nonzero((words & np.uint64(want)) == np.uint64(want))[0]:
            nr = root_nr * per_root + int(j)
            if nr >= rules.nr_mem_sections:
                mm.anomalies.append(Anomaly("section-range", f"section {nr} beyond "
                                            f"NR_MEM_SECTIONS={rules.nr_mem_sections}", nr))
                continue
            value = int(words[j])
            start = nr * rules.pages_per_section
            # sparse_encode_mem_map() stores mem_map minus the section's first pfn.
            mem_map = ((value & flags.map_mask) + start * mm.page_struct_size) & _MASK64
            mm.sections.append(Section(nr, start, rules.pages_per_section, value, mem_map))


def _flatmem(mem: PhysicalMemory, layout: Layout, tables: PageTables, mm: MemMap) -> None:
    # FLATMEM exports &mem_map; the array of struct page starts at its value.
    image = KernelImage(mem)
    mem_map = image.read_u64(layout.symbol("mem_map"))
    pgdat = layout.symbol("contig_page_data")
    start = image.read_u64(pgdat + layout.offset("pglist_data", "node_start_pfn"))
    spanned = image.read_u64(pgdat + layout.offset("pglist_data", "node_spanned_pages"))
    mm.sections.append(Section(0, start, spanned, mem_map, mem_map))


def _chunks(tables: PageTables, mm: MemMap) -> None:
    psize = mm.page_struct_size
    pending: MemmapChunk | None = None
    for sec in mm.sections:
        pfn = sec.start_pfn
        try:
            runs = list(tables.runs(sec.mem_map, sec.nr_pages * psize))
        except KdlayoutError as exc:
            mm.anomalies.append(Anomaly("memmap-unmapped", f"section {sec.nr} memmap at "
                                        f"{sec.mem_map:#x}: {exc}", sec.nr, sec.start_pfn))
            continue
        for run in runs:
            offset = run.vaddr - sec.mem_map
            if offset % psize or run.size % psize:
                mm.anomalies.append(Anomaly(
                    "memmap-split", f"section {sec.nr}: a struct page straddles physical pages",
                    sec.nr, sec.start_pfn + offset // psize))
                continue
            pfn = sec.start_pfn + offset // psize
            n = run.size // psize
            if not tables.mem.contains(run.paddr, run.size):
                _present_parts(tables.mem, run, pfn, psize, mm, sec.nr)
                continue
            chunk = MemmapChunk(pfn, n, run.paddr)
            if (pending is not None and pending.start_pfn + pending.nr_pages == pfn
                    and pending.paddr + pending.nr_pages * psize == run.paddr):
                pending = MemmapChunk(pending.start_pfn, pending.nr_pages + n, pending.paddr)
            else:
                if pending is not None:
                    mm.chunks.append(pending)
                pending = chunk
    if pending is not None:
        mm.chunks.append(pending)
    mm.chunks.sort(key=lambda c: c.start_pfn)


def _present_parts(mem: PhysicalMemory, run: PhysRun, pfn: int, psize: int, mm: MemMap,
                   section: int) -> None:
    """Split a memmap run the dump holds only partly into chunks of whole struct pages."""
    end = run.paddr + run.size
    for r in mem.iter_ranges(run.paddr, end):
        first = -(-(r.start - run.paddr) // psize)
        last = (r.end - run.paddr) // psize
        if last > first:
            mm.chunks.append(MemmapChunk(pfn + first, last - first, run.paddr + first * psize))
    mm.anomalies.append(Anomaly("memmap-not-in-dump", f"section {section}: part of its memmap "
                                f"({run.paddr:#x}-{end:#x}) is not in the dump", section, pfn))
