"""What the resolver asks every source for.

Type-information sources (BTF, DWARF, headers, the layout database) answer ``TYPE_QUERIES`` and
``ENUM_QUERIES``; symbol sources (VMCOREINFO, kallsyms) answer ``SYMBOL_QUERIES``. A source answers
what it can; a member that does not exist in a kernel (``page.compound_info`` before 7.1) is simply
absent, and the absence is itself how later stages feature-detect.

Member paths descend through anonymous structs and unions transparently and through named
members with dots, exactly like ``OFFSET(type.path)`` keys in :mod:`kdlayout.layout`.
"""

from __future__ import annotations

from typing import NamedTuple


class TypeQuery(NamedTuple):
    """``struct``/``union``/``typedef`` name and the member paths wanted from it."""

    type_name: str
    members: tuple[str, ...]
    # Members that are arrays: their element count is wanted too (LENGTH(type.member)).
    arrays: tuple[str, ...] = ()


TYPE_QUERIES: tuple[TypeQuery, ...] = (
    TypeQuery("page", (
        "flags", "flags.f", "_refcount", "_mapcount", "page_type", "mapping", "private", "index",
        "lru", "buddy_list", "pcp_list", "compound_head", "compound_info",
        # 5.x: order and destructor of a compound page live in the first tail page.
        "compound_order", "compound_dtor", "compound_mapcount",
    )),
    TypeQuery("folio", (
        "flags", "page", "lru", "mapping", "_flags_1", "_head_1", "_folio_order", "_folio_dtor",
        "_folio_nr_pages", "_nr_pages", "_large_mapcount", "_entire_mapcount",
    )),
    TypeQuery("memdesc_flags_t", ("f",)),
    TypeQuery("mem_section", ("section_mem_map", "usage", "pageblock_flags")),
    TypeQuery("pglist_data", ("node_zones", "nr_zones", "node_start_pfn", "node_present_pages",
                              "node_spanned_pages", "node_id", "node_mem_map"),
              arrays=("node_zones",)),
    TypeQuery("zone", ("free_area", "zone_start_pfn", "spanned_pages", "present_pages", "name",
                       "zone_pgdat", "vmemmap_tails"), arrays=("free_area",)),
    TypeQuery("free_area", ("free_list", "nr_free"), arrays=("free_list",)),
    TypeQuery("list_head", ("next", "prev")),
    TypeQuery("uts_namespace", ("name",)),
    TypeQuery("new_utsname", ("sysname", "release", "version", "machine")),
    TypeQuery("printk_ringbuffer", ("desc_ring", "text_data_ring", "fail")),
    TypeQuery("prb_desc_ring", ("count_bits", "descs", "infos", "head_id", "tail_id")),
    TypeQuery("prb_desc", ("state_var", "text_blk_lpos")),
    TypeQuery("prb_data_blk_lpos", ("begin", "next")),
    TypeQuery("prb_data_ring", ("size_bits", "data", "head_lpos", "tail_lpos")),
    TypeQuery("printk_info", ("seq", "ts_nsec", "text_len", "caller_id", "dev_info",
                              "facility", "flags", "level")),
    # 3.5-5.9 log_buf records (kdlayout.printk); level/facility are not in VMCOREINFO.
    TypeQuery("printk_log", ("ts_nsec", "len", "text_len", "dict_len", "facility", "flags",
                             "level", "caller_id")),
    TypeQuery("atomic_long_t", ("counter",)),
)

# Enumerations whose every enumerator is wanted, as NUMBER(enumerator).
ENUM_QUERIES: tuple[str, ...] = (
    "pageflags",          # PG_*: bits move with config and with removals
    "pagetype",           # PGTY_* (6.12+): page type in the top byte of page_type
    "compound_dtor_id",   # HUGETLB_PAGE_DTOR (5.x-6.x, before PG_hugetlb)
    "zone_type",
    "migratetype",
)

# Enumerators of enums that have no name (so ENUM_QUERIES cannot reach them), as NUMBER(name).
ENUMERATOR_QUERIES: tuple[str, ...] = (
    # include/linux/mmzone.h: the section_mem_map flag bits.
    "SECTION_MARKED_PRESENT_BIT", "SECTION_HAS_MEM_MAP_BIT", "SECTION_IS_ONLINE_BIT",
    "SECTION_IS_EARLY_BIT", "SECTION_TAINT_ZONE_DEVICE_BIT", "SECTION_IS_VMEMMAP_PREINIT_BIT",
    "SECTION_MAP_LAST_BIT",
)

# Kernel symbols the later stages need.
SYMBOL_QUERIES: tuple[str, ...] = (
    "_stext", "_text", "mem_section", "mem_map", "vmemmap_base", "page_offset_base",
    "vmalloc_base", "phys_base", "init_top_pgt", "node_data", "contig_page_data", "max_pfn",
    "init_uts_ns", "prb", "printk_rb_static", "__start_BTF", "__stop_BTF",
    "pgtable_l5_enabled", "__pgtable_l5_enabled", "system_state",
)


def type_fact_keys() -> list[str]:
    """Every ``SIZE``/``OFFSET``/``LENGTH`` key the type queries can produce."""
    keys: list[str] = []
    for q in TYPE_QUERIES:
        keys.append(f"SIZE({q.type_name})")
        keys.extend(f"OFFSET({q.type_name}.{m})" for m in q.members)
        keys.extend(f"LENGTH({q.type_name}.{m})" for m in q.arrays)
    return keys
