"""Page scanner: classify every page frame of the crashed machine like makedumpfile's dump levels.

Input: the dump's physical memory, the crashed kernel's resolved :class:`~kdlayout.layout.Layout`
and the memory map located by :mod:`kdlayout.memmodel`. Output: one class code per pfn, the valid
bitmap (the pfn has RAM in the dump) and the dumpable bitmap for a dump level.

Class codes are bit sets (:class:`PageClass`). Bits 0-4 are the dump-level bits that exclude the
page: a non-private cache page carries ``CACHE | CACHE_PRIVATE`` (levels 2 and 4 both drop it),
a private one only ``CACHE_PRIVATE``. ``HWPOISON`` and ``OFFLINE`` pages are excluded at every
level; ``ANOMALY`` pages (bad ``struct page`` data) are kept at every level. So, for any level
``L``::

    excluded = valid & (code & (L | HWPOISON | OFFLINE)) != 0 & (code & ANOMALY) == 0

The rules, in makedumpfile's order (``__exclude_unnecessary_pages``), are evaluated on a folio's
head page and apply to the whole compound page (tails follow their head through their own
``compound_head``/``compound_info`` word); a free block's order applies to the ``2**order`` pages
it spans. See docs/scanner.md for every rule, its kernel source and where we differ from
makedumpfile.

Hot paths are numpy over zero-copy views of the dump, in blocks of pfns aligned to the largest
buddy block; blocks are independent (a tail whose head lies in another block reads that head
directly), so they run on a small thread pool (numpy releases the GIL).
"""

from __future__ import annotations

import enum
import functools
import itertools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .errors import KdlayoutError
from .layout import Layout
from .memmodel import MemMap, build_memmap
from .physmem import PhysicalMemory
from .semantics import (
    HugetlbMarker,
    HugetlbRule,
    PageTypeRule,
    Semantics,
    SlabMarker,
    TailEncoding,
    derive_semantics,
)

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_BLOCK_PAGES",
    "PageClass",
    "ScanAnomaly",
    "ScanResult",
    "Scanner",
    "WindowResult",
    "count_classes",
    "excluded_mask",
    "iter_scan",
    "primary_classes",
    "scan",
]

_U64 = np.uint64
_MASK64 = (1 << 64) - 1
#: Default pfns per work block (4 MiB of 64-byte struct pages; several blocks keep both threads busy).
DEFAULT_BLOCK_PAGES = 1 << 16
#: Bytes of page content checked for zeros per read (bounded memory).
_ZERO_CHUNK = 8 << 20
#: struct pages per slice when extracting fields (256 KiB of 64-byte pages: fits in L2).
_CACHE_PAGES = 4096
#: Examples kept per anomaly kind.
_EXAMPLES = 8


class PageClass(enum.IntFlag):
    """Bits of a per-pfn class code.

    ``ZERO`` .. ``FREE`` have the values of makedumpfile's dump-level bits: the page is excluded at
    any level that has one of its bits. ``HWPOISON`` and ``OFFLINE`` are always excluded;
    ``ANOMALY`` marks a page whose ``struct page`` data contradicts the kernel's invariants: kept.
    A code of 0 is a page no rule drops (kernel, slab, page tables, ...).
    """

    ZERO = 1
    CACHE = 2            # non-private page cache: dropped by level 2 (and 4)
    CACHE_PRIVATE = 4    # any page cache not anonymous: dropped by level 4
    USER = 8             # anonymous (incl. KSM) and hugetlb
    FREE = 16            # buddy free blocks and unaccepted memory
    HWPOISON = 32
    OFFLINE = 64
    ANOMALY = 128


ALWAYS = int(PageClass.HWPOISON | PageClass.OFFLINE)
#: Names of the report classes, in makedumpfile's attribution order (first match wins).
CLASS_NAMES = ("free", "cache", "cache_private", "user", "hwpoison", "offline", "zero")


def _check_level(dump_level: int) -> None:
    if not 0 <= dump_level <= 31:
        raise ValueError(f"dump level {dump_level} is not in 0..31")


def _primary(code: int, lv: int) -> int:
    """The attribution rule of one code value at level ``lv`` (see :func:`primary_classes`)."""
    if code & PageClass.ANOMALY:
        return len(CLASS_NAMES)
    order = ((PageClass.FREE, lv & PageClass.FREE),
             (PageClass.CACHE, lv & (PageClass.CACHE | PageClass.CACHE_PRIVATE)),
             (PageClass.CACHE_PRIVATE, lv & PageClass.CACHE_PRIVATE),
             (PageClass.USER, lv & PageClass.USER),
             (PageClass.HWPOISON, True), (PageClass.OFFLINE, True),
             (PageClass.ZERO, lv & PageClass.ZERO))
    for i, (bit, on) in enumerate(order):
        if on and code & bit:
            return i
    return len(CLASS_NAMES)


@functools.lru_cache(maxsize=64)
def _luts(dump_level: int) -> tuple[np.ndarray, np.ndarray]:
    """Per code value (0..255): excluded at ``dump_level``, and its attribution rule."""
    _check_level(dump_level)
    prim = np.array([_primary(v, dump_level) for v in range(256)], dtype=np.uint8)
    return prim != len(CLASS_NAMES), prim


def excluded_mask(codes: np.ndarray, dump_level: int) -> np.ndarray:
    """Pages a dump level drops, from class codes (``uint8``): a bool array."""
    out: np.ndarray = _luts(dump_level)[0][codes.astype(np.uint8, copy=False)]
    return out


def primary_classes(codes: np.ndarray, dump_level: int) -> np.ndarray:
    """Per page, the index in :data:`CLASS_NAMES` of the rule that drops it at ``dump_level``
    (first match in makedumpfile's order: free, non-private cache, private cache, user data,
    hwpoison, offline, and zero last, since makedumpfile tests the content only of pages still
    dumpable), or ``len(CLASS_NAMES)`` for a kept page."""
    out: np.ndarray = _luts(dump_level)[1][codes.astype(np.uint8, copy=False)]
    return out


def count_classes(codes: np.ndarray, valid: np.ndarray, dump_level: int) -> dict[str, int]:
    """Excluded pages per class at ``dump_level`` among ``valid`` pages, attributed like
    makedumpfile's report (see :func:`primary_classes`)."""
    per_code = np.bincount(codes[valid].astype(np.uint8, copy=False), minlength=256)
    prim = _luts(dump_level)[1]
    hist = np.bincount(prim, weights=per_code, minlength=len(CLASS_NAMES) + 1)
    return {name: int(hist[i]) for i, name in enumerate(CLASS_NAMES)}


@dataclass
class ScanAnomaly:
    """One kind of bad input met during the scan: how many pages, and a few example pfns."""

    kind: str
    detail: str
    pages: int = 0
    examples: list[int] = field(default_factory=list)


@dataclass
class WindowResult:
    """Results of one window of pfns ``[start, end)``: packed bitmaps (``np.packbits``, little bit
    order, bit ``i`` is pfn ``start + i``) and excluded pages per class at the scan's level."""

    start: int
    end: int
    valid: np.ndarray
    dumpable: np.ndarray
    counts: dict[str, int]
    codes: np.ndarray | None = None


@dataclass
class ScanResult:
    """Everything one scan found.

    ``codes`` is one :class:`PageClass` code per pfn (``uint8``, None in windowed mode);
    ``valid_bits``/``dumpable_bits`` are packed bitmaps over ``[0, max_pfn)`` (little bit order,
    as makedumpfile writes its bitmaps); ``counts`` the excluded pages per class at
    ``dump_level``; ``timings`` seconds per phase.
    """

    dump_level: int
    max_pfn: int
    valid_bits: np.ndarray
    dumpable_bits: np.ndarray
    counts: dict[str, int]
    anomalies: dict[str, ScanAnomaly]
    timings: dict[str, float]
    codes: np.ndarray | None = None
    page_size: int = 4096
    memmap_pages: int = 0

    @property
    def valid(self) -> np.ndarray:
        """Bool per pfn: the pfn has RAM in the dump."""
        out: np.ndarray = np.unpackbits(self.valid_bits, count=self.max_pfn,
                                        bitorder="little").astype(bool)
        return out

    @property
    def dumpable(self) -> np.ndarray:
        """Bool per pfn: a dump at ``dump_level`` keeps the page."""
        out: np.ndarray = np.unpackbits(self.dumpable_bits, count=self.max_pfn,
                                        bitorder="little").astype(bool)
        return out

    def dumpable_at(self, dump_level: int) -> np.ndarray:
        """The dumpable pages at another level (needs ``codes``; zero pages only if the scan's own
        level checked page content)."""
        if self.codes is None:
            raise ValueError("windowed scans keep no class codes")
        out: np.ndarray = self.valid & ~excluded_mask(self.codes, dump_level)
        return out

    @property
    def nr_valid(self) -> int:
        return int(np.unpackbits(self.valid_bits).sum())

    @property
    def nr_dumpable(self) -> int:
        return int(np.unpackbits(self.dumpable_bits).sum())

    def to_json(self) -> dict[str, object]:
        """A JSON-ready summary (no per-pfn arrays)."""
        excluded = sum(self.counts.values())
        return {
            "dump_level": self.dump_level,
            "max_pfn": self.max_pfn,
            "page_size": self.page_size,
            "pages": {"valid": self.nr_valid, "memory_hole": self.max_pfn - self.nr_valid,
                      "excluded": excluded, "kept": self.nr_dumpable,
                      "with_struct_page": self.memmap_pages},
            "excluded": dict(self.counts),
            "anomalies": {k: {"pages": a.pages, "detail": a.detail, "examples": a.examples}
                          for k, a in self.anomalies.items()},
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
        }


# ------------------------------------------------------------------------------------------------
# Field access


@dataclass(frozen=True)
class _Field:
    """A little-endian field of ``size`` bytes at byte ``offset`` of a head's ``struct page``
    array (``offset >= SIZE(page)`` reaches into following pages)."""

    offset: int
    size: int

    def page(self, psize: int) -> int:
        return self.offset // psize

    def in_page(self, psize: int) -> int:
        return self.offset % psize


def _extract(words: np.ndarray | None, raw: np.ndarray, off: int, size: int) -> np.ndarray:
    """The ``size``-byte little-endian field at byte ``off`` of every row, as uint64.

    ``words`` is the rows as uint64 words (None when they are not 8-byte aligned); ``raw`` the
    rows as bytes, used when the field straddles two words.
    """
    w, s = divmod(off, 8)
    if s + size <= 8 and words is not None:
        col = words[:, w]
        if s == 0 and size == 8:
            return col
        out: np.ndarray = (col >> _U64(8 * s)) & _U64((1 << (8 * size)) - 1)
        return out
    b = np.zeros((raw.shape[0], 8), dtype=np.uint8)
    b[:, :size] = raw[:, off:off + size]
    res: np.ndarray = b.view("<u8").reshape(-1)
    return res


def _bit(flags: np.ndarray, bit: int | None) -> np.ndarray:
    if bit is None:
        return np.zeros(flags.shape, dtype=bool)
    r: np.ndarray = (flags & _U64(1 << bit)) != 0
    return r


# ------------------------------------------------------------------------------------------------
# The scanner


class _Anomalies:
    """Thread-safe enough: each block returns its own; merged in the caller."""

    def __init__(self) -> None:
        self.kinds: dict[str, ScanAnomaly] = {}

    def add(self, kind: str, detail: str, pfns: np.ndarray) -> None:
        if not len(pfns):
            return
        a = self.kinds.setdefault(kind, ScanAnomaly(kind, detail))
        a.pages += len(pfns)
        room = _EXAMPLES - len(a.examples)
        if room > 0:
            a.examples.extend(int(p) for p in pfns[:room])

    def merge(self, other: _Anomalies) -> None:
        for k, a in other.kinds.items():
            mine = self.kinds.setdefault(k, ScanAnomaly(k, a.detail))
            mine.pages += a.pages
            mine.examples.extend(a.examples[:max(0, _EXAMPLES - len(mine.examples))])


@dataclass
class _Block:
    """Per-pfn fields of ``[start, start + n)`` plus one page of look-ahead (index ``n``)."""

    start: int
    n: int
    has: np.ndarray          # struct page in the dump
    fields: dict[str, np.ndarray]


class Scanner:
    """Classifies page frames of one dump with one kernel's semantics.

    ``dump`` is the crashed machine's memory, ``layout`` the crashed kernel's facts, ``memmap``
    where its ``struct page`` array is (built from ``layout`` if not given).
    """

    def __init__(self, dump: PhysicalMemory, layout: Layout | None = None, *,
                 memmap: MemMap | None = None, semantics: Semantics | None = None,
                 mapping_offset: int | None = None) -> None:
        if semantics is None:
            if layout is None:
                raise ValueError("need a layout or semantics")
            semantics = derive_semantics(layout)
        if memmap is None:
            if layout is None:
                raise ValueError("need a layout or a memmap")
            memmap = build_memmap(dump, layout)
        if mapping_offset is None:
            if layout is None:
                raise ValueError("need a layout or the offset of page.mapping")
            mapping_offset = layout.offset("page", "mapping")
        self.dump = dump
        self.sem = semantics
        self.mm = memmap
        self.psize = memmap.page_struct_size
        self.page_size = semantics.memory.page_size
        self.page_shift = semantics.memory.page_shift
        s = semantics
        fl = s.flags
        self._word = fl.word_size
        self._fields: dict[str, _Field] = {
            "flags": _Field(fl.flags_offset, fl.word_size),
            "ptype": _Field(s.page_types.field_offset, s.page_types.field_size),
            "mapping": _Field(mapping_offset, fl.word_size),
            "private": _Field(s.free.order_offset, s.free.order_size),
            "info": _Field(s.compound.tail_offset, fl.word_size),
            "order": _Field(s.compound.order_offset, s.compound.order_size),
        }
        if s.compound.hugetlb is not None:
            ht = s.compound.hugetlb
            self._fields["hugetlb"] = _Field(ht.offset, ht.size)
        if s.slab.marker is SlabMarker.PAGE_TYPE:
            assert s.slab.type_rule is not None
            self._fields["slab"] = _Field(s.slab.type_rule.field_offset,
                                          s.slab.type_rule.field_size)
        self.lookahead = max(f.page(self.psize) for f in self._fields.values())
        # Each field is read as the aligned 64-bit word holding it (shared between fields in one
        # word: flags and the order in _flags_1, page_type and the slab/hugetlb types) and
        # shifted out only where a sparse subset needs its value; type tests shift the rule.
        self._keys: dict[str, tuple[int, int]] = {}
        self._shift: dict[str, int] = {}
        self._fmask: dict[str, int] = {}
        for name, f in self._fields.items():
            off = f.in_page(self.psize)
            if off % 8 + f.size <= 8 and self.psize % 8 == 0:
                self._keys[name] = (off - off % 8, 8)
                self._shift[name] = 8 * (off % 8)
            else:
                self._keys[name] = (off, f.size)
                self._shift[name] = 0
            self._fmask[name] = (1 << (8 * f.size)) - 1
        # Largest compound order the memory model allows (orders beyond it are anomalies).
        mpb = s.memory.max_physmem_bits or 52
        self.max_compound_order = mpb - self.page_shift
        # Sections sorted by start pfn and by memmap address, for pfn <-> struct page address.
        secs = sorted(memmap.sections, key=lambda x: x.start_pfn)
        self._sec_pfn = np.array([x.start_pfn for x in secs], dtype=np.int64)
        self._sec_n = np.array([x.nr_pages for x in secs], dtype=np.int64)
        self._sec_map = np.array([x.mem_map & _MASK64 for x in secs], dtype=np.uint64)
        by_v = np.argsort(self._sec_map, kind="stable")
        self._v_map = self._sec_map[by_v]
        self._v_pfn = self._sec_pfn[by_v]
        self._v_n = self._sec_n[by_v]
        ranges = dump.ranges()
        self._r_start = np.array([r.start for r in ranges], dtype=np.int64)
        self._r_end = np.array([r.end for r in ranges], dtype=np.int64)
        self._chunk_start = np.array([c.start_pfn for c in memmap.chunks], dtype=np.int64)
        self.max_pfn = self._max_pfn()

    # --- field values

    def _val(self, name: str, words: np.ndarray) -> np.ndarray:
        """The field ``name`` out of the words that hold it."""
        sh, fm = self._shift[name], self._fmask[name]
        if sh == 0 and fm == _MASK64:
            return words
        out: np.ndarray = (words >> _U64(sh)) & _U64(fm)
        return out

    def _tm(self, name: str, words: np.ndarray, rule: PageTypeRule | HugetlbRule | None
            ) -> np.ndarray:
        """``(field & rule.mask) == rule.value`` tested on the words holding the field."""
        if rule is None:
            return np.zeros(words.shape, dtype=bool)
        sh = self._shift[name]
        r: np.ndarray = (words & _U64((rule.mask & self._fmask[name]) << sh)) == _U64(
            rule.value << sh)
        return r

    # --- geometry

    def _max_pfn(self) -> int:
        ends = [self.mm.max_pfn]
        ranges = self.dump.ranges()
        if ranges:
            ends.append(-(-ranges[-1].end // self.page_size))
        return max(ends)

    def pfn_to_vaddr(self, pfns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``struct page *`` of each pfn and whether a present section covers it."""
        pfns = np.asarray(pfns, dtype=np.int64)
        if not len(self._sec_pfn):
            return np.zeros(len(pfns), np.uint64), np.zeros(len(pfns), bool)
        i = np.clip(np.searchsorted(self._sec_pfn, pfns, side="right") - 1, 0, None)
        ok = (pfns >= self._sec_pfn[i]) & (pfns < self._sec_pfn[i] + self._sec_n[i])
        v = self._sec_map[i] + ((pfns - self._sec_pfn[i]) * self.psize).astype(np.uint64)
        return v, ok

    def vaddr_to_pfn(self, vaddrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pfn whose ``struct page`` is at each address, and whether there is one exactly."""
        v = np.asarray(vaddrs, dtype=np.uint64)
        if not len(self._v_map):
            return np.zeros(len(v), np.int64), np.zeros(len(v), bool)
        i = np.clip(np.searchsorted(self._v_map, v, side="right") - 1, 0, None)
        off = v - self._v_map[i]        # wraps when below the first section: then too large
        ok = (v >= self._v_map[i]) & (off < (self._v_n[i] * self.psize).astype(np.uint64))
        ok &= (off % _U64(self.psize)) == 0
        pfn = self._v_pfn[i] + (off // _U64(self.psize)).astype(np.int64)
        return np.where(ok, pfn, -1), ok

    # --- reading struct pages

    def _read_block(self, start: int, n: int) -> _Block:
        """Fields of pfns ``[start, start + n + lookahead)``, zero where no struct page."""
        total = n + self.lookahead + 1
        end = start + total
        has = np.zeros(total, dtype=bool)
        # fields at the same place in the page (flags and the order in _flags_1, page_type and
        # the slab/hugetlb types) are extracted once
        arrays = {key: np.zeros(total, dtype=np.uint64) for key in set(self._keys.values())}
        ci = max(int(np.searchsorted(self._chunk_start, start, side="right")) - 1, 0)
        chunks = self.mm.chunks
        while ci < len(chunks) and chunks[ci].start_pfn < end:
            c = chunks[ci]
            ci += 1
            lo, hi = max(c.start_pfn, start), min(c.start_pfn + c.nr_pages, end)
            if lo >= hi:
                continue
            try:
                raw = self.dump.view(c.paddr + (lo - c.start_pfn) * self.psize,
                                     (hi - lo) * self.psize)
            except KdlayoutError:
                continue   # counted by classify_block; the pages are kept
            rows = raw.reshape(hi - lo, self.psize)
            words = (rows.view("<u8") if self.psize % 8 == 0 and raw.ctypes.data % 8 == 0
                     else None)
            d0 = lo - start
            has[d0:d0 + hi - lo] = True
            # cache-sized slices: every field of a slice is taken while its lines are in cache
            for s0 in range(0, hi - lo, _CACHE_PAGES):
                s1 = min(s0 + _CACHE_PAGES, hi - lo)
                w = None if words is None else words[s0:s1]
                for key, arr in arrays.items():
                    if w is not None and key[1] == 8 and key[0] % 8 == 0:
                        arr[d0 + s0:d0 + s1] = w[:, key[0] // 8]
                    else:
                        arr[d0 + s0:d0 + s1] = _extract(w, rows[s0:s1], key[0], key[1])
        return _Block(start, n, has, {name: arrays[key] for name, key in self._keys.items()})

    def _read_pages(self, pfns: np.ndarray) -> _Block:
        """Fields of a few scattered pfns (heads outside a block), each with its look-ahead.

        Returns a block whose row ``k * (lookahead + 1) + j`` is page ``pfns[k] + j``.
        """
        step = self.lookahead + 1
        total = len(pfns) * step
        has = np.zeros(total, dtype=bool)
        arrays = {key: np.zeros(total, dtype=np.uint64) for key in set(self._keys.values())}
        for k, p in enumerate(pfns.tolist()):       # a handful of heads per block boundary
            for j in range(step):
                pa = self.mm.page_paddr(p + j)
                if pa is None:
                    continue
                try:
                    raw = np.frombuffer(self.dump.read(pa, self.psize), dtype=np.uint8)
                except KdlayoutError:
                    continue
                row = raw.reshape(1, self.psize)
                words = row.view("<u8") if self.psize % 8 == 0 else None
                has[k * step + j] = True
                for key, arr in arrays.items():
                    arr[k * step + j] = _extract(words, row, key[0], key[1])[0]
        return _Block(-1, total, has, {name: arrays[key] for name, key in self._keys.items()})

    # --- classification

    def _own_codes(self, b: _Block, idx: np.ndarray | None, pfns: np.ndarray,
                   anomalies: _Anomalies, limit: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray, np.ndarray]:
        """Classify pages ``idx`` of block ``b`` (None: every row) as heads or single pages.

        Returns (code, range length in pages, head_ok, free_len) where range length is the
        compound page size (1 for a single page), free_len the free block length (0 if none).
        Anomalies are counted for the first ``limit`` pages only (the rest is look-ahead).
        Dense work is a few passes over ``flags``/``page_type``/``mapping``; the rest runs on the
        (sparse) pages a first test selected.
        """
        s = self.sem
        f = b.fields

        def sel(a: np.ndarray) -> np.ndarray:
            return a if idx is None else a[idx]

        def rows(sub: np.ndarray) -> np.ndarray:
            return sub if idx is None else idx[sub]

        n = len(b.has) if idx is None else len(idx)
        last = len(b.has) - 1
        flags = self._val("flags", sel(f["flags"]))
        ptype = sel(f["ptype"])
        has = sel(b.has)
        fl = s.flags
        code = np.zeros(n, dtype=np.uint8)
        length = np.ones(n, dtype=np.int64)
        free_len = np.zeros(n, dtype=np.int64)
        bad = np.zeros(n, dtype=bool)

        # slab first: struct slab overlays mapping/_mapcount.
        if s.slab.marker is SlabMarker.PAGE_TYPE:
            slab = self._tm("slab", sel(f["slab"]), s.slab.type_rule)
        else:
            slab = _bit(flags, s.slab.flag_bit)

        # compound heads and their order (sparse); a tail is never a head, whatever its flags
        # word holds (the first tail's is _flags_1, whose low byte is the order)
        head = ((flags & _U64(s.compound.head_mask)) != 0) & (
            (self._val("info", sel(f["info"])) & _U64(1)) == 0)
        hi = np.flatnonzero(head & has)
        of = self._fields["order"]
        oidx = np.minimum(rows(hi) + of.page(self.psize), last)
        order = (self._val("order", f["order"][oidx])
                 & _U64(s.compound.order_mask)).astype(np.int64)
        bad_order = (~b.has[oidx] | (order < 1) | (order > self.max_compound_order)
                     | ((pfns[hi] & ((np.int64(1) << np.minimum(order, 62)) - 1)) != 0))
        bo = hi[bad_order]
        anomalies.add("compound-order", "compound head with an order that is unreadable, "
                      "< 1, beyond the memory model or not aligned to its pfn",
                      pfns[bo[bo < limit]])
        good_heads = hi[~bad_order]
        length[good_heads] = np.int64(1) << order[~bad_order]
        bad[bo] = True
        head_ok = np.zeros(n, dtype=bool)
        head_ok[good_heads] = True

        # free blocks: buddy head, order in page.private (sparse)
        if s.free.buddy is not None:
            buddy = self._tm("ptype", ptype, s.free.buddy)
        else:
            buddy = _bit(flags, s.free.buddy_flag_bit)
        bi = np.flatnonzero(buddy & ~slab & has)
        border = self._val("private", f["private"][rows(bi)])
        bad_buddy = ((border >= _U64(s.free.nr_page_orders))
                     | ((pfns[bi].astype(np.uint64)
                         & ((_U64(1) << np.minimum(border, _U64(63))) - _U64(1))) != 0))
        bb = bi[bad_buddy]
        anomalies.add("free-order", f"buddy page whose order (page.private) is >= "
                      f"{s.free.nr_page_orders} orders or not aligned to its pfn",
                      pfns[bb[bb < limit]])
        gb = bi[~bad_buddy]
        free_len[gb] = np.int64(1) << border[~bad_buddy].astype(np.int64)
        bad[bb] = True
        if s.free.unaccepted is not None:
            ui = np.flatnonzero(self._tm("ptype", ptype, s.free.unaccepted) & ~buddy & ~slab
                                & has)
            free_len[ui] = np.int64(1) << s.free.max_page_order
        code[free_len > 0] |= np.uint8(PageClass.FREE)

        # page cache, private data, hwpoison (sparse: pages with any of those flags)
        def m(name: str) -> int:
            bit = fl.bit(name)
            return 0 if bit is None else 1 << bit

        lru_m, sc_m, sb_m = m("PG_lru"), m("PG_swapcache"), m("PG_swapbacked")
        priv_m = m("PG_private") | m("PG_private_2")
        hwp_m = m("PG_hwpoison")
        fi = np.flatnonzero((flags & _U64(lru_m | sc_m | hwp_m)) != 0)
        ff = flags[fi]
        if fl.swapcache_requires_swapbacked:
            swapcache = (ff & _U64(sc_m | sb_m)) == _U64(sc_m | sb_m)
        else:
            swapcache = (ff & _U64(sc_m)) != 0
        cache = ((ff & _U64(lru_m)) != 0) | swapcache
        private = (ff & _U64(priv_m)) != 0
        # anonymous: mapping bit 0 (sparse), never on slab pages
        ai = np.flatnonzero((self._val("mapping", sel(f["mapping"])) & _U64(s.mapping.anon))
                            != 0)
        ai = ai[~slab[ai]]
        anon_f = np.isin(fi, ai, assume_unique=True)
        ci = fi[cache & ~anon_f]
        cpriv = private[cache & ~anon_f]
        code[ci[~cpriv]] |= np.uint8(PageClass.CACHE | PageClass.CACHE_PRIVATE)
        code[ci[cpriv]] |= np.uint8(PageClass.CACHE_PRIVATE)
        code[fi[(ff & _U64(hwp_m)) != 0]] |= np.uint8(PageClass.HWPOISON)
        code[ai] |= np.uint8(PageClass.USER)
        ht = s.compound.hugetlb
        if ht is not None:
            hf = self._fields["hugetlb"]
            if ht.marker is HugetlbMarker.PAGE_TYPE and hf.page(self.psize) == 0:
                hsel = np.flatnonzero(self._tm("hugetlb", sel(f["hugetlb"]), ht) & has)
            else:                       # the marker lives in the first tail page of a head
                hidx = np.minimum(rows(hi) + hf.page(self.psize), last)
                hsel = hi[self._tm("hugetlb", f["hugetlb"][hidx], ht) & b.has[hidx]]
            code[hsel] |= np.uint8(PageClass.USER)
        off_rule = s.page_types.get("offline")
        if off_rule is not None:
            code[np.flatnonzero(self._tm("ptype", ptype, off_rule) & ~slab)] |= np.uint8(
                PageClass.OFFLINE)

        code[bad] = np.uint8(PageClass.ANOMALY)
        code[~has] = 0
        free_len[bad] = 0
        return code, length, head_ok, free_len

    def _head_pfns(self, b: _Block, pfns: np.ndarray, info: np.ndarray,
                   tail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Head pfn of each tail page (-1 where the tail word leads nowhere)."""
        c = self.sem.compound
        vaddr, _ = self.pfn_to_vaddr(pfns)
        info = info.astype(np.uint64)
        ptr = info - _U64(1)
        if c.tail_encoding is TailEncoding.POINTER_PLUS_ONE:
            haddr = ptr
        else:
            masked = vaddr & info
            if c.tail_encoding is TailEncoding.MASK:
                haddr = masked
            else:
                haddr = np.where(_is_mask(info), masked, ptr)
        hp, ok = self.vaddr_to_pfn(haddr)
        return np.where(tail & ok, hp, -1), tail & ok

    def classify_block(self, start: int, n: int, anomalies: _Anomalies) -> np.ndarray:
        """Class codes (without ZERO) of pfns ``[start, start + n)``."""
        b = self._read_block(start, n)
        total = len(b.has)
        pfns = np.arange(start, start + total, dtype=np.int64)
        c = self.sem.compound
        info = self._val("info", b.fields["info"])
        flags = self._val("flags", b.fields["flags"])
        tail = b.has & ((info & _U64(1)) != 0)
        # A head page whose first tail names another head: a HugeTLB vmemmap-optimised "fake
        # head" (Linux kernel commit e7d324850bfc, v5.18); it is a tail of that head.
        if c.fake_heads_possible:
            head = b.has & ~tail & ((flags & _U64(c.head_mask)) != 0)
            hi = np.nonzero(head[:-1])[0]
            nxt = hi + 1
            nt = b.has[nxt] & ((info[nxt] & _U64(1)) != 0)
            vh, _ = self.pfn_to_vaddr(pfns[hi])
            fake = nt & ((info[nxt] - _U64(1)) != vh)
            fi = hi[fake]
            if len(fi):
                tail[fi] = True
                info = info.copy()
                info[fi] = info[fi + 1]
                # not heads: their order and markers are the real head's, at the wrong pfn
                fl2 = b.fields["flags"].copy()
                fl2[fi] &= ~_U64((c.head_mask << self._shift["flags"]) & _MASK64)
                b.fields["flags"] = fl2
        code, length, head_ok, free_len = self._own_codes(b, None, pfns, anomalies, n)
        # a present section covers the pfn but its struct page is not in the dump
        lost = self._covered(start, total) & ~b.has
        anomalies.add("memmap-not-in-dump", "a present section's struct page for the pfn is not "
                      "in the dump", pfns[:n][lost[:n]])
        code[lost] = np.uint8(PageClass.ANOMALY)

        # tails follow their head
        ti = np.nonzero(tail[:n])[0]
        if len(ti):
            hp, ok = self._head_pfns(b, pfns[ti], info[ti], np.ones(len(ti), bool))
            inside = ok & (hp >= start) & (hp < start + total)
            hcode = np.zeros(len(ti), dtype=np.uint8)
            hlen = np.zeros(len(ti), dtype=np.int64)
            hok = np.zeros(len(ti), dtype=bool)
            hloc = hp[inside] - start
            hcode[inside] = code[hloc]
            hlen[inside] = length[hloc]
            # a head that is itself a tail is a cycle, never a head
            hok[inside] = head_ok[hloc] & ~tail[hloc]
            outside = ok & ~inside
            if outside.any():
                uniq, inv = np.unique(hp[outside], return_inverse=True)
                ob = self._read_pages(uniq)
                rows = np.arange(len(uniq), dtype=np.int64) * (self.lookahead + 1)
                ocode, olen, ook, _ = self._own_codes(ob, rows, uniq, _Anomalies())
                otail = ob.has[rows] & ((self._val("info", ob.fields["info"][rows]) & _U64(1))
                                        != 0)
                hcode[outside] = ocode[inv]
                hlen[outside] = olen[inv]
                hok[outside] = (ook & ~otail)[inv]
            tp = pfns[ti]
            good = ok & hok & (hp < tp) & (tp < hp + hlen)
            bad = ~good
            anomalies.add("compound-tail", "tail page whose compound head is not in a present "
                          "section, not a head, itself a tail (cycle), or does not cover it",
                          tp[bad])
            code[ti] = np.where(good, hcode, np.uint8(PageClass.ANOMALY))

        # free blocks: the head's order covers the following pages, up to the block's end (the
        # next block looks behind for it)
        fi = np.nonzero(free_len[:n] > 1)[0]
        starts = [fi]
        ends = [np.minimum(fi + free_len[fi], n)]
        back = self._free_behind(start)
        if back:
            starts.append(np.zeros(1, dtype=np.int64))
            ends.append(np.array([min(back, n)], dtype=np.int64))
        fs, fe = np.concatenate(starts), np.concatenate(ends)
        if len(fs):
            diff = np.zeros(n + 1, dtype=np.int64)
            np.add.at(diff, fs, 1)
            np.add.at(diff, fe, -1)
            covered = np.cumsum(diff[:n]) > 0
            keep_anom = (code[:n] & np.uint8(PageClass.ANOMALY)) != 0
            code[:n] |= np.where(covered & ~keep_anom, np.uint8(PageClass.FREE), np.uint8(0))
        return code[:n]

    def _covered(self, start: int, total: int) -> np.ndarray:
        """Whether a present section covers each pfn of ``[start, start + total)``."""
        out = np.zeros(total, dtype=bool)
        i = max(int(np.searchsorted(self._sec_pfn, start, side="right")) - 1, 0)
        while i < len(self._sec_pfn) and self._sec_pfn[i] < start + total:
            lo = max(int(self._sec_pfn[i]), start)
            hi = min(int(self._sec_pfn[i] + self._sec_n[i]), start + total)
            if hi > lo:
                out[lo - start:hi - start] = True
            i += 1
        return out

    def _free_behind(self, start: int) -> int:
        """How many pages from ``start`` on a free block that begins before ``start`` covers.

        Free blocks are aligned to their size, so their head is ``start`` rounded down to some
        power of two up to the largest order: at most that many struct pages are read.
        """
        cands = sorted({start & ~((1 << j) - 1) for j in range(1, self.sem.free.max_page_order + 1)}
                       - {start})
        if not cands:
            return 0
        heads = np.array(cands, dtype=np.int64)
        ob = self._read_pages(heads)
        rows = np.arange(len(heads), dtype=np.int64) * (self.lookahead + 1)
        _, _, _, flen = self._own_codes(ob, rows, heads, _Anomalies())
        reach = heads + flen - start
        return int(reach.max()) if len(reach) and reach.max() > 0 else 0

    # --- valid pages and content

    def valid_block(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(valid, full): the pfn has some / all of its bytes in the dump."""
        ps = self.page_size
        lo, hi = start * ps, (start + n) * ps
        valid = np.zeros(n, dtype=bool)
        full = np.zeros(n, dtype=bool)
        i = max(int(np.searchsorted(self._r_end, lo, side="right")), 0)
        j = int(np.searchsorted(self._r_start, hi, side="left"))
        for rs, re_ in zip(self._r_start[i:j].tolist(), self._r_end[i:j].tolist(), strict=True):
            rs, re_ = max(rs, lo), min(re_, hi)
            if rs >= re_:
                continue
            a, e = rs // ps - start, -(-re_ // ps) - start
            valid[a:e] = True
            fa, fe = -(-rs // ps) - start, re_ // ps - start
            if fe > fa:
                full[fa:fe] = True
        return valid, full

    def zero_pages(self, start: int, n: int, candidates: np.ndarray) -> np.ndarray:
        """Which ``candidates`` (bool over the block) hold only zero bytes; reads page data."""
        out = np.zeros(n, dtype=bool)
        idx = np.nonzero(candidates)[0]
        if not len(idx):
            return out
        # runs of consecutive candidate pages
        brk = np.nonzero(np.diff(idx) != 1)[0]
        starts = np.concatenate(([idx[0]], idx[brk + 1]))
        ends = np.concatenate((idx[brk] + 1, [idx[-1] + 1]))
        ps = self.page_size
        per = max(1, _ZERO_CHUNK // ps)
        for a, e in zip(starts.tolist(), ends.tolist(), strict=True):
            for p in range(a, e, per):
                q = min(p + per, e)
                try:
                    v = self.dump.view((start + p) * ps, (q - p) * ps)
                except KdlayoutError:
                    continue
                rows = v.view("<u8").reshape(q - p, ps // 8) if v.ctypes.data % 8 == 0 else \
                    v.reshape(q - p, ps)
                out[p:q] = ~rows.any(axis=1)
        return out


def _is_mask(info: np.ndarray) -> np.ndarray:
    """Vectorised ``semantics._is_head_mask``: ``GENMASK(63, s) | 1`` with s >= 6."""
    m = info & ~_U64(1)
    low = m & (~m + _U64(1))            # lowest set bit
    r: np.ndarray = (m != 0) & (low >= _U64(64)) & ((m | (low - _U64(1))) == _U64(_MASK64))
    return r


def _blocks(max_pfn: int, size: int) -> Iterator[tuple[int, int]]:
    size = max(8, -(-size // 8) * 8)        # whole bytes of the packed bitmaps
    return ((s, min(size, max_pfn - s)) for s in range(0, max_pfn, size))


def _scan_window(sc: Scanner, start: int, n: int, dump_level: int, keep_codes: bool,
                 timing: dict[str, float]) -> tuple[WindowResult, _Anomalies]:
    an = _Anomalies()
    t0 = time.perf_counter()
    valid, full = sc.valid_block(start, n)
    code = sc.classify_block(start, n, an)
    # only pages whose whole frame is in the dump are dropped
    code = np.where(full, code, np.uint8(0))
    t1 = time.perf_counter()
    excluded = excluded_mask(code, dump_level)
    if dump_level & PageClass.ZERO:
        anomaly = (code & np.uint8(PageClass.ANOMALY)) != 0
        z = sc.zero_pages(start, n, full & ~excluded & ~anomaly)
        code |= np.where(z, np.uint8(PageClass.ZERO), np.uint8(0))
        excluded |= z
    t2 = time.perf_counter()
    timing["classify"] = timing.get("classify", 0.0) + (t1 - t0)
    timing["zero"] = timing.get("zero", 0.0) + (t2 - t1)
    dumpable = valid & ~excluded
    counts = count_classes(code, valid, dump_level)
    return WindowResult(start, start + n, np.packbits(valid, bitorder="little"),
                        np.packbits(dumpable, bitorder="little"), counts,
                        code if keep_codes else None), an


def iter_scan(scanner: Scanner, *, dump_level: int, window_pages: int,
              threads: int = 2, keep_codes: bool = False,
              anomalies: dict[str, ScanAnomaly] | None = None,
              timings: dict[str, float] | None = None) -> Iterator[WindowResult]:
    """Scan window by window (``window_pages`` rounded up to a multiple of 8), in pfn order.

    At most ``threads + 1`` windows are in flight, so memory stays bounded by the window size.
    Anomalies and per-phase seconds (summed over threads) accumulate in the given dicts.
    """
    if not 0 <= dump_level <= 31:
        raise ValueError(f"dump level {dump_level} is not in 0..31")
    blocks = _blocks(scanner.max_pfn, window_pages)
    merged = _Anomalies()
    tim: dict[str, float] = {} if timings is None else timings
    per_thread: list[dict[str, float]] = []

    def work(bl: tuple[int, int]) -> tuple[WindowResult, _Anomalies]:
        t: dict[str, float] = {}
        per_thread.append(t)
        return _scan_window(scanner, bl[0], bl[1], dump_level, keep_codes, t)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        it = iter(blocks)
        pending: list[Future[tuple[WindowResult, _Anomalies]]] = [
            pool.submit(work, bl) for bl in itertools.islice(it, max(1, threads) + 1)]
        while pending:
            fut = pending.pop(0)
            res, an = fut.result()
            merged.merge(an)
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(work, nxt))
            yield res
    for t in per_thread:
        for k, v in t.items():
            tim[k] = tim.get(k, 0.0) + v
    if anomalies is not None:
        for k, a in merged.kinds.items():
            if a.pages:
                anomalies[k] = a


def scan(dump: PhysicalMemory, layout: Layout, *, dump_level: int,
         window_pages: int | None = None, threads: int = 2,
         memmap: MemMap | None = None,
         progress: Callable[[int, int], None] | None = None) -> ScanResult:
    """Classify every page frame of ``dump`` (the crashed kernel's ``struct page`` array, read
    through ``layout``) and compute what a dump at ``dump_level`` (0-31) keeps.

    Without ``window_pages`` the result holds one class code per pfn (1 byte per page). With it,
    windows of that many pfns are scanned and reduced at once to packed bitmaps (2 bits per page
    kept), ``codes`` is None. ``threads`` workers scan blocks in parallel.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if memmap is None:
        memmap = build_memmap(dump, layout)
        timings["memmap"] = time.perf_counter() - t0
    sc = Scanner(dump, layout, memmap=memmap)
    anomalies: dict[str, ScanAnomaly] = {}
    for a in memmap.anomalies:
        sa = anomalies.setdefault(f"memmap:{a.kind}", ScanAnomaly(f"memmap:{a.kind}", a.detail))
        sa.pages += 0 if a.pfn is None else 1
        if a.pfn is not None and len(sa.examples) < _EXAMPLES:
            sa.examples.append(a.pfn)
    keep = window_pages is None
    win = window_pages or DEFAULT_BLOCK_PAGES
    nbytes = (sc.max_pfn + 7) // 8
    valid_bits = np.zeros(nbytes, dtype=np.uint8)
    dump_bits = np.zeros(nbytes, dtype=np.uint8)
    codes = np.zeros(sc.max_pfn, dtype=np.uint8) if keep else None
    counts = dict.fromkeys(CLASS_NAMES, 0)
    t1 = time.perf_counter()
    phase: dict[str, float] = {}
    for w in iter_scan(sc, dump_level=dump_level, window_pages=win, threads=threads,
                       keep_codes=keep, anomalies=anomalies, timings=phase):
        # windows start at multiples of the (aligned) window size, a multiple of 8 pfns
        byte = w.start // 8
        valid_bits[byte:byte + len(w.valid)] |= w.valid
        dump_bits[byte:byte + len(w.dumpable)] |= w.dumpable
        if codes is not None and w.codes is not None:
            codes[w.start:w.end] = w.codes
        for k, v in w.counts.items():
            counts[k] += v
        if progress is not None:
            progress(w.end, sc.max_pfn)
    timings["scan"] = time.perf_counter() - t1
    timings["classify_cpu"] = phase.get("classify", 0.0)
    timings["zero_cpu"] = phase.get("zero", 0.0)
    return ScanResult(dump_level, sc.max_pfn, valid_bits, dump_bits, counts, anomalies, timings,
                      codes, sc.page_size, memmap.nr_pages)
