"""DWARF as a layout source: type sizes, member offsets and enumerators from a vmlinux.

A Debian ``vmlinux`` from a ``-dbg`` package carries 170-250 MB of ``.debug_info`` in 2,500+
compile units (CUs). Decoding all of it in Python takes minutes, so this source never does:

1. The unit headers are walked (a jump from one ``unit_length`` to the next) and, for each unit,
   only its top DIE is decoded, for ``DW_AT_name`` (the source file, e.g. ``mm/page_alloc.c``).
2. The catalogue's types live in a handful of known files (``PRIORITY_CUS``): the CU of
   ``mm/page_alloc.c`` defines ``struct page``, ``zone``, ``pglist_data``, ``enum pageflags``, ...
   Those CUs are indexed lazily, one at a time, only while a question is still unanswered:
   indexing reads the top-level DIEs of the unit (children are skipped with ``DW_AT_sibling``).
3. A name still missing after that is looked up by its string: it must occur in ``.debug_str``
   (``DW_FORM_strp``/``strx``) or inline in ``.debug_info`` (``DW_FORM_string``). If it occurs
   nowhere the type provably does not exist; otherwise the units holding the string offset (or
   the inline string) are found with a byte search and indexed, within a bounded budget.

Only the DIEs of the requested types and their member types are decoded fully. DWARF 2-5 forms
are understood (``DW_FORM_strx*``, ``line_strp``, ``implicit_const``, ``data16``, ...), as are
``SHF_COMPRESSED`` (zlib; zstd when :mod:`zstandard` is installed) and legacy ``.zdebug_*``
sections. Truncated or malformed input raises :class:`~kdlayout.errors.CorruptError` naming the
file and the byte offset.

When :mod:`drgn` is importable, :class:`DrgnTypeSource` answers the same questions through
drgn's own indexer; it is a fast alternative and an independent cross-check, not a dependency.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import cachetools

from ..cpath import parse_member_path
from ..errors import CorruptError, KdlayoutError, MissingDataError, UnsupportedError
from ..vmlinuz import elf_sections
from .base import MemberLocation

Buffer = bytes | bytearray | memoryview | mmap.mmap

# ---- DWARF constants (DWARF 5 standard, section 7) --------------------------------------------

TAG_ARRAY = 0x01
TAG_ENUMERATION = 0x04
TAG_MEMBER = 0x0D
TAG_POINTER = 0x0F
TAG_COMPILE_UNIT = 0x11
TAG_STRUCTURE = 0x13
TAG_SUBROUTINE_TYPE = 0x15
TAG_TYPEDEF = 0x16
TAG_UNION = 0x17
TAG_SUBRANGE = 0x21
TAG_BASE_TYPE = 0x24
TAG_CONST = 0x26
TAG_ENUMERATOR = 0x28
TAG_VARIABLE = 0x34
TAG_VOLATILE = 0x35
TAG_RESTRICT = 0x37
TAG_PARTIAL_UNIT = 0x3C
TAG_ATOMIC = 0x47
TAG_REFERENCE = 0x10
TAG_RVALUE_REFERENCE = 0x42

AT_SIBLING = 0x01
AT_LOCATION = 0x02
AT_NAME = 0x03
AT_BYTE_SIZE = 0x0B
AT_BIT_OFFSET = 0x0C
AT_BIT_SIZE = 0x0D
AT_CONST_VALUE = 0x1C
AT_UPPER_BOUND = 0x2F
AT_LOWER_BOUND = 0x22
AT_COUNT = 0x37
AT_DATA_MEMBER_LOCATION = 0x38
AT_DECLARATION = 0x3C
AT_ENCODING = 0x3E
AT_SPECIFICATION = 0x47
AT_TYPE = 0x49
AT_DATA_BIT_OFFSET = 0x6B
AT_STR_OFFSETS_BASE = 0x72
AT_ADDR_BASE = 0x73

FORM_ADDR = 0x01
FORM_BLOCK2 = 0x03
FORM_BLOCK4 = 0x04
FORM_DATA2 = 0x05
FORM_DATA4 = 0x06
FORM_DATA8 = 0x07
FORM_STRING = 0x08
FORM_BLOCK = 0x09
FORM_BLOCK1 = 0x0A
FORM_DATA1 = 0x0B
FORM_FLAG = 0x0C
FORM_SDATA = 0x0D
FORM_STRP = 0x0E
FORM_UDATA = 0x0F
FORM_REF_ADDR = 0x10
FORM_REF1 = 0x11
FORM_REF2 = 0x12
FORM_REF4 = 0x13
FORM_REF8 = 0x14
FORM_REF_UDATA = 0x15
FORM_INDIRECT = 0x16
FORM_SEC_OFFSET = 0x17
FORM_EXPRLOC = 0x18
FORM_FLAG_PRESENT = 0x19
FORM_STRX = 0x1A
FORM_ADDRX = 0x1B
FORM_REF_SUP4 = 0x1C
FORM_STRP_SUP = 0x1D
FORM_DATA16 = 0x1E
FORM_LINE_STRP = 0x1F
FORM_REF_SIG8 = 0x20
FORM_IMPLICIT_CONST = 0x21
FORM_LOCLISTX = 0x22
FORM_RNGLISTX = 0x23
FORM_REF_SUP8 = 0x24
FORM_STRX1 = 0x25
FORM_STRX2 = 0x26
FORM_STRX3 = 0x27
FORM_STRX4 = 0x28
FORM_ADDRX1 = 0x29
FORM_ADDRX2 = 0x2A
FORM_ADDRX3 = 0x2B
FORM_ADDRX4 = 0x2C
FORM_GNU_ADDR_INDEX = 0x1F01
FORM_GNU_STR_INDEX = 0x1F02
FORM_GNU_REF_ALT = 0x1F20
FORM_GNU_STRP_ALT = 0x1F21

ATE_SIGNED = 0x05
ATE_SIGNED_CHAR = 0x06

OP_ADDR = 0x03
OP_ADDRX = 0xA1
OP_GNU_ADDR_INDEX = 0xFB
OP_CONSTU = 0x10
OP_PLUS_UCONST = 0x23

UT_COMPILE = 0x01
UT_TYPE = 0x02
UT_PARTIAL = 0x03
UT_SKELETON = 0x04
UT_SPLIT_COMPILE = 0x05
UT_SPLIT_TYPE = 0x06

_REF_FORMS = frozenset({FORM_REF1, FORM_REF2, FORM_REF4, FORM_REF8, FORM_REF_UDATA})
_STRX_FORMS = frozenset({FORM_STRX, FORM_STRX1, FORM_STRX2, FORM_STRX3, FORM_STRX4,
                         FORM_GNU_STR_INDEX})
_ULEB_FORMS = frozenset({FORM_UDATA, FORM_REF_UDATA, FORM_STRX, FORM_ADDRX, FORM_LOCLISTX,
                         FORM_RNGLISTX, FORM_GNU_ADDR_INDEX, FORM_GNU_STR_INDEX})
_BLOCK_FORMS = frozenset({FORM_BLOCK, FORM_BLOCK1, FORM_BLOCK2, FORM_BLOCK4, FORM_EXPRLOC})
_COMPOSITE_TAGS = (TAG_STRUCTURE, TAG_UNION)
_QUALIFIER_TAGS = frozenset({TAG_CONST, TAG_VOLATILE, TAG_RESTRICT, TAG_ATOMIC})
# Tags whose top-level DIEs are worth indexing by name.
_INDEXED_TAGS = frozenset({TAG_STRUCTURE, TAG_UNION, TAG_TYPEDEF, TAG_ENUMERATION, TAG_VARIABLE,
                           TAG_BASE_TYPE})

#: Source files whose CU defines most of the catalogue's types, tried in this order. Matching is
#: on the path suffix, so ``/build/linux-6.1/mm/page_alloc.c`` matches too.
PRIORITY_CUS: tuple[str, ...] = (
    "mm/page_alloc.c",                      # page, folio, zone, free_area, pglist_data, enums
    "kernel/printk/printk_ringbuffer.c",    # printk_ringbuffer, prb_desc_ring, prb_desc, ...
    "init/version.c",                       # uts_namespace, new_utsname
    "mm/sparse.c",                          # mem_section
    "mm/mm_init.c",                         # pglist_data, zone (6.4+)
    "kernel/printk/printk.c",               # printk_info, printk_ringbuffer (older layouts)
    "mm/hugetlb.c",                         # compound_dtor_id
    "mm/compaction.c",                      # migratetype
    "kernel/vmcore_info.c",                 # VMCOREINFO writers (6.9+)
    "kernel/crash_core.c",                  # VMCOREINFO writers (before 6.9)
)

#: Bounds for the string-search fallback: units decoded and seconds spent per missing name.
FALLBACK_MAX_UNITS = 256
FALLBACK_MAX_SECONDS = 30.0
#: ... and for all names of one source together: past this, missing names are not searched.
FALLBACK_TOTAL_SECONDS = 120.0
# Bytes of each unit's top DIE searched for its DW_AT_name.
_HEAD_BYTES = 256
# Type chains longer than this are treated as corrupt (cycles in malformed input).
_MAX_CHAIN = 64


class VariableInfo(NamedTuple):
    """A global variable: its link-time address (``DW_OP_addr``), type size and type DIE."""

    name: str
    address: int | None
    byte_size: int | None
    die_offset: int


class UnitInfo(NamedTuple):
    """One unit header of ``.debug_info`` and its top DIE's name."""

    offset: int                 # of the unit header, in .debug_info
    end: int                    # first byte after the unit
    version: int
    unit_type: int
    address_size: int
    offset_size: int
    abbrev_offset: int
    die_offset: int             # of the top DIE


@dataclass(frozen=True)
class _Abbrev:
    code: int
    tag: int
    has_children: bool
    specs: tuple[tuple[int, int, int], ...]   # (attribute, form, implicit_const)


class _AbbrevTable:
    """One abbreviation table, decoded lazily: entries are parsed only up to the code asked for
    (a unit's top DIE nearly always uses the first entry, so naming a unit stays cheap)."""

    def __init__(self, data: Buffer, offset: int) -> None:
        self._data = data
        self._offset = offset
        self._chunk = b""
        self._pos = offset          # section offset of the next undecoded entry
        self._done = False
        self.entries: dict[int, _Abbrev] = {}

    def get(self, code: int) -> _Abbrev | None:
        ab = self.entries.get(code)
        while ab is None and not self._done:
            self._parse_next()
            ab = self.entries.get(code)
        return ab

    def _parse_next(self) -> None:
        data = self._data
        base = self._offset
        while True:
            chunk = self._chunk
            try:
                code, q = _uleb(chunk, self._pos - base)
                if code == 0:
                    self._done = True
                    return
                tag, q = _uleb(chunk, q)
                children = chunk[q]
                q += 1
                specs: list[tuple[int, int, int]] = []
                while True:
                    attr, q = _uleb(chunk, q)
                    form, q = _uleb(chunk, q)
                    implicit = 0
                    if form == FORM_IMPLICIT_CONST:
                        implicit, q = _sleb(chunk, q)
                    if attr == 0 and form == 0:
                        break
                    specs.append((attr, form, implicit))
            except IndexError:
                if base + len(chunk) >= len(data):
                    raise _Corrupt("abbreviation table runs past the end of .debug_abbrev",
                                   ".debug_abbrev", self._pos) from None
                self._chunk = bytes(data[base:base + max(4096, 2 * len(chunk))])
                continue
            self.entries[code] = _Abbrev(code, tag, bool(children), tuple(specs))
            self._pos = base + q
            return


@dataclass
class _Die:
    offset: int                 # section offset
    tag: int
    has_children: bool
    attrs: dict[int, tuple[int, Any]]
    end: int                    # section offset of the first child / next DIE
    unit: _Unit


@dataclass
class _Unit:
    info: UnitInfo
    data: bytes                 # the unit's bytes, copied (index 0 = info.offset)
    abbrevs: _AbbrevTable
    fixed: dict[int, int]       # fixed-size forms -> byte size, for this unit's header
    name: str | None = None
    str_offsets_base: int | None = None
    # name -> [(tag, die offset, is declaration)], for top-level DIEs; None until indexed.
    index: dict[str, list[tuple[int, int, bool]]] | None = None


@dataclass
class DwarfStats:
    """Counters describing how much of the DWARF one source actually read."""

    units_total: int = 0
    units_named: int = 0
    units_indexed: list[str] = field(default_factory=list)
    dies_decoded: int = 0
    fallback_searches: int = 0
    names_hits: int = 0         # definitions found through .debug_names
    fallback_seconds: float = 0.0


# ---- ELF section table (just enough to find the debug sections) ------------------------------

class ElfSection(NamedTuple):
    """One ELF64 section header."""

    name: str
    type: int
    flags: int
    offset: int
    size: int


SHT_NOBITS = 8
ET_REL = 1
SHF_COMPRESSED = 0x800
ELFCOMPRESS_ZLIB = 1
ELFCOMPRESS_ZSTD = 2


def read_elf_sections(buf: Buffer, path: str) -> dict[str, ElfSection]:
    """Section headers of a little-endian ELF64 file, by name (the first of a repeated name).

    The section table is parsed by :func:`kdlayout.vmlinuz.elf_sections`; DWARF is only read
    from little-endian ELF64 here. Raises :class:`CorruptError` for a non-ELF, truncated or
    inconsistent file and :class:`UnsupportedError` for ELF32 or big-endian files.
    """
    if len(buf) < 64 or bytes(buf[0:4]) != b"\x7fELF":
        raise CorruptError("not an ELF file (no \\x7fELF magic)", path=path, offset=0)
    if buf[4] != 2:
        raise UnsupportedError(f"ELF class {buf[4]} is not ELF64", path=path, offset=4)
    if buf[5] != 1:
        raise UnsupportedError("big-endian ELF is not supported", path=path, offset=5)
    out: dict[str, ElfSection] = {}
    for sec in elf_sections(memoryview(buf), source=path):
        out.setdefault(sec.name, ElfSection(sec.name, sec.sh_type, sec.sh_flags, sec.sh_offset,
                                            sec.sh_size))
    return out


def _decompress(raw: memoryview, sec: ElfSection, path: str) -> bytes:
    """Contents of an ``SHF_COMPRESSED`` or legacy ``.zdebug`` section."""
    if sec.name.startswith(".zdebug"):
        if bytes(raw[:4]) != b"ZLIB" or len(raw) < 12:
            raise CorruptError(f"{sec.name} has no ZLIB header", path=path, offset=sec.offset)
        want = int.from_bytes(bytes(raw[4:12]), "big")
        kind, payload = ELFCOMPRESS_ZLIB, raw[12:]
    else:
        if len(raw) < 24:
            raise CorruptError(f"{sec.name} compression header is truncated", path=path,
                               offset=sec.offset)
        kind, _res, want, _align = struct.unpack_from("<IIQQ", raw, 0)
        payload = raw[24:]
    try:
        if kind == ELFCOMPRESS_ZLIB:
            out = zlib.decompress(payload)
        elif kind == ELFCOMPRESS_ZSTD:
            try:
                import zstandard
            except ImportError:
                raise UnsupportedError(f"{sec.name} is zstd-compressed and the zstandard module "
                                       "is not installed", path=path, offset=sec.offset) from None
            out = zstandard.ZstdDecompressor().decompress(payload, max_output_size=want)
        else:
            raise UnsupportedError(f"{sec.name} uses unknown compression type {kind}", path=path,
                                   offset=sec.offset)
    except (zlib.error, ValueError) as e:
        raise CorruptError(f"{sec.name} does not decompress: {e}", path=path,
                           offset=sec.offset) from None
    except KdlayoutError:
        raise
    except Exception as e:  # zstandard.ZstdError
        raise CorruptError(f"{sec.name} does not decompress: {e}", path=path,
                           offset=sec.offset) from None
    finally:
        # An exception's traceback keeps this frame alive: a live slice of the mapping would
        # stop the caller from unmapping the file.
        payload.release()
    if len(out) != want:
        raise CorruptError(f"{sec.name} decompressed to {len(out)} bytes, header says {want}",
                           path=path, offset=sec.offset)
    return out


class _Section:
    """A debug section: its bytes (a zero-copy slice of the file when uncompressed)."""

    def __init__(self, name: str, data: Buffer, file_offset: int, compressed: bool) -> None:
        self.name = name
        self.data = data
        self.file_offset = file_offset
        self.compressed = compressed

    def __len__(self) -> int:
        return len(self.data)

    def where(self, off: int) -> int:
        """File offset of section offset ``off`` (the section start when compressed)."""
        return self.file_offset if self.compressed else self.file_offset + off


_EMPTY = _Section("", b"", 0, False)


def _advise(m: mmap.mmap, advice: str, start: int = 0, length: int | None = None) -> None:
    """``madvise`` where the platform has it (a hint only: failures are ignored)."""
    value = getattr(mmap, advice, None)
    if value is None or not hasattr(m, "madvise"):
        return
    page = mmap.PAGESIZE
    aligned = start - start % page
    size = (len(m) - aligned) if length is None else (length + start - aligned)
    with contextlib.suppress(OSError, ValueError):
        m.madvise(value, aligned, size)


def _byte_at(sec: _Section, off: int) -> int:
    return int(sec.data[off])


def _rfind_in(sec: _Section, needle: bytes, start: int, end: int) -> int:
    """Section offset of the last ``needle`` within [start, end), or -1."""
    chunk = bytes(sec.data[start:end])
    pos = chunk.rfind(needle)
    return start + pos if pos >= 0 else -1


def _find_in(sec: _Section, needle: bytes, start: int) -> int:
    """Section offset of the first ``needle`` at or after ``start`` (C-speed search), or -1."""
    data = sec.data
    if isinstance(data, bytes):
        return data.find(needle, start)
    hay = data.obj if isinstance(data, memoryview) else data
    base = sec.file_offset
    if not isinstance(hay, mmap.mmap | bytes):
        hay, base = bytes(data), 0
    pos = hay.find(needle, base + start, base + len(data))
    return pos - base if pos >= 0 else -1


# ---- LEB128 -------------------------------------------------------------------------------------

def _uleb(b: bytes, p: int) -> tuple[int, int]:
    v = b[p]
    p += 1
    if v < 0x80:
        return v, p
    v &= 0x7F
    shift = 7
    while True:
        x = b[p]
        p += 1
        v |= (x & 0x7F) << shift
        if x < 0x80:
            return v, p
        shift += 7


def _sleb(b: bytes, p: int) -> tuple[int, int]:
    v = 0
    shift = 0
    while True:
        x = b[p]
        p += 1
        v |= (x & 0x7F) << shift
        shift += 7
        if x < 0x80:
            if x & 0x40:
                v -= 1 << shift
            return v, p


@cachetools.cached(cachetools.LRUCache(maxsize=16),
                   key=lambda osize, asize, version: (osize, asize, version))
def _fixed_sizes(osize: int, asize: int, version: int) -> dict[int, int]:
    """Byte size of every fixed-size form in a unit with these header parameters."""
    sizes = {FORM_DATA1: 1, FORM_REF1: 1, FORM_FLAG: 1, FORM_STRX1: 1, FORM_ADDRX1: 1,
             FORM_DATA2: 2, FORM_REF2: 2, FORM_STRX2: 2, FORM_ADDRX2: 2,
             FORM_STRX3: 3, FORM_ADDRX3: 3,
             FORM_DATA4: 4, FORM_REF4: 4, FORM_STRX4: 4, FORM_ADDRX4: 4, FORM_REF_SUP4: 4,
             FORM_DATA8: 8, FORM_REF8: 8, FORM_REF_SIG8: 8, FORM_REF_SUP8: 8,
             FORM_STRP: osize, FORM_LINE_STRP: osize, FORM_SEC_OFFSET: osize,
             FORM_GNU_STRP_ALT: osize, FORM_STRP_SUP: osize, FORM_GNU_REF_ALT: osize,
             FORM_REF_ADDR: osize if version >= 3 else asize, FORM_ADDR: asize,
             FORM_FLAG_PRESENT: 0, FORM_IMPLICIT_CONST: 0}
    return sizes


class _Corrupt(Exception):
    """Internal: malformed DWARF at a section offset; turned into CorruptError at the API."""

    def __init__(self, message: str, section: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.section = section
        self.offset = offset


# ---- .debug_names (DWARF 5 name index, as clang -gpubnames writes it) -------------------------

IDX_COMPILE_UNIT = 1
IDX_DIE_OFFSET = 3


def _djb_hash(name: bytes) -> int:
    """The name-table hash of DWARF 5 section 7.33 (Bernstein's, ASCII letters folded to lower
    case as LLVM does; identical to the plain one for the lower-case names asked for here)."""
    h = 5381
    for c in name:
        if 0x41 <= c <= 0x5A:
            c += 0x20
        h = (h * 33 + c) & 0xFFFFFFFF
    return h


class _NameIndex:
    """One name index of ``.debug_names``: name -> [(tag, DIE section offset)]."""

    def __init__(self, data: Buffer, off: int, strs: _Section) -> None:
        self.strs = strs
        b = bytes(data[off:off + 64])
        length, = struct.unpack_from("<I", b, 0)
        osize, p = 4, 4
        if length == 0xFFFFFFFF:
            length, = struct.unpack_from("<Q", b, 4)
            osize, p = 8, 12
        self.end = p + length + off
        if self.end > len(data):
            raise _Corrupt(f"name index of {length:#x} bytes runs past the end of .debug_names",
                           ".debug_names", off)
        b = bytes(data[off:self.end])
        version, _pad, cus, ltus, ftus, buckets, names, abbrev_size, aug_size = \
            struct.unpack_from("<HHIIIIIII", b, p)
        if version != 5:
            raise _Corrupt(f".debug_names version {version} is not 5", ".debug_names", off)
        p += 32 + ((aug_size + 3) & ~3)
        read = "<I" if osize == 4 else "<Q"
        self.cu_offsets = [struct.unpack_from(read, b, p + i * osize)[0] for i in range(cus)]
        p += (cus + ltus) * osize + ftus * 8
        self.buckets = struct.unpack_from(f"<{buckets}I", b, p) if buckets else ()
        p += 4 * buckets
        self.hashes = struct.unpack_from(f"<{names}I", b, p) if buckets else ()
        p += 4 * names if buckets else 0
        fmt = "I" if osize == 4 else "Q"
        self.str_offs = struct.unpack_from(f"<{names}{fmt}", b, p)
        p += names * osize
        self.entry_offs = struct.unpack_from(f"<{names}{fmt}", b, p)
        p += names * osize
        self.abbrevs: dict[int, tuple[int, tuple[tuple[int, int], ...]]] = {}
        q = p
        while q < p + abbrev_size:
            code, q = _uleb(b, q)
            if code == 0:
                break
            tag, q = _uleb(b, q)
            specs: list[tuple[int, int]] = []
            while True:
                idx, q = _uleb(b, q)
                form, q = _uleb(b, q)
                if idx == 0 and form == 0:
                    break
                specs.append((idx, form))
            self.abbrevs[code] = (tag, tuple(specs))
        self.pool = p + abbrev_size
        self.b = b
        self.osize = osize
        self.off = off

    def lookup(self, name: str) -> list[tuple[int, int]]:
        """(tag, DIE section offset) of every entry for ``name``."""
        key = name.encode()
        if self.buckets:
            h = _djb_hash(key)
            n = len(self.buckets)
            i = self.buckets[h % n]
            candidates: list[int] = []
            if i:
                i -= 1      # 1-based
                while i < len(self.hashes) and self.hashes[i] % n == h % n:
                    if self.hashes[i] == h:
                        candidates.append(i)
                    i += 1
        else:
            candidates = list(range(len(self.str_offs)))
        out: list[tuple[int, int]] = []
        for i in candidates:
            if _cstr_bytes(self.strs, self.str_offs[i]) == key:
                out.extend(self._entries(self.entry_offs[i]))
        return out

    def _entries(self, rel: int) -> Iterator[tuple[int, int]]:
        b = self.b
        p = self.pool + rel
        fixed = _fixed_sizes(self.osize, 8, 5)
        for _ in range(1 << 16):
            code, p = _uleb(b, p)
            if code == 0:
                return
            ab = self.abbrevs.get(code)
            if ab is None:
                raise _Corrupt(f"name entry uses unknown abbreviation {code}", ".debug_names",
                               self.off + p)
            tag, specs = ab
            cu = 0
            die: int | None = None
            for idx, form in specs:
                n = fixed.get(form)
                if n is not None:
                    value = int.from_bytes(b[p:p + n], "little")
                    p += n
                elif form in (FORM_UDATA, FORM_REF_UDATA):
                    value, p = _uleb(b, p)
                else:
                    raise _Corrupt(f"name entry attribute form {form:#x}", ".debug_names",
                                   self.off + p)
                if idx == IDX_COMPILE_UNIT:
                    cu = value
                elif idx == IDX_DIE_OFFSET:
                    die = value
            if die is not None and cu < len(self.cu_offsets):
                yield tag, self.cu_offsets[cu] + die


def _cstr_bytes(sec: _Section, off: int) -> bytes:
    chunk = bytes(sec.data[off:off + 256])
    nul = chunk.find(b"\0")
    while nul < 0 and off + len(chunk) < len(sec.data):
        chunk = bytes(sec.data[off:off + 2 * len(chunk)])
        nul = chunk.find(b"\0")
    return chunk if nul < 0 else chunk[:nul]


# ---- the source -----------------------------------------------------------------------------

class DwarfTypeSource:
    """Answers :class:`~kdlayout.sources.base.TypeSource` questions from a vmlinux's DWARF.

    ``DwarfTypeSource(path)`` maps the file; :meth:`from_buffer` parses bytes already in memory.
    Nothing is decoded until the first question (apart from the ELF section table).

    ``thorough=True`` also searches ``.debug_info`` for long names written inline
    (``DW_FORM_string``) before declaring a type absent; GCC and LLVM never do that, so by default
    a name longer than a string offset that is not in ``.debug_str`` is absent at once. The
    fallback search stops after ``fallback_max_units`` units or ``fallback_max_seconds`` per name
    (a warning is added to :attr:`warnings`).
    """

    kind = "dwarf"

    def __init__(self, path: str | os.PathLike[str], *,
                 fallback_max_units: int = FALLBACK_MAX_UNITS,
                 fallback_max_seconds: float = FALLBACK_MAX_SECONDS,
                 thorough: bool = False) -> None:
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise CorruptError("empty file, not an ELF vmlinux", path=self.path,
                                       offset=0)
                self._mmap: mmap.mmap | None = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            # Unit headers are a page here and a page there: no readahead of whole sections.
            _advise(self._mmap, "MADV_RANDOM")
        except OSError as e:
            raise MissingDataError(f"cannot open vmlinux: {e.strerror}", path=self.path) from None
        try:
            self._setup(self._mmap, fallback_max_units, fallback_max_seconds, thorough)
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Undo a half-finished constructor: release section views, unmap the file."""
        for view in getattr(self, "_views", ()):
            view.release()
        whole = getattr(self, "_whole", None)
        if whole is not None:
            with contextlib.suppress(BufferError):
                whole.release()
        if self._mmap is not None:
            with contextlib.suppress(BufferError):   # never mask the error being raised
                self._mmap.close()
            self._mmap = None

    @classmethod
    def from_buffer(cls, data: Buffer, *, path: str = "<memory>",
                    fallback_max_units: int = FALLBACK_MAX_UNITS,
                    fallback_max_seconds: float = FALLBACK_MAX_SECONDS,
                    thorough: bool = False) -> DwarfTypeSource:
        """A source over an ELF image already in memory (``path`` is only used in messages)."""
        self = cls.__new__(cls)
        self.path = path
        self._mmap = None
        if isinstance(data, memoryview | bytearray):
            data = bytes(data)
        try:
            self._setup(data, fallback_max_units, fallback_max_seconds, thorough)
        except BaseException:
            self._abandon()       # release the views, so that the caller can close ``data``
            raise
        return self

    def _setup(self, buf: Buffer, max_units: int, max_seconds: float, thorough: bool) -> None:
        self._buf = buf
        self.thorough = thorough
        self.fallback_max_units = max_units
        self.fallback_max_seconds = max_seconds
        self.stats = DwarfStats()
        self.warnings: list[str] = []
        self._views: list[memoryview] = []
        self.sections = read_elf_sections(buf, self.path)
        self._whole = memoryview(buf)
        e_type, = struct.unpack_from("<H", buf, 0x10)
        if e_type == ET_REL and (".rela.debug_info" in self.sections
                                 or ".rel.debug_info" in self.sections):
            raise UnsupportedError("a relocatable object (a .o or .ko): its DWARF needs "
                                   "relocations applied, which this source does not do",
                                   path=self.path, offset=0x10)
        info = self._section(".debug_info")
        if info is None:
            raise MissingDataError("no .debug_info section (a stripped vmlinux? use the one from "
                                   "the -dbg package)", path=self.path)
        self._info: _Section = info
        self._abbrev = self._section(".debug_abbrev") or _EMPTY
        self._str = self._section(".debug_str") or _EMPTY
        self._line_str = self._section(".debug_line_str") or _EMPTY
        self._str_offsets = self._section(".debug_str_offsets") or _EMPTY
        self._addr = self._section(".debug_addr") or _EMPTY
        self._names = self._section(".debug_names") or _EMPTY
        self._name_indexes: list[_NameIndex] | None = None
        self._units: list[UnitInfo] | None = None
        self._unit_names: dict[int, str | None] = {}
        self._file_units: dict[str, UnitInfo | None] = {}
        self._heads: tuple[bytes, list[int]] | None = None
        # Indexed units by offset; bounded, since a long fallback search may index hundreds.
        self._indexed: cachetools.LRUCache[int, _Unit] = cachetools.LRUCache(maxsize=48)
        # Units loaded only to follow a DW_FORM_ref_addr (not indexed).
        self._loaded: cachetools.LRUCache[int, _Unit] = cachetools.LRUCache(maxsize=16)
        # Explicitly keyed caches: abbreviation tables by .debug_abbrev offset; lookups by
        # (accepted tags, name).
        self._abbrev_tables: cachetools.LRUCache[int, _AbbrevTable] = cachetools.LRUCache(
            maxsize=256)
        self._lookup_cache: cachetools.Cache[tuple[str, str], _Die | None] = cachetools.LRUCache(
            maxsize=1024)
        self._versions: set[int] = set()

    def close(self) -> None:
        """Release the file mapping (the source cannot be used afterwards)."""
        self._indexed.clear()
        self._loaded.clear()
        self._lookup_cache.clear()
        self._abbrev_tables.clear()
        for view in self._views:
            view.release()
        self._views.clear()
        self._whole.release()
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None

    def __enter__(self) -> DwarfTypeSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- sections ---------------------------------------------------------------------------

    def _section(self, name: str) -> _Section | None:
        sec = self.sections.get(name)
        compressed = False
        if sec is None:
            sec = self.sections.get(".zdebug" + name[len(".debug"):])
            if sec is None:
                return None
            compressed = True
        if sec.type == SHT_NOBITS:
            return None
        if sec.offset + sec.size > len(self._buf):
            raise CorruptError(f"section {sec.name} ({sec.size:#x} bytes at {sec.offset:#x}) runs "
                               f"past the end of the {len(self._buf):#x}-byte file (truncated?)",
                               path=self.path, offset=sec.offset)
        if compressed or sec.flags & SHF_COMPRESSED:
            raw = self._whole[sec.offset:sec.offset + sec.size]
            try:
                return _Section(name, _decompress(raw, sec, self.path), sec.offset, True)
            finally:
                raw.release()
        view = self._whole[sec.offset:sec.offset + sec.size]
        self._views.append(view)
        return _Section(name, view, sec.offset, False)

    def _corrupt(self, exc: _Corrupt) -> CorruptError:
        sec = {".debug_info": self._info, ".debug_abbrev": self._abbrev,
               ".debug_str": self._str, ".debug_line_str": self._line_str,
               ".debug_str_offsets": self._str_offsets, ".debug_addr": self._addr,
               ".debug_names": self._names}.get(exc.section)
        where = sec.where(exc.offset) if sec is not None else None
        return CorruptError(f"{exc.section}+{exc.offset:#x}: {exc.message}", path=self.path,
                            offset=where)

    def _guard(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``, turning internal decode failures into one-line CorruptErrors."""
        try:
            return fn()
        except _Corrupt as e:
            raise self._corrupt(e) from None
        except (IndexError, struct.error) as e:
            off = getattr(self, "_pos", 0)
            raise CorruptError(f".debug_info+{off:#x}: DWARF data ends inside a record "
                               f"(truncated or malformed: {e})", path=self.path,
                               offset=self._info.where(off)) from None
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            # A value of the wrong shape for its attribute (a block where a constant belongs, ...)
            off = getattr(self, "_pos", 0)
            raise CorruptError(f".debug_info+{off:#x}: malformed DWARF attribute near this DIE "
                               f"({type(e).__name__}: {e})", path=self.path,
                               offset=self._info.where(off)) from None
        except RecursionError:
            off = getattr(self, "_pos", 0)
            raise CorruptError(f".debug_info+{off:#x}: DWARF types nest too deeply (a cycle?)",
                               path=self.path, offset=self._info.where(off)) from None

    # ---- unit headers -------------------------------------------------------------------------

    def units(self) -> list[UnitInfo]:
        """Every unit header in ``.debug_info`` (cheap: one jump per unit)."""
        result: list[UnitInfo] = self._guard(self._scan_units)
        return result

    def _scan_units(self) -> list[UnitInfo]:
        if self._units is not None:
            return self._units
        data = self._info.data
        size = len(data)
        units: list[UnitInfo] = []
        off = 0
        while off < size:
            self._pos = off
            if off + 4 > size:
                raise _Corrupt("unit header is truncated", ".debug_info", off)
            length, = struct.unpack_from("<I", data, off)
            p = off + 4
            osize = 4
            if length == 0xFFFFFFFF:
                length, = struct.unpack_from("<Q", data, p)
                p += 8
                osize = 8
            elif length >= 0xFFFFFFF0:
                raise _Corrupt(f"reserved unit_length {length:#x}", ".debug_info", off)
            end = p + length
            if end > size:
                raise _Corrupt(f"unit of {length:#x} bytes runs past the end of .debug_info "
                               f"({size:#x} bytes; truncated?)", ".debug_info", off)
            if length < 7:
                raise _Corrupt(f"unit_length {length:#x} is too small", ".debug_info", off)
            version, = struct.unpack_from("<H", data, p)
            p += 2
            if version == 5:
                unit_type = data[p]
                asize = data[p + 1]
                p += 2
                abbrev = int.from_bytes(data[p:p + osize], "little")
                p += osize
                if unit_type in (UT_TYPE, UT_SPLIT_TYPE):
                    p += 8 + osize
                elif unit_type in (UT_SKELETON, UT_SPLIT_COMPILE):
                    p += 8
            elif 2 <= version <= 4:
                unit_type = UT_COMPILE
                abbrev = int.from_bytes(data[p:p + osize], "little")
                p += osize
                asize = data[p]
                p += 1
            else:
                raise _Corrupt(f"unsupported DWARF version {version}", ".debug_info", off + 4)
            if asize not in (4, 8):
                raise _Corrupt(f"address size {asize} is not 4 or 8", ".debug_info", off)
            if p > end:
                raise _Corrupt("unit header is longer than the unit", ".debug_info", off)
            self._versions.add(version)
            units.append(UnitInfo(off, end, version, unit_type, asize, osize, abbrev, p))
            off = end
        self._units = units
        self.stats.units_total = len(units)
        return units

    def _unit_at(self, section_offset: int) -> UnitInfo:
        units = self._scan_units()
        lo, hi = 0, len(units)
        while lo < hi:
            mid = (lo + hi) // 2
            if units[mid].end <= section_offset:
                lo = mid + 1
            else:
                hi = mid
        if lo >= len(units) or units[lo].offset > section_offset:
            raise _Corrupt(f"reference {section_offset:#x} is outside every unit",
                           ".debug_info", section_offset)
        return units[lo]

    # ---- abbreviations ------------------------------------------------------------------------

    def _abbrev_table(self, offset: int) -> _AbbrevTable:
        table = self._abbrev_tables.get(offset)
        if table is None:
            if offset >= len(self._abbrev.data):
                raise _Corrupt(f"abbreviation table offset {offset:#x} is past the end of "
                               ".debug_abbrev", ".debug_abbrev", offset)
            table = _AbbrevTable(self._abbrev.data, offset)
            self._abbrev_tables[offset] = table
        return table

    # ---- DIE decoding -------------------------------------------------------------------------

    def _load_unit(self, info: UnitInfo, *, head_only: bool = False) -> _Unit:
        """A unit with its bytes copied (only the first 4 KiB with ``head_only``)."""
        unit = self._indexed.get(info.offset) or self._loaded.get(info.offset)
        if unit is not None:
            return unit
        end = min(info.end, info.offset + 4096) if head_only else info.end
        data = bytes(self._info.data[info.offset:end])
        unit = _Unit(info, data, self._abbrev_table(info.abbrev_offset),
                     _fixed_sizes(info.offset_size, info.address_size, info.version))
        if not head_only:
            self._loaded[info.offset] = unit
        return unit

    def _read_die(self, unit: _Unit, off: int) -> _Die | None:
        """Decode the DIE at section offset ``off``; None for a null entry (end of siblings)."""
        self._pos = off
        b = unit.data
        base = unit.info.offset
        p = off - base
        if p < 0 or off >= unit.info.end:
            raise _Corrupt(f"DIE offset {off:#x} is outside its unit", ".debug_info", off)
        code, p = _uleb(b, p)
        if code == 0:
            return None
        ab = unit.abbrevs.get(code)
        if ab is None:
            raise _Corrupt(f"DIE uses abbreviation code {code} missing from the table at "
                           f"{unit.info.abbrev_offset:#x}", ".debug_info", off)
        attrs: dict[int, tuple[int, Any]] = {}
        info = unit.info
        fixed = unit.fixed
        for attr, form, implicit in ab.specs:
            value, p, form = self._read_form(b, p, form, implicit, info, fixed)
            if form in _REF_FORMS:
                value += base
            attrs[attr] = (form, value)
        if p > len(b):
            raise IndexError("DIE runs past the end of its unit")
        self.stats.dies_decoded += 1
        return _Die(off, ab.tag, ab.has_children, attrs, p + base, unit)

    def _read_form(self, b: bytes, p: int, form: int, implicit: int, info: UnitInfo,
                   fixed: dict[int, int]) -> tuple[Any, int, int]:
        for _ in range(4):
            n = fixed.get(form)
            if n is not None:
                if n == 1:
                    return b[p], p + 1, form
                if n == 0:
                    return (implicit if form == FORM_IMPLICIT_CONST else 1), p, form
                return int.from_bytes(b[p:p + n], "little"), p + n, form
            if form == FORM_FLAG_PRESENT:
                return 1, p, form
            if form == FORM_IMPLICIT_CONST:
                return implicit, p, form
            if form in _ULEB_FORMS:
                v, p = _uleb(b, p)
                return v, p, form
            if form == FORM_SDATA:
                v, p = _sleb(b, p)
                return v, p, form
            if form == FORM_STRING:
                nul = b.find(0, p)
                if nul < 0:
                    raise IndexError("string runs past the end of the unit")
                return b[p:nul], nul + 1, form
            if form in (FORM_EXPRLOC, FORM_BLOCK):
                n, p = _uleb(b, p)
            elif form == FORM_BLOCK1:
                n, p = b[p], p + 1
            elif form == FORM_BLOCK2:
                n, p = b[p] | b[p + 1] << 8, p + 2
            elif form == FORM_BLOCK4:
                n, p = int.from_bytes(b[p:p + 4], "little"), p + 4
            elif form == FORM_DATA16:
                return b[p:p + 16], p + 16, form
            elif form == FORM_INDIRECT:
                form, p = _uleb(b, p)
                continue
            else:
                raise _Corrupt(f"unknown attribute form {form:#x}", ".debug_info",
                               info.offset + p)
            if p + n > len(b):
                raise IndexError("block past the end of the unit")
            return b[p:p + n], p + n, form
        raise _Corrupt("DW_FORM_indirect chain is too long", ".debug_info", info.offset + p)

    def _children(self, die: _Die) -> Iterator[_Die]:
        """The direct children of ``die`` (grandchildren skipped)."""
        if not die.has_children:
            return
        off = die.end
        unit = die.unit
        while True:
            child = self._read_die(unit, off)
            if child is None:
                return
            yield child
            off = self._skip_subtree(child)

    def _skip_subtree(self, die: _Die) -> int:
        """Section offset of the DIE following ``die`` and all its descendants."""
        if not die.has_children:
            return die.end
        sib = die.attrs.get(AT_SIBLING)
        if sib is not None and sib[0] in _REF_FORMS:
            if sib[1] <= die.offset or sib[1] > die.unit.info.end:
                raise _Corrupt(f"DW_AT_sibling {sib[1]:#x} does not point forward",
                               ".debug_info", die.offset)
            return int(sib[1])
        off = die.end
        while True:
            child = self._read_die(die.unit, off)
            if child is None:
                return self._pos_after_null(die.unit, off)
            off = self._skip_subtree(child)

    @staticmethod
    def _pos_after_null(unit: _Unit, off: int) -> int:
        # A null entry is a single 0 byte (abbreviation code 0 as ULEB128).
        return off + 1

    # ---- strings ----------------------------------------------------------------------------

    def _cstr(self, sec: _Section, off: int) -> str:
        data = sec.data
        if off >= len(data):
            raise _Corrupt(f"string offset {off:#x} is past the end of {sec.name or 'section'}",
                           sec.name or ".debug_str", off)
        chunk = bytes(data[off:off + 256])
        nul = chunk.find(b"\0")
        while nul < 0:
            if off + len(chunk) >= len(data):
                raise _Corrupt("string is not NUL-terminated", sec.name, off)
            chunk = bytes(data[off:off + 2 * len(chunk)])
            nul = chunk.find(b"\0")
        return chunk[:nul].decode("utf-8", "replace")

    def _string(self, unit: _Unit, form: int, value: Any) -> str | None:
        if form == FORM_STRING:
            return bytes(value).decode("utf-8", "replace")
        if form == FORM_STRP:
            return self._cstr(self._str, value)
        if form == FORM_LINE_STRP:
            return self._cstr(self._line_str, value)
        if form in _STRX_FORMS:
            base = unit.str_offsets_base
            if base is None:
                top = self._read_die(unit, unit.info.die_offset)
                a = top.attrs.get(AT_STR_OFFSETS_BASE) if top is not None else None
                # Without DW_AT_str_offsets_base: just past the contribution's header.
                base = int(a[1]) if a is not None else (8 if unit.info.offset_size == 4 else 16)
                unit.str_offsets_base = base
            o = unit.info.offset_size
            at = base + value * o
            if at + o > len(self._str_offsets.data):
                raise _Corrupt(f"string index {value} is past the end of .debug_str_offsets",
                               ".debug_str_offsets", at)
            soff = int.from_bytes(bytes(self._str_offsets.data[at:at + o]), "little")
            return self._cstr(self._str, soff)
        return None   # supplementary/alt string files are not followed

    def _name(self, die: _Die) -> str | None:
        a = die.attrs.get(AT_NAME)
        return None if a is None else self._string(die.unit, a[0], a[1])

    # ---- unit selection and indexing -----------------------------------------------------------

    def unit_name(self, info: UnitInfo) -> str | None:
        """``DW_AT_name`` of the unit's top DIE (its primary source file)."""
        if info.offset in self._unit_names:
            return self._unit_names[info.offset]
        unit = self._load_unit(info, head_only=True)
        try:
            die = self._read_die(unit, info.die_offset)
        except IndexError:
            unit = self._load_unit(info)
            die = self._read_die(unit, info.die_offset)
        name = None
        if die is not None:
            a = die.attrs.get(AT_STR_OFFSETS_BASE)
            if a is not None:
                unit.str_offsets_base = int(a[1])
            name = self._name(die)
        self._unit_names[info.offset] = name
        self.stats.units_named += 1
        return name

    @staticmethod
    def _file_matches(name: str | None, suffix: str) -> bool:
        return bool(name) and (name == suffix or str(name).endswith("/" + suffix))

    def _priority_units(self) -> Iterator[UnitInfo]:
        """The units of ``PRIORITY_CUS``, in that order, located without naming every unit."""
        for suffix in PRIORITY_CUS:
            info = self._unit_for_file(suffix)
            if info is not None:
                yield info

    def _unit_for_file(self, suffix: str) -> UnitInfo | None:
        """The compile unit whose DW_AT_name is ``suffix`` (or ends in ``/suffix``).

        The name is searched for as a string: its offset in ``.debug_line_str``/``.debug_str``
        (``DW_FORM_line_strp``/``strp``) or inline (``DW_FORM_string``) occurs in ``.debug_info``
        inside the unit's top DIE, and every candidate is checked by decoding that DIE. Only
        when names go through ``.debug_str_offsets`` (``DW_FORM_strx``) are all units named.
        """
        if suffix in self._file_units:
            return self._file_units[suffix]
        found: UnitInfo | None = None
        needle = suffix.encode() + b"\0"
        patterns: list[bytes] = []
        osizes = sorted({u.offset_size for u in self._scan_units()})
        for sec in (self._line_str, self._str):
            pos = _find_in(sec, needle, 0)
            hits = 0
            while pos >= 0 and hits < 16:
                hits += 1
                starts = {pos}
                if pos > 0 and _byte_at(sec, pos - 1) == 0x2F:   # "/": inside a longer path
                    starts.add(_rfind_in(sec, b"\0", max(0, pos - 4096), pos) + 1)
                for st in sorted(starts):
                    patterns.extend(st.to_bytes(o, "little") for o in osizes)
                pos = _find_in(sec, needle, pos + 1)
        patterns.append(needle)
        heads, head_starts = self._unit_heads()
        units = self._scan_units()
        checked = 0
        for pat in patterns:
            pos = heads.find(pat)
            while pos >= 0 and checked < 64:
                info = units[bisect.bisect_right(head_starts, pos) - 1]
                if info.unit_type in (UT_COMPILE, UT_PARTIAL):
                    checked += 1
                    if self._file_matches(self.unit_name(info), suffix):
                        found = info
                        break
                pos = heads.find(pat, pos + 1)
            if found is not None:
                break
        if found is None and len(self._str_offsets):
            for info in self._scan_units():
                if self._file_matches(self.unit_name(info), suffix):
                    found = info
                    break
        self._file_units[suffix] = found
        return found

    def _unit_heads(self) -> tuple[bytes, list[int]]:
        """The first ``_HEAD_BYTES`` of every unit's top DIE, concatenated, and where each starts.

        A unit's DW_AT_name sits in its top DIE, so searching this small buffer (about 0.3% of
        ``.debug_info`` for a kernel) finds a source file's unit without touching the rest.
        """
        if self._heads is None:
            data = self._info.data
            parts: list[bytes] = []
            starts: list[int] = []
            at = 0
            for info in self._scan_units():
                chunk = bytes(data[info.die_offset:min(info.end, info.die_offset + _HEAD_BYTES)])
                starts.append(at)
                parts.append(chunk)
                at += len(chunk)
            self._heads = (b"".join(parts), starts)
        return self._heads

    def _mentioned(self, name: str) -> bool:
        """False only when ``name`` provably names no DIE: the string is nowhere to be found."""
        needle = name.encode() + b"\0"
        if _find_in(self._str, needle, 0) >= 0 or len(self._str_offsets):
            return True
        if not self.thorough and len(needle) > max(u.offset_size for u in self._scan_units()):
            # GCC (with the linker merging .debug_str) and LLVM write a name inline only when it
            # is no longer than a string offset; longer names live in .debug_str.
            return False
        return _find_in(self._info, needle, 0) >= 0

    def _index_unit(self, info: UnitInfo) -> _Unit:
        """Decode the top-level DIEs of a unit and index the named types and variables."""
        unit = self._indexed.get(info.offset)
        if unit is not None and unit.index is not None:
            return unit
        unit = self._load_unit(info)
        top = self._read_die(unit, info.die_offset)
        index: dict[str, list[tuple[int, int, bool]]] = {}
        if top is not None:
            a = top.attrs.get(AT_STR_OFFSETS_BASE)
            if a is not None:
                unit.str_offsets_base = int(a[1])
            unit.name = self._name(top)
            for die in self._children(top):
                if die.tag not in _INDEXED_TAGS:
                    continue
                name = self._name(die)
                spec = die.attrs.get(AT_SPECIFICATION)
                if name is None and spec is not None and spec[0] in _REF_FORMS:
                    # A definition completing an earlier declaration carries no name itself.
                    decl = self._read_die(unit, int(spec[1]))
                    name = self._name(decl) if decl is not None else None
                if name:
                    index.setdefault(name, []).append(
                        (die.tag, die.offset, AT_DECLARATION in die.attrs))
        unit.index = index
        self._indexed[info.offset] = unit
        self.stats.units_indexed.append(unit.name or f"unit@{info.offset:#x}")
        return unit

    def _definition_in(self, unit: _Unit, tags: tuple[int, ...], name: str) -> _Die | None:
        assert unit.index is not None
        best: tuple[int, int] | None = None     # (preference, offset): earlier tags win
        for tag, off, decl in unit.index.get(name, ()):
            if tag in tags and not decl:
                rank = tags.index(tag)
                if best is None or rank < best[0]:
                    best = (rank, off)
        return None if best is None else self._read_die(unit, best[1])

    def _find(self, tags: tuple[int, ...], name: str) -> _Die | None:
        """A complete (non-declaration) top-level DIE with one of ``tags`` named ``name``."""
        key = (",".join(map(str, tags)), name)
        if key in self._lookup_cache:
            return self._lookup_cache[key]
        found: _Die | None = None
        for unit in list(self._indexed.values()):
            found = self._definition_in(unit, tags, name)
            if found is not None:
                break
        if found is None and len(self._names):
            found = self._find_by_names(tags, name)
        if found is None and not self._mentioned(name):
            self._lookup_cache[key] = None
            return None
        if found is None:
            for info in self._priority_units():
                if info.offset in self._indexed:
                    continue
                found = self._definition_in(self._index_unit(info), tags, name)
                if found is not None:
                    break
        if found is None:
            found = self._search(tags, name)
        self._lookup_cache[key] = found
        return found

    def _find_by_names(self, tags: tuple[int, ...], name: str) -> _Die | None:
        """A definition through the ``.debug_names`` accelerator table, if it lists one."""
        if self._name_indexes is None:
            indexes: list[_NameIndex] = []
            off = 0
            while off < len(self._names):
                idx = _NameIndex(self._names.data, off, self._str)
                indexes.append(idx)
                off = idx.end
            self._name_indexes = indexes
        best: tuple[int, _Die] | None = None
        for idx in self._name_indexes:
            for tag, die_off in idx.lookup(name):
                if tag not in tags:
                    continue
                unit = self._load_unit(self._unit_at(die_off))
                die = self._read_die(unit, die_off)
                if die is None or AT_DECLARATION in die.attrs:
                    continue
                self.stats.names_hits += 1
                rank = tags.index(tag)
                if best is None or rank < best[0]:
                    best = (rank, die)
        return None if best is None else best[1]

    # ---- the string-search fallback ---------------------------------------------------------

    def _search(self, tags: tuple[int, ...], name: str) -> _Die | None:
        """Find units mentioning ``name`` by searching for its string, and index those."""
        if self.stats.fallback_seconds > FALLBACK_TOTAL_SECONDS:
            self.warnings.append(f"DWARF search for {name!r} skipped: fallback searches already "
                                 f"took {self.stats.fallback_seconds:.0f}s")
            return None
        t0 = time.monotonic()
        self.stats.fallback_searches += 1
        try:
            for info in self._candidate_units(name, t0):
                if info.offset in self._indexed:
                    continue
                found = self._definition_in(self._index_unit(info), tags, name)
                if found is not None:
                    return found
            return None
        finally:
            self.stats.fallback_seconds += time.monotonic() - t0

    def _candidate_units(self, name: str, t0: float) -> Iterator[UnitInfo]:
        needle = name.encode() + b"\0"
        patterns: list[bytes] = [needle]   # inline DW_FORM_string names
        # DW_FORM_strp: every offset in .debug_str at which "name\0" starts (a string of its own
        # or the tail of a longer one, after the linker merged strings).
        offs: list[int] = []
        pos = _find_in(self._str, needle, 0)
        while pos >= 0 and len(offs) < 64:
            offs.append(pos)
            pos = _find_in(self._str, needle, pos + 1)
        uses_strx = len(self._str_offsets) > 0
        if not offs and not uses_strx and _find_in(self._info, needle, 0) < 0:
            return   # the name occurs nowhere: no DIE can carry it
        units = self._scan_units()
        sizes = {u.offset_size for u in units}
        for o in offs:
            for osize in sorted(sizes):
                patterns.append(o.to_bytes(osize, "little"))
        seen: set[int] = set()
        budget = 0
        if self._mmap is not None and not self._info.compressed:
            _advise(self._mmap, "MADV_SEQUENTIAL", self._info.file_offset, len(self._info))
        for pat in patterns:
            pos = _find_in(self._info, pat, 0)
            while pos >= 0:
                if time.monotonic() - t0 > self.fallback_max_seconds or \
                        budget >= self.fallback_max_units:
                    self.warnings.append(f"DWARF search for {name!r} stopped after {budget} units "
                                         f"({time.monotonic() - t0:.1f}s)")
                    return
                info = self._unit_at(pos)
                if info.offset not in seen:
                    seen.add(info.offset)
                    if info.offset not in self._indexed:
                        budget += 1
                        yield info
                pos = _find_in(self._info, pat, info.end)
        if uses_strx:
            # Names through .debug_str_offsets cannot be searched for: walk the rest in order.
            for info in units:
                if info.offset in seen or info.offset in self._indexed:
                    continue
                if time.monotonic() - t0 > self.fallback_max_seconds or \
                        budget >= self.fallback_max_units:
                    self.warnings.append(f"DWARF search for {name!r} stopped after {budget} units")
                    return
                budget += 1
                yield info

    # ---- type queries -------------------------------------------------------------------------

    def _type_of(self, die: _Die) -> _Die | None:
        """The DIE named by ``die``'s DW_AT_type (None for void)."""
        a = die.attrs.get(AT_TYPE)
        if a is None:
            return None
        form, value = a
        if form in _REF_FORMS:
            unit = die.unit
            target = int(value)
        elif form == FORM_REF_ADDR:
            target = int(value)
            info = self._unit_at(target)
            unit = self._load_unit(info)
        elif form == FORM_REF_SIG8:
            raise UnsupportedError(f"type units (DW_FORM_ref_sig8 at .debug_info+{die.offset:#x})"
                                   " are not supported", path=self.path,
                                   offset=self._info.where(die.offset))
        else:
            raise _Corrupt(f"DW_AT_type has form {form:#x}", ".debug_info", die.offset)
        t = self._read_die(unit, target)
        if t is None:
            raise _Corrupt(f"DW_AT_type points at a null entry {target:#x}", ".debug_info",
                           die.offset)
        return t

    def _complete(self, die: _Die) -> _Die:
        """A declaration-only struct/union/enum replaced by its definition when one exists."""
        if AT_DECLARATION in die.attrs and die.tag in (TAG_STRUCTURE, TAG_UNION,
                                                       TAG_ENUMERATION):
            name = self._name(die)
            if name:
                full = self._find((die.tag,), name)
                if full is not None:
                    return full
        return die

    def _strip(self, die: _Die | None) -> _Die | None:
        """Follow typedefs and cv-qualifiers to the underlying type."""
        for _ in range(_MAX_CHAIN):
            if die is None:
                return None
            if die.tag != TAG_TYPEDEF and die.tag not in _QUALIFIER_TAGS:
                return self._complete(die)
            die = self._type_of(die)
        raise _Corrupt("typedef/qualifier chain is too long (a cycle?)", ".debug_info",
                       die.offset if die else 0)

    def _size_of(self, die: _Die | None, depth: int = 0) -> int | None:
        if depth > _MAX_CHAIN:
            raise _Corrupt("type chain is too long (a cycle?)", ".debug_info",
                           die.offset if die else 0)
        if die is None:
            return None
        if die.tag in (TAG_TYPEDEF, *_QUALIFIER_TAGS):
            return self._size_of(self._type_of(die), depth + 1)
        die = self._complete(die)
        a = die.attrs.get(AT_BYTE_SIZE)
        if a is not None and isinstance(a[1], int):
            return a[1]
        if die.tag in (TAG_POINTER, TAG_REFERENCE, TAG_RVALUE_REFERENCE):
            return die.unit.info.address_size
        if die.tag == TAG_ARRAY:
            elem = self._size_of(self._type_of(die), depth + 1)
            if elem is None:
                return None
            n = 1
            for dim in self._array_dims(die):
                n *= dim or 0
            return elem * n
        return None

    def _array_dims(self, die: _Die) -> list[int | None]:
        dims: list[int | None] = []
        for child in self._children(die):
            if child.tag != TAG_SUBRANGE:
                continue
            c = child.attrs.get(AT_COUNT)
            if c is not None and isinstance(c[1], int) and c[0] not in _REF_FORMS:
                dims.append(c[1])
                continue
            ub = child.attrs.get(AT_UPPER_BOUND)
            if ub is not None and isinstance(ub[1], int) and ub[0] not in _REF_FORMS:
                upper = ub[1]
                if ub[0] in (FORM_DATA1, FORM_DATA2, FORM_DATA4, FORM_DATA8):
                    bits = {FORM_DATA1: 8, FORM_DATA2: 16, FORM_DATA4: 32, FORM_DATA8: 64}[ub[0]]
                    if upper == (1 << bits) - 1:   # -1: a flexible array, as GCC writes it
                        dims.append(0)
                        continue
                lb = child.attrs.get(AT_LOWER_BOUND)
                lower = lb[1] if lb is not None and isinstance(lb[1], int) else 0
                dims.append(upper - lower + 1)
                continue
            dims.append(None)   # no bound: a flexible array member
        return dims

    def _member_bit_offset(self, m: _Die) -> int:
        a = m.attrs.get(AT_DATA_BIT_OFFSET)
        if a is not None:
            return int(a[1])
        byte_off = 0
        loc = m.attrs.get(AT_DATA_MEMBER_LOCATION)
        if loc is not None:
            value = loc[1]
            if isinstance(value, int):
                byte_off = value
            else:   # DWARF 2 location expression: DW_OP_plus_uconst N (or constu N)
                expr = bytes(value)
                if expr and expr[0] in (OP_PLUS_UCONST, OP_CONSTU):
                    byte_off, _ = _uleb(expr, 1)
                else:
                    raise UnsupportedError(f"member location expression {expr.hex()} at "
                                           f".debug_info+{m.offset:#x}", path=self.path,
                                           offset=self._info.where(m.offset))
        bits = byte_off * 8
        old = m.attrs.get(AT_BIT_OFFSET)
        if old is not None:   # DWARF 2/3 bitfield: offset from the storage unit's MSB
            bs = m.attrs.get(AT_BYTE_SIZE)
            storage = int(bs[1]) if bs is not None else (self._size_of(self._type_of(m)) or 0)
            width = int(m.attrs[AT_BIT_SIZE][1]) if AT_BIT_SIZE in m.attrs else 0
            bits += storage * 8 - int(old[1]) - width
        return bits

    def _find_member(self, comp: _Die, name: str, depth: int = 0) -> tuple[int, _Die] | None:
        if depth > _MAX_CHAIN:
            raise _Corrupt("anonymous members nest too deeply", ".debug_info", comp.offset)
        for m in self._children(comp):
            if m.tag != TAG_MEMBER:
                continue
            mname = self._name(m)
            if mname == name:
                return self._member_bit_offset(m), m
            if mname is None:
                sub = self._strip(self._type_of(m))
                if sub is not None and sub.tag in _COMPOSITE_TAGS:
                    found = self._find_member(sub, name, depth + 1)
                    if found is not None:
                        return self._member_bit_offset(m) + found[0], found[1]
        return None

    def _composite_or_typedef(self, type_name: str) -> _Die | None:
        die = self._find((*_COMPOSITE_TAGS, TAG_TYPEDEF), type_name)
        if die is None or die.tag in _COMPOSITE_TAGS:
            return die
        target = self._strip(die)
        return die if target is not None and target.tag in _COMPOSITE_TAGS else None

    def describe(self) -> str:
        """The vmlinux path and the DWARF versions of its units."""
        with contextlib.suppress(KdlayoutError):
            self.units()          # cheap, and needed for any answer anyway
        versions = "/".join(str(v) for v in sorted(self._versions)) or "?"
        return f"{self.path} .debug_info (DWARF {versions})"

    def type_size(self, type_name: str) -> int | None:
        """``sizeof(struct type_name)`` (or of the typedef ``type_name``, e.g. ``atomic_long_t``)."""
        def run() -> int | None:
            die = self._composite_or_typedef(type_name)
            return None if die is None else self._size_of(die)
        result: int | None = self._guard(run)
        return result

    def member(self, type_name: str, path: str) -> MemberLocation | None:
        """Location of ``path`` (dotted, ``a[2].b`` indexing allowed) in ``type_name``."""
        def run() -> MemberLocation | None:
            die = self._composite_or_typedef(type_name)
            cur = self._strip(die)
            if cur is None:
                return None
            bits = 0
            comps = path.split(".")
            designators = parse_member_path(path)
            if designators is None:
                return None
            for n, (comp, idx) in enumerate(designators):
                if cur is None or cur.tag not in _COMPOSITE_TAGS:
                    return None
                found = self._find_member(cur, comp)
                if found is None:
                    return None
                off, m = found
                bits += off
                mtype = self._type_of(m)
                # One DW_TAG_array_type has a subrange per dimension (int a[4][2]); an element
                # may itself be an array through a typedef. ``dims`` are the dimensions of the
                # current array not yet indexed.
                dims: list[int | None] = []
                elem: _Die | None = None
                for i in idx:
                    if not dims:
                        arr = self._strip(mtype)
                        if arr is None or arr.tag != TAG_ARRAY:
                            return None
                        dims = self._array_dims(arr) or [None]
                        elem = self._type_of(arr)
                    inner = 1
                    for d in dims[1:]:
                        inner *= d or 0
                    bits += 8 * i * (self._size_of(elem) or 0) * inner
                    dims = dims[1:]
                    if not dims:
                        mtype = elem
                if dims and n == len(comps) - 1:     # a sub-array: a[2] of int a[4][2]
                    size = self._size_of(elem) or 0
                    for d in dims:
                        size *= d or 0
                    return MemberLocation(bits, size, 0, dims[0])
                if dims:
                    return None
                if n == len(comps) - 1:
                    size = self._size_of(mtype) or 0
                    bit_size = int(m.attrs[AT_BIT_SIZE][1]) if AT_BIT_SIZE in m.attrs else 0
                    if bit_size == 8 * size and bits % 8 == 0:
                        bit_size = 0
                    length: int | None = None
                    stripped = self._strip(mtype)
                    if stripped is not None and stripped.tag == TAG_ARRAY:
                        dims = self._array_dims(stripped)
                        length = dims[0] if dims else None
                    return MemberLocation(bits, size, bit_size, length)
                cur = self._strip(mtype)
            return None
        result: MemberLocation | None = self._guard(run)
        return result

    def enumerators(self, enum_name: str) -> dict[str, int] | None:
        """Every enumerator of ``enum enum_name``; None when the kernel has no such enum."""
        def run() -> dict[str, int] | None:
            die = self._find((TAG_ENUMERATION,), enum_name)
            if die is None:
                return None
            signed = False
            base = self._strip(self._type_of(die))
            if base is not None and base.tag == TAG_BASE_TYPE:
                enc = base.attrs.get(AT_ENCODING)
                signed = enc is not None and enc[1] in (ATE_SIGNED, ATE_SIGNED_CHAR)
            out: dict[str, int] = {}
            for e in self._children(die):
                if e.tag != TAG_ENUMERATOR:
                    continue
                name = self._name(e)
                cv = e.attrs.get(AT_CONST_VALUE)
                if name is None or cv is None:
                    continue
                form, value = cv
                if isinstance(value, bytes):   # data16 / block: little-endian bytes
                    value = int.from_bytes(value, "little", signed=signed)
                elif signed and form in (FORM_DATA1, FORM_DATA2, FORM_DATA4, FORM_DATA8):
                    bits = {FORM_DATA1: 8, FORM_DATA2: 16, FORM_DATA4: 32, FORM_DATA8: 64}[form]
                    if value >= 1 << (bits - 1):
                        value -= 1 << bits
                out[name] = int(value)
            return out
        result: dict[str, int] | None = self._guard(run)
        return result

    def _indexed_address(self, unit: _Unit, index: int) -> int:
        """Entry ``index`` of the unit's contribution to ``.debug_addr`` (DWARF 5)."""
        top = self._read_die(unit, unit.info.die_offset)
        a = top.attrs.get(AT_ADDR_BASE) if top is not None else None
        base = int(a[1]) if a is not None else (8 if unit.info.offset_size == 4 else 16)
        asize = unit.info.address_size
        at = base + index * asize
        if at + asize > len(self._addr):
            raise _Corrupt(f"address index {index} is past the end of .debug_addr", ".debug_addr",
                           at)
        return int.from_bytes(bytes(self._addr.data[at:at + asize]), "little")

    def variable(self, name: str) -> VariableInfo | None:
        """A global variable's link-time address and type size (nice-to-have; best effort)."""
        def run() -> VariableInfo | None:
            die = self._find((TAG_VARIABLE,), name)
            if die is None:
                return None
            address: int | None = None
            typed = die
            spec = die.attrs.get(AT_SPECIFICATION)
            if AT_TYPE not in die.attrs and spec is not None and spec[0] in _REF_FORMS:
                typed = self._read_die(die.unit, int(spec[1])) or die
            loc = die.attrs.get(AT_LOCATION)
            if loc is not None and isinstance(loc[1], bytes):
                expr = loc[1]
                asize = die.unit.info.address_size
                if len(expr) == 1 + asize and expr[0] == OP_ADDR:
                    address = int.from_bytes(expr[1:], "little")
                elif expr and expr[0] in (OP_ADDRX, OP_GNU_ADDR_INDEX):
                    index, end = _uleb(expr, 1)
                    if end == len(expr):
                        address = self._indexed_address(die.unit, index)
            return VariableInfo(name, address, self._size_of(self._type_of(typed)), die.offset)
        result: VariableInfo | None = self._guard(run)
        return result


# ---- drgn ---------------------------------------------------------------------------------------

def drgn_available() -> bool:
    """True when the :mod:`drgn` module can be imported."""
    try:
        import drgn  # noqa: F401
    except ImportError:
        return False
    return True


def load_drgn_program(path: str) -> Any:
    """A :class:`drgn.Program` holding only the DWARF of the vmlinux at ``path``.

    Without a core dump drgn 0.3 creates no modules, so ``load_debug_info([path])`` ignores the
    file ("did not match any loaded modules"); an extra module forced onto the file works.
    """
    import drgn

    prog = drgn.Program()
    try:
        module = prog.extra_module(path, create=True)
        module.try_file(path, force=True)
    except Exception as e:
        raise CorruptError(f"drgn could not load the debug info: {e}", path=path) from None
    if module.debug_file_status != drgn.ModuleFileStatus.HAVE:
        raise MissingDataError("drgn found no usable debug info", path=path)
    return prog


class DrgnTypeSource:
    """The same questions answered by drgn's DWARF indexer (needs :mod:`drgn`).

    drgn indexes every unit with parallel C code, so this is the fast path when drgn is installed;
    tests compare it with :class:`DwarfTypeSource`, which does not depend on it.
    """

    kind = "dwarf"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            import drgn
        except ImportError:
            raise UnsupportedError("drgn is not installed", path=os.fspath(path)) from None
        self.path = os.fspath(path)
        if not Path(self.path).is_file():
            raise MissingDataError("no such vmlinux", path=self.path)
        self._drgn = drgn
        self.prog = load_drgn_program(self.path)

    def describe(self) -> str:
        """The vmlinux path, read through drgn."""
        return f"{self.path} .debug_info (via drgn)"

    def _lookup(self, type_name: str) -> Any:
        for spelling in (f"struct {type_name}", f"union {type_name}"):
            try:
                return self.prog.type(spelling)
            except LookupError:
                pass
        try:
            t = self.prog.type(type_name)
        except (LookupError, SyntaxError):
            return None
        if t.unqualified().kind == self._drgn.TypeKind.TYPEDEF:
            real = t
            while real.kind == self._drgn.TypeKind.TYPEDEF:
                real = real.type
            if real.kind in (self._drgn.TypeKind.STRUCT, self._drgn.TypeKind.UNION):
                return t
        return None

    def type_size(self, type_name: str) -> int | None:
        """``sizeof`` the struct, union or typedef to one."""
        t = self._lookup(type_name)
        if t is None:
            return None
        try:
            return int(self._drgn.sizeof(t))
        except TypeError:
            return None

    def member(self, type_name: str, path: str) -> MemberLocation | None:
        """Location of the dotted ``path`` in ``type_name``, via drgn's member lookup."""
        drgn = self._drgn
        t = self._lookup(type_name)
        if t is None:
            return None
        bits = 0
        m = None
        mt = None
        designators = parse_member_path(path)
        if designators is None:
            return None
        for comp, idx in designators:
            while t.kind == drgn.TypeKind.TYPEDEF:
                t = t.type
            if t.kind not in (drgn.TypeKind.STRUCT, drgn.TypeKind.UNION):
                return None
            try:
                m = t.member(comp)
            except LookupError:
                return None
            bits += m.bit_offset
            mt = m.type
            for i in idx:
                while mt.kind == drgn.TypeKind.TYPEDEF:
                    mt = mt.type
                if mt.kind != drgn.TypeKind.ARRAY:
                    return None
                mt = mt.type
                bits += 8 * i * int(drgn.sizeof(mt))
            t = mt
        assert m is not None and mt is not None
        try:
            size = int(drgn.sizeof(mt))
        except TypeError:
            size = 0
        bit_size = int(m.bit_field_size or 0) if not idx else 0
        if bit_size == 8 * size and bits % 8 == 0:
            bit_size = 0
        real = mt
        while real.kind == drgn.TypeKind.TYPEDEF:
            real = real.type
        length = None
        if real.kind == drgn.TypeKind.ARRAY:
            length = real.length if real.length is not None else None
        return MemberLocation(bits, size, bit_size, length)

    def enumerators(self, enum_name: str) -> dict[str, int] | None:
        """Every enumerator of ``enum enum_name``."""
        try:
            t = self.prog.type(f"enum {enum_name}")
        except LookupError:
            return None
        if t.enumerators is None:
            return None
        return {e.name: int(e.value) for e in t.enumerators}
