"""Tests for kdlayout.semantics: page encodings derived from layout facts.

Unit tests use hand-written fact sets, one per kernel generation. Every number in them is read
from that generation's own sources, cited next to it:

* Debian linux-headers-5.10.0-46-common, -6.1.0-56-common, -6.12.118+deb13-common and
  -7.2.13+deb14-common (include/linux/page-flags.h, mm_types.h, mmzone.h, mm.h), with the
  matching Debian amd64 config (/boot/config-*, linux-headers-*-amd64/.config) deciding the
  #ifdef'd enumerators;
* kernel/crash_core.c and kernel/vmcore_info.c for what VMCOREINFO exports;
* for generations Debian does not ship (6.6, 6.9, 6.10, 6.11, pre-4.18) the diffs of the commits
  that introduced them, cited in docs/semantics.md.

The fixture tests compare our classification of raw struct page bytes with drgn's helpers and
with the zones' free lists on real vmcores; they skip until tools/build_fixtures.py has run.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import replace
from typing import Any

import pytest

from kdlayout.errors import UnsupportedError
from kdlayout.layout import Fact, Layout, Resolution
from kdlayout.semantics import (
    HugetlbMarker,
    MemoryModel,
    OrderLocation,
    PageTypeScheme,
    SlabMarker,
    TailEncoding,
    derive_compound,
    derive_free_pages,
    derive_mapping_bits,
    derive_memory_model,
    derive_page_flags,
    derive_page_types,
    derive_semantics,
    derive_slab,
)

Facts = dict[str, Any]

# x86_64 struct page (include/linux/mm_types.h, all four Debian headers): flags at 0, the 40-byte
# union at 8 (lru 8, mapping 24, index 32, private 40; compound_head 8 in the tail-page struct),
# _mapcount/page_type at 48, _refcount at 52, memcg_data at 56; sizeof 64.
X86_64_PAGE: Facts = {
    "SIZE(page)": 64, "SIZE(list_head)": 16, "PAGESIZE": 4096,
    "OFFSET(page.flags)": 0, "OFFSET(page.lru)": 8, "OFFSET(page.mapping)": 24,
    "OFFSET(page.private)": 40, "OFFSET(page._mapcount)": 48, "OFFSET(page.page_type)": 48,
    "OFFSET(page._refcount)": 52,
    # CONFIG_SPARSEMEM_EXTREME/VMEMMAP=y, CONFIG_PAGE_EXTENSION=y in every Debian config:
    # struct mem_section is {section_mem_map, usage, page_ext, pad} = 32 bytes.
    "SYMBOL(mem_section)": 0xFFFF888100000000, "SYMBOL(vmemmap_base)": 0xFFFFFFFF82000000,
    "SIZE(mem_section)": 32, "NUMBER(SECTION_SIZE_BITS)": 27, "NUMBER(MAX_PHYSMEM_BITS)": 46,
    "NUMBER(pgtable_l5_enabled)": 0,
    # NR_SECTION_ROOTS = 2^(46-27) / (4096/32) = 4096
    "LENGTH(mem_section)": 4096,
    # MAX_ORDER 11 (5.10, 6.1: free_area[MAX_ORDER]); MAX_PAGE_ORDER 10 (6.12, 7.2:
    # free_area[NR_PAGE_ORDERS] = 11)
    "LENGTH(zone.free_area)": 11,
}


def facts_5_10() -> Facts:
    """Debian 5.10.0-46 as VMCOREINFO (kernel/crash_core.c of 5.10) and BTF would say."""
    f = dict(X86_64_PAGE)
    f.update({
        # enum pageflags, 5.10 with CONFIG_MMU, ARCH_USES_PG_UNCACHED, MEMORY_FAILURE, 64BIT=y:
        # locked 0 referenced 1 uptodate 2 dirty 3 lru 4 active 5 workingset 6 waiters 7 error 8
        # slab 9 owner_priv_1 10 arch_1 11 reserved 12 private 13 private_2 14 writeback 15
        # head 16 mappedtodisk 17 reclaim 18 swapbacked 19 unevictable 20 mlocked 21
        # uncached 22 hwpoison 23 arch_2 24; PG_swapcache = PG_owner_priv_1.
        "NUMBER(PG_lru)": 4, "NUMBER(PG_private)": 13, "NUMBER(PG_swapcache)": 10,
        "NUMBER(PG_swapbacked)": 19, "NUMBER(PG_slab)": 9, "NUMBER(PG_hwpoison)": 23,
        "NUMBER(PG_head_mask)": 1 << 16, "NUMBER(PG_head)": 16, "NUMBER(PG_owner_priv_1)": 10,
        "NUMBER(PG_reserved)": 12, "NUMBER(PG_private_2)": 14, "NUMBER(__NR_PAGEFLAGS)": 25,
        # page-flags.h 5.10: PAGE_TYPE_BASE 0xf0000000, PG_buddy 0x80, PG_offline 0x100
        # (macros: only VMCOREINFO's ~PG_x values reach a dump)
        "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)": ~0x80, "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)": ~0x100,
        # mm.h 5.10: enum compound_dtor_id {NULL, COMPOUND_PAGE, HUGETLB_PAGE (=2), ...}
        "NUMBER(HUGETLB_PAGE_DTOR)": 2,
        # mm_types.h 5.10 tail-page struct: compound_head 8, compound_dtor 16, compound_order 17
        "OFFSET(page.compound_head)": 8, "OFFSET(page.compound_dtor)": 16,
        "OFFSET(page.compound_order)": 17,
        # enum zone_type with ZONE_DMA, DMA32, NORMAL, MOVABLE, DEVICE
        "NUMBER(__MAX_NR_ZONES)": 5, "CONFIG(NUMA)": "y", "CONFIG(NODES_SHIFT)": "10",
    })
    return f


def facts_6_1() -> Facts:
    """Debian 6.1.0-56: struct folio has the first tail page; page keeps compound_order too."""
    f = facts_5_10()
    f.update({
        # enum pageflags 6.1: same numbering as 5.10 for these; PG_anon_exclusive =
        # PG_mappedtodisk (17)
        "NUMBER(PG_anon_exclusive)": 17, "NUMBER(PG_mappedtodisk)": 17,
        # mm_types.h 6.1 struct folio: _flags_1 64, __head 72, _folio_dtor 80, _folio_order 81
        "OFFSET(folio._flags_1)": 64, "OFFSET(folio._folio_dtor)": 80,
        "OFFSET(folio._folio_order)": 81,
    })
    return f


def facts_6_12() -> Facts:
    """Debian 6.12.118: PGTY_* page types; order in _flags_1."""
    f = dict(X86_64_PAGE)
    f.update({
        # enum pageflags 6.12 (PAGE_IDLE_FLAG, ARCH_USES_PG_ARCH_2, MEMORY_FAILURE=y): locked 0
        # writeback 1 referenced 2 uptodate 3 dirty 4 lru 5 head 6 waiters 7 active 8
        # workingset 9 owner_priv_1 10 owner_2 11 arch_1 12 reserved 13 private 14 private_2 15
        # reclaim 16 swapbacked 17 unevictable 18 mlocked 19 hwpoison 20 young 21 idle 22
        # arch_2 23; PG_swapcache = PG_owner_priv_1; PG_anon_exclusive = PG_owner_2
        "NUMBER(PG_lru)": 5, "NUMBER(PG_private)": 14, "NUMBER(PG_swapcache)": 10,
        "NUMBER(PG_swapbacked)": 17, "NUMBER(PG_hwpoison)": 20, "NUMBER(PG_head_mask)": 1 << 6,
        "NUMBER(PG_head)": 6, "NUMBER(PG_owner_priv_1)": 10, "NUMBER(PG_owner_2)": 11,
        "NUMBER(PG_anon_exclusive)": 11, "NUMBER(PG_reserved)": 13, "NUMBER(__NR_PAGEFLAGS)": 24,
        # enum pagetype 6.12
        "NUMBER(PGTY_buddy)": 0xF0, "NUMBER(PGTY_offline)": 0xF1, "NUMBER(PGTY_table)": 0xF2,
        "NUMBER(PGTY_guard)": 0xF3, "NUMBER(PGTY_hugetlb)": 0xF4, "NUMBER(PGTY_slab)": 0xF5,
        "NUMBER(PGTY_zsmalloc)": 0xF6, "NUMBER(PGTY_unaccepted)": 0xF7,
        "NUMBER(PGTY_mapcount_underflow)": 0xFF,
        # kernel/vmcore_info.c: PAGE_X_MAPCOUNT_VALUE = PGTY_x << 24 printed as (long)int
        "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)": -0x10000000,
        "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)": -0x0F000000,
        "NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)": -0x0C000000,
        "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)": -0x0B000000,
        # mm_types.h 6.12: compound_head 8; folio _flags_1 64, _head_1 72
        "OFFSET(page.compound_head)": 8, "OFFSET(folio._flags_1)": 64,
        "NUMBER(__MAX_NR_ZONES)": 5, "CONFIG(NUMA)": "y", "CONFIG(NODES_SHIFT)": "10",
    })
    return f


def facts_7_2() -> Facts:
    """Debian 7.2.13: memdesc_flags_t, compound_info, PG_movable_ops, PGTY_large_kmalloc."""
    f = facts_6_12()
    del f["OFFSET(page.compound_head)"]
    f.update({
        # mm_types.h 7.2: memdesc_flags_t flags (f at 0); compound_info 8
        "OFFSET(page.flags.f)": 0, "OFFSET(page.compound_info)": 8,
        # enum pageflags 7.2 adds PG_dropbehind after unevictable: mlocked 20 hwpoison 21;
        # CONFIG_MIGRATION=y: PG_movable_ops = PG_uptodate (3)
        # young 22 idle 23 arch_2 24, __NR_PAGEFLAGS 25
        "NUMBER(PG_hwpoison)": 21, "NUMBER(PG_movable_ops)": 3, "NUMBER(PG_uptodate)": 3,
        "NUMBER(__NR_PAGEFLAGS)": 25,
        "NUMBER(PGTY_large_kmalloc)": 0xF8,
        # CONFIG_UNACCEPTED_MEMORY=y: vmcore_info.c exports PGTY_unaccepted << 24
        "NUMBER(PAGE_UNACCEPTED_MAPCOUNT_VALUE)": -0x09000000,
        # .config of linux-headers-7.2.13+deb14-amd64
        "CONFIG(HUGETLB_PAGE_OPTIMIZE_VMEMMAP)": "y",
        # mmzone.h 7.2 section enum with ZONE_DEVICE and SPARSEMEM_VMEMMAP_PREINIT
        "NUMBER(SECTION_MARKED_PRESENT_BIT)": 0, "NUMBER(SECTION_HAS_MEM_MAP_BIT)": 1,
        "NUMBER(SECTION_IS_ONLINE_BIT)": 2, "NUMBER(SECTION_IS_EARLY_BIT)": 3,
        "NUMBER(SECTION_TAINT_ZONE_DEVICE_BIT)": 4, "NUMBER(SECTION_IS_VMEMMAP_PREINIT_BIT)": 5,
        "NUMBER(SECTION_MAP_LAST_BIT)": 6,
    })
    return f


# ---------------------------------------------------------------------------------------------
# Page types per generation


def test_5_10_inverted_bits_from_vmcoreinfo_only() -> None:
    pt, facts = derive_page_types(facts_5_10())
    assert pt.scheme is PageTypeScheme.INVERTED_BITS
    assert pt.base == 0xF0000000
    assert pt.field_offset == 48
    buddy = pt.get("buddy")
    assert buddy is not None
    assert (buddy.mask, buddy.value) == (0xF0000080, 0xF0000000)
    # page_type of a free page is ~PG_buddy (__SetPageBuddy clears the bit of -1)
    assert buddy.matches(0xFFFFFF7F)
    assert not buddy.matches(0xFFFFFFFF)          # _mapcount -1: an unmapped page, no type
    assert not buddy.matches(0x00000002)          # mapped page
    assert pt.classify(0xFFFFFEFF) == "offline"
    assert pt.get("slab") is None                 # slab is a page flag in 5.10
    assert buddy.mapcount_value == -129
    # page_has_type(): (int)page_type < PAGE_MAPCOUNT_RESERVE (-128)
    assert pt.has_type(0xFFFFFF7F) and not pt.has_type(0xFFFFFF80)
    assert not pt.has_type(0xFFFFFFFF) and not pt.has_type(3)
    assert all(f.source == "derived" and "6e292b9be7f4" in f.origin for f in facts
               if f.key.startswith("page_type."))


def test_5_10_with_header_type_bits() -> None:
    f = facts_5_10()
    # page-flags.h 5.10 macros, as a headers source would report them
    f.update({"NUMBER(PG_kmemcg)": 0x200, "NUMBER(PG_table)": 0x400, "NUMBER(PG_guard)": 0x800})
    pt, _ = derive_page_types(f)
    assert set(pt.names()) == {"buddy", "offline", "kmemcg", "table", "guard"}
    table = pt.get("table")
    assert table is not None and table.matches(0xFFFFFBFF) and not table.matches(0xFFFFFF7F)


def test_5_10_header_base_with_slab_flag_number() -> None:
    # A headers source reports PAGE_TYPE_BASE and the type bits, while PG_slab (enum pageflags)
    # is a flag *number* in 5.10: it must be ignored as a type, not make the derivation fail.
    f = facts_5_10()
    f.update({"NUMBER(PAGE_TYPE_BASE)": 0xF0000000, "NUMBER(PG_buddy)": 0x80,
              "NUMBER(PG_offline)": 0x100, "NUMBER(PG_slab)": 9})
    pt, _ = derive_page_types(f)
    assert set(pt.names()) == {"buddy", "offline"}
    buddy = pt.get("buddy")
    assert buddy is not None and buddy.matches(0xFFFFFF7F)


def test_pre_4_18_exact_mapcount_value() -> None:
    # Before 6e292b9be7f4 PAGE_BUDDY_MAPCOUNT_VALUE was (-128), compared exactly.
    f = facts_5_10()
    f["NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)"] = -128
    del f["NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)"]
    pt, _ = derive_page_types(f)
    assert pt.scheme is PageTypeScheme.MAPCOUNT_VALUE
    buddy = pt.get("buddy")
    assert buddy is not None and buddy.matches(0xFFFFFF80) and not buddy.matches(0xFFFFFF7F)


def test_6_9_hugetlb_page_type_macros() -> None:
    # 6.9 (d99e3140a4d3): PG_hugetlb 0x800 page type, still macros; VMCOREINFO has ~PG_hugetlb.
    f = facts_6_1()
    f["NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)"] = ~0x800
    del f["NUMBER(HUGETLB_PAGE_DTOR)"]
    pt, _ = derive_page_types(f)
    assert pt.scheme is PageTypeScheme.INVERTED_BITS
    hugetlb = pt.get("hugetlb")
    assert hugetlb is not None and hugetlb.mask == 0xF0000800
    comp, _ = derive_compound(f, pt)
    assert comp.hugetlb is not None and comp.hugetlb.marker is HugetlbMarker.PAGE_TYPE
    assert comp.hugetlb.offset == 48


def test_6_10_enum_pagetype_low_bits() -> None:
    # ff202303c398 (6.10): enum pagetype {PG_buddy 0x80, offline 0x100, table 0x200,
    # guard 0x400, hugetlb 0x800, slab 0x1000, PAGE_TYPE_BASE 0xf0000000}
    f = facts_6_1()
    del f["NUMBER(PG_slab)"]
    f.update({"NUMBER(PAGE_TYPE_BASE)": 0xF0000000, "NUMBER(PG_buddy)": 0x80,
              "NUMBER(PG_offline)": 0x100, "NUMBER(PG_table)": 0x200, "NUMBER(PG_guard)": 0x400,
              "NUMBER(PG_hugetlb)": 0x800, "NUMBER(PG_slab)": 0x1000,
              "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)": ~0x1000,
              "NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)": ~0x800})
    pt, _ = derive_page_types(f)
    assert pt.scheme is PageTypeScheme.INVERTED_BITS
    assert set(pt.names()) == {"buddy", "offline", "table", "guard", "hugetlb", "slab"}
    slab, _ = derive_slab(f, pt)
    assert slab.marker is SlabMarker.PAGE_TYPE
    # NUMBER(PG_slab)=0x1000 is a type mask here, never a flag bit
    flags, _ = derive_page_flags(f)
    assert flags.bit("PG_slab") is None


def test_6_11_single_bit_base_and_owner_bits() -> None:
    # 8db00ad56461 (6.11): PAGE_TYPE_BASE 0x80000000, PG_buddy 0x40000000 ... PG_zsmalloc
    # 0x01000000; the low 16 bits may carry owner data.
    f = facts_6_1()
    del f["NUMBER(PG_slab)"]
    f.update({"NUMBER(PAGE_TYPE_BASE)": 0x80000000, "NUMBER(PG_buddy)": 0x40000000,
              "NUMBER(PG_offline)": 0x20000000, "NUMBER(PG_table)": 0x10000000,
              "NUMBER(PG_guard)": 0x08000000, "NUMBER(PG_hugetlb)": 0x04000000,
              "NUMBER(PG_slab)": 0x02000000, "NUMBER(PG_zsmalloc)": 0x01000000,
              "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)": ~0x40000000,
              "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)": ~0x20000000})
    pt, _ = derive_page_types(f)
    assert pt.scheme is PageTypeScheme.INVERTED_HIGH_BITS
    zs = pt.get("zsmalloc")
    assert zs is not None and zs.matches(0xFEFF1234)      # type cleared, owner bits in use
    buddy = pt.get("buddy")
    assert buddy is not None and buddy.matches(0xBFFFFFFF) and not buddy.matches(0xFFFFFFFF)
    # The same kernel known only through VMCOREINFO: the bit positions give the base away.
    g = facts_6_1()
    g.update({"NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)": ~0x40000000,
              "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)": ~0x20000000,
              "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)": ~0x02000000})
    pt2, _ = derive_page_types(g)
    assert pt2.scheme is PageTypeScheme.INVERTED_HIGH_BITS and pt2.base == 0x80000000
    assert pt2.get("buddy") == pt.get("buddy")


def test_6_12_top_byte_tags() -> None:
    pt, _ = derive_page_types(facts_6_12())
    assert pt.scheme is PageTypeScheme.TOP_BYTE_TAG
    assert set(pt.names()) == {"buddy", "offline", "table", "guard", "hugetlb", "slab",
                               "zsmalloc", "unaccepted"}
    buddy, slab = pt.get("buddy"), pt.get("slab")
    assert buddy is not None and slab is not None
    assert buddy.matches(0xF0000000) and buddy.matches(0xF0ABCDEF)   # low 24 bits free
    assert not buddy.matches(0xF5000000) and slab.matches(0xF5000000)
    assert pt.classify(0xFFFFFFFF) is None and pt.classify(0x00000003) is None
    assert slab.mapcount_value == -0x0B000000
    # page_has_type(): any tag 0x80..0xfe, not mapcounts (0x00.., -1 = 0xffffffff)
    assert pt.has_type(0xF5000000) and pt.has_type(0xF9000000)
    assert not pt.has_type(0xFFFFFFFF) and not pt.has_type(0x00000001)


def test_6_12_makedumpfile_176_formula_would_call_buddy_slab() -> None:
    """makedumpfile 1.7.6 derived PG_slab = ~PAGE_SLAB_MAPCOUNT_VALUE and tested
    (_mapcount & (0xf0000000 | PG_slab)) == 0xf0000000; on 6.12 that holds for buddy pages,
    so it took every free page for slab and kept it. Our rule does not."""
    f = facts_6_12()
    pg_slab_176 = ~f["NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)"] & 0xFFFFFFFF
    buddy_word = 0xF0000000
    assert (buddy_word & (0xF0000000 | pg_slab_176)) == 0xF0000000
    pt, _ = derive_page_types(f)
    assert pt.classify(buddy_word) == "buddy"


def test_vmcoreinfo_only_6_12_tags() -> None:
    f = facts_6_12()
    for k in [k for k in f if k.startswith("NUMBER(PGTY_")]:
        del f[k]
    pt, _ = derive_page_types(f)
    assert pt.scheme is PageTypeScheme.TOP_BYTE_TAG
    assert set(pt.names()) == {"buddy", "offline", "hugetlb", "slab"}
    assert pt.get("hugetlb") == derive_page_types(facts_6_12())[0].get("hugetlb")


def test_7_2_new_type_needs_no_code_change() -> None:
    pt, _ = derive_page_types(facts_7_2())
    lk = pt.get("large_kmalloc")
    assert lk is not None and lk.value == 0xF8000000
    u = pt.get("unaccepted")
    assert u is not None and u.mapcount_value == -0x09000000


# ---------------------------------------------------------------------------------------------
# Page-type errors


def test_no_page_type_facts_is_unsupported() -> None:
    f = facts_5_10()
    del f["NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)"], f["NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)"]
    with pytest.raises(UnsupportedError, match="PAGE_BUDDY_MAPCOUNT_VALUE"):
        derive_page_types(f)


def test_vmcoreinfo_contradicting_enum_is_unsupported() -> None:
    f = facts_6_12()
    f["NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)"] = ~0x80          # a 5.x value with 6.12's enum
    with pytest.raises(UnsupportedError, match="contradicts"):
        derive_page_types(f)


def test_mixed_vmcoreinfo_shapes_are_unsupported() -> None:
    f = facts_5_10()
    f["NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)"] = -0x0F000000
    with pytest.raises(UnsupportedError, match="mix encodings"):
        derive_page_types(f)


def test_inverted_bits_in_no_known_range_are_unsupported() -> None:
    f = facts_5_10()
    f["NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)"] = ~0x00100000    # bit 20: neither base fits
    del f["NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)"]
    with pytest.raises(UnsupportedError, match="neither"):
        derive_page_types(f)


def test_bad_pgty_tag_and_bad_base() -> None:
    f = facts_6_12()
    f["NUMBER(PGTY_buddy)"] = 0x10
    with pytest.raises(UnsupportedError, match="PGTY_buddy"):
        derive_page_types(f)
    g = facts_6_1()
    g.update({"NUMBER(PAGE_TYPE_BASE)": 0xC0000000, "NUMBER(PG_buddy)": 0x80})
    with pytest.raises(UnsupportedError, match="PAGE_TYPE_BASE"):
        derive_page_types(g)


def test_no_page_type_field_is_unsupported() -> None:
    f = facts_6_12()
    del f["OFFSET(page.page_type)"], f["OFFSET(page._mapcount)"]
    with pytest.raises(UnsupportedError, match="page_type"):
        derive_page_types(f)


# ---------------------------------------------------------------------------------------------
# Slab


def test_slab_flag_before_6_10_and_type_after() -> None:
    s, facts = derive_slab(facts_5_10())
    assert s.marker is SlabMarker.PAGE_FLAG and s.flag_bit == 9
    assert any(f.key == "slab.flag_bit" and f.value == 9 for f in facts)
    s2, _ = derive_slab(facts_6_12())
    assert s2.marker is SlabMarker.PAGE_TYPE
    assert s2.type_rule is not None and s2.type_rule.value == 0xF5000000


def test_slab_unknown_is_unsupported() -> None:
    f = facts_5_10()
    del f["NUMBER(PG_slab)"]
    with pytest.raises(UnsupportedError, match="PG_slab"):
        derive_slab(f)


# ---------------------------------------------------------------------------------------------
# Compound pages


def test_compound_5_10() -> None:
    c, _ = derive_compound(facts_5_10())
    assert (c.head_flag_bit, c.head_mask) == (16, 1 << 16)
    assert (c.tail_field, c.tail_offset, c.tail_encoding) == ("compound_head", 8,
                                                              TailEncoding.POINTER_PLUS_ONE)
    assert c.fake_heads_possible
    assert c.order_location is OrderLocation.PAGE1_COMPOUND_ORDER and c.order_offset == 64 + 17
    assert c.hugetlb is not None and c.hugetlb.marker is HugetlbMarker.COMPOUND_DTOR
    assert (c.hugetlb.offset, c.hugetlb.value) == (64 + 16, 2)
    head = 0xFFFFEA0000400000
    assert c.is_tail(head + 1) and c.head_address(head + 0x40, head + 1) == head
    assert c.head_address(head, 0) == head


def test_compound_6_1_prefers_folio_order() -> None:
    c, _ = derive_compound(facts_6_1())
    assert c.order_location is OrderLocation.FOLIO_ORDER and c.order_offset == 81
    assert c.hugetlb is not None and c.hugetlb.offset == 80   # folio._folio_dtor


def test_compound_6_6_hugetlb_folio_flag() -> None:
    # 9c5ccf2db04b / ebc1baf5c9b4 (6.6): no HUGETLB_PAGE_DTOR, no _folio_order; PG_hugetlb =
    # PG_active in enum pageflags (5 in the 6.1 numbering), order in _flags_1's low byte.
    f = facts_6_1()
    for k in ("NUMBER(HUGETLB_PAGE_DTOR)", "OFFSET(folio._folio_order)", "OFFSET(folio._folio_dtor)",
              "OFFSET(page.compound_order)", "OFFSET(page.compound_dtor)"):
        del f[k]
    f["NUMBER(PG_hugetlb)"] = 5
    c, _ = derive_compound(f)
    assert c.order_location is OrderLocation.FLAGS_1_LOW_BYTE and c.order_offset == 64
    assert c.hugetlb is not None and c.hugetlb.marker is HugetlbMarker.FOLIO_FLAG
    assert (c.hugetlb.offset, c.hugetlb.mask) == (64, 1 << 5)


def test_compound_6_12() -> None:
    c, _ = derive_compound(facts_6_12())
    assert c.order_location is OrderLocation.FLAGS_1_LOW_BYTE and c.head_flag_bit == 6
    assert c.hugetlb is not None and c.hugetlb.marker is HugetlbMarker.PAGE_TYPE
    assert c.hugetlb.value == 0xF4000000


def test_compound_7_2_mask_encoding() -> None:
    c, facts = derive_compound(facts_7_2())
    assert c.tail_field == "compound_info" and c.tail_encoding is TailEncoding.MASK
    assert not c.fake_heads_possible
    # set_compound_head() for an order-9 folio, sizeof(struct page) 64:
    # mask = GENMASK(63, 9 + 6) | 1
    info = ((1 << 64) - 1) ^ ((1 << 15) - 1) | 1
    head = 0xFFFFEA0004000000
    assert c.head_address(head + 17 * 64, info) == head
    assert any(f.key == "compound.tail_encoding" and "8c846c879e22" in f.origin for f in facts)


def test_compound_info_without_config_decides_per_value() -> None:
    f = facts_7_2()
    del f["CONFIG(HUGETLB_PAGE_OPTIMIZE_VMEMMAP)"]
    c, _ = derive_compound(f)
    assert c.tail_encoding is TailEncoding.POINTER_OR_MASK
    head = 0xFFFFEA0004000000
    info_mask = ((1 << 64) - 1) ^ ((1 << 15) - 1) | 1
    assert c.head_address(head + 5 * 64, info_mask) == head
    assert c.head_address(head + 5 * 64, head + 1) == head
    # config known off: pointer+1 only
    f["CONFIG(HUGETLB_PAGE_OPTIMIZE_VMEMMAP)"] = "n"
    c2, _ = derive_compound(f)
    assert c2.tail_encoding is TailEncoding.POINTER_PLUS_ONE


def test_compound_and_slab_without_page_type_facts() -> None:
    # A 5.10 kernel known only from BTF: page types are macros (absent), VMCOREINFO missing.
    f = facts_5_10()
    del f["NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)"], f["NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)"]
    c, _ = derive_compound(f)
    assert c.hugetlb is not None and c.hugetlb.marker is HugetlbMarker.COMPOUND_DTOR
    s, _ = derive_slab(f)
    assert s.marker is SlabMarker.PAGE_FLAG and s.flag_bit == 9
    with pytest.raises(UnsupportedError):
        derive_free_pages(f)


def test_compound_errors() -> None:
    f = facts_6_12()
    del f["NUMBER(PG_head)"], f["NUMBER(PG_head_mask)"]
    with pytest.raises(UnsupportedError, match="PG_head"):
        derive_compound(f)
    g = facts_6_12()
    del g["OFFSET(page.compound_head)"]
    with pytest.raises(UnsupportedError, match="compound_info"):
        derive_compound(g)
    h = facts_6_12()
    h["NUMBER(PG_head)"] = 7
    with pytest.raises(UnsupportedError, match="contradicts"):
        derive_compound(h)
    i = facts_6_1()
    i["OFFSET(folio._folio_order)"] = 90
    with pytest.raises(UnsupportedError, match="_folio_order"):
        derive_compound(i)
    j = facts_6_12()
    del j["OFFSET(folio._flags_1)"]
    with pytest.raises(UnsupportedError, match="order location"):
        derive_compound(j)


# ---------------------------------------------------------------------------------------------
# Page flags


def test_page_flags_5_10() -> None:
    mem, _ = derive_memory_model(facts_5_10())
    fl, _ = derive_page_flags(facts_5_10(), mem)
    assert fl.flags_field == "flags" and fl.flags_offset == 0 and fl.word_size == 8
    assert fl.bit("lru") == 4 and fl.bit("PG_slab") == 9 and fl.bit("head") == 16
    assert fl.aliases["PG_swapcache"] == ("PG_owner_priv_1",)
    assert fl.swapcache_requires_swapbacked
    # page-flags-layout.h with VMEMMAP (no section field), NODES_SHIFT 10, 5 zones (ZONES_SHIFT
    # 3), 25 flags: node at 64-10 = 54, zone at 54-3 = 51.
    assert fl.node is not None and (fl.node.shift, fl.node.width) == (54, 10)
    assert fl.zone is not None and (fl.zone.shift, fl.zone.width) == (51, 3)
    # node 1, zone 2 (ZONE_NORMAL) with PG_lru set
    word = (1 << 54) | (2 << 51) | (1 << 4)
    assert fl.node.extract(word) == 1 and fl.zone.extract(word) == 2


def test_page_flags_section_field_without_vmemmap() -> None:
    # SPARSEMEM_EXTREME without VMEMMAP: SECTIONS_WIDTH = MAX_PHYSMEM_BITS - SECTION_SIZE_BITS
    # = 46 - 27 = 19 at the very top, then the node (10) and zone (3) fields.
    f = facts_5_10()
    del f["SYMBOL(vmemmap_base)"]
    mem, _ = derive_memory_model(f)
    assert mem.vmemmap is None
    fl, _ = derive_page_flags(f, mem)
    assert fl.zone is None                     # VMEMMAP unknown: nothing derived
    mem2 = replace(mem, vmemmap=False)
    fl2, _ = derive_page_flags(f, mem2)
    assert fl2.section is not None and (fl2.section.shift, fl2.section.width) == (45, 19)
    assert fl2.node is not None and (fl2.node.shift, fl2.node.width) == (35, 10)
    assert fl2.zone is not None and (fl2.zone.shift, fl2.zone.width) == (32, 3)


def test_page_flags_7_2_memdesc() -> None:
    fl, facts = derive_page_flags(facts_7_2())
    assert fl.flags_field == "flags.f"
    assert any(f.key == "flags.field" and "53fbef56e07d" in f.origin for f in facts)
    assert fl.bit("anon_exclusive") == 11 and fl.aliases["PG_anon_exclusive"] == ("PG_owner_2",)
    assert fl.zone is None    # no memory model given: not derived


def test_page_flags_missing_required() -> None:
    f = facts_6_12()
    del f["NUMBER(PG_swapcache)"]
    with pytest.raises(UnsupportedError, match="PG_swapcache"):
        derive_page_flags(f)
    g = facts_6_12()
    del g["SIZE(list_head)"]
    with pytest.raises(UnsupportedError, match="list_head"):
        derive_page_flags(g)


# ---------------------------------------------------------------------------------------------
# Mapping bits


def test_mapping_bits_old_and_new() -> None:
    old, _ = derive_mapping_bits(facts_6_12())
    assert old.movable == 2 and old.names[1] == "PAGE_MAPPING_MOVABLE"
    anon_vma = 0xFFFF888012345600
    assert old.is_anon(anon_vma | 1) and not old.is_ksm(anon_vma | 1)
    assert old.is_ksm(anon_vma | 3) and old.is_movable(0xFFFF888000001002)
    assert old.address(anon_vma | 3) == anon_vma
    new, _ = derive_mapping_bits(facts_7_2())
    assert new.movable is None and new.movable_ops_flag_bit == 3
    assert new.names == ("FOLIO_MAPPING_ANON", "FOLIO_MAPPING_ANON_KSM")
    assert new.is_ksm(anon_vma | 3)
    assert not new.is_movable(0xFFFF888000001002, flags=0)
    assert new.is_movable(0, flags=1 << 3)


# ---------------------------------------------------------------------------------------------
# Memory model


def test_memory_model_extreme_4_level() -> None:
    m, facts = derive_memory_model(facts_6_12())
    assert m.model is MemoryModel.SPARSEMEM_EXTREME and m.vmemmap is True
    assert (m.sections_per_root, m.nr_section_roots, m.nr_mem_sections) == (128, 4096, 1 << 19)
    assert (m.pages_per_section, m.paging_levels) == (1 << 15, 4)
    assert m.section_flags is not None and not m.section_flags.map_last_bit_exact
    assert m.section_flags.map_mask == 0xFFFFFFFFFFFFFFC0
    assert any(f.key == "memory_model" for f in facts)


def test_memory_model_5_level_and_exact_section_bits() -> None:
    f = facts_7_2()
    del f["NUMBER(MAX_PHYSMEM_BITS)"]
    f["NUMBER(pgtable_l5_enabled)"] = 1
    f["LENGTH(mem_section)"] = (1 << (52 - 27)) // 128
    m, _ = derive_memory_model(f)
    assert m.max_physmem_bits == 52 and m.paging_levels == 5
    assert m.section_flags is not None and m.section_flags.map_last_bit_exact
    assert m.section_flags.vmemmap_preinit == 1 << 5


def test_memory_model_static_sparsemem_and_flatmem() -> None:
    f = facts_6_12()
    f["LENGTH(mem_section)"] = 1 << 19       # SECTIONS_PER_ROOT 1
    m, _ = derive_memory_model(f)
    assert m.model is MemoryModel.SPARSEMEM and m.sections_per_root == 1
    g = {"PAGESIZE": 4096, "SYMBOL(mem_map)": 0xFFFF888000000000}
    m2, _ = derive_memory_model(g)
    assert m2.model is MemoryModel.FLATMEM


def test_memory_model_errors() -> None:
    f = facts_6_12()
    f["LENGTH(mem_section)"] = 1000
    with pytest.raises(UnsupportedError, match="LENGTH"):
        derive_memory_model(f)
    g = facts_6_12()
    del g["SIZE(mem_section)"]
    with pytest.raises(UnsupportedError, match=r"SIZE\(mem_section\)"):
        derive_memory_model(g)
    with pytest.raises(UnsupportedError, match="mem_section"):
        derive_memory_model({"PAGESIZE": 4096})


# ---------------------------------------------------------------------------------------------
# Free pages and the whole


def test_free_pages() -> None:
    fr, _ = derive_free_pages(facts_6_12())
    assert (fr.order_offset, fr.nr_page_orders, fr.max_page_order) == (40, 11, 10)
    assert fr.valid_order(10) and not fr.valid_order(11)
    assert fr.buddy is not None and fr.unaccepted is not None
    g = facts_6_12()
    del g["LENGTH(zone.free_area)"]
    with pytest.raises(UnsupportedError, match="free_area"):
        derive_free_pages(g)


def test_derive_semantics_from_layout_object() -> None:
    layout = Layout([Resolution(k, Fact(k, v, "test")) for k, v in facts_7_2().items()])
    s = derive_semantics(layout)
    assert s.page_types.scheme is PageTypeScheme.TOP_BYTE_TAG
    assert s.compound.tail_encoding is TailEncoding.MASK
    assert s.flags.zone is not None
    keys = {f.key for f in s.facts}
    assert {"page_type_scheme", "compound.tail_encoding", "memory_model", "flags.field",
            "free.nr_page_orders", "mapping.movable"} <= keys
    assert all(f.source == "derived" and f.origin for f in s.facts)


@pytest.mark.parametrize("make", [facts_5_10, facts_6_1, facts_6_12, facts_7_2])
def test_every_generation_derives(make: Any) -> None:
    s = derive_semantics(make())
    assert s.page_types.get("buddy") is not None
    assert s.free.max_page_order == 10


# ---------------------------------------------------------------------------------------------
# Real fixtures: drgn + the -dbg DWARF as ground truth


def _fixtures() -> list[Any]:
    try:
        from tests.fixtures import load_fixtures
    except ImportError:
        try:
            from fixtures import load_fixtures  # type: ignore[import-not-found,no-redef]
        except ImportError:
            return []
    return [f for f in load_fixtures() if f.path("vmcore") and f.path("vmlinux_dbg")]


FIXTURES = _fixtures()


def _config_facts(fx: Any) -> Facts:
    """CONFIG(X) facts from the fixture kernel's own config file."""
    path = fx.path("config")
    out: Facts = {}
    if path is None:
        return out
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            k, _, v = line.partition("=")
            out[f"CONFIG({k[len('CONFIG_'):]})"] = v.strip('"')
    return out


def _drgn_facts(prog: Any) -> Facts:
    """Facts read independently of kdlayout: drgn's DWARF types and constants."""
    import drgn

    facts: Facts = {}

    def off(t: str, m: str) -> None:
        with contextlib.suppress(LookupError, ValueError, TypeError):
            facts[f"OFFSET({t}.{m})"] = drgn.offsetof(prog.type(f"struct {t}"), m)

    for m in ("flags", "flags.f", "_mapcount", "page_type", "mapping", "private", "lru",
              "compound_head", "compound_info", "compound_order", "compound_dtor"):
        off("page", m)
    for m in ("_flags_1", "_folio_order", "_folio_dtor"):
        off("folio", m)
    off("zone", "vmemmap_tails")
    facts["SIZE(page)"] = drgn.sizeof(prog.type("struct page"))
    facts["SIZE(list_head)"] = drgn.sizeof(prog.type("struct list_head"))
    facts["SIZE(mem_section)"] = drgn.sizeof(prog.type("struct mem_section"))
    facts["PAGESIZE"] = prog["PAGE_SIZE"].value_()
    for enum in ("enum pageflags", "enum pagetype", "enum compound_dtor_id", "enum zone_type"):
        try:
            t = prog.type(enum)
        except LookupError:
            continue
        for e in t.enumerators or ():
            facts[f"NUMBER({e.name})"] = e.value
    for name in ("SECTION_MAP_LAST_BIT", "SECTION_MARKED_PRESENT_BIT", "SECTION_HAS_MEM_MAP_BIT",
                 "SECTION_IS_ONLINE_BIT", "SECTION_IS_EARLY_BIT", "SECTION_TAINT_ZONE_DEVICE_BIT",
                 "SECTION_IS_VMEMMAP_PREINIT_BIT"):
        with contextlib.suppress(LookupError):
            facts[f"NUMBER({name})"] = prog.constant(name).value_()
    # VMCOREINFO numbers, as the crashed kernel itself exported them
    text = prog["VMCOREINFO"].string_().decode()
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.startswith(("NUMBER(", "LENGTH(", "SYMBOL(")) or key == "PAGESIZE":
            with contextlib.suppress(ValueError):
                facts.setdefault(key, int(value, 16 if key.startswith("SYMBOL(") else 10))
    facts["LENGTH(zone.free_area)"] = prog.type("struct zone").member("free_area").type.length
    return facts


def _ground_truth(prog: Any) -> tuple[dict[int, int], set[int], list[tuple[int, int, int, int]]]:
    """Free-list heads {pfn: order}, HugeTLB head pfns, and zone spans (nid, zone idx, start,
    end), all read with drgn from the kernel's own lists and zone descriptors."""
    from drgn.helpers.linux.list import list_for_each_entry
    from drgn.helpers.linux.mm import page_to_pfn
    from drgn.helpers.linux.mmzone import for_each_online_pgdat

    free_heads: dict[int, int] = {}
    spans: list[tuple[int, int, int, int]] = []
    for pgdat in for_each_online_pgdat(prog):
        nid = pgdat.node_id.value_()
        for zi in range(pgdat.nr_zones.value_()):
            zone = pgdat.node_zones[zi]
            start = zone.zone_start_pfn.value_()
            if zone.spanned_pages.value_():
                spans.append((nid, zi, start, start + zone.spanned_pages.value_()))
            for order, area in enumerate(zone.free_area):
                for fl in area.free_list:
                    for page in list_for_each_entry("struct page", fl.address_of_(), "lru"):
                        free_heads[page_to_pfn(page).value_()] = order
    huge: set[int] = set()
    try:
        from drgn.helpers.linux.hugetlb import for_each_hstate
        for h in for_each_hstate(prog):
            lists = [h.hugepage_activelist.address_of_()]
            lists += [fl.address_of_() for fl in h.hugepage_freelists]
            for head in lists:
                for page in list_for_each_entry("struct page", head, "lru"):
                    huge.add(page_to_pfn(page).value_())
    except LookupError:
        pass
    return free_heads, huge, spans


@pytest.mark.fixtures
@pytest.mark.skipif(not FIXTURES, reason="no fixture with vmcore and vmlinux_dbg: run "
                    "python tools/build_fixtures.py --dbg")
@pytest.mark.parametrize("fx", FIXTURES, ids=lambda f: f.name)
def test_classification_matches_drgn_on_real_vmcore(fx: Any) -> None:
    drgn = pytest.importorskip("drgn")
    from drgn.helpers.linux import mm as dmm
    from drgn.helpers.linux import mmzone as dmz

    prog = drgn.Program()
    prog.set_core_dump(str(fx.path("vmcore")))
    prog.load_debug_info([str(fx.path("vmlinux_dbg"))])
    facts = _drgn_facts(prog) | _config_facts(fx)
    s = derive_semantics(facts)
    psize = s.compound.page_size
    free_heads, huge, spans = _ground_truth(prog)
    assert free_heads, "no free pages found on the free lists"

    # Memory model: our section map mask decodes like drgn's section_mem_map_addr().
    assert s.memory.section_flags is not None
    for nsec, (_nr, sec) in enumerate(dmz.for_each_present_section(prog)):
        raw_map = sec.section_mem_map.value_()
        assert raw_map & s.memory.section_flags.map_mask == dmz.section_mem_map_addr(sec).value_()
        assert raw_map & s.memory.section_flags.marked_present
        if nsec > 64:
            break

    pfns = [pfn for start, end, _ in dmm.for_each_valid_page_range(prog)
            for pfn in range(start, end)]
    rng = random.Random(1234)
    sample = set(rng.sample(pfns, min(2000, len(pfns))))
    sample |= set(sorted(free_heads)[:500])
    for h in sorted(huge)[:100]:
        sample |= {h, h + 1, h + 3}
    counts = {"buddy": 0, "slab": 0, "tail": 0, "head": 0, "hugetlb": 0, "zone": 0}
    for pfn in sorted(sample):
        page = dmm.pfn_to_page(prog, pfn)
        raw = prog.read(page.value_(), psize)
        o = s.page_types.field_offset
        word = int.from_bytes(raw[o:o + 4], "little")
        flags = int.from_bytes(raw[s.flags.flags_offset:s.flags.flags_offset + 8], "little")
        info = int.from_bytes(raw[s.compound.tail_offset:s.compound.tail_offset + 8], "little")
        kind = s.page_types.classify(word)
        # slab (drgn's PageSlab looks at the page itself, as we do)
        if s.slab.marker is SlabMarker.PAGE_FLAG:
            assert s.slab.flag_bit is not None
            ours_slab = bool(flags >> s.slab.flag_bit & 1)
        else:
            ours_slab = kind == "slab"
        assert ours_slab == dmm.PageSlab(page), f"pfn {pfn:#x}: slab"
        counts["slab"] += ours_slab
        # buddy: exactly the free-list heads, with their order in page.private
        assert (kind == "buddy") == (pfn in free_heads), f"pfn {pfn:#x}: buddy, type {kind}"
        if pfn in free_heads:
            fo = s.free.order_offset
            assert int.from_bytes(raw[fo:fo + 8], "little") == free_heads[pfn]
            counts["buddy"] += 1
        # compound pages
        tail = dmm.PageTail(page)
        if not s.compound.fake_heads_possible:
            assert s.compound.is_tail(info) == tail, f"pfn {pfn:#x}: tail"
        if s.compound.is_tail(info):
            head = s.compound.head_address(page.value_(), info)
            assert head == dmm.compound_head(page).value_(), f"pfn {pfn:#x}: head"
            counts["tail"] += 1
        is_head = bool(flags & s.compound.head_mask)
        if dmm.PageHead(page):
            assert is_head
            counts["head"] += 1
            nxt = prog.read(page.value_(), 2 * psize)
            order = nxt[s.compound.order_offset] & s.compound.order_mask
            assert order == dmm.compound_order(page).value_(), f"pfn {pfn:#x}: order"
            ht = s.compound.hugetlb
            if ht is not None:
                w = int.from_bytes(nxt[ht.offset:ht.offset + ht.size], "little")
                assert ((w & ht.mask) == ht.value) == (pfn in huge), f"pfn {pfn:#x}: hugetlb"
                counts["hugetlb"] += pfn in huge
        elif not s.compound.fake_heads_possible:
            assert not is_head
        # zone / node fields against the zone spans
        if s.flags.zone is not None:
            owners = {(nid, zi) for nid, zi, lo, hi in spans if lo <= pfn < hi}
            if len(owners) == 1:
                nid, zi = owners.pop()
                assert s.flags.zone.extract(flags) == zi, f"pfn {pfn:#x}: zone"
                if s.flags.node is not None:
                    assert s.flags.node.extract(flags) == nid
                counts["zone"] += 1
    assert counts["buddy"] > 0 and counts["head"] > 0, counts
    if huge:
        assert counts["hugetlb"] > 0, counts


# Hand-written fact sets above, by the Debian kernel they were read from.
HAND_FACTS = {"5.10.0-": facts_5_10, "6.1.0-": facts_6_1, "6.12.": facts_6_12, "7.2.": facts_7_2}
def _btf_fixtures() -> list[Any]:
    try:
        from tests.fixtures import load_fixtures
    except ImportError:
        return []
    return [f for f in load_fixtures()
            if f.path("vmlinuz") and any(f.release.startswith(p) for p in HAND_FACTS)]


@pytest.mark.fixtures
@pytest.mark.skipif(not _btf_fixtures(), reason="no Debian fixture with a vmlinuz: run "
                    "python tools/build_fixtures.py")
@pytest.mark.parametrize("fx", _btf_fixtures(), ids=lambda f: f.name)
def test_hand_facts_agree_with_the_real_kernels_btf(fx: Any) -> None:
    """The header-derived fact sets of the unit tests equal what the real Debian kernel's BTF
    says, and both derive the same compound, slab and mapping rules."""
    from kdlayout import btf, vmlinuz
    from kdlayout.sources.base import type_facts
    from kdlayout.sources.btf_source import BtfTypeSource

    path = fx.path("vmlinuz")
    vml = vmlinuz.extract_vmlinux(path.read_bytes(), source=str(path))
    _, sec = vmlinuz.elf_section(vml, ".BTF", source=str(path))
    src = BtfTypeSource(btf.Btf.parse(sec, source=str(path)), str(path))
    got = {f.key: f.value for f in type_facts(src)} | _config_facts(fx)
    hand = next(mk for p, mk in HAND_FACTS.items() if fx.release.startswith(p))()
    common = [k for k in hand if k in got]
    assert len(common) >= 20
    assert {k: hand[k] for k in common} == {k: got[k] for k in common}
    assert derive_slab(got)[0] == derive_slab(hand)[0]
    assert derive_mapping_bits(got)[0] == derive_mapping_bits(hand)[0]
    assert derive_compound(got)[0] == derive_compound(hand)[0]


# ---------------------------------------------------------------------------------------------
# Real vmcores without DWARF: the kernel's own VMCOREINFO + its BTF give the facts; the kernel's
# free lists, the guest workload's report and kernel invariants give the ground truth; drgn only
# translates virtual addresses and reads memory.


def _vmcore_fixtures() -> list[Any]:
    try:
        from tests.fixtures import load_fixtures
    except ImportError:
        return []
    return [f for f in load_fixtures() if f.path("vmcore") and f.path("vmlinuz")]


def _vmcoreinfo_facts(text: str) -> Facts:
    facts: Facts = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        try:
            if key.startswith("SYMBOL("):
                facts[key] = int(value, 16)
            elif key.startswith(("NUMBER(", "OFFSET(", "SIZE(", "LENGTH(")) or key == "PAGESIZE":
                facts[key] = int(value, 0)
        except ValueError:
            continue
    return facts


def _btf_facts(fx: Any) -> Facts:
    from kdlayout import btf, vmlinuz
    from kdlayout.sources.base import type_facts
    from kdlayout.sources.btf_source import BtfTypeSource

    path = fx.path("vmlinuz")
    vml = vmlinuz.extract_vmlinux(path.read_bytes(), source=str(path))
    _, sec = vmlinuz.elf_section(vml, ".BTF", source=str(path))
    src = BtfTypeSource(btf.Btf.parse(sec, source=str(path)), str(path))
    return {f.key: f.value for f in type_facts(src)}


@pytest.mark.fixtures
@pytest.mark.skipif(not _vmcore_fixtures(), reason="no fixture with vmcore and vmlinuz: run "
                    "python tools/build_fixtures.py")
@pytest.mark.parametrize("fx", _vmcore_fixtures(), ids=lambda f: f.name)
def test_full_scan_of_real_vmcore_matches_kernel_state(fx: Any) -> None:
    np = pytest.importorskip("numpy")
    drgn = pytest.importorskip("drgn")

    prog = drgn.Program()
    prog.set_core_dump(str(fx.path("vmcore")))
    vmci = _vmcoreinfo_facts(prog["VMCOREINFO"].string_().decode())
    btf_f = _btf_facts(fx)
    # Two independent sources of the same facts must agree where both answer.
    common = [k for k in vmci if k in btf_f and k.startswith(("OFFSET(", "SIZE("))]
    assert len(common) > 10
    assert {k: vmci[k] for k in common} == {k: btf_f[k] for k in common}
    facts = btf_f | _config_facts(fx) | vmci
    s = derive_semantics(facts)
    u64 = "<u8"

    def rd(addr: int, size: int) -> bytes:
        return bytes(prog.read(addr, size))

    def word(addr: int) -> int:
        return int.from_bytes(rd(addr, 8), "little")

    # --- ground truth 1: the zones' free lists (VMCOREINFO offsets) and zone spans
    psz = s.compound.page_size
    lru = vmci["OFFSET(page.lru)"]
    spans: list[tuple[int, int, int, int]] = []
    free_heads: dict[int, int] = {}
    free_addrs: dict[int, int] = {}
    for nid in range(vmci.get("LENGTH(node_data)", 1)):
        pgdat = word(vmci["SYMBOL(node_data)"] + 8 * nid)
        if not pgdat:
            continue
        node_id = int.from_bytes(rd(pgdat + vmci["OFFSET(pglist_data.node_id)"], 4), "little")
        nr_zones = int.from_bytes(rd(pgdat + vmci["OFFSET(pglist_data.nr_zones)"], 4), "little")
        for zi in range(nr_zones):
            zone = pgdat + vmci["OFFSET(pglist_data.node_zones)"] + zi * vmci["SIZE(zone)"]
            start = word(zone + btf_f["OFFSET(zone.zone_start_pfn)"])
            spanned = word(zone + vmci["OFFSET(zone.spanned_pages)"])
            if spanned:
                spans.append((node_id, zi, start, start + spanned))
            for order in range(vmci["LENGTH(zone.free_area)"]):
                area = zone + vmci["OFFSET(zone.free_area)"] + order * vmci["SIZE(free_area)"]
                for mt in range(vmci["LENGTH(free_area.free_list)"]):
                    head = area + vmci["OFFSET(free_area.free_list)"] + mt * 16
                    entry = word(head)
                    n = 0
                    while entry != head:
                        free_addrs[entry - lru] = order
                        entry = word(entry)
                        n += 1
                        assert n < 1 << 22, "free list does not terminate"
    assert free_addrs

    # --- the memory map, decoded with our section rules
    mm = s.memory
    assert mm.section_flags is not None and mm.sections_per_root and mm.pages_per_section
    roots = vmci["SYMBOL(mem_section)"]
    mem_maps: dict[int, int] = {}    # section nr -> address of the struct page of its first pfn
    for r in range(mm.nr_section_roots or 0):
        root = (word(roots + 8 * r) if mm.model is MemoryModel.SPARSEMEM_EXTREME
                else roots + r * (mm.mem_section_size or 0))
        if not root:
            continue
        for i in range(mm.sections_per_root):
            enc = word(root + i * (mm.mem_section_size or 0))
            if enc & mm.section_flags.has_mem_map:
                nr = r * mm.sections_per_root + i
                base = enc & mm.section_flags.map_mask
                mem_maps[nr] = base + nr * mm.pages_per_section * psz
        if len(mem_maps) and r > max(mem_maps) // mm.sections_per_root + 1:
            break
    assert mem_maps
    if "SYMBOL(vmemmap)" in vmci:     # 6.12+ exports it: our decode must land on it
        assert all((a - nr * mm.pages_per_section * psz) == vmci["SYMBOL(vmemmap)"]
                   for nr, a in mem_maps.items())
    page0 = next(iter(mem_maps.values())) - next(iter(mem_maps)) * mm.pages_per_section * psz
    free_heads = {(a - page0) // psz: o for a, o in free_addrs.items()}

    # --- full scan with numpy, using only the derived rules
    rows = []
    for nr in sorted(mem_maps):
        raw = rd(mem_maps[nr], mm.pages_per_section * psz)
        rows.append((nr * mm.pages_per_section,
                     np.frombuffer(raw, dtype=np.uint8).reshape(-1, psz)))
    pfn = np.concatenate([np.arange(p0, p0 + len(a), dtype=np.int64) for p0, a in rows])
    pages = np.concatenate([a for _, a in rows])

    def field(off: int, size: int) -> Any:
        dt = {1: "u1", 4: "<u4", 8: u64}[size]
        return pages[:, off:off + size].copy().view(dt).reshape(-1).astype(np.uint64)

    pt = s.page_types
    ptw = field(pt.field_offset, 4)
    flags = field(s.flags.flags_offset, 8)
    info = field(s.compound.tail_offset, 8)
    mapping = field(vmci["OFFSET(page.mapping)"], 8)
    private = field(s.free.order_offset, 8)

    def is_type(name: str) -> Any:
        r = pt.get(name)
        assert r is not None
        return (ptw & np.uint64(r.mask)) == np.uint64(r.value)

    buddy = is_type("buddy")
    # page_has_type(): every page with a known type has a type; mapped user pages have none
    known = np.zeros(len(pfn), dtype=bool)
    for r in pt.rules:
        known |= (ptw & np.uint64(r.mask)) == np.uint64(r.value)
    signed = ptw.astype(np.int64) - ((ptw >> np.uint64(31)).astype(np.int64) << 32)
    typed = (signed < pt.has_type_below) if pt.has_type_below is not None else known
    assert not (known & ~typed).any()
    got = {int(p): int(o) for p, o in zip(pfn[buddy], private[buddy], strict=True)}
    assert got == free_heads, "buddy pages are not exactly the free-list heads with their order"

    head = (flags & np.uint64(s.compound.head_mask)) != 0
    tail = (info & np.uint64(1)) != 0
    order = np.zeros(len(pfn), dtype=np.uint64)
    idx = np.nonzero(head[:-1])[0]
    order[idx] = pages[idx + 1, s.compound.order_offset - psz].astype(np.uint64)
    # kernel invariant: a head's order is aligned and every tail points into its head's range
    pos = {int(p): i for i, p in enumerate(pfn)}
    for i in np.nonzero(tail)[0][:: max(1, int(tail.sum()) // 3000)]:
        h_addr = s.compound.head_address(page0 + int(pfn[i]) * psz, int(info[i]))
        h_pfn = (h_addr - page0) // psz
        j = pos[h_pfn]
        assert head[j] and h_pfn <= pfn[i] < h_pfn + (1 << int(order[j])), f"tail pfn {pfn[i]}"

    wl = fx.workload
    # hugetlb: exactly the pool's pages are hugetlb folios, all of order 9 (2 MiB)
    ht = s.compound.hugetlb
    assert ht is not None
    if ht.offset < psz:
        hw = field(ht.offset, ht.size)
    else:
        hw = np.zeros(len(pfn), dtype=np.uint64)
        hw[idx] = pages[idx + 1, ht.offset - psz:ht.offset - psz + ht.size].copy().view(
            {1: "u1", 4: "<u4", 8: u64}[ht.size]).reshape(-1).astype(np.uint64)
    huge = head & ((hw & np.uint64(ht.mask)) == np.uint64(ht.value))
    nr_huge = (wl.get("hugetlb_pool") or {}).get("nr_hugepages")
    if nr_huge:
        assert int(huge.sum()) == nr_huge
        assert set(order[huge].tolist()) == {9}
    for p in (wl.get("hugetlb") or {}).get("pfns", []):
        assert huge[pos[p]], f"workload hugetlb pfn {p} not a hugetlb head"
    thp_heads = [p for p in (wl.get("thp") or {}).get("pfns", []) if head[pos[p]]]
    for p in thp_heads:      # a THP head: order 9 and anonymous (a split one is no head)
        assert order[pos[p]] == 9 and mapping[pos[p]] & np.uint64(1), f"THP pfn {p}"
    if (wl.get("thp") or {}).get("anon_huge_kb"):
        assert thp_heads

    # slab: pages in slab folios add up to the Slab: line the guest saw (within 25 %)
    if s.slab.marker is SlabMarker.PAGE_FLAG:
        assert s.slab.flag_bit is not None
        slab_head = (flags >> np.uint64(s.slab.flag_bit)) & np.uint64(1) == np.uint64(1)
        slab_head &= ~tail
    else:
        slab_head = is_type("slab")
    slab_pages = int((np.uint64(1) << np.where(head, order, np.uint64(0)))[slab_head].sum())
    slab_kb = (wl.get("meminfo") or {}).get("Slab_kb")
    if slab_kb:
        assert 0.6 * slab_kb / 4 <= slab_pages <= 1.5 * slab_kb / 4, (slab_pages, slab_kb)

    # folio->mapping (of the head: a large folio's tails do not carry it): anon, KSM and
    # page-cache pages the workload saw
    def folio_mapping(p: int) -> int:
        i = pos[p]
        if tail[i]:
            h = s.compound.head_address(page0 + p * psz, int(info[i]))
            i = pos[(h - page0) // psz]
        return int(mapping[i])

    # Pages the workload saw may have been reclaimed since (e.g. handed to the balloon): only
    # pages that are not free or offline now count, and most of them must still be what they were.
    mb = s.mapping
    offline = is_type("offline")
    reused = buddy | offline
    anon = [mb.is_anon(folio_mapping(p)) and not typed[pos[p]]
            for p in (wl.get("anon") or {}).get("pfns", []) if not reused[pos[p]]]
    assert sum(anon) * 2 > len(anon) or not anon, anon
    ksm = [mb.is_ksm(folio_mapping(p)) for p in (wl.get("ksm") or {}).get("pfns", [])]
    if ksm:
        assert any(ksm)
    cache = [folio_mapping(p) for p in (wl.get("pagecache") or {}).get("pfns", [])
             if not reused[pos[p]]]
    assert sum(1 for m in cache if m and not mb.is_anon(m)) * 2 > len(cache) or not cache
    # virtio-balloon marks every page it holds PageOffline: their number is the balloon size
    inflated = (wl.get("balloon") or {}).get("inflated_bytes")
    if inflated:
        assert int(offline.sum()) == inflated // mm.page_size
    # hwpoison: the poisoned pfns carry PG_hwpoison
    hwp = s.flags.bit("hwpoison")
    for item in wl.get("hwpoison") or []:
        for p in item.get("pfns", []):
            assert hwp is not None and int(flags[pos[p]]) >> hwp & 1, f"pfn {p} not hwpoison"

    # zone and node fields of flags against the zone spans
    if s.flags.zone is not None:
        rng = random.Random(7)
        for i in rng.sample(range(len(pfn)), 3000):
            owners = {(n, z) for n, z, lo, hi in spans if lo <= pfn[i] < hi}
            if len(owners) == 1 and int(flags[i]) >> 8:
                n, z = owners.pop()
                assert s.flags.zone.extract(int(flags[i])) == z
                if s.flags.node is not None:
                    assert s.flags.node.extract(int(flags[i])) == n
