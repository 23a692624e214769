"""Page encodings derived from a crashed kernel's own layout facts.

The page scanner reads ``struct page`` words and has to know what the bits mean *in the kernel
that crashed*: how a page type (buddy, slab, hugetlb, ...) is encoded in ``page_type``, where a
compound page keeps its order, how a tail page points at its head, which ``PG_*`` bit is which,
what the low bits of ``page->mapping`` say, how ``mem_section`` is laid out and where a free
block keeps its order. All of these changed over the years, often more than once.

Every function here is pure: it takes a mapping of resolved facts (a :class:`~kdlayout.layout.Layout`
or a plain ``dict`` of key -> value, keys named as in :mod:`kdlayout.layout`) and returns a frozen
record plus the list of :class:`~kdlayout.layout.Fact` records it derived (source ``"derived"``;
the origin names the rule, the kernel commit it follows and the facts it used). Each rule decides
from the presence and values of facts -- a member exists, an enumerator exists, a VMCOREINFO
number has a given shape -- and never from a release string. A fact set that fits no generation
known here raises :class:`~kdlayout.errors.UnsupportedError` naming what is missing or what
contradicts; nothing is guessed.

The generation rules and their kernel commits are listed in ``docs/semantics.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from .errors import UnsupportedError
from .layout import Fact, FactValue

__all__ = [
    "CompoundRules",
    "FactView",
    "FlagField",
    "FreePageRules",
    "HugetlbMarker",
    "HugetlbRule",
    "MappingBits",
    "MemoryModel",
    "MemoryModelRules",
    "OrderLocation",
    "PageFlagBits",
    "PageTypeRule",
    "PageTypeScheme",
    "PageTypes",
    "SectionFlags",
    "Semantics",
    "SlabMarker",
    "SlabRule",
    "TailEncoding",
    "derive_compound",
    "derive_free_pages",
    "derive_mapping_bits",
    "derive_memory_model",
    "derive_page_flags",
    "derive_page_types",
    "derive_semantics",
    "derive_slab",
]

U32 = 0xFFFFFFFF

# Kernel commits the rules follow; the text is what docs/semantics.md and Fact origins cite.
C_SPLIT_PAGE_TYPE = ('Linux kernel commit 6e292b9be7f4 ("mm: split page_type out from _mapcount") '
                     "(in v4.18)")
C_PAGE_TYPE_ENUM = ('Linux kernel commit ff202303c398 ("mm: convert page type macros to enum") '
                    "(in v6.10)")
C_LOWER_16_BIT = ('Linux kernel commit 8db00ad56461 ("mm: allow reuse of the lower 16 bit of the '
                  'page type with an actual type") (in v6.11)')
C_ONE_PAGE_TYPE = ('Linux kernel commit 4ffca5a96678 ("mm: support only one page_type per page") '
                   "(in v6.12)")
C_FREE_PG_SLAB = 'Linux kernel commit 46df8e73a4a3 ("mm: free up PG_slab") (in v6.10)'
C_HUGETLB_PAGETYPE = ('Linux kernel commit d99e3140a4d3 ("mm: turn folio_test_hugetlb into a '
                      'PageType") (in v6.9)')
C_REMOVE_HUGETLB_DTOR = ('Linux kernel commit 9c5ccf2db04b ("mm: remove HUGETLB_PAGE_DTOR") '
                         "(in v6.6)")
C_FREE_TAIL_WORD = ('Linux kernel commit ebc1baf5c9b4 ("mm: free up a word in the first tail '
                    'page") (in v6.6)')
C_FOLIO_TAIL = ('Linux kernel commit 379708ffde1b ("mm: add the first tail page to struct folio") '
                "(in v6.1)")
C_REMOVE_FIRST_TAIL = ("Linux kernel commit 1c5509be58f6 (\"mm: remove 'First tail page' members "
                       'from struct page") (in v6.3)')
C_COMPOUND_HEAD = ('Linux kernel commit 1d798ca3f164 ("mm: make compound_head() robust") '
                   "(in v4.4)")
C_COMPOUND_INFO = ("Linux kernel commit d50569612c29 (\"mm: rename the 'compound_head' field in "
                   "the 'struct page' to 'compound_info'\") (in v7.1)")
C_COMPOUND_MASK = ('Linux kernel commit 8c846c879e22 ("mm: rework compound_head() for power-of-2 '
                   'sizeof(struct page)") (in v7.1)')
C_FAKE_HEAD = ('Linux kernel commit e7d324850bfc ("mm: hugetlb: free the 2nd vmemmap page '
               'associated with each HugeTLB page") (in v5.18)')
C_MEMDESC_FLAGS = ('Linux kernel commit 53fbef56e07d ("mm: introduce memdesc_flags_t") '
                   "(in v6.18)")
C_SWAPCACHE_ALIAS = ('Linux kernel commit 6326fec1122c ("mm: Use owner_priv bit for '
                     'PageSwapCache, valid when PageSwapBacked") (in v4.10)')
C_MOVABLE_OPS = ('Linux kernel commit 3d388584d599 ("mm: convert "movable" flag in page->mapping '
                 'to a page flag") (in v6.17)')
C_SECTION_ENUM = ('Linux kernel commit ed7802dd48f7 ("mm: memory_hotplug: enumerate all supported '
                  'section flags") (in v6.0)')
C_SPARSE_BASE = ('Linux kernel commit 29751f6991e8 ("[PATCH] sparsemem hotplug base") '
                 "(in v2.6.13)")
C_SECTION_ONLINE = ('Linux kernel commit 2d070eab2e82 ("mm: consider zone which is not fully '
                    'populated to have holes") (in v4.13)')
C_SECTION_EARLY = ('Linux kernel commit 326e1b8f83a4 ("mm/sparsemem: introduce a SECTION_IS_EARLY '
                   'flag") (in v5.3)')
C_SECTION_ZONE_DEVICE = ('Linux kernel commit 1f90a3477df3 ("mm: teach pfn_to_online_page() about '
                         'ZONE_DEVICE section collisions") (in v5.12)')
C_MAX_ORDER_SANE = ('Linux kernel commit 23baf831a32c ("mm, treewide: redefine MAX_ORDER sanely") '
                    "(in v6.4)")
C_NR_PAGE_ORDERS = ('Linux kernel commit fd37721803c6 ("mm, treewide: introduce NR_PAGE_ORDERS") '
                    "(in v6.8)")


# --------------------------------------------------------------------------------------------
# Fact access


class FactView:
    """Read-only typed access to a fact mapping.

    Accepts a :class:`~kdlayout.layout.Layout` (values are ``Resolution`` objects) or any mapping
    of key -> int/str/bool.
    """

    def __init__(self, facts: Mapping[str, object]) -> None:
        self._facts = facts

    def raw(self, key: str) -> FactValue | None:
        """The value of ``key``, or None when the fact is absent."""
        if key not in self._facts:
            return None
        v = self._facts[key]
        if isinstance(v, (bool, int, str)):
            return v
        inner = getattr(v, "value", None)
        if isinstance(inner, (bool, int, str)):
            return inner
        return None

    def has(self, key: str) -> bool:
        return self.raw(key) is not None

    def get_int(self, key: str) -> int | None:
        """An integer fact; None if absent. A non-integer value is treated as absent."""
        v = self.raw(key)
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, str):
                try:
                    return int(v, 0)
                except ValueError:
                    return None
            return None
        return v

    def number(self, name: str) -> int | None:
        return self.get_int(f"NUMBER({name})")

    def offset(self, path: str) -> int | None:
        return self.get_int(f"OFFSET({path})")

    def size(self, name: str) -> int | None:
        return self.get_int(f"SIZE({name})")

    def config(self, name: str) -> str | None:
        """``CONFIG(NAME)`` or ``CONFIG(CONFIG_NAME)`` as a string (``"y"``, ``"10"``...)."""
        for key in (f"CONFIG({name})", f"CONFIG(CONFIG_{name})"):
            v = self.raw(key)
            if v is not None:
                return str(v).lower() if isinstance(v, bool) else str(v)
        return None

    def keys_with_prefix(self, prefix: str) -> list[str]:
        return sorted(k for k in self._facts if k.startswith(prefix))


FactMapping = Mapping[str, object]


def _view(facts: FactMapping | FactView) -> FactView:
    return facts if isinstance(facts, FactView) else FactView(facts)


def _s32(v: int) -> int:
    """Interpret the low 32 bits of ``v`` as a signed int (as VMCOREINFO prints ``%ld`` of int)."""
    v &= U32
    return v - (1 << 32) if v & 0x80000000 else v


def _single_bit(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def _used(view: FactView, keys: Iterable[str]) -> str:
    parts = []
    for k in keys:
        v = view.raw(k)
        if v is None:
            continue
        parts.append(f"{k}={v:#x}" if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 64
                     else f"{k}={v}")
    return ", ".join(parts)


class _Derived:
    """Collects derived facts with a common provenance format."""

    def __init__(self, view: FactView) -> None:
        self.view = view
        self.facts: list[Fact] = []

    def add(self, key: str, value: FactValue, rule: str, used: Iterable[str] = ()) -> None:
        origin = rule
        u = _used(self.view, used)
        if u:
            origin += f"; from {u}"
        self.facts.append(Fact(key, value, "derived", origin))


# --------------------------------------------------------------------------------------------
# 1. Page types


class PageTypeScheme(StrEnum):
    """How a page type is encoded in the 32-bit ``page_type`` word (union with ``_mapcount``)."""

    #: Before v4.18: ``_mapcount`` holds one exact negative value per type (buddy: -128).
    MAPCOUNT_VALUE = "mapcount-value"
    #: v4.18 - v6.10: ``PAGE_TYPE_BASE`` 0xf0000000 and one *cleared* bit per type below bit 16;
    #: ``(page_type & (PAGE_TYPE_BASE | PG_x)) == PAGE_TYPE_BASE``.
    INVERTED_BITS = "inverted-bits"
    #: v6.11: single-bit ``PAGE_TYPE_BASE`` 0x80000000, one cleared bit per type in bits 23..30,
    #: the low 16 bits free for the owner; same test as INVERTED_BITS.
    INVERTED_HIGH_BITS = "inverted-high-bits"
    #: v6.12 and later: ``PGTY_*`` tag in the top byte; ``page_type >> 24 == PGTY_x``.
    TOP_BYTE_TAG = "top-byte-tag"


@dataclass(frozen=True)
class PageTypeRule:
    """``(word & mask) == value`` identifies a page of type ``name``.

    ``word`` is the unsigned ``field_size``-byte little-endian integer at byte ``field_offset`` of
    ``struct page``. ``mapcount_value`` is the ``PAGE_<NAME>_MAPCOUNT_VALUE`` that VMCOREINFO of
    this generation exports (a signed 32-bit number), for cross-checking.
    """

    name: str
    field_offset: int
    field_size: int
    mask: int
    value: int
    mapcount_value: int

    def matches(self, word: int) -> bool:
        """Whether a page whose ``page_type`` word is ``word`` has this type."""
        return (word & self.mask) == self.value


@dataclass(frozen=True)
class PageTypes:
    """The page-type encoding of one kernel (``struct page::page_type``)."""

    scheme: PageTypeScheme
    field_offset: int
    field_size: int
    #: ``PAGE_TYPE_BASE`` for the inverted-bit schemes, else None.
    base: int | None
    rules: tuple[PageTypeRule, ...]
    #: A page has *some* type (known here or not) when the word, read as a signed 32-bit int, is
    #: below this (the kernel's ``page_has_type()``); None when only exact values are known.
    has_type_below: int | None = None

    def has_type(self, word: int) -> bool:
        """Whether the page has a page type, so ``_mapcount`` and often ``mapping`` are not what
        they are for a mapped page (``page_has_type()``)."""
        if self.has_type_below is None:
            return self.classify(word) is not None
        return _s32(word) < self.has_type_below

    def get(self, name: str) -> PageTypeRule | None:
        """The rule for type ``name`` ("buddy", "slab", ...), None if this kernel has no such type."""
        for r in self.rules:
            if r.name == name:
                return r
        return None

    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.rules)

    def classify(self, word: int) -> str | None:
        """The type of a page whose ``page_type`` word is ``word``, or None."""
        for r in self.rules:
            if r.matches(word):
                return r.name
        return None


# Types the inverted-bit schemes know (the macro or enumerator is PG_<name>). Only values that are
# a single bit >= 0x80 are taken as page-type masks: PG_slab, PG_buddy and PG_hugetlb are also
# names of page *flags* (bit numbers < 64) in other generations.
_BIT_TYPES = ("buddy", "offline", "balloon", "kmemcg", "table", "guard", "hugetlb", "slab",
              "zsmalloc", "unaccepted")
# VMCOREINFO's PAGE_<X>_MAPCOUNT_VALUE numbers.
_MAPCOUNT_TYPES = ("buddy", "offline", "hugetlb", "slab", "unaccepted")


def _mapcount_key(name: str) -> str:
    return f"NUMBER(PAGE_{name.upper()}_MAPCOUNT_VALUE)"


def _page_type_field(view: FactView) -> tuple[int, str]:
    off = view.offset("page.page_type")
    if off is not None:
        return off, "OFFSET(page.page_type)"
    off = view.offset("page._mapcount")
    if off is not None:
        return off, "OFFSET(page._mapcount)"
    raise UnsupportedError("page types: neither OFFSET(page.page_type) nor OFFSET(page._mapcount) "
                           "is known, so the page_type word cannot be located")


def _check_vmcoreinfo(view: FactView, rules: Iterable[PageTypeRule]) -> None:
    """VMCOREINFO's own PAGE_*_MAPCOUNT_VALUE must agree with the rule derived elsewhere."""
    for r in rules:
        got = view.get_int(_mapcount_key(r.name))
        if got is not None and _s32(got) != r.mapcount_value:
            raise UnsupportedError(
                f"page types: {_mapcount_key(r.name)}={got} contradicts the {r.name} type derived "
                f"from the type enum (expected {r.mapcount_value}); the facts do not describe one "
                "kernel")


def derive_page_types(facts: FactMapping | FactView) -> tuple[PageTypes, list[Fact]]:
    """Derive how page types are encoded in ``struct page::page_type`` (``unsigned int``).

    Decision, newest first:

    * ``NUMBER(PGTY_*)`` enumerators (``enum pagetype`` since v6.12): top-byte tags.
    * ``NUMBER(PAGE_TYPE_BASE)`` (``enum pagetype`` of v6.10/v6.11 holding ``PG_*`` masks):
      inverted bits; the base value tells the v6.11 single-bit variant from the older one.
    * Otherwise VMCOREINFO's ``NUMBER(PAGE_*_MAPCOUNT_VALUE)``: a value with zero low 24 bits and
      a top byte >= 0x80 is a tag; the complement of a single bit is an inverted type bit (the
      bit's position tells which base); anything else is an exact pre-v4.18 mapcount value.
    """
    view = _view(facts)
    out = _Derived(view)
    field_offset, field_key = _page_type_field(view)
    field_size = 4
    rules: list[PageTypeRule] = []
    base: int | None
    scheme: PageTypeScheme

    pgty = {k[len("NUMBER(PGTY_"):-1]: view.get_int(k) for k in view.keys_with_prefix("NUMBER(PGTY_")}
    pgty = {k: v for k, v in pgty.items() if v is not None and k != "mapcount_underflow"}
    base_enum = view.number("PAGE_TYPE_BASE")

    if pgty:
        scheme = PageTypeScheme.TOP_BYTE_TAG
        base = None
        for name, tag in sorted(pgty.items(), key=lambda kv: kv[1] or 0):
            assert tag is not None
            if not 0x80 <= tag <= 0xFE:
                raise UnsupportedError(f"page types: NUMBER(PGTY_{name})={tag:#x} is not a top-byte "
                                       "tag in 0x80..0xfe; unknown page_type encoding")
            rules.append(PageTypeRule(name, field_offset, field_size, 0xFF000000, tag << 24,
                                      _s32(tag << 24)))
        rule_text = C_ONE_PAGE_TYPE
        used = [field_key] + [f"NUMBER(PGTY_{n})" for n in pgty]
    elif base_enum is not None:
        base = base_enum & U32
        if base == 0xF0000000:
            scheme = PageTypeScheme.INVERTED_BITS
            rule_text = C_PAGE_TYPE_ENUM
        elif _single_bit(base) and base == 0x80000000:
            scheme = PageTypeScheme.INVERTED_HIGH_BITS
            rule_text = C_LOWER_16_BIT
        else:
            raise UnsupportedError(f"page types: NUMBER(PAGE_TYPE_BASE)={base:#x} is neither "
                                   "0xf0000000 nor the single bit 0x80000000")
        used = [field_key, "NUMBER(PAGE_TYPE_BASE)"]
        for name in _BIT_TYPES:
            v = view.number(f"PG_{name}")
            if v is None:
                continue
            v &= U32
            if v < 0x80:
                continue  # a page *flag* bit number of the same name (see _BIT_TYPES)
            if not _single_bit(v) or v & base:
                raise UnsupportedError(f"page types: NUMBER(PG_{name})={v:#x} is not a single type "
                                       f"bit outside PAGE_TYPE_BASE={base:#x}")
            rules.append(PageTypeRule(name, field_offset, field_size, base | v, base, _s32(~v)))
            used.append(f"NUMBER(PG_{name})")
        if not rules:
            raise UnsupportedError("page types: NUMBER(PAGE_TYPE_BASE) is known but no "
                                   "NUMBER(PG_buddy)/PG_slab/... type bit is")
    else:
        vals = {n: view.get_int(_mapcount_key(n)) for n in _MAPCOUNT_TYPES}
        known = {n: v & U32 for n, v in vals.items() if v is not None}
        if not known:
            raise UnsupportedError(
                "page types: no page-type facts: need NUMBER(PGTY_buddy) (enum pagetype), "
                "NUMBER(PAGE_TYPE_BASE) with NUMBER(PG_buddy), or VMCOREINFO's "
                "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)")
        used = [field_key] + [_mapcount_key(n) for n in known]
        shapes: dict[str, str] = {}
        for n, v in known.items():
            if v & 0x00FFFFFF == 0 and (v >> 24) >= 0x80:
                shapes[n] = "tag"
            elif _single_bit(~v & U32):
                shapes[n] = "bit"
            else:
                shapes[n] = "exact"
        kinds = set(shapes.values())
        if len(kinds) != 1:
            raise UnsupportedError(f"page types: VMCOREINFO mapcount values mix encodings {shapes}; "
                                   "no known generation does that")
        kind = kinds.pop()
        if kind == "tag":
            scheme = PageTypeScheme.TOP_BYTE_TAG
            base = None
            rule_text = C_ONE_PAGE_TYPE
            for n, v in known.items():
                rules.append(PageTypeRule(n, field_offset, field_size, 0xFF000000, v, _s32(v)))
        elif kind == "bit":
            bits = {n: ~v & U32 for n, v in known.items()}
            if all(b < 0x10000 and b >= 0x80 for b in bits.values()):
                scheme, base, rule_text = PageTypeScheme.INVERTED_BITS, 0xF0000000, C_SPLIT_PAGE_TYPE
            elif all(0x00800000 <= b <= 0x40000000 for b in bits.values()):
                scheme, base = PageTypeScheme.INVERTED_HIGH_BITS, 0x80000000
                rule_text = C_LOWER_16_BIT
            else:
                raise UnsupportedError(f"page types: inverted type bits {bits} fit neither the "
                                       "0xf0000000 base (bits 7..15) nor the 0x80000000 base "
                                       "(bits 23..30)")
            for n, b in bits.items():
                rules.append(PageTypeRule(n, field_offset, field_size, base | b, base, _s32(~b)))
            # Type bits VMCOREINFO does not export (table, guard...) may come from headers.
            for name in _BIT_TYPES:
                if name in bits:
                    continue
                v = view.number(f"PG_{name}")
                if v is None:
                    continue
                v &= U32
                if _single_bit(v) and v >= 0x80 and not v & base:
                    rules.append(PageTypeRule(name, field_offset, field_size, base | v, base,
                                              _s32(~v)))
                    used.append(f"NUMBER(PG_{name})")
        else:
            scheme, base = PageTypeScheme.MAPCOUNT_VALUE, None
            rule_text = (f"exact _mapcount values, the encoding before {C_SPLIT_PAGE_TYPE}")
            for n, v in known.items():
                rules.append(PageTypeRule(n, field_offset, field_size, U32, v, _s32(v)))

    rules.sort(key=lambda r: r.name)
    _check_vmcoreinfo(view, rules)
    out.add("page_type_scheme", str(scheme), rule_text, used)
    out.add("page_type.offset", field_offset, rule_text, [field_key])
    for r in rules:
        # Provenance of one type: the word's offset, its enumerator/macro, VMCOREINFO's number.
        own = [field_key, f"NUMBER(PGTY_{r.name})", f"NUMBER(PG_{r.name})", _mapcount_key(r.name)]
        if scheme is not PageTypeScheme.TOP_BYTE_TAG:
            own.append("NUMBER(PAGE_TYPE_BASE)")
        out.add(f"page_type.{r.name}.mask", r.mask, rule_text, own)
        out.add(f"page_type.{r.name}.value", r.value, rule_text, own)
        out.add(f"page_type.{r.name}.mapcount_value", r.mapcount_value, rule_text, own)
    # page_has_type(): PAGE_MAPCOUNT_RESERVE is -128 with base 0xf0000000 (include/linux/
    # page-flags.h 5.10-6.10), ~0x0000ffff with base 0x80000000 (6.11); since 6.12 a type is any
    # top byte below PGTY_mapcount_underflow (0xff), i.e. a word below 0xff000000 as signed int.
    reserve = view.number("PAGE_MAPCOUNT_RESERVE")
    underflow = view.number("PGTY_mapcount_underflow")
    below: int | None
    if scheme is PageTypeScheme.TOP_BYTE_TAG:
        below = _s32((0xFF if underflow is None else underflow) << 24)
    elif reserve is not None:
        below = _s32(reserve)
    elif scheme is PageTypeScheme.INVERTED_BITS:
        below = -128
    elif scheme is PageTypeScheme.INVERTED_HIGH_BITS:
        below = _s32(~0x0000FFFF)
    else:
        below = None
    if below is not None:
        out.add("page_type.has_type_below", below, f"page_has_type(); {rule_text}",
                ["NUMBER(PAGE_MAPCOUNT_RESERVE)", "NUMBER(PGTY_mapcount_underflow)"])
    return PageTypes(scheme, field_offset, field_size, base, tuple(rules), below), out.facts


def _page_types_or_none(view: FactView) -> PageTypes | None:
    """The page types when the facts allow; None when they do not (5.x BTF without VMCOREINFO)."""
    try:
        return derive_page_types(view)[0]
    except UnsupportedError:
        return None


# --------------------------------------------------------------------------------------------
# 2. Slab


class SlabMarker(StrEnum):
    """How a slab page is marked."""

    PAGE_FLAG = "page-flag"   # PG_slab bit in page->flags (before v6.10)
    PAGE_TYPE = "page-type"   # slab page type (v6.10 and later)


@dataclass(frozen=True)
class SlabRule:
    """How to recognise a page owned by the slab allocator (on the head of a slab)."""

    marker: SlabMarker
    flag_bit: int | None = None
    type_rule: PageTypeRule | None = None


def derive_slab(facts: FactMapping | FactView,
                page_types: PageTypes | None = None) -> tuple[SlabRule, list[Fact]]:
    """Decide whether slab pages carry the ``PG_slab`` page flag or the slab page type.

    The slab page type exists (``NUMBER(PGTY_slab)``, a ``PG_slab`` type mask, or
    ``NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)``) since ``46df8e73a4a3`` (v6.10); before it,
    ``NUMBER(PG_slab)`` is a bit number of ``struct page::flags``.
    """
    view = _view(facts)
    out = _Derived(view)
    if page_types is None:
        page_types = _page_types_or_none(view)
    rule = page_types.get("slab") if page_types is not None else None
    if rule is not None:
        out.add("slab.marker", str(SlabMarker.PAGE_TYPE), C_FREE_PG_SLAB,
                ["NUMBER(PGTY_slab)", "NUMBER(PG_slab)", "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)"])
        return SlabRule(SlabMarker.PAGE_TYPE, type_rule=rule), out.facts
    bit = view.number("PG_slab")
    if bit is not None and 0 <= bit < 64 and not view.has("NUMBER(PAGE_TYPE_BASE)"):
        out.add("slab.marker", str(SlabMarker.PAGE_FLAG), f"PG_slab page flag, before {C_FREE_PG_SLAB}",
                ["NUMBER(PG_slab)"])
        out.add("slab.flag_bit", bit, "PG_slab page flag", ["NUMBER(PG_slab)"])
        return SlabRule(SlabMarker.PAGE_FLAG, flag_bit=bit), out.facts
    raise UnsupportedError("slab: neither a slab page type (NUMBER(PGTY_slab), "
                           "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)) nor a PG_slab page-flag bit "
                           "(NUMBER(PG_slab) < 64) is known")


# --------------------------------------------------------------------------------------------
# 3. Compound pages


class TailEncoding(StrEnum):
    """How a tail page's ``compound_head``/``compound_info`` word leads to its head."""

    #: ``head = info - 1`` (bit 0 set on tails); ``compound_head`` since v4.4, ``compound_info``
    #: without the mask encoding.
    POINTER_PLUS_ONE = "pointer+1"
    #: ``head = tail_address & info`` (v7.1 with HugeTLB vmemmap optimisation and a power-of-2
    #: ``sizeof(struct page)``).
    MASK = "mask"
    #: v7.1 ``compound_info`` whose configuration is not known: decide per value with
    #: :meth:`CompoundRules.head_address`.
    POINTER_OR_MASK = "pointer-or-mask"


class OrderLocation(StrEnum):
    """Where the order of a compound page is kept."""

    PAGE1_COMPOUND_ORDER = "page[1].compound_order"  # before v6.3
    FOLIO_ORDER = "folio._folio_order"                # v6.1 - v6.5
    FLAGS_1_LOW_BYTE = "folio._flags_1 & 0xff"        # v6.6 and later


class HugetlbMarker(StrEnum):
    """How a HugeTLB folio is marked."""

    COMPOUND_DTOR = "compound-dtor"   # page[1].compound_dtor / folio._folio_dtor == HUGETLB_PAGE_DTOR
    FOLIO_FLAG = "folio-flag"         # PG_hugetlb in folio._flags_1 (v6.6 - v6.8)
    PAGE_TYPE = "page-type"           # hugetlb page type on the head (v6.9 and later)


@dataclass(frozen=True)
class HugetlbRule:
    """``(word & mask) == value`` on the ``size``-byte word at ``offset`` from the head page."""

    marker: HugetlbMarker
    offset: int
    size: int
    mask: int
    value: int


@dataclass(frozen=True)
class CompoundRules:
    """Compound-page encodings. Offsets are bytes from the start of the *head* ``struct page``
    (a field of the first tail page is at ``page_size + offset_in_page``)."""

    page_size: int
    head_flag_bit: int
    head_mask: int
    tail_field: str
    tail_offset: int
    tail_encoding: TailEncoding
    #: HugeTLB vmemmap optimisation can show tail pages as heads ("fake heads") when the tail
    #: field is ``compound_head``: a page with PG_head whose ``page[1]`` tail points elsewhere.
    fake_heads_possible: bool
    order_location: OrderLocation
    order_offset: int
    order_size: int
    order_mask: int
    hugetlb: HugetlbRule | None

    def is_tail(self, info: int) -> bool:
        """Whether a page whose tail word is ``info`` is a tail page."""
        return bool(info & 1)

    def head_address(self, page_address: int, info: int) -> int:
        """The ``struct page *`` of the head of the tail page at ``page_address``."""
        if not info & 1:
            return page_address
        if self.tail_encoding is TailEncoding.POINTER_PLUS_ONE:
            return info - 1
        if self.tail_encoding is TailEncoding.MASK or _is_head_mask(info):
            return page_address & info
        return info - 1


def _is_head_mask(info: int, bits: int = 64) -> bool:
    """``info`` is ``GENMASK(bits-1, shift) | 1`` with shift >= 6: a mask, not a pointer + 1."""
    m = info & ~1 & ((1 << bits) - 1)
    if m == 0:
        return False
    low = (m & -m).bit_length() - 1
    return low >= 6 and m == ((1 << bits) - 1) ^ ((1 << low) - 1)


def _log2_bit(mask: int) -> int | None:
    return mask.bit_length() - 1 if _single_bit(mask) else None


def derive_compound(facts: FactMapping | FactView,
                    page_types: PageTypes | None = None) -> tuple[CompoundRules, list[Fact]]:
    """Derive compound-page rules for ``struct page``/``struct folio``.

    Head: ``PG_head`` (``NUMBER(PG_head)`` or VMCOREINFO's ``NUMBER(PG_head_mask)``). Tail:
    ``page.compound_info`` (v7.1) or ``page.compound_head`` (v4.4). Order: ``folio._folio_order``
    (v6.1-v6.5), else ``page.compound_order`` of the first tail (before v6.3), else the low byte of
    ``folio._flags_1`` (v6.6). HugeTLB: the hugetlb page type, else ``PG_hugetlb`` in
    ``_flags_1``, else ``HUGETLB_PAGE_DTOR`` in the first tail.
    """
    view = _view(facts)
    out = _Derived(view)
    page_size = view.size("page")
    if page_size is None:
        raise UnsupportedError("compound pages: SIZE(page) is not known")

    # Head flag.
    pg_head = view.number("PG_head")
    head_mask = view.number("PG_head_mask")
    if head_mask is not None:
        bit = _log2_bit(head_mask)
        if bit is None:
            raise UnsupportedError(f"compound pages: NUMBER(PG_head_mask)={head_mask:#x} is not a "
                                   "single bit (PG_compound-only kernels before v4.4 are not "
                                   "supported)")
        if pg_head is not None and pg_head != bit:
            raise UnsupportedError(f"compound pages: NUMBER(PG_head)={pg_head} contradicts "
                                   f"NUMBER(PG_head_mask)={head_mask:#x}")
        pg_head = bit
    if pg_head is None:
        raise UnsupportedError("compound pages: neither NUMBER(PG_head) nor NUMBER(PG_head_mask) "
                               "is known")
    out.add("compound.head_flag_bit", pg_head, "PG_head page flag",
            ["NUMBER(PG_head)", "NUMBER(PG_head_mask)"])

    # Tail word.
    info_off = view.offset("page.compound_info")
    head_off = view.offset("page.compound_head")
    fake_heads = False
    if info_off is not None:
        tail_field, tail_off = "compound_info", info_off
        pow2 = _single_bit(page_size)
        hvo = view.config("HUGETLB_PAGE_OPTIMIZE_VMEMMAP")
        if not pow2 or hvo in ("n", "0", "false"):
            enc = TailEncoding.POINTER_PLUS_ONE
        elif hvo in ("y", "1", "true") or view.has("OFFSET(zone.vmemmap_tails)"):
            enc = TailEncoding.MASK
        else:
            enc = TailEncoding.POINTER_OR_MASK
        out.add("compound.tail_encoding", str(enc), f"{C_COMPOUND_INFO}; {C_COMPOUND_MASK}",
                ["OFFSET(page.compound_info)", "SIZE(page)",
                 "CONFIG(HUGETLB_PAGE_OPTIMIZE_VMEMMAP)", "OFFSET(zone.vmemmap_tails)"])
    elif head_off is not None:
        tail_field, tail_off = "compound_head", head_off
        enc = TailEncoding.POINTER_PLUS_ONE
        fake_heads = True
        out.add("compound.tail_encoding", str(enc), f"{C_COMPOUND_HEAD}; fake heads: {C_FAKE_HEAD}",
                ["OFFSET(page.compound_head)"])
    else:
        raise UnsupportedError("compound pages: neither OFFSET(page.compound_info) nor "
                               "OFFSET(page.compound_head) is known (kernels before v4.4 kept "
                               "page->first_page and are not supported)")
    out.add("compound.tail_offset", tail_off, f"tail word {tail_field}",
            [f"OFFSET(page.{tail_field})"])

    # Order.
    folio_order = view.offset("folio._folio_order")
    page_order = view.offset("page.compound_order")
    flags_1 = view.offset("folio._flags_1")
    if folio_order is not None:
        if page_order is not None and page_order + page_size != folio_order:
            raise UnsupportedError(
                f"compound pages: OFFSET(folio._folio_order)={folio_order} is not SIZE(page)="
                f"{page_size} + OFFSET(page.compound_order)={page_order}")
        loc, order_off, order_mask = OrderLocation.FOLIO_ORDER, folio_order, 0xFF
        order_rule = f"{C_FOLIO_TAIL}, until {C_FREE_TAIL_WORD}"
        order_used = ["OFFSET(folio._folio_order)"]
    elif page_order is not None:
        dtor = view.offset("page.compound_dtor")
        if dtor is not None and page_order != dtor + 1:
            raise UnsupportedError(
                f"compound pages: OFFSET(page.compound_order)={page_order} does not follow "
                f"OFFSET(page.compound_dtor)={dtor}: not the unsigned-char pair this knows")
        loc, order_off, order_mask = (OrderLocation.PAGE1_COMPOUND_ORDER, page_size + page_order,
                                      0xFF)
        order_rule = f"first tail page's compound_order, before {C_REMOVE_FIRST_TAIL}"
        order_used = ["OFFSET(page.compound_order)", "SIZE(page)"]
    elif flags_1 is not None:
        loc, order_off, order_mask = OrderLocation.FLAGS_1_LOW_BYTE, flags_1, 0xFF
        order_rule = C_FREE_TAIL_WORD
        order_used = ["OFFSET(folio._flags_1)"]
    else:
        raise UnsupportedError("compound pages: no order location: need OFFSET(folio._folio_order)"
                               ", OFFSET(page.compound_order) or OFFSET(folio._flags_1)")
    out.add("compound.order_location", str(loc), order_rule, order_used)
    out.add("compound.order_offset", order_off, order_rule, order_used)

    # HugeTLB.
    if page_types is None:
        page_types = _page_types_or_none(view)
    hugetlb: HugetlbRule | None = None
    ht = page_types.get("hugetlb") if page_types is not None else None
    pg_hugetlb = view.number("PG_hugetlb")
    dtor_id = view.number("HUGETLB_PAGE_DTOR")
    if ht is not None:
        hugetlb = HugetlbRule(HugetlbMarker.PAGE_TYPE, ht.field_offset, ht.field_size, ht.mask,
                              ht.value)
        rule = C_HUGETLB_PAGETYPE
        used = ["NUMBER(PGTY_hugetlb)", "NUMBER(PG_hugetlb)", "NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)"]
    elif (pg_hugetlb is not None and 0 <= pg_hugetlb < 64
          and not view.has("NUMBER(PAGE_TYPE_BASE)") and flags_1 is not None):
        word = view.size("list_head")
        size = word // 2 if word else 8
        hugetlb = HugetlbRule(HugetlbMarker.FOLIO_FLAG, flags_1, size, 1 << pg_hugetlb,
                              1 << pg_hugetlb)
        rule = f"{C_REMOVE_HUGETLB_DTOR}, until {C_HUGETLB_PAGETYPE}"
        used = ["NUMBER(PG_hugetlb)", "OFFSET(folio._flags_1)"]
    elif dtor_id is not None:
        fd = view.offset("folio._folio_dtor")
        pd = view.offset("page.compound_dtor")
        if fd is not None:
            off = fd
        elif pd is not None:
            off = page_size + pd
        else:
            raise UnsupportedError("compound pages: NUMBER(HUGETLB_PAGE_DTOR) is known but neither "
                                   "OFFSET(folio._folio_dtor) nor OFFSET(page.compound_dtor) is")
        hugetlb = HugetlbRule(HugetlbMarker.COMPOUND_DTOR, off, 1, 0xFF, dtor_id)
        rule = f"compound destructor id, before {C_REMOVE_HUGETLB_DTOR}"
        used = ["NUMBER(HUGETLB_PAGE_DTOR)", "OFFSET(folio._folio_dtor)", "OFFSET(page.compound_dtor)"]
    if hugetlb is not None:
        out.add("compound.hugetlb_marker", str(hugetlb.marker), rule, used)
        out.add("compound.hugetlb_offset", hugetlb.offset, rule, used)
    else:
        out.add("compound.hugetlb_marker", "unknown",
                "no hugetlb page type, PG_hugetlb bit or HUGETLB_PAGE_DTOR is known "
                "(CONFIG_HUGETLB_PAGE=n, or the facts are missing)")

    return CompoundRules(page_size, pg_head, 1 << pg_head, tail_field, tail_off, enc, fake_heads,
                         loc, order_off, 1, order_mask, hugetlb), out.facts


# --------------------------------------------------------------------------------------------
# 4. Page flags


@dataclass(frozen=True)
class FlagField:
    """A field packed into the top of ``page->flags``: ``(flags >> shift) & ((1 << width) - 1)``."""

    shift: int
    width: int

    def extract(self, flags: int) -> int:
        return (flags >> self.shift) & ((1 << self.width) - 1)


@dataclass(frozen=True)
class PageFlagBits:
    """Where ``page->flags`` lives and the ``PG_*`` bit numbers the scanner uses."""

    flags_field: str           # "flags" or "flags.f" (memdesc_flags_t)
    flags_offset: int
    word_size: int
    bits: Mapping[str, int]
    #: For each known flag, the other known ``PG_*`` names sharing its bit.
    aliases: Mapping[str, tuple[str, ...]]
    #: PG_swapcache only means "in swap cache" together with PG_swapbacked.
    swapcache_requires_swapbacked: bool
    nr_pageflags: int | None
    zone: FlagField | None
    node: FlagField | None
    #: Section number field; only SPARSEMEM without VMEMMAP keeps one.
    section: FlagField | None = None

    def bit(self, name: str) -> int | None:
        """The bit number of ``PG_<name>`` (``name`` with or without the ``PG_`` prefix)."""
        return self.bits.get(name if name.startswith("PG_") else f"PG_{name}")

    def mask(self, name: str) -> int:
        b = self.bit(name)
        return 0 if b is None else 1 << b


#: Flags the scanner asks for; PG_buddy was a flag before v2.6.38 and is taken only when < 64.
SCANNER_FLAGS = ("PG_locked", "PG_lru", "PG_private", "PG_private_2", "PG_swapcache",
                 "PG_swapbacked", "PG_head", "PG_hwpoison", "PG_slab", "PG_reserved", "PG_buddy",
                 "PG_anon_exclusive", "PG_owner_priv_1", "PG_owner_2", "PG_mappedtodisk",
                 "PG_unevictable", "PG_mlocked", "PG_dirty", "PG_writeback", "PG_uptodate",
                 "PG_active", "PG_workingset", "PG_reclaim", "PG_hugetlb", "PG_movable_ops",
                 "PG_offline", "PG_large_rmappable", "PG_has_hwpoisoned", "PG_dropbehind")
_REQUIRED_FLAGS = ("PG_lru", "PG_private", "PG_swapcache", "PG_head")


def _zones_shift(max_nr_zones: int) -> int | None:
    if max_nr_zones < 2:
        return 0
    if max_nr_zones <= 2:
        return 1
    if max_nr_zones <= 4:
        return 2
    if max_nr_zones <= 8:
        return 3
    return None


def derive_page_flags(facts: FactMapping | FactView,
                      memory: MemoryModelRules | None = None) -> tuple[PageFlagBits, list[Fact]]:
    """Derive the location of ``page->flags`` (``unsigned long`` or ``memdesc_flags_t``) and the
    ``PG_*`` bit numbers from ``enum pageflags`` / VMCOREINFO numbers.

    A type-mask value (``PG_slab`` = 0x1000 in ``enum pagetype`` of v6.10) is never taken as a
    flag bit: only values below the word's bit count are. The zone and node fields at the top of
    the flags word are derived when ``NUMBER(__MAX_NR_ZONES)``, ``NUMBER(__NR_PAGEFLAGS)`` and the
    NUMA configuration (``CONFIG(NUMA)``, ``CONFIG(NODES_SHIFT)``) are known, following
    include/linux/page-flags-layout.h.
    """
    view = _view(facts)
    out = _Derived(view)
    lh = view.size("list_head")
    if lh is None or lh % 2:
        raise UnsupportedError("page flags: SIZE(list_head) is needed for the word size")
    word = lh // 2
    f_off = view.offset("page.flags.f")
    if f_off is not None:
        field, off = "flags.f", f_off
        out.add("flags.field", "page.flags.f", C_MEMDESC_FLAGS, ["OFFSET(page.flags.f)"])
    else:
        off_plain = view.offset("page.flags")
        if off_plain is None:
            raise UnsupportedError("page flags: neither OFFSET(page.flags.f) nor OFFSET(page.flags)")
        field, off = "flags", off_plain
        out.add("flags.field", "page.flags", f"unsigned long flags, before {C_MEMDESC_FLAGS}",
                ["OFFSET(page.flags)"])
    out.add("flags.offset", off, "page flags word", [f"OFFSET(page.{field})"])

    type_masks = view.has("NUMBER(PAGE_TYPE_BASE)")
    bits: dict[str, int] = {}
    for name in SCANNER_FLAGS:
        v = view.number(name)
        if v is None or not 0 <= v < word * 8:
            continue
        if type_masks and name in ("PG_buddy", "PG_offline", "PG_slab", "PG_hugetlb"):
            continue
        bits[name] = v
    if "PG_head" not in bits:
        hm = view.number("PG_head_mask")
        b = _log2_bit(hm) if hm is not None else None
        if b is not None:
            bits["PG_head"] = b
    missing = [n for n in _REQUIRED_FLAGS if n not in bits]
    if missing:
        raise UnsupportedError(f"page flags: no bit number for {', '.join(missing)} "
                               f"(need NUMBER({missing[0]}))")
    for name, b in sorted(bits.items()):
        out.add(f"flags.{name}", b, "enum pageflags", [f"NUMBER({name})"])

    aliases = {n: tuple(sorted(m for m, c in bits.items() if c == b and m != n))
               for n, b in bits.items()}
    aliases = {n: a for n, a in aliases.items() if a}
    swapbacked = "PG_swapbacked" in bits
    out.add("flags.swapcache_requires_swapbacked", swapbacked, C_SWAPCACHE_ALIAS,
            ["NUMBER(PG_swapcache)", "NUMBER(PG_swapbacked)", "NUMBER(PG_owner_priv_1)"])

    nr = view.number("__NR_PAGEFLAGS")
    zone_f: FlagField | None = None
    node_f: FlagField | None = None
    section_f: FlagField | None = None
    max_zones = view.number("__MAX_NR_ZONES")
    if nr is not None and max_zones is not None and memory is not None and memory.vmemmap is not None:
        bits_per_long = word * 8
        zshift = _zones_shift(max_zones)
        if memory.model is MemoryModel.FLATMEM or memory.vmemmap:
            sections_width: int | None = 0
        elif memory.max_physmem_bits is not None and memory.section_size_bits is not None:
            sections_width = memory.max_physmem_bits - memory.section_size_bits
        else:
            sections_width = None
        numa = view.config("NUMA")
        nshift_s = view.config("NODES_SHIFT")
        nodes_shift: int | None
        if numa in ("n", "0", "false"):
            nodes_shift = 0
        elif nshift_s is not None and nshift_s.isdigit():
            nodes_shift = int(nshift_s)
        else:
            nodes_shift = None
        if zshift is not None and sections_width is not None and nodes_shift is not None:
            room = bits_per_long - nr
            # LRU_GEN_WIDTH (0..3 bits) sits between them and is config-dependent: decide only
            # when the answer is the same for every possible width.
            fits_max = zshift + 3 + sections_width + nodes_shift <= room
            fits_min = zshift + sections_width + nodes_shift <= room
            nodes_width: int | None = (nodes_shift if fits_max else 0 if not fits_min else None)
            if nodes_width is not None:
                sections_pgoff = bits_per_long - sections_width
                nodes_pgoff = sections_pgoff - nodes_width
                zones_pgoff = nodes_pgoff - zshift
                zone_f = FlagField(zones_pgoff, zshift)
                node_f = FlagField(nodes_pgoff, nodes_width) if nodes_width else None
                section_f = (FlagField(sections_pgoff, sections_width) if sections_width
                             else None)
                rule = "include/linux/page-flags-layout.h: | SECTION | NODE | ZONE | ... | FLAGS |"
                used = ["NUMBER(__NR_PAGEFLAGS)", "NUMBER(__MAX_NR_ZONES)", "CONFIG(NODES_SHIFT)",
                        "CONFIG(NUMA)"]
                out.add("flags.zone_shift", zone_f.shift, rule, used)
                out.add("flags.zone_width", zone_f.width, rule, used)
                if node_f is not None:
                    out.add("flags.node_shift", node_f.shift, rule, used)
                    out.add("flags.node_width", node_f.width, rule, used)

    return PageFlagBits(field, off, word, bits, aliases, swapbacked, nr, zone_f, node_f,
                        section_f), out.facts


# --------------------------------------------------------------------------------------------
# 5. page->mapping low bits


@dataclass(frozen=True)
class MappingBits:
    """The low bits of ``page->mapping`` / ``folio->mapping``.

    ``mapping & anon`` marks an anonymous folio (``mapping`` then points to an ``anon_vma``);
    ``(mapping & flags_mask) == ksm`` marks a KSM folio. Before PG_movable_ops,
    ``(mapping & flags_mask) == movable`` marked a non-LRU movable page (balloon, zsmalloc).

    Only meaningful on a folio head (or single page) that has no page type and is not slab:
    ``struct slab`` and the other typed descriptors overlay this word (6.12 slab pages show 0x1).
    """

    anon: int
    flags_mask: int
    ksm: int
    movable: int | None
    movable_ops_flag_bit: int | None
    names: tuple[str, str]   # kernel names of bits 0 and 1

    def is_anon(self, mapping: int) -> bool:
        return bool(mapping & self.anon)

    def is_ksm(self, mapping: int) -> bool:
        return (mapping & self.flags_mask) == self.ksm

    def is_movable(self, mapping: int, flags: int = 0) -> bool:
        """Non-LRU movable page: by the mapping bits (old) or by PG_movable_ops (new)."""
        if self.movable_ops_flag_bit is not None:
            return bool(flags >> self.movable_ops_flag_bit & 1)
        return self.movable is not None and (mapping & self.flags_mask) == self.movable

    def address(self, mapping: int) -> int:
        """``mapping`` without its flag bits (the ``address_space``/``anon_vma`` pointer)."""
        return mapping & ~self.flags_mask


def derive_mapping_bits(facts: FactMapping | FactView) -> tuple[MappingBits, list[Fact]]:
    """Derive the meaning of ``page->mapping``'s low bits (``struct address_space *``).

    ``PAGE_MAPPING_ANON`` (1) and ``PAGE_MAPPING_KSM`` (3) never changed value. Once the kernel has
    the ``PG_movable_ops`` page flag (enumerator ``NUMBER(PG_movable_ops)``), bit 1 is
    ``FOLIO_MAPPING_ANON_KSM`` and only means something together with bit 0; before, bit 1 alone
    (``PAGE_MAPPING_MOVABLE``) marked a non-LRU movable page.
    """
    view = _view(facts)
    out = _Derived(view)
    mo = view.number("PG_movable_ops")
    if mo is not None and 0 <= mo < 64:
        bits = MappingBits(1, 3, 3, None, mo, ("FOLIO_MAPPING_ANON", "FOLIO_MAPPING_ANON_KSM"))
        out.add("mapping.movable", "PG_movable_ops page flag", C_MOVABLE_OPS,
                ["NUMBER(PG_movable_ops)"])
    else:
        bits = MappingBits(1, 3, 3, 2, None, ("PAGE_MAPPING_ANON", "PAGE_MAPPING_MOVABLE"))
        out.add("mapping.movable", "PAGE_MAPPING_MOVABLE (mapping & 3) == 2",
                f"no PG_movable_ops enumerator: mapping bits before {C_MOVABLE_OPS}")
    out.add("mapping.anon", bits.anon, "PAGE_MAPPING_ANON / FOLIO_MAPPING_ANON")
    out.add("mapping.ksm", bits.ksm, "PAGE_MAPPING_KSM / FOLIO_MAPPING_KSM (both low bits)")
    return bits, out.facts


# --------------------------------------------------------------------------------------------
# 6. Memory model


class MemoryModel(StrEnum):
    FLATMEM = "flatmem"
    SPARSEMEM = "sparsemem"                   # static mem_section[NR_SECTION_ROOTS][1]
    SPARSEMEM_EXTREME = "sparsemem-extreme"   # mem_section roots of SECTIONS_PER_ROOT sections


@dataclass(frozen=True)
class SectionFlags:
    """Flag bits in the low bits of ``mem_section::section_mem_map``."""

    marked_present: int
    has_mem_map: int
    is_online: int | None
    is_early: int | None
    taint_zone_device: int | None
    vmemmap_preinit: int | None
    map_last_bit: int
    #: True when SECTION_MAP_LAST_BIT came from the kernel; False when it is the upper bound of
    #: every generation known here (safe because the encoded memmap is 64-byte aligned).
    map_last_bit_exact: bool

    @property
    def map_mask(self) -> int:
        """``SECTION_MAP_MASK`` as a 64-bit value."""
        return ~((1 << self.map_last_bit) - 1) & 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class MemoryModelRules:
    model: MemoryModel
    vmemmap: bool | None
    page_size: int
    page_shift: int
    section_size_bits: int | None
    max_physmem_bits: int | None
    pfn_section_shift: int | None
    pages_per_section: int | None
    nr_mem_sections: int | None
    sections_per_root: int | None
    nr_section_roots: int | None
    mem_section_size: int | None
    section_flags: SectionFlags | None
    paging_levels: int | None


_SECTION_BITS = ("SECTION_MARKED_PRESENT_BIT", "SECTION_HAS_MEM_MAP_BIT", "SECTION_IS_ONLINE_BIT",
                 "SECTION_IS_EARLY_BIT", "SECTION_TAINT_ZONE_DEVICE_BIT",
                 "SECTION_IS_VMEMMAP_PREINIT_BIT", "SECTION_MAP_LAST_BIT")
#: The largest SECTION_MAP_LAST_BIT of any generation known here (PRESENT, HAS_MEM_MAP, ONLINE,
#: EARLY, TAINT_ZONE_DEVICE, VMEMMAP_PREINIT).
_SECTION_MAP_LAST_BIT_BOUND = 6


def _section_flags(view: FactView, out: _Derived, page_size_struct: int | None) -> SectionFlags:
    nums = {n: view.number(n) for n in _SECTION_BITS}
    last = nums["SECTION_MAP_LAST_BIT"]
    if last is not None:
        def bit(n: str) -> int | None:
            v = nums[n]
            return None if v is None else 1 << v
        present = bit("SECTION_MARKED_PRESENT_BIT")
        has_map = bit("SECTION_HAS_MEM_MAP_BIT")
        if present is None or has_map is None:
            raise UnsupportedError("memory model: NUMBER(SECTION_MAP_LAST_BIT) is known but "
                                   "SECTION_MARKED_PRESENT_BIT/SECTION_HAS_MEM_MAP_BIT are not")
        sf = SectionFlags(present, has_map, bit("SECTION_IS_ONLINE_BIT"),
                          bit("SECTION_IS_EARLY_BIT"), bit("SECTION_TAINT_ZONE_DEVICE_BIT"),
                          bit("SECTION_IS_VMEMMAP_PREINIT_BIT"), last, True)
        out.add("section.map_last_bit", last, C_SECTION_ENUM,
                [f"NUMBER({n})" for n in _SECTION_BITS])
    else:
        if page_size_struct is not None and page_size_struct % (1 << _SECTION_MAP_LAST_BIT_BOUND):
            raise UnsupportedError(
                f"memory model: SECTION_MAP_LAST_BIT is unknown and SIZE(page)={page_size_struct} "
                "is not a multiple of 64, so the section flag bits cannot be masked safely; "
                "need NUMBER(SECTION_MAP_LAST_BIT)")
        # PRESENT/HAS_MEM_MAP never moved; ONLINE and EARLY were appended before any
        # config-dependent bit, so their positions are fixed too.
        sf = SectionFlags(1, 2, 4, 8, None, None, _SECTION_MAP_LAST_BIT_BOUND, False)
        out.add("section.map_last_bit", _SECTION_MAP_LAST_BIT_BOUND,
                f"upper bound of SECTION_MAP_LAST_BIT; bits 0/1: {C_SPARSE_BASE}; bit 2: "
                f"{C_SECTION_ONLINE}; bit 3: {C_SECTION_EARLY}; later bits "
                f"({C_SECTION_ZONE_DEVICE}) depend on configuration", ["SIZE(page)"])
    return sf


def derive_memory_model(facts: FactMapping | FactView) -> tuple[MemoryModelRules, list[Fact]]:
    """Derive the memory model and ``struct mem_section`` geometry.

    SPARSEMEM when ``SYMBOL(mem_section)`` is known; EXTREME versus static from
    ``LENGTH(mem_section)`` (= NR_SECTION_ROOTS) against ``NUMBER(MAX_PHYSMEM_BITS)``,
    ``NUMBER(SECTION_SIZE_BITS)``, ``PAGESIZE`` and ``SIZE(mem_section)``; VMEMMAP when
    ``SYMBOL(vmemmap)`` or ``SYMBOL(vmemmap_base)`` is known. FLATMEM when only ``SYMBOL(mem_map)``
    / ``SYMBOL(contig_page_data)`` is. x86_64 paging levels from ``NUMBER(pgtable_l5_enabled)``.
    """
    view = _view(facts)
    out = _Derived(view)
    page_size = view.get_int("PAGESIZE") or view.number("PAGE_SIZE")
    if page_size is None or not _single_bit(page_size):
        raise UnsupportedError("memory model: PAGESIZE (a power of two) is not known")
    page_shift = page_size.bit_length() - 1

    l5 = view.number("pgtable_l5_enabled")
    levels = None if l5 is None else (5 if l5 else 4)
    if levels is not None:
        out.add("paging_levels", levels, "x86_64: 5-level paging when pgtable_l5_enabled",
                ["NUMBER(pgtable_l5_enabled)"])

    vmemmap: bool | None = (True if view.has("SYMBOL(vmemmap)") or view.has("SYMBOL(vmemmap_base)")
                            else None)

    if not view.has("SYMBOL(mem_section)"):
        if view.has("SYMBOL(mem_map)") or view.has("SYMBOL(contig_page_data)"):
            out.add("memory_model", str(MemoryModel.FLATMEM),
                    "no SYMBOL(mem_section); SYMBOL(mem_map) present",
                    ["SYMBOL(mem_map)", "SYMBOL(contig_page_data)"])
            return MemoryModelRules(MemoryModel.FLATMEM, False, page_size, page_shift, None, None,
                                    None, None, None, None, None, None, None, levels), out.facts
        raise UnsupportedError("memory model: neither SYMBOL(mem_section) (SPARSEMEM) nor "
                               "SYMBOL(mem_map) (FLATMEM) is known")

    ssb = view.number("SECTION_SIZE_BITS")
    mpb = view.number("MAX_PHYSMEM_BITS")
    mpb_used = ["NUMBER(MAX_PHYSMEM_BITS)"]
    if mpb is None and l5 is not None:
        mpb = 52 if l5 else 46
        mpb_used = ["NUMBER(pgtable_l5_enabled)"]
        out.add("MAX_PHYSMEM_BITS", mpb, "x86_64 arch/x86/include/asm/sparsemem.h: "
                "pgtable_l5_enabled() ? 52 : 46", mpb_used)
    length = view.get_int("LENGTH(mem_section)")
    ms_size = view.size("mem_section")
    missing = [k for k, v in (("NUMBER(SECTION_SIZE_BITS)", ssb), ("NUMBER(MAX_PHYSMEM_BITS)", mpb),
                              ("LENGTH(mem_section)", length), ("SIZE(mem_section)", ms_size))
               if v is None]
    if missing:
        raise UnsupportedError(f"memory model: SPARSEMEM but {', '.join(missing)} unknown")
    assert ssb is not None and mpb is not None and length is not None and ms_size is not None
    if not page_shift < ssb < mpb:
        raise UnsupportedError(f"memory model: SECTION_SIZE_BITS={ssb} is not between PAGE_SHIFT="
                               f"{page_shift} and MAX_PHYSMEM_BITS={mpb}")
    nr_sections = 1 << (mpb - ssb)
    per_root_extreme = page_size // ms_size if ms_size else 0
    if length == nr_sections:
        model, per_root = MemoryModel.SPARSEMEM, 1
    elif per_root_extreme and length == -(-nr_sections // per_root_extreme):
        model, per_root = MemoryModel.SPARSEMEM_EXTREME, per_root_extreme
    else:
        raise UnsupportedError(
            f"memory model: LENGTH(mem_section)={length} matches neither NR_MEM_SECTIONS="
            f"{nr_sections} (static SPARSEMEM) nor NR_MEM_SECTIONS / (PAGESIZE / SIZE(mem_section))"
            f"={-(-nr_sections // max(per_root_extreme, 1))} (SPARSEMEM_EXTREME)")
    used = ["SYMBOL(mem_section)", "LENGTH(mem_section)", "SIZE(mem_section)", "PAGESIZE",
            "NUMBER(SECTION_SIZE_BITS)", *mpb_used]
    rule = "include/linux/mmzone.h: SECTIONS_PER_ROOT = PAGE_SIZE / sizeof(struct mem_section)"
    out.add("memory_model", str(model), rule, used)
    out.add("sections_per_root", per_root, rule, used)
    out.add("nr_mem_sections", nr_sections, "NR_MEM_SECTIONS = 1 << (MAX_PHYSMEM_BITS - "
            "SECTION_SIZE_BITS)", used)
    if vmemmap is not None:
        out.add("vmemmap", vmemmap, "SPARSEMEM_VMEMMAP: the vmemmap symbol is exported",
                ["SYMBOL(vmemmap)", "SYMBOL(vmemmap_base)"])
    sf = _section_flags(view, out, view.size("page"))
    pfn_shift = ssb - page_shift
    return MemoryModelRules(model, vmemmap, page_size, page_shift, ssb, mpb, pfn_shift,
                            1 << pfn_shift, nr_sections, per_root, length, ms_size, sf,
                            levels), out.facts


# --------------------------------------------------------------------------------------------
# 7. Free pages


@dataclass(frozen=True)
class FreePageRules:
    """Free (buddy) blocks: the head page carries the buddy page type and its order in
    ``page.private``; a block spans ``1 << order`` pages."""

    order_offset: int
    order_size: int
    nr_page_orders: int
    #: The largest order the buddy allocator hands out (MAX_PAGE_ORDER, inclusive).
    max_page_order: int
    buddy: PageTypeRule | None
    buddy_flag_bit: int | None
    unaccepted: PageTypeRule | None

    def valid_order(self, order: int) -> bool:
        return 0 <= order <= self.max_page_order


def derive_free_pages(facts: FactMapping | FactView,
                      page_types: PageTypes | None = None) -> tuple[FreePageRules, list[Fact]]:
    """Derive how free blocks are recognised and how long they are.

    The order of a free block is ``page->private`` (``unsigned long``) of its first page. The
    number of orders is ``LENGTH(zone.free_area)`` in every generation: the array was
    ``free_area[MAX_ORDER]`` until MAX_ORDER became inclusive in ``23baf831a32c`` (v6.4,
    ``free_area[MAX_ORDER + 1]``) and ``free_area[NR_PAGE_ORDERS]`` since ``fd37721803c6`` (v6.8);
    a ``NUMBER(MAX_ORDER)`` alone is therefore ambiguous and not used.
    """
    view = _view(facts)
    out = _Derived(view)
    priv = view.offset("page.private")
    if priv is None:
        raise UnsupportedError("free pages: OFFSET(page.private) is not known")
    n = view.get_int("LENGTH(zone.free_area)")
    if n is None:
        mpo = view.number("MAX_PAGE_ORDER")
        npo = view.number("NR_PAGE_ORDERS")
        if npo is not None:
            n = npo
        elif mpo is not None:
            n = mpo + 1
    if n is None or not 1 <= n <= 64:
        raise UnsupportedError("free pages: the number of buddy orders is unknown: need "
                               "LENGTH(zone.free_area) (or NUMBER(NR_PAGE_ORDERS))")
    lh = view.size("list_head")
    word = lh // 2 if lh else 8
    if page_types is None:
        page_types, _ = derive_page_types(view)
    buddy = page_types.get("buddy")
    flag_bit: int | None = None
    if buddy is None:
        v = view.number("PG_buddy")
        if v is not None and 0 <= v < 64:
            flag_bit = v
        else:
            raise UnsupportedError("free pages: no buddy page type and no PG_buddy page flag")
    rule = f"LENGTH(zone.free_area) orders; {C_MAX_ORDER_SANE}; {C_NR_PAGE_ORDERS}"
    out.add("free.nr_page_orders", n, rule, ["LENGTH(zone.free_area)", "NUMBER(NR_PAGE_ORDERS)",
                                             "NUMBER(MAX_PAGE_ORDER)"])
    out.add("free.order_offset", priv, "buddy order in page->private of the block's first page",
            ["OFFSET(page.private)"])
    return FreePageRules(priv, word, n, n - 1, buddy, flag_bit,
                         page_types.get("unaccepted")), out.facts


# --------------------------------------------------------------------------------------------
# Everything at once


@dataclass(frozen=True)
class Semantics:
    """Every encoding the scanner needs, and the facts derived on the way."""

    page_types: PageTypes
    slab: SlabRule
    compound: CompoundRules
    flags: PageFlagBits
    mapping: MappingBits
    memory: MemoryModelRules
    free: FreePageRules
    facts: tuple[Fact, ...] = field(default=(), repr=False)


def derive_semantics(facts: FactMapping | FactView) -> Semantics:
    """Derive all encodings from one kernel's facts (see the individual ``derive_*``)."""
    view = _view(facts)
    page_types, f1 = derive_page_types(view)
    slab, f2 = derive_slab(view, page_types)
    compound, f3 = derive_compound(view, page_types)
    memory, f4 = derive_memory_model(view)
    flags, f5 = derive_page_flags(view, memory)
    mapping, f6 = derive_mapping_bits(view)
    free, f7 = derive_free_pages(view, page_types)
    return Semantics(page_types, slab, compound, flags, mapping, memory, free,
                     tuple(f1 + f2 + f3 + f4 + f5 + f6 + f7))
