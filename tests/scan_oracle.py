"""Independent page classes from drgn and the crashed kernel's own -dbg DWARF.

Nothing here uses kdlayout. Offsets and bit numbers come from drgn's view of the DWARF types and
enumerators (``struct page``, ``enum pageflags``, ``enum pagetype``); free memory comes from
walking every zone's ``free_area[order].free_list[migratetype]`` lists (not from page types);
HugeTLB folios from every hstate's active and free lists; tail pages are mapped to their head
with drgn's own ``compound_head()`` (which knows HugeTLB fake heads and the 7.1 mask encoding)
and heads' sizes come from drgn's ``compound_order()``; zero pages from reading page content.
Which pfns the dump holds comes from the vmcore's ELF program headers (pyelftools).

The exclusion rules are makedumpfile's dump levels as its manual and ``__exclude_unnecessary_pages``
describe them:

* 16 free: every page of a free buddy block (and unaccepted memory blocks);
* 2 non-private cache: LRU, or swap cache (``PG_swapcache`` with ``PG_swapbacked``), with neither
  private data (``PG_private``/``PG_private_2``) nor an anonymous mapping;
* 4 all cache: the same without the private condition;
* 8 user data: anonymous (``mapping`` bit 0, slab excepted) and HugeTLB folios;
* always: ``PG_hwpoison`` and logically offline (``PageOffline``) pages;
* 1 zero: pages whose content is all zero.

Cache/user/hwpoison/offline are decided on the folio's head and apply to its tail pages.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PAGE_SIZE = 4096


@dataclass
class OracleClasses:
    """Per-pfn truth for ``[0, max_pfn)``; attribute arrays are bool, head rules already applied
    to tail pages."""

    release: str
    max_pfn: int
    full: np.ndarray          # every byte of the frame is in the dump
    has_page: np.ndarray      # drgn could read its struct page
    free: np.ndarray
    cache: np.ndarray
    private: np.ndarray
    anon: np.ndarray
    huge: np.ndarray
    hwpoison: np.ndarray
    offline: np.ndarray
    slab: np.ndarray
    zero: np.ndarray
    free_heads: dict[int, int]
    huge_heads: set[int]
    nr_tails: int

    def excluded(self, level: int) -> np.ndarray:
        """The pfns makedumpfile's rules drop at ``level`` (among pages fully in the dump)."""
        ex = self.hwpoison | self.offline
        if level & 16:
            ex = ex | self.free
        if level & 2:
            ex = ex | (self.cache & ~self.private & ~self.anon)
        if level & 4:
            ex = ex | (self.cache & ~self.anon)
        if level & 8:
            ex = ex | self.anon | self.huge
        if level & 1:
            ex = ex | self.zero
        out: np.ndarray = ex & self.full
        return out


def _elf_full_pages(core: Path, max_pfn: int) -> np.ndarray:
    from elftools.elf.elffile import ELFFile

    full = np.zeros(max_pfn, dtype=bool)
    with core.open("rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] != "PT_LOAD" or not seg["p_filesz"]:
                continue
            lo = -(-seg["p_paddr"] // PAGE_SIZE)
            hi = (seg["p_paddr"] + seg["p_filesz"]) // PAGE_SIZE
            full[lo:min(hi, max_pfn)] = True
    return full


def _elf_end_pfn(core: Path) -> int:
    from elftools.elf.elffile import ELFFile

    with core.open("rb") as f:
        return max((-(-(seg["p_paddr"] + seg["p_filesz"]) // PAGE_SIZE)
                    for seg in ELFFile(f).iter_segments() if seg["p_type"] == "PT_LOAD"),
                   default=0)


def _enum(prog: Any, name: str) -> int | None:
    try:
        return int(prog[name].value_())
    except (KeyError, LookupError):
        return None


def _vmcoreinfo_number(prog: Any, key: str) -> int | None:
    text = prog["VMCOREINFO"].string_().decode()
    for line in text.splitlines():
        k, _, v = line.partition("=")
        if k == f"NUMBER({key})":
            return int(v, 0)
    return None


def _walk_free_lists(prog: Any) -> tuple[dict[int, int], list[int]]:
    """{head pfn: order} from every zone's free lists; heads of unaccepted blocks."""
    from drgn.helpers.linux.list import list_for_each_entry
    from drgn.helpers.linux.mm import page_to_pfn
    from drgn.helpers.linux.mmzone import for_each_online_pgdat

    heads: dict[int, int] = {}
    unaccepted: list[int] = []
    for pgdat in for_each_online_pgdat(prog):
        for zi in range(pgdat.nr_zones.value_()):
            zone = pgdat.node_zones[zi]
            for order, area in enumerate(zone.free_area):
                for fl in area.free_list:
                    for page in list_for_each_entry("struct page", fl.address_of_(), "lru"):
                        heads[page_to_pfn(page).value_()] = order
            with contextlib.suppress(AttributeError, LookupError):
                for page in list_for_each_entry("struct page",
                                                zone.unaccepted_pages.address_of_(), "lru"):
                    unaccepted.append(page_to_pfn(page).value_())
    return heads, unaccepted


def _hugetlb_heads(prog: Any) -> set[int]:
    from drgn.helpers.linux.list import list_for_each_entry
    from drgn.helpers.linux.mm import page_to_pfn

    out: set[int] = set()
    try:
        from drgn.helpers.linux.hugetlb import for_each_hstate
        hstates = list(for_each_hstate(prog))
    except (ImportError, LookupError):
        return out
    for h in hstates:
        lists = [h.hugepage_activelist.address_of_()]
        lists += [fl.address_of_() for fl in h.hugepage_freelists]
        for head in lists:
            for page in list_for_each_entry("struct page", head, "lru"):
                out.add(page_to_pfn(page).value_())
    return out


def build_oracle(vmlinux: Path, core: Path) -> OracleClasses:
    """Classify every pfn of ``core`` with drgn (slow-ish: about a minute for 1 GiB)."""
    import drgn
    from drgn.helpers.linux import mm as dmm

    prog = drgn.Program()
    prog.set_core_dump(str(core))
    prog.load_debug_info([str(vmlinux)])
    page_t = prog.type("struct page")
    psize = drgn.sizeof(page_t)

    def off(member: str) -> int | None:
        try:
            return int(drgn.offsetof(page_t, member))
        except (LookupError, ValueError):
            return None

    flags_off = off("flags")
    mapping_off = off("mapping")
    tail_off = off("compound_head")
    if tail_off is None:
        tail_off = off("compound_info")
    type_off = off("page_type")
    if type_off is None:
        type_off = off("_mapcount")
    assert flags_off is not None and mapping_off is not None and tail_off is not None
    assert type_off is not None

    ranges = list(dmm.for_each_valid_page_range(prog))
    # every pfn with a struct page or with RAM in the dump (frames without a struct page can
    # still be zero pages)
    max_pfn = max(max(end for _, end, _ in ranges), _elf_end_pfn(core))
    words = np.zeros((max_pfn, psize // 8), dtype=np.uint64)
    has_page = np.zeros(max_pfn, dtype=bool)
    step = 1 << 14
    for start, end, mem_map in ranges:
        base = mem_map.value_()
        for p in range(start, end, step):
            q = min(end, p + step)
            try:
                raw = prog.read(base + p * psize, (q - p) * psize)
            except drgn.FaultError:
                continue
            words[p:q] = np.frombuffer(raw, dtype="<u8").reshape(q - p, psize // 8)
            has_page[p:q] = True
    flags = words[:, flags_off // 8]
    mapping = words[:, mapping_off // 8]
    tword = words[:, tail_off // 8]
    tw = words[:, type_off // 8] >> np.uint64(8 * (type_off % 8)) & np.uint64(0xFFFFFFFF)

    def flag(name: str) -> np.ndarray:
        bit = _enum(prog, name)
        if bit is None:
            return np.zeros(max_pfn, dtype=bool)
        r: np.ndarray = ((flags >> np.uint64(bit)) & np.uint64(1)) != 0
        return r & has_page

    # page types: enum pagetype tags (6.12+) or the exact _mapcount value VMCOREINFO exports
    def page_type(name: str) -> np.ndarray:
        tag = _enum(prog, f"PGTY_{name}")
        if tag is not None:
            r: np.ndarray = (tw >> np.uint64(24)) == np.uint64(tag)
            return r & has_page
        v = _vmcoreinfo_number(prog, f"PAGE_{name.upper()}_MAPCOUNT_VALUE")
        if v is None:
            return np.zeros(max_pfn, dtype=bool)
        r = tw == np.uint64(v & 0xFFFFFFFF)
        return r & has_page

    slab = page_type("slab") if _enum(prog, "PGTY_slab") is not None else flag("PG_slab")
    # cross-check the vectorised slab test with drgn's PageSlab on a sample
    sample = np.flatnonzero(has_page)[:: max(1, int(has_page.sum()) // 1500)]
    for p in sample.tolist():
        assert bool(slab[p]) == bool(dmm.PageSlab(dmm.pfn_to_page(prog, p))), f"slab pfn {p}"

    cache = flag("PG_lru")
    swapcache = flag("PG_swapcache")
    if _enum(prog, "PG_swapbacked") is not None:
        swapcache &= flag("PG_swapbacked")
    cache |= swapcache
    private = flag("PG_private") | flag("PG_private_2")
    anon = (((mapping & np.uint64(1)) != 0) & ~slab) & has_page
    hwpoison = flag("PG_hwpoison")
    offline = page_type("offline")

    huge_heads = _hugetlb_heads(prog)
    huge = np.zeros(max_pfn, dtype=bool)
    for h in huge_heads:
        huge[h] = True

    # tails follow their head (drgn's compound_head; heads' sizes from compound_order)
    ptr_t = prog.pointer_type(page_t)
    head_flag = _enum(prog, "PG_head")
    assert head_flag is not None
    cand = np.flatnonzero(has_page & (((tword & np.uint64(1)) != 0)
                                      | (((flags >> np.uint64(head_flag)) & np.uint64(1)) != 0)))
    nr_tails = 0
    for p in cand.tolist():
        page = drgn.Object(prog, ptr_t, value=dmm.pfn_to_page(prog, p).value_())
        h = dmm.page_to_pfn(dmm.compound_head(page)).value_()
        if h == p:
            continue
        nr_tails += 1
        hp = dmm.pfn_to_page(prog, h)
        assert h < p < h + (1 << dmm.compound_order(hp).value_()), f"tail {p} head {h}"
        for arr in (cache, private, anon, huge, hwpoison, offline, slab):
            arr[p] = arr[h]

    free_heads, unaccepted = _walk_free_lists(prog)
    free = np.zeros(max_pfn, dtype=bool)
    for h, order in free_heads.items():
        free[h:h + (1 << order)] = True
    if unaccepted:
        max_order = prog.type("struct zone").member("free_area").type.length - 1
        for h in unaccepted:
            free[h:h + (1 << max_order)] = True

    full = _elf_full_pages(core, max_pfn)
    zero = np.zeros(max_pfn, dtype=bool)
    idx = np.flatnonzero(full)
    brk = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate(([idx[0]], idx[brk + 1]))
    ends = np.concatenate((idx[brk] + 1, [idx[-1] + 1]))
    chunk = 1024
    for a, e in zip(starts.tolist(), ends.tolist(), strict=True):
        for p in range(a, e, chunk):
            q = min(e, p + chunk)
            raw = prog.read(p * PAGE_SIZE, (q - p) * PAGE_SIZE, True)
            zero[p:q] = ~np.frombuffer(raw, dtype="<u8").reshape(q - p, -1).any(axis=1)

    release = prog["init_uts_ns"].name.release.string_().decode()
    return OracleClasses(release, max_pfn, full, has_page, free, cache, private, anon, huge,
                         hwpoison, offline, slab, zero, free_heads, huge_heads, nr_tails)
