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
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cachetools
import numpy as np

from .errors import KdlayoutError
from .layout import Layout
from .memmodel import MemMap, build_memmap
from .physmem import PhysicalMemory, release_mapping, release_view
from .semantics import (
    HugetlbMarker,
    PageTypeRule,
    Semantics,
    SlabMarker,
    TailEncoding,
    derive_semantics,
)

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_BLOCK_PAGES",
    "KEEP_BLOCK_PAGES",
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
    "semantics_of",
]

_U64 = np.uint64
_MASK64 = (1 << 64) - 1
#: Default pfns per window of the bounded (windowed) scan: 4 MiB of 64-byte struct pages. Each
#: thread keeps one window's rows mapped while it classifies them, so this sets the peak RSS.
DEFAULT_BLOCK_PAGES = 1 << 16
#: pfns per work block when the scan keeps every class code (memory grows with RAM there
#: anyway): fewer, larger blocks cost less fixed per-block work (~25 % faster on 16 GiB); 16 GiB
#: of RAM still makes 32 blocks for the threads to share.
KEEP_BLOCK_PAGES = 1 << 17
#: Bytes of page content checked for zeros per read (bounded memory).
_ZERO_CHUNK = 1 << 20
#: struct pages per slice when extracting fields (512 KiB of 64-byte pages: fits in L2).
_CACHE_PAGES = 8192
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


#: Semantics derived per layout object: (weak reference, number of facts) guards the id.
_SEMANTICS: cachetools.LRUCache[int, tuple[weakref.ref[Layout], int, Semantics]] = (
    cachetools.LRUCache(maxsize=16))
_SEMANTICS_LOCK = threading.Lock()


def semantics_of(layout: Layout) -> Semantics:
    """:func:`~kdlayout.semantics.derive_semantics` of ``layout``, derived once per layout
    object (a scan repeated on one dump does not derive the rules again)."""
    with _SEMANTICS_LOCK:
        hit = _SEMANTICS.get(id(layout))
        if hit is not None and hit[0]() is layout and hit[1] == len(layout):
            return hit[2]
    sem = derive_semantics(layout)
    with _SEMANTICS_LOCK:
        _SEMANTICS[id(layout)] = (weakref.ref(layout), len(layout), sem)
    return sem


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


def _code_histogram(codes: np.ndarray) -> np.ndarray:
    """How many of ``codes`` (``uint8``) hold each value 0..255.

    ``bincount`` costs about the same per element whatever its width, so the codes are counted
    in pairs (one ``uint16`` each, 65536 bins that fit in L2) and the pair histogram is folded:
    half the per-element work of counting the bytes one by one.
    """
    n = len(codes)
    if n < 1 << 16 or not codes.flags.c_contiguous:
        return np.bincount(codes, minlength=256)
    even = n & ~1
    pairs = np.bincount(codes[:even].view(np.uint16), minlength=1 << 16).reshape(256, 256)
    # a pair value is low | high << 8: rows index the high byte, columns the low one
    hist: np.ndarray = pairs.sum(axis=0) + pairs.sum(axis=1)
    if even < n:
        hist[codes[-1]] += 1
    return hist


def count_classes(codes: np.ndarray, valid: np.ndarray | None, dump_level: int) -> dict[str, int]:
    """Excluded pages per class at ``dump_level`` among ``valid`` pages (None: all), attributed
    like makedumpfile's report (see :func:`primary_classes`)."""
    sel = codes if valid is None else codes[valid]
    per_code = _code_histogram(sel.astype(np.uint8, copy=False))
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
    """Where one little-endian field lies, relative to a head's row of 64-bit words: ``page``
    struct pages after the head, word ``word`` of that row, bits ``shift`` up; ``spill`` when it
    continues into the next word. Values are masked with ``mask``."""

    page: int
    word: int
    shift: int
    mask: int
    spill: bool

    @classmethod
    def at(cls, offset: int, size: int, psize: int) -> _Field:
        page, off = divmod(offset, psize)
        word, byte = divmod(off, 8)
        return cls(page, word, 8 * byte, (1 << (8 * size)) - 1, byte + size > 8)

    def get(self, words: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
        """The field (uint64) of the rows ``rows`` of ``words`` (rows already include ``page``)."""
        w = words[rows, self.word]
        if self.spill:
            v = (w >> _U64(self.shift)) | (words[rows, self.word + 1] << _U64(64 - self.shift))
        elif self.shift:
            v = w >> _U64(self.shift)
        else:
            v = w
        if self.mask == _MASK64:
            return np.asarray(v)
        out: np.ndarray = v & _U64(self.mask)
        return out

    def word_mask(self, mask: int) -> int | None:
        """``mask`` on the field as a mask on its (first) word, if the field does not spill."""
        if self.spill:
            return None
        return ((mask & self.mask) << self.shift) & _MASK64


def _nz(b: np.ndarray) -> np.ndarray:
    """``np.flatnonzero`` for a mostly-false bool array: looks at 8 rows per step, then only
    into the words with a true row."""
    m = len(b) & ~7
    if m and b.ctypes.data % 8 == 0 and b.flags.c_contiguous:
        words = b[:m].view(np.uint64)
        wi = np.flatnonzero(words)
        if len(wi) * 4 > len(words):
            return np.flatnonzero(b)
        row, col = np.nonzero(b[:m].reshape(-1, 8)[wi])
        head: np.ndarray = wi[row] * 8 + col
        if m == len(b):
            return head
        return np.concatenate((head, np.flatnonzero(b[m:]) + m))
    out: np.ndarray = np.flatnonzero(b)
    return out


def _narrow_dtype(mask: int) -> type[np.unsignedinteger[Any]]:
    for dt in (np.uint8, np.uint16, np.uint32):
        if mask < 1 << (8 * np.dtype(dt).itemsize):
            return dt
    return np.uint64


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
class _Rows:
    """``struct page`` rows as 64-bit words: row ``i`` is pfn ``pfns[i]`` (``start + i`` when
    ``pfns`` is None). ``has`` is None when every row is in the dump; missing rows are zeros."""

    words: np.ndarray
    has: np.ndarray | None
    start: int = 0
    pfns: np.ndarray | None = None

    def pfn(self, idx: np.ndarray) -> np.ndarray:
        if self.pfns is None:
            out: np.ndarray = idx + self.start
            return out
        r: np.ndarray = self.pfns[idx]
        return r


@dataclass
class _Own:
    """A page's own classification, as a head or single page (tails are resolved later)."""

    code: np.ndarray          # uint8 per row
    tail: np.ndarray          # bool per row: a tail page (fake heads included)
    fake: np.ndarray          # rows of fake heads: their tail word is the next row's
    heads: np.ndarray         # rows of valid compound heads
    head_len: np.ndarray      # their size in pages
    free: np.ndarray          # rows of valid free-block heads (buddy or unaccepted)
    free_len: np.ndarray      # their size in pages


class _Dense(NamedTuple):
    """The fields the dense rules test, narrowed (unsigned, low bits kept): the flags field (all
    bits the rules use), the low byte of the tail word and of ``mapping``, and the page-type
    field masked with the union of its rules' masks (None when they need the per-rule path)."""

    flags: np.ndarray
    tail: np.ndarray
    mapping: np.ndarray
    ptype: np.ndarray | None


_EMPTY = np.zeros(0, dtype=np.int64)
_FREE = np.uint8(PageClass.FREE)
_ANOMALY = np.uint8(PageClass.ANOMALY)


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
            semantics = semantics_of(layout)
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
        self.psize = psize = memmap.page_struct_size
        self.page_size = semantics.memory.page_size
        self.page_shift = semantics.memory.page_shift
        s = semantics
        fl = s.flags
        # rows are read as 64-bit words; a struct page whose size is not a multiple of 8 is
        # copied into padded rows
        self._aligned = psize % 8 == 0
        self._nwords = -(-psize // 8) + (0 if self._aligned else 1)
        self._flags = _Field.at(fl.flags_offset, fl.word_size, psize)
        self._ptype = _Field.at(s.page_types.field_offset, s.page_types.field_size, psize)
        self._mapping = _Field.at(mapping_offset, fl.word_size, psize)
        self._private = _Field.at(s.free.order_offset, s.free.order_size, psize)
        self._info = _Field.at(s.compound.tail_offset, fl.word_size, psize)
        self._order = _Field.at(s.compound.order_offset, s.compound.order_size, psize)
        ht = s.compound.hugetlb
        self._hugetlb = None if ht is None else _Field.at(ht.offset, ht.size, psize)
        slab_rule = s.slab.type_rule if s.slab.marker is SlabMarker.PAGE_TYPE else None
        self._slab = None if slab_rule is None else _Field.at(
            slab_rule.field_offset, slab_rule.field_size, psize)
        fields = [self._flags, self._ptype, self._mapping, self._private, self._info,
                  self._order] + [f for f in (self._hugetlb, self._slab) if f is not None]
        self.lookahead = max(f.page for f in fields)
        if any(f.page for f in (self._flags, self._ptype, self._mapping, self._private,
                                self._info)):
            raise ValueError("per-page fields must lie inside struct page")

        def m(name: str) -> int:
            bit = fl.bit(name)
            return 0 if bit is None else 1 << bit

        # page-flag masks (on the flags field's value)
        self._m_head = s.compound.head_mask
        self._m_lru = m("PG_lru")
        self._m_sc, self._m_sb = m("PG_swapcache"), m("PG_swapbacked")
        self._m_priv = m("PG_private") | m("PG_private_2")
        self._m_hwp = m("PG_hwpoison")
        self._m_slab = 0 if s.slab.flag_bit is None else 1 << s.slab.flag_bit
        self._m_buddy = 0 if s.free.buddy_flag_bit is None else 1 << s.free.buddy_flag_bit
        self._m_flags = (self._m_head | self._m_lru | self._m_sc | self._m_sb | self._m_priv
                         | self._m_hwp | self._m_slab | self._m_buddy)
        # page-type rules tested on the word holding page_type, masked once with their union
        self._rules: dict[str, PageTypeRule] = {}
        for name, rule in (("buddy", s.free.buddy), ("unaccepted", s.free.unaccepted),
                           ("offline", s.page_types.get("offline")), ("slab", slab_rule)):
            if rule is not None:
                self._rules[name] = rule
        ht = s.compound.hugetlb
        if (ht is not None and ht.marker is HugetlbMarker.PAGE_TYPE
                and ht.offset == s.page_types.field_offset
                and ht.size == s.page_types.field_size):
            # the head's own page type (PG_hugetlb, PGTY_hugetlb): tested with the others
            self._rules["hugetlb"] = PageTypeRule("hugetlb", ht.offset, ht.size, ht.mask,
                                                  ht.value, 0)
        self._pt_same = all(r.field_offset == s.page_types.field_offset
                            and r.field_size == s.page_types.field_size
                            for r in self._rules.values())
        union = 0
        for r in self._rules.values():
            union |= r.mask
        self._pt_union = union
        # narrowest unsigned type holding every tested bit of a field (the copy truncates)
        self._fl_dtype = _narrow_dtype(self._m_flags)
        pf = self._ptype
        self._pt_dtype = (_narrow_dtype(union) if self._rules and self._pt_same and not pf.spill
                          else None)
        if s.mapping.anon > 0xFF:
            raise ValueError("the anon bits must lie in the low byte of page.mapping")
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
        # VMEMMAP: one linear array, struct page of pfn p at base + p * SIZE(page)
        self._vbase: int | None = None
        if secs:
            base = (secs[0].mem_map - secs[0].start_pfn * psize) & _MASK64
            if all(((x.mem_map - x.start_pfn * psize) & _MASK64) == base for x in secs):
                self._vbase = base
        ranges = dump.ranges()
        self._r_start = np.array([r.start for r in ranges], dtype=np.int64)
        self._r_end = np.array([r.end for r in ranges], dtype=np.int64)
        self._chunk_start = np.array([c.start_pfn for c in memmap.chunks], dtype=np.int64)
        self._chunk_end = np.array([c.start_pfn + c.nr_pages for c in memmap.chunks],
                                   dtype=np.int64)
        self.max_pfn = self._max_pfn()

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

    def _rows(self, start: int, total: int) -> _Rows:
        """``struct page`` rows of pfns ``[start, start + total)``."""
        psize = self.psize
        end = start + total
        chunks = self.mm.chunks
        ci = int(np.searchsorted(self._chunk_start, start, side="right")) - 1
        if self._aligned and ci >= 0:
            # one chunk holds the rows; look-ahead rows that no chunk has are left out
            have = min(int(self._chunk_end[ci]), end) - start
            nxt = int(self._chunk_start[ci + 1]) if ci + 1 < len(chunks) else end
            if have == total or (have >= total - self.lookahead - 1 and nxt >= end):
                c = chunks[ci]
                try:
                    raw = self.dump.view(c.paddr + (start - c.start_pfn) * psize, have * psize)
                except KdlayoutError:
                    raw = None
                if raw is not None and raw.ctypes.data % 8 == 0:
                    return _Rows(raw.view("<u8").reshape(have, self._nwords), None, start)
        ci = max(ci, 0)
        first = int(np.searchsorted(self._chunk_end, start, side="right"))
        if first >= len(chunks) or self._chunk_start[first] >= end:
            # no struct page of the window is in the dump (a hole in physical memory)
            return _Rows(np.zeros((0, self._nwords), dtype=np.uint64), np.zeros(0, bool), start)
        buf = np.zeros((total, 8 * self._nwords), dtype=np.uint8)
        has = np.zeros(total, dtype=bool)
        while ci < len(chunks) and chunks[ci].start_pfn < end:
            c = chunks[ci]
            ci += 1
            lo, hi = max(c.start_pfn, start), min(c.start_pfn + c.nr_pages, end)
            if lo >= hi:
                continue
            try:
                raw = self.dump.view(c.paddr + (lo - c.start_pfn) * psize, (hi - lo) * psize)
            except KdlayoutError:
                continue   # counted by classify_block; the pages are kept
            buf[lo - start:hi - start, :psize] = raw.reshape(hi - lo, psize)
            has[lo - start:hi - start] = True
        return _Rows(buf.view("<u8"), has, start)

    def _rows_of(self, pfns: np.ndarray) -> _Rows:
        """Rows of a few scattered pfns (heads outside a block), each with its look-ahead: row
        ``k * (lookahead + 1) + j`` is pfn ``pfns[k] + j``."""
        step = self.lookahead + 1
        want = (pfns[:, None] + np.arange(step, dtype=np.int64)).reshape(-1)
        buf = np.zeros((len(want), 8 * self._nwords), dtype=np.uint8)
        has = np.zeros(len(want), dtype=bool)
        for k, p in enumerate(want.tolist()):       # a handful of heads per block boundary
            pa = self.mm.page_paddr(p)
            if pa is None:
                continue
            try:
                buf[k, :self.psize] = np.frombuffer(self.dump.read(pa, self.psize), np.uint8)
            except KdlayoutError:
                continue
            has[k] = True
        return _Rows(buf.view("<u8"), has, pfns=want)

    # --- classification

    def _gather(self, words: np.ndarray) -> _Dense:
        """The words every rule tests, narrowed into contiguous arrays in one pass over the rows.

        The rows are walked in slices that fit in L2, so the four strided reads of a slice cost
        about one read of its cache lines from memory.
        """
        nrows = len(words)
        fl = np.empty(nrows, dtype=self._fl_dtype)
        tl = np.empty(nrows, dtype=np.uint8)
        mp = np.empty(nrows, dtype=np.uint8)
        pt = None if self._pt_dtype is None else np.empty(nrows, dtype=self._pt_dtype)
        f_fl, f_in, f_mp, f_pt = self._flags, self._info, self._mapping, self._ptype
        for s0 in range(0, nrows, _CACHE_PAGES):
            s1 = min(s0 + _CACHE_PAGES, nrows)
            w = words[s0:s1]
            for f, out in ((f_fl, fl), (f_in, tl), (f_mp, mp), (f_pt, pt)):
                if out is None:
                    continue
                if f.spill or f.shift:
                    np.copyto(out[s0:s1], f.get(w, slice(None)), casting="unsafe")
                else:
                    np.copyto(out[s0:s1], w[:, f.word], casting="unsafe")
        if pt is not None:
            pt &= pt.dtype.type(self._pt_union)
        return _Dense(fl, tl, mp, pt)

    def _test(self, words: np.ndarray, f: _Field, mask: int, value: int) -> np.ndarray:
        """``(field & mask) == value`` for every row."""
        wm = f.word_mask(mask)
        if wm is not None:
            r: np.ndarray = (words[:, f.word] & _U64(wm)) == _U64((value & f.mask) << f.shift)
            return r
        out: np.ndarray = (f.get(words, slice(None)) & _U64(mask)) == _U64(value)
        return out

    def _own(self, r: _Rows, anomalies: _Anomalies, limit: int) -> _Own:
        """Classify every row of ``r`` as a head or single page.

        Dense work is one pass over each of the words holding flags, the tail word, mapping and
        page_type; heads, free blocks and hugetlb markers are handled on the (sparse) rows a
        dense test selected. Anomalies are counted for rows below ``limit`` only (the rest is
        look-ahead).
        """
        s = self.sem
        words, has = r.words, r.has
        nrows = len(words)
        last = nrows - 1
        g = self._gather(words)
        fl = g.flags
        tail = (g.tail & np.uint8(1)).view(bool)
        c = s.compound
        ptw = g.ptype

        def ptest(name: str) -> np.ndarray:
            """Rows whose page type is ``name`` (dense)."""
            rule = self._rules[name]
            if ptw is None:
                f = _Field.at(rule.field_offset, rule.field_size, self.psize)
                return self._test(words, f, rule.mask, rule.value)
            if rule.mask == self._pt_union:
                e: np.ndarray = ptw == rule.value
                return e
            t: np.ndarray = (ptw & rule.mask) == rule.value
            return t

        def is_slab(idx: np.ndarray) -> np.ndarray:
            """Whether rows ``idx`` are slab pages (struct slab overlays mapping and
            _mapcount: such a row is never anonymous, free or offline)."""
            if "slab" in self._rules:
                rule = self._rules["slab"]
                if ptw is None:
                    f = _Field.at(rule.field_offset, rule.field_size, self.psize)
                    v = f.get(words, idx)
                else:
                    v = ptw[idx]
                r1: np.ndarray = (v & rule.mask) == rule.value
                return r1
            r2: np.ndarray = (fl[idx] & self._m_slab) != 0
            return r2

        # dense: page cache (minus anonymous pages), private data, anonymous
        if self._m_sc and s.flags.swapcache_requires_swapbacked:
            both = self._m_sc | self._m_sb
            cache0 = ((fl & self._m_lru) != 0) | ((fl & both) == both)
        else:
            cache0 = (fl & (self._m_lru | self._m_sc)) != 0
        anon = (g.mapping & np.uint8(s.mapping.anon)) != 0
        cache = cache0 > anon                       # cache and not anonymous
        code = cache.view(np.uint8) * np.uint8(PageClass.CACHE | PageClass.CACHE_PRIVATE)
        if self._m_priv:
            code ^= (cache & ((fl & self._m_priv) != 0)).view(np.uint8) << np.uint8(1)
        code |= anon.view(np.uint8) << np.uint8(3)
        if "offline" in self._rules:         # not rare: a ballooned guest has many
            code |= ptest("offline").view(np.uint8) << np.uint8(6)

        # sparse: rows with a rare flag (head, slab, hwpoison, the old buddy flag) or a page
        # type; slab rows are fixed first, as if their mapping had no anon bit
        rare = _nz((fl & (self._m_head | self._m_slab | self._m_hwp | self._m_buddy)) != 0)
        rfl = fl[rare]
        slab_rows = [rare[(rfl & self._m_slab) != 0]] if self._m_slab else []
        if "slab" in self._rules:
            slab_rows.append(_nz(ptest("slab")))
        sl = np.concatenate(slab_rows) if slab_rows else _EMPTY
        if len(sl):
            sc = cache0[sl]
            scode = sc.view(np.uint8) * np.uint8(PageClass.CACHE | PageClass.CACHE_PRIVATE)
            if self._m_priv:
                scode ^= (sc & ((fl[sl] & self._m_priv) != 0)).view(np.uint8) << np.uint8(1)
            code[sl] = scode
        if self._m_hwp:
            code[rare[(rfl & self._m_hwp) != 0]] |= np.uint8(PageClass.HWPOISON)

        # compound heads (a tail is never a head, whatever its flags word holds: the first
        # tail's is _flags_1, whose low byte is the order)
        hi = rare[((rfl & self._m_head) != 0) & ~tail[rare]]
        fake = _EMPTY
        if c.fake_heads_possible and len(hi):
            # a head whose first tail names another head: a HugeTLB vmemmap-optimised "fake
            # head" (Linux kernel commit e7d324850bfc, v5.18); it is a tail of that head
            nxt = np.minimum(hi + 1, last)
            ninfo = self._info.get(words, nxt)
            vh, _ = self.pfn_to_vaddr(r.pfn(hi))
            isfake = (nxt > hi) & ((ninfo & _U64(1)) != 0) & ((ninfo - _U64(1)) != vh)
            if isfake.any():
                fake = hi[isfake]
                tail[fake] = True
                hi = hi[~isfake]
        bad: list[np.ndarray] = []
        oidx = np.minimum(hi + self._order.page, last)
        order = (self._order.get(words, oidx) & _U64(c.order_mask)).astype(np.int64)
        hp = r.pfn(hi)
        ohas = hi + self._order.page <= last
        if has is not None:
            ohas &= has[oidx]
        bad_order = (~ohas | (order < 1) | (order > self.max_compound_order)
                     | ((hp & ((np.int64(1) << np.minimum(order, 62)) - 1)) != 0))
        bo = hi[bad_order]
        anomalies.add("compound-order", "compound head with an order that is unreadable, "
                      "< 1, beyond the memory model or not aligned to its pfn",
                      r.pfn(bo[bo < limit]))
        bad.append(bo)
        heads = hi[~bad_order]
        head_len = np.int64(1) << order[~bad_order]
        ht = c.hugetlb
        if ht is not None and self._hugetlb is not None:
            hf = self._hugetlb
            if "hugetlb" in self._rules:
                hsel = _nz(ptest("hugetlb"))
            elif ht.marker is HugetlbMarker.PAGE_TYPE and hf.page == 0:
                hsel = _nz(self._test(words, hf, ht.mask, ht.value))
            else:                       # the marker lives in a tail page of the head
                hidx = np.minimum(hi + hf.page, last)
                ok = (hf.get(words, hidx) & _U64(ht.mask)) == _U64(ht.value)
                if has is not None:
                    ok &= has[hidx]
                hsel = hi[ok & (hidx > hi)]
            code[hsel] |= np.uint8(PageClass.USER)

        # free blocks: buddy head, order in page.private
        if "buddy" in self._rules:
            bi = _nz(ptest("buddy"))
        else:
            bi = rare[(rfl & self._m_buddy) != 0] if self._m_buddy else _EMPTY
        if len(sl):
            bi = bi[~is_slab(bi)]
        border = self._private.get(words, bi)
        bpfn = r.pfn(bi).astype(np.uint64)
        bad_buddy = ((border >= _U64(s.free.nr_page_orders))
                     | ((bpfn & ((_U64(1) << np.minimum(border, _U64(63))) - _U64(1))) != 0))
        bb = bi[bad_buddy]
        anomalies.add("free-order", f"buddy page whose order (page.private) is >= "
                      f"{s.free.nr_page_orders} orders or not aligned to its pfn",
                      r.pfn(bb[bb < limit]))
        bad.append(bb)
        free = [bi[~bad_buddy]]
        free_len = [np.int64(1) << border[~bad_buddy].astype(np.int64)]
        if "unaccepted" in self._rules:
            ui = _nz(ptest("unaccepted"))
            ui = ui[~np.isin(ui, bi) & ~is_slab(ui)]
            free.append(ui)
            free_len.append(np.full(len(ui), np.int64(1) << s.free.max_page_order))
        free_i = np.concatenate(free)
        free_n = np.concatenate(free_len)
        if len(bo):     # a bad compound head is no free block either
            keep = ~np.isin(free_i, bo)
            free_i, free_n = free_i[keep], free_n[keep]
        code[free_i] |= _FREE
        allbad = np.concatenate(bad)
        code[allbad] = _ANOMALY
        if has is not None:
            code[~has] = 0
            tail &= has
        return _Own(code, tail, fake, heads, head_len, free_i, free_n)

    def _head_pfns(self, tp: np.ndarray, info: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Head pfn of each tail page ``tp`` from its tail word ``info`` (and whether the word
        leads to a struct page at all)."""
        c = self.sem.compound
        info = info.astype(np.uint64, copy=False)
        if c.tail_encoding is TailEncoding.POINTER_PLUS_ONE:
            haddr = info - _U64(1)
        else:
            vaddr, _ = self.pfn_to_vaddr(tp)
            masked = vaddr & info
            if c.tail_encoding is TailEncoding.MASK:
                haddr = masked
            else:
                haddr = np.where(_is_mask(info), masked, info - _U64(1))
        if self._vbase is not None:
            off = haddr - _U64(self._vbase)
            ok = (off % _U64(self.psize)) == 0
            hp = (off // _U64(self.psize)).astype(np.int64)
            ok &= (hp >= 0) & (hp < self.max_pfn)
            return hp, ok
        return self.vaddr_to_pfn(haddr)

    def classify_block(self, start: int, n: int, anomalies: _Anomalies) -> np.ndarray:
        """Class codes (without ZERO) of pfns ``[start, start + n)``."""
        r = self._rows(start, n + self.lookahead + 1)
        total = len(r.words)
        if not total:
            code = np.zeros(n, dtype=np.uint8)
            li = np.flatnonzero(self._covered(start, n))
            anomalies.add("memmap-not-in-dump", "a present section's struct page for the pfn "
                          "is not in the dump", li + start)
            code[li] = _ANOMALY
            return code
        own = self._own(r, anomalies, n)
        code = own.code
        if r.has is not None:
            # a present section covers the pfn but its struct page is not in the dump
            lost = self._covered(start, total) & ~r.has
            li = np.flatnonzero(lost[:n])
            anomalies.add("memmap-not-in-dump", "a present section's struct page for the pfn "
                          "is not in the dump", li + start)
            code[li] = _ANOMALY

        # tails follow their head
        ti = np.flatnonzero(own.tail[:n])
        if len(ti):
            info = self._info.get(r.words, ti)
            if len(own.fake):
                # a fake head's tail word is its page[1]'s
                k = np.searchsorted(ti, own.fake)
                k = k[(k < len(ti))]
                k = k[np.isin(ti[k], own.fake)]
                info[k] = self._info.get(r.words, ti[k] + 1)
            tp = ti + start
            hp, ok = self._head_pfns(tp, info)
            loc = hp - start
            inside = ok & (loc >= 0) & (loc < total)
            hlen = np.zeros(total, dtype=np.int64)
            hlen[own.heads] = own.head_len
            li = np.where(inside, loc, 0)
            hl = np.where(inside, hlen[li], 0)
            hcode = code[li]
            outside = ok & ~inside
            if outside.any():
                uniq, inv = np.unique(hp[outside], return_inverse=True)
                orows = self._rows_of(uniq)
                oown = self._own(orows, _Anomalies(), 0)
                step = self.lookahead + 1
                ohlen = np.zeros(len(orows.words), dtype=np.int64)
                ohlen[oown.heads] = oown.head_len
                # the head must itself lie in a present section
                _, present = self.pfn_to_vaddr(uniq)
                hl[outside] = np.where(present, ohlen[::step], 0)[inv]
                hcode[outside] = oown.code[::step][inv]
            good = (hl > 0) & (hp < tp) & (tp < hp + hl)
            if not good.all():
                anomalies.add("compound-tail", "tail page whose compound head is not in a "
                              "present section, not a head, itself a tail (cycle), or does not "
                              "cover it", tp[~good])
            code[ti] = np.where(good, hcode, _ANOMALY)

        # free blocks: the head's order covers the following pages, up to the block's end (the
        # next block looks behind for it)
        fi = own.free[own.free < n]
        fl = own.free_len[own.free < n]
        back = self._free_behind(start)
        if len(fi) or back:
            ends = np.minimum(fi + fl, n)
            if back:
                fi = np.concatenate(([0], fi))
                ends = np.concatenate(([min(back, n)], ends))
            diff = np.zeros(n + 1, dtype=np.int32)
            np.add.at(diff, fi, 1)
            np.add.at(diff, ends, -1)
            covered = np.cumsum(diff[:n], dtype=np.int32) > 0
            covered &= (code[:n] & _ANOMALY) == 0
            code[:n] |= covered.view(np.uint8) << np.uint8(4)
        # done with these struct pages: drop their mapping (out to the kernel's fault-around
        # granule), so RSS stays flat in RAM size. Only the window's own range: dropping the
        # whole file mapping here would also unmap the rows another thread is still reading,
        # which it then faults in again. iter_scan drops the rest once at the end.
        release_view(r.words)
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
        rows = self._rows_of(heads)
        own = self._own(rows, _Anomalies(), 0)
        step = self.lookahead + 1
        at = own.free % step == 0
        reach = rows.pfn(own.free[at]) + own.free_len[at] - start
        return int(reach.max()) if len(reach) and reach.max() > 0 else 0

    def release_mapping(self) -> None:
        """Drop every page-table entry of the dump's file mapping (whatever neighbours of the
        windows' rows the kernel mapped too)."""
        release_mapping(self.dump)

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
                release_view(v)
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


def _excluded(code: np.ndarray, dump_level: int) -> np.ndarray:
    """:func:`excluded_mask` in bit arithmetic: a page is dropped when it has a bit of the level
    (or an always-dropped bit) and is no anomaly. A non-private cache page carries both cache
    bits, so either cache level drops it."""
    bits = dump_level | ALWAYS
    if dump_level & PageClass.CACHE_PRIVATE:
        bits |= PageClass.CACHE
    hit: np.ndarray = (code & np.uint8(bits)) != 0
    hit &= code < np.uint8(PageClass.ANOMALY)
    return hit


def _scan_window(sc: Scanner, start: int, n: int, dump_level: int, keep_codes: bool,
                 timing: dict[str, float]) -> tuple[WindowResult, _Anomalies]:
    an = _Anomalies()
    t0 = time.perf_counter()
    valid, full = sc.valid_block(start, n)
    code = sc.classify_block(start, n, an)
    # only pages whose whole frame is in the dump are dropped
    all_full = bool(full.all())
    if not all_full:
        code[~full] = 0
    t1 = time.perf_counter()
    excluded = _excluded(code, dump_level)
    if dump_level & PageClass.ZERO:
        cand = ~excluded & (code < np.uint8(PageClass.ANOMALY))
        if not all_full:
            cand &= full
        z = sc.zero_pages(start, n, cand)
        code |= z.view(np.uint8)        # PageClass.ZERO is 1
        excluded |= z
    t2 = time.perf_counter()
    timing["classify"] = timing.get("classify", 0.0) + (t1 - t0)
    timing["zero"] = timing.get("zero", 0.0) + (t2 - t1)
    dumpable = valid & ~excluded
    counts = count_classes(code, None if bool(valid.all()) else valid, dump_level)
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
    scanner.release_mapping()
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
    win = window_pages or KEEP_BLOCK_PAGES
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
