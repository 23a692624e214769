"""BTF (BPF Type Format): parse the kernel's own type information from bytes.

This module is the on-disk-format module for BTF as described by ``include/uapi/linux/btf.h`` and
``Documentation/bpf/btf.rst``. It parses from ``bytes``/``memoryview``/``mmap`` and never opens
files, except in the edge function :func:`load_btf` at the bottom.

A BTF blob is ``struct btf_header`` followed (at offsets relative to the end of the header) by a
type section of ``struct btf_type`` records, each followed by kind-specific data, and a string
section of NUL-terminated names. Type id 0 is ``void``; the first record in the type section is
type id 1. Split BTF (kernel modules) continues a base BTF: its first type id is one past the base's
last, and its string offsets continue after the base's string section.

Parsing is a single linear pass that records where each type starts; everything else (records,
the name index, the enumerator index, sizes) is decoded lazily and cached. See docs/btf.md.
"""

from __future__ import annotations

import array
import mmap
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt
from cachetools import LRUCache

from .cpath import parse_member_path
from .errors import CorruptError, KdlayoutError, MissingDataError, UnsupportedError

if TYPE_CHECKING:
    from os import PathLike

BTF_MAGIC: Final = 0xEB9F
BTF_VERSION: Final = 1
BTF_HEADER_SIZE: Final = 24  # struct btf_header as of v4.18: magic..str_len
BTF_HEADER_MAX: Final = 4096  # a header larger than this is not plausible (the kernel uses a page)
BTF_MAX_VLEN: Final = 0xFFFF
_MAX_NESTING: Final = 256  # anonymous struct/union nesting; the kernel's is under 10


class BtfKind(IntEnum):
    """``BTF_KIND_*`` from include/uapi/linux/btf.h."""

    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


BTF_KIND_UNKN: Final = BtfKind.UNKN
BTF_KIND_INT: Final = BtfKind.INT
BTF_KIND_PTR: Final = BtfKind.PTR
BTF_KIND_ARRAY: Final = BtfKind.ARRAY
BTF_KIND_STRUCT: Final = BtfKind.STRUCT
BTF_KIND_UNION: Final = BtfKind.UNION
BTF_KIND_ENUM: Final = BtfKind.ENUM
BTF_KIND_FWD: Final = BtfKind.FWD
BTF_KIND_TYPEDEF: Final = BtfKind.TYPEDEF
BTF_KIND_VOLATILE: Final = BtfKind.VOLATILE
BTF_KIND_CONST: Final = BtfKind.CONST
BTF_KIND_RESTRICT: Final = BtfKind.RESTRICT
BTF_KIND_FUNC: Final = BtfKind.FUNC
BTF_KIND_FUNC_PROTO: Final = BtfKind.FUNC_PROTO
BTF_KIND_VAR: Final = BtfKind.VAR
BTF_KIND_DATASEC: Final = BtfKind.DATASEC
BTF_KIND_FLOAT: Final = BtfKind.FLOAT
BTF_KIND_DECL_TAG: Final = BtfKind.DECL_TAG
BTF_KIND_TYPE_TAG: Final = BtfKind.TYPE_TAG
BTF_KIND_ENUM64: Final = BtfKind.ENUM64
BTF_KIND_MAX: Final = BtfKind.ENUM64

# INT encoding bits (BTF_INT_ENCODING of the u32 after an INT's btf_type).
BTF_INT_SIGNED: Final = 1 << 0
BTF_INT_CHAR: Final = 1 << 1
BTF_INT_BOOL: Final = 1 << 2

# VAR linkage (struct btf_var) and FUNC linkage (vlen of a FUNC).
BTF_VAR_STATIC: Final = 0
BTF_VAR_GLOBAL_ALLOCATED: Final = 1
BTF_VAR_GLOBAL_EXTERN: Final = 2
BTF_FUNC_STATIC: Final = 0
BTF_FUNC_GLOBAL: Final = 1
BTF_FUNC_EXTERN: Final = 2

# Size in 32-bit words of the data after struct btf_type: (fixed words, words per vlen entry).
_EXTRA_WORDS: Final[dict[int, tuple[int, int]]] = {
    BtfKind.INT: (1, 0),
    BtfKind.PTR: (0, 0),
    BtfKind.ARRAY: (3, 0),
    BtfKind.STRUCT: (0, 3),
    BtfKind.UNION: (0, 3),
    BtfKind.ENUM: (0, 2),
    BtfKind.FWD: (0, 0),
    BtfKind.TYPEDEF: (0, 0),
    BtfKind.VOLATILE: (0, 0),
    BtfKind.CONST: (0, 0),
    BtfKind.RESTRICT: (0, 0),
    BtfKind.FUNC: (0, 0),
    BtfKind.FUNC_PROTO: (0, 2),
    BtfKind.VAR: (1, 0),
    BtfKind.DATASEC: (0, 3),
    BtfKind.FLOAT: (0, 0),
    BtfKind.DECL_TAG: (1, 0),
    BtfKind.TYPE_TAG: (0, 0),
    BtfKind.ENUM64: (0, 3),
}
# Per-kind lookup tables for the hot parse loop (index = kind; kind 0 and unknown kinds are -1).
_FIXED = [-1] * 32
_PER_VLEN = [0] * 32
for _k, (_f, _v) in _EXTRA_WORDS.items():
    _FIXED[_k] = _f
    _PER_VLEN[_k] = _v

_KINDS: Final = [BtfKind(k) if k <= BTF_KIND_MAX else BtfKind.UNKN for k in range(32)]

# Kinds whose third btf_type word is a size, and kinds whose third word is a type id.
_SIZED_KINDS: Final = frozenset({BtfKind.INT, BtfKind.STRUCT, BtfKind.UNION, BtfKind.ENUM,
                                 BtfKind.ENUM64, BtfKind.FLOAT, BtfKind.DATASEC})
_REF_KINDS: Final = frozenset({BtfKind.PTR, BtfKind.TYPEDEF, BtfKind.VOLATILE, BtfKind.CONST,
                               BtfKind.RESTRICT, BtfKind.FUNC, BtfKind.FUNC_PROTO, BtfKind.VAR,
                               BtfKind.DECL_TAG, BtfKind.TYPE_TAG})
# Kinds resolve() looks through.
_TRANSPARENT_KINDS: Final = frozenset({BtfKind.TYPEDEF, BtfKind.VOLATILE, BtfKind.CONST,
                                       BtfKind.RESTRICT, BtfKind.TYPE_TAG})
_COMPOSITE_KINDS: Final = frozenset({BtfKind.STRUCT, BtfKind.UNION})
_ENUM_KINDS: Final = frozenset({BtfKind.ENUM, BtfKind.ENUM64})

_HEADER = struct.Struct("<HBBIIIII")
_HEADER_BE = struct.Struct(">HBBIIIII")


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BtfHeader:
    """``struct btf_header``; section offsets are relative to the end of the header."""

    magic: int
    version: int
    flags: int
    hdr_len: int
    type_off: int
    type_len: int
    str_off: int
    str_len: int
    big_endian: bool

    @property
    def blob_size(self) -> int:
        """Bytes the whole BTF blob spans: header plus the furthest-reaching section."""
        return self.hdr_len + max(self.type_off + self.type_len, self.str_off + self.str_len)


@dataclass(frozen=True, slots=True)
class BtfInt:
    """The u32 after an INT: ``BTF_INT_ENCODING``, ``BTF_INT_OFFSET``, ``BTF_INT_BITS``."""

    encoding: int
    offset: int
    bits: int

    @property
    def signed(self) -> bool:
        """BTF_INT_SIGNED is set."""
        return bool(self.encoding & BTF_INT_SIGNED)


@dataclass(frozen=True, slots=True)
class BtfArray:
    """``struct btf_array``."""

    type: int
    index_type: int
    nelems: int


@dataclass(frozen=True, slots=True)
class BtfMember:
    """``struct btf_member`` decoded: with the struct's kind_flag, ``offset`` holds the bitfield
    size in its top 8 bits and the bit offset in its low 24 bits; without it, all 32 bits are the
    bit offset (and a bitfield is described by the member's INT type)."""

    name: str
    type: int
    bit_offset: int
    bitfield_size: int


@dataclass(frozen=True, slots=True)
class BtfEnum:
    """One enumerator (``struct btf_enum`` or ``struct btf_enum64``), value already signed or
    unsigned according to the enum's kind_flag."""

    name: str
    val: int


@dataclass(frozen=True, slots=True)
class BtfParam:
    """``struct btf_param`` of a FUNC_PROTO (type 0 with no name: variadic ``...``)."""

    name: str
    type: int


@dataclass(frozen=True, slots=True)
class BtfVarSecinfo:
    """``struct btf_var_secinfo`` of a DATASEC."""

    type: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class BtfType:
    """One decoded ``struct btf_type`` with its kind-specific data.

    ``size`` is set for INT, STRUCT, UNION, ENUM, ENUM64, FLOAT and DATASEC; ``type`` for PTR,
    TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO (return type), VAR, DECL_TAG, TYPE_TAG.
    """

    id: int
    kind: BtfKind
    name: str
    kind_flag: bool
    vlen: int
    size: int | None
    type: int | None
    offset: int  # byte offset of the btf_type record in the blob this type came from
    int_info: BtfInt | None = None
    array: BtfArray | None = None
    members: tuple[BtfMember, ...] = ()
    enumerators: tuple[BtfEnum, ...] = ()
    params: tuple[BtfParam, ...] = ()
    secinfos: tuple[BtfVarSecinfo, ...] = ()
    linkage: int | None = None  # VAR (struct btf_var) and FUNC (its vlen)
    component_idx: int | None = None  # DECL_TAG

    @property
    def kind_name(self) -> str:
        """The kind as bpftool prints it: ``"STRUCT"``, ``"ENUM64"``, ..."""
        return self.kind.name

    @property
    def fwd_is_union(self) -> bool:
        """For a FWD: kind_flag set means ``union``, clear means ``struct``."""
        return self.kind == BtfKind.FWD and self.kind_flag


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """Where a (possibly nested) member lives inside a struct/union.

    ``bit_offset`` is from the start of the outermost struct; ``bit_size`` is the bitfield width or
    ``8 * byte_size`` for an ordinary member; ``byte_size`` is the size of the member's type.
    """

    bit_offset: int
    bit_size: int
    byte_size: int
    type_id: int

    @property
    def byte_offset(self) -> int:
        """``bit_offset // 8`` (for a bitfield: the byte holding its first bit)."""
        return self.bit_offset // 8

    @property
    def is_bitfield(self) -> bool:
        """The member does not occupy whole bytes of its type's size."""
        return self.bit_size != 8 * self.byte_size or self.bit_offset % 8 != 0


@dataclass(frozen=True, slots=True)
class VarInfo:
    """A VAR and, when a DATASEC lists it, its section, offset and size there."""

    type_id: int
    var_type: int
    linkage: int
    datasec: str | None
    offset: int | None
    size: int | None


# --------------------------------------------------------------------------------------------
# Header
# --------------------------------------------------------------------------------------------


def parse_header(data: bytes | bytearray | memoryview, *, source: str, base_offset: int = 0,
                 avail: int | None = None) -> BtfHeader:
    """Parse and validate ``struct btf_header`` at the start of ``data``.

    Validates magic, version, hdr_len and that both sections lie inside ``data`` (which may extend
    past the blob; ``avail``, if given, replaces ``len(data)`` for that check). ``base_offset`` is
    added to offsets in error messages. Raises
    :class:`CorruptError` / :class:`UnsupportedError`.
    """
    mv = memoryview(data).cast("B")
    n = len(mv)
    if n < 4:
        raise CorruptError(f"BTF header truncated: {n} bytes", path=source, offset=base_offset)
    magic_le = mv[0] | (mv[1] << 8)
    if magic_le == BTF_MAGIC:
        fmt, big = _HEADER, False
    elif magic_le == 0x9FEB:
        fmt, big = _HEADER_BE, True
    else:
        raise CorruptError(f"bad BTF magic {magic_le:#06x} (want {BTF_MAGIC:#06x})", path=source,
                           offset=base_offset)
    version = mv[2]
    if version != BTF_VERSION:
        raise UnsupportedError(f"BTF version {version} (only version {BTF_VERSION} is known)",
                               path=source, offset=base_offset + 2)
    if n < 8:
        raise CorruptError(f"BTF header truncated: {n} bytes", path=source, offset=base_offset + n)
    hdr_len = struct.unpack_from(">I" if big else "<I", mv, 4)[0]
    if hdr_len < BTF_HEADER_SIZE:
        raise CorruptError(f"BTF hdr_len {hdr_len} smaller than the {BTF_HEADER_SIZE}-byte header",
                           path=source, offset=base_offset + 4)
    if hdr_len > BTF_HEADER_MAX or hdr_len % 4:
        raise CorruptError(f"implausible BTF hdr_len {hdr_len}", path=source,
                           offset=base_offset + 4)
    if n < hdr_len:
        raise CorruptError(f"BTF header truncated: hdr_len {hdr_len} but only {n} bytes",
                           path=source, offset=base_offset + n)
    _, _, flags, _, type_off, type_len, str_off, str_len = fmt.unpack_from(mv, 0)
    # Bytes of a newer, larger header (hdr_len > 24) are skipped: their sections, if any, are
    # not needed to read types and strings. ``avail`` lets a scanner check the sections against
    # a region larger than the bytes it passed.
    avail = (n if avail is None else avail) - hdr_len
    for name, off, length, where in (("type", type_off, type_len, 8), ("string", str_off, str_len,
                                                                          16)):
        if off > avail or length > avail - off:
            raise CorruptError(f"BTF {name} section [{off:#x}, +{length:#x}) runs past the end of "
                               f"the data ({avail:#x} bytes after the header)", path=source,
                               offset=base_offset + where)
    if type_off % 4 or type_len % 4:
        raise CorruptError(f"BTF type section not 4-byte aligned (type_off {type_off:#x}, "
                           f"type_len {type_len:#x})", path=source, offset=base_offset + 8)
    if type_len and str_len and not (type_off + type_len <= str_off or str_off + str_len <= type_off):
        raise CorruptError("BTF type and string sections overlap", path=source,
                           offset=base_offset + 8)
    return BtfHeader(BTF_MAGIC, version, flags, hdr_len, type_off, type_len, str_off, str_len, big)


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------


class Btf:
    """A parsed BTF blob (base or split). Build with :meth:`Btf.parse`.

    Type ids of a split BTF continue the base's (``start_id == base.nr_types``); lookups on a split
    BTF see the base's types and strings too.
    """

    header: BtfHeader
    source: str
    base: Btf | None
    start_id: int  # first type id defined by this blob (1 for a base BTF)
    nr_types: int  # one past the last type id, i.e. the count including void and any base types
    _base_offset: int
    _type_start: int
    _str_start: int
    _strings: bytes
    _base_str_len: int
    _total_str_len: int
    _words: array.array[int]
    _starts: array.array[int]
    _np_words: npt.NDArray[np.uint32] | None
    _type_cache: LRUCache[int, BtfType]
    _size_cache: LRUCache[int, int]
    _member_cache: LRUCache[tuple[int, str], tuple[int, BtfMember] | None]
    _name_index: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None
    _enum_index: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64],
                       npt.NDArray[np.int64]] | None
    _np_meta: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64],
                    npt.NDArray[np.int64]] | None
    _hits_cache: LRUCache[str, npt.NDArray[np.int64]]
    _suffixes: dict[bytes, list[int]] | None
    _find_cache: LRUCache[str, list[int]]
    _var_index: dict[int, tuple[str, BtfVarSecinfo]] | None
    _ptr_size: int | None

    def __init__(self) -> None:  # use Btf.parse
        raise TypeError("use Btf.parse()")

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview, *, base: Btf | None = None,
              source: str, base_offset: int = 0) -> Btf:
        """Parse a BTF blob from ``data`` (which may extend past the blob).

        ``base`` is the base BTF for split BTF (a kernel module's BTF on top of vmlinux).
        ``source`` names the input in error messages; ``base_offset`` is where ``data`` starts in
        that input. Costs one linear pass over the type section; raises :class:`CorruptError` for
        malformed input and :class:`UnsupportedError` for an unknown kind or version.
        """
        self = object.__new__(cls)
        hdr = parse_header(data, source=source, base_offset=base_offset)
        self.header = hdr
        self.source = source
        self.base = base
        self._base_offset = base_offset
        mv = memoryview(data).cast("B")
        tstart = hdr.hdr_len + hdr.type_off
        sstart = hdr.hdr_len + hdr.str_off
        self._type_start = tstart  # byte offset of the type section within the blob
        self._str_start = sstart
        # The string section is copied (it is small) so that lookups are bytes.find/slices.
        self._strings = bytes(mv[sstart:sstart + hdr.str_len])
        self._base_str_len = base._total_str_len if base is not None else 0
        self._total_str_len = self._base_str_len + hdr.str_len
        if base is None and (hdr.str_len == 0 or self._strings[0] != 0):
            raise CorruptError("BTF string section does not start with an empty string",
                               path=source, offset=base_offset + sstart)
        if hdr.str_len and self._strings[-1] != 0:
            raise CorruptError("BTF string section is not NUL-terminated", path=source,
                               offset=base_offset + sstart + hdr.str_len - 1)
        words = array.array("I")
        words.frombytes(mv[tstart:tstart + hdr.type_len])
        if hdr.big_endian != (sys.byteorder == "big"):
            words.byteswap()
        self._words = words
        self.start_id = base.nr_types if base is not None else 1
        self._starts = self._index_types()
        self.nr_types = self.start_id + len(self._starts)
        self._np_words = None
        self._type_cache = LRUCache(maxsize=1 << 16)
        self._size_cache = LRUCache(maxsize=1 << 16)
        self._member_cache = LRUCache(maxsize=1 << 16)
        self._name_index = None
        self._enum_index = None
        self._np_meta = None
        self._hits_cache = LRUCache(maxsize=4096)
        self._suffixes = None
        self._find_cache = LRUCache(maxsize=4096)
        self._var_index = None
        self._ptr_size = None
        return self

    def _index_types(self) -> array.array[int]:
        """One linear pass: word index of every btf_type record; validates kinds and extents."""
        words = self._words
        n = len(words)
        fixed = _FIXED
        per_vlen = _PER_VLEN
        starts = array.array("I")
        append = starts.append
        i = 0
        while i < n:
            if i + 3 > n:
                raise CorruptError("BTF type record truncated at the end of the type section",
                                   path=self.source, offset=self._woff(i))
            info = words[i + 1]
            kind = (info >> 24) & 0x1F
            f = fixed[kind]
            if f < 0:
                if kind == 0:
                    raise CorruptError("BTF type of kind 0 (BTF_KIND_UNKN)", path=self.source,
                                       offset=self._woff(i + 1))
                raise UnsupportedError(f"unknown BTF kind {kind}", path=self.source,
                                       offset=self._woff(i + 1))
            nxt = i + 3 + f + (info & 0xFFFF) * per_vlen[kind]
            if nxt > n:
                raise CorruptError(f"BTF {BtfKind(kind).name} with vlen {info & 0xFFFF} runs past "
                                   f"the end of the type section", path=self.source,
                                   offset=self._woff(i))
            append(i)
            i = nxt
        return starts

    def _woff(self, word: int) -> int:
        """Byte offset in the input of word ``word`` of the type section."""
        return self._base_offset + self._type_start + 4 * word

    # ---- strings -----------------------------------------------------------------------------

    def string(self, off: int, *, at: int | None = None) -> str:
        """The NUL-terminated string at string-section offset ``off`` (split-aware).

        ``at`` is the input byte offset of the field holding ``off`` (for error messages).
        """
        if off < self._base_str_len:
            assert self.base is not None
            return self.base.string(off, at=at)
        rel = off - self._base_str_len
        strings = self._strings
        if rel >= len(strings):
            raise CorruptError(f"BTF string offset {off:#x} outside the string section "
                               f"({self._total_str_len:#x} bytes)", path=self.source,
                               offset=at if at is not None else self._base_offset + self._str_start)
        # The section is NUL-terminated (checked in parse), so index() always succeeds.
        return strings[rel:strings.index(b"\0", rel)].decode("utf-8", "backslashreplace")

    # ---- types -------------------------------------------------------------------------------

    def _owner(self, type_id: int) -> Btf:
        btf: Btf | None = self
        while btf is not None:
            if type_id >= btf.start_id:
                if type_id >= btf.nr_types:
                    break
                return btf
            btf = btf.base
        raise CorruptError(f"BTF type id {type_id} out of range (1..{self.nr_types - 1})",
                           path=self.source)

    def __len__(self) -> int:
        """Number of type ids including void and base types (``nr_types``)."""
        return self.nr_types

    def __iter__(self) -> Iterator[BtfType]:
        """Every type defined by this blob (not the base's), in id order (not cached)."""
        cache = self._type_cache
        for tid in range(self.start_id, self.nr_types):
            t = cache.get(tid)
            yield t if t is not None else self._decode(tid)

    def check_id(self, type_id: int, *, at: int | None = None) -> int:
        """Return ``type_id`` if it names a type (0 = void is allowed), else raise CorruptError."""
        if not 0 <= type_id < self.nr_types:
            raise CorruptError(f"BTF type id {type_id} out of range (0..{self.nr_types - 1})",
                               path=self.source, offset=at)
        return type_id

    def kind(self, type_id: int) -> BtfKind:
        """The kind of ``type_id`` without decoding the whole record (void is UNKN)."""
        if type_id == 0:
            return BtfKind.UNKN
        btf = self._owner(type_id)
        return BtfKind((btf._words[btf._starts[type_id - btf.start_id] + 1] >> 24) & 0x1F)

    def type(self, type_id: int) -> BtfType:
        """Decode type ``type_id`` (cached; base types are decoded by the base).

        Raises :class:`CorruptError` for an id out of range and for 0 (void has no record), and
        for a bad string offset or type id inside the record (naming the field's offset)."""
        if type_id == 0:
            raise CorruptError("BTF type id 0 (void) has no record", path=self.source)
        btf = self._owner(type_id)
        if btf is not self:
            return btf.type(type_id)
        t = self._type_cache.get(type_id)
        if t is None:
            t = self._decode(type_id)
            self._type_cache[type_id] = t
        return t

    def _str_at(self, off: int, word: int) -> str:
        """String at ``off`` for the field in type-section word ``word`` (hot path of _decode)."""
        rel = off - self._base_str_len
        if rel >= 0:
            strings = self._strings
            if rel < len(strings):
                return strings[rel:strings.index(b"\0", rel)].decode("utf-8", "backslashreplace")
            return self.string(off, at=self._woff(word))  # raises CorruptError
        assert self.base is not None
        return self.base.string(off, at=self._woff(word))

    def _id_at(self, type_id: int, word: int) -> int:
        """``type_id`` read from type-section word ``word``, validated (hot path of _decode)."""
        if type_id < self.nr_types:
            return type_id
        return self.check_id(type_id, at=self._woff(word))  # raises CorruptError

    def _decode(self, type_id: int) -> BtfType:
        w = self._words
        i = self._starts[type_id - self.start_id]
        info = w[i + 1]
        k = (info >> 24) & 0x1F
        kind = _KINDS[k]
        kflag = bool(info >> 31)
        vlen = info & 0xFFFF
        string = self._str_at
        tid = self._id_at
        name = string(w[i], i)
        size: int | None = None
        ref: int | None = None
        if kind in _SIZED_KINDS:
            size = w[i + 2]
        elif kind in _REF_KINDS:
            ref = tid(w[i + 2], i + 2)
        int_info: BtfInt | None = None
        arr: BtfArray | None = None
        members: tuple[BtfMember, ...] = ()
        enumerators: tuple[BtfEnum, ...] = ()
        params: tuple[BtfParam, ...] = ()
        secinfos: tuple[BtfVarSecinfo, ...] = ()
        linkage: int | None = None
        component_idx: int | None = None
        j = i + 3
        if k == 4 or k == 5:  # STRUCT, UNION
            # With kind_flag (Linux kernel commit 9d5f9f701b18 ("bpf: btf: fix struct/union/fwd
            # types with kind_flag") (in v5.0)) offset = bitfield_size << 24 | bit_offset.
            if kflag:
                members = tuple(BtfMember(string(w[b], b), tid(w[b + 1], b + 1),
                                          w[b + 2] & 0xFFFFFF, w[b + 2] >> 24)
                                for b in range(j, j + 3 * vlen, 3))
            else:
                members = tuple(BtfMember(string(w[b], b), tid(w[b + 1], b + 1), w[b + 2], 0)
                                for b in range(j, j + 3 * vlen, 3))
        elif k == 13:  # FUNC_PROTO
            params = tuple(BtfParam(string(w[b], b), tid(w[b + 1], b + 1))
                           for b in range(j, j + 2 * vlen, 2))
        elif k == 1:  # INT
            v = w[j]
            int_info = BtfInt((v >> 24) & 0x0F, (v >> 16) & 0xFF, v & 0xFF)
        elif k == 3:  # ARRAY
            arr = BtfArray(tid(w[j], j), tid(w[j + 1], j + 1), w[j + 2])
        elif k == 6:  # ENUM
            # kind_flag set = signed, since Linux kernel commit 6089fb325cf7 ("bpf: Add btf
            # enum64 support") (in v6.0); older BTF never sets it and values read as unsigned.
            enums = []
            for b in range(j, j + 2 * vlen, 2):
                val = w[b + 1]
                if kflag and val & 0x80000000:
                    val -= 1 << 32
                enums.append(BtfEnum(string(w[b], b), val))
            enumerators = tuple(enums)
        elif k == 19:  # ENUM64
            enums = []
            for b in range(j, j + 3 * vlen, 3):
                val = w[b + 1] | (w[b + 2] << 32)
                if kflag and val >> 63:
                    val -= 1 << 64
                enums.append(BtfEnum(string(w[b], b), val))
            enumerators = tuple(enums)
        elif k == 14:  # VAR
            linkage = w[j]
        elif k == 12:  # FUNC
            linkage = vlen
        elif k == 15:  # DATASEC
            secinfos = tuple(BtfVarSecinfo(tid(w[b], b), w[b + 1], w[b + 2])
                             for b in range(j, j + 3 * vlen, 3))
        elif k == 17:  # DECL_TAG
            v = w[j]
            component_idx = v - (1 << 32) if v & 0x80000000 else v
        return BtfType(type_id, kind, name, kflag, vlen, size, ref, self._woff(i), int_info,
                       arr, members, enumerators, params, secinfos, linkage, component_idx)

    def check(self) -> None:
        """Validate the whole blob, vectorised: every name/member/enumerator/parameter string
        offset, every referenced type id, and the absence of loops through typedefs, qualifiers,
        type tags and arrays, and of structs/unions containing themselves by value.

        Raises :class:`CorruptError` naming the byte offset of the first bad field found.
        """
        if not self._starts:
            return
        w = self._words_np().astype(np.int64)
        starts = np.frombuffer(self._starts, dtype=np.uint32).astype(np.int64)
        info = w[starts + 1]
        kinds = (info >> 24) & 0x1F
        vlens = info & 0xFFFF
        nstr = self._total_str_len
        ntypes = self.nr_types

        def fail_if(bad: npt.NDArray[np.bool_], pos: npt.NDArray[np.int64], what: str) -> None:
            """CorruptError at the lowest ``pos`` where ``bad`` holds."""
            hits = np.nonzero(bad)[0]
            if hits.size:
                p = int(pos[hits].min())
                raise CorruptError(f"BTF {what} {int(w[p]):#x} out of range", path=self.source,
                                   offset=self._woff(p))

        fail_if(w[starts] >= nstr, starts, "name offset")
        ref = np.isin(kinds, [int(k) for k in _REF_KINDS])
        fail_if(ref & (w[starts + 2] >= ntypes), starts + 2, "type id")
        arr = starts[kinds == BtfKind.ARRAY]
        fail_if(w[arr + 3] >= ntypes, arr + 3, "array element type id")
        fail_if(w[arr + 4] >= ntypes, arr + 4, "array index type id")

        def entries(sel: npt.NDArray[np.bool_], step: int) -> npt.NDArray[np.int64]:
            """Word index of every vlen entry of the selected types."""
            return self._vlen_entries(sel, step)[0]

        comp_sel = (kinds == BtfKind.STRUCT) | (kinds == BtfKind.UNION)
        mem = entries(comp_sel, 3)
        fail_if(w[mem] >= nstr, mem, "member name offset")
        fail_if(w[mem + 1] >= ntypes, mem + 1, "member type id")
        for k, step in ((BtfKind.ENUM, 2), (BtfKind.ENUM64, 3), (BtfKind.FUNC_PROTO, 2)):
            e = entries(kinds == k, step)
            fail_if(w[e] >= nstr, e, "enumerator/parameter name offset")
            if k == BtfKind.FUNC_PROTO:
                fail_if(w[e + 1] >= ntypes, e + 1, "parameter type id")
        ds = entries(kinds == BtfKind.DATASEC, 3)
        fail_if(w[ds] >= ntypes, ds, "DATASEC variable type id")

        # Loops through typedef/qualifier/tag/array chains: in the functional graph "id -> the
        # id it stands for", pointer doubling reaches the terminal 0 from every id not on a loop.
        first_id = self.start_id
        nxt = np.zeros(ntypes, dtype=np.int64)
        chain = np.isin(kinds, [int(k) for k in _TRANSPARENT_KINDS])
        ids = np.arange(first_id, ntypes, dtype=np.int64)
        nxt[ids[chain]] = w[starts[chain] + 2]
        is_arr = kinds == BtfKind.ARRAY
        nxt[ids[is_arr]] = w[starts[is_arr] + 3]
        nxt[:first_id] = 0  # base types were checked with the base
        jump = nxt.copy()
        steps = 1
        while steps < ntypes:
            jump = jump[jump]
            steps *= 2
        looping = np.nonzero(jump[first_id:])[0]
        if looping.size:
            tid = first_id + int(looping[0])
            raise CorruptError(f"BTF type loop through type id {tid} (typedef/qualifier/array "
                               f"chain)", path=self.source, offset=self._offset_of(tid))

        # Structs/unions containing themselves by value: edges struct -> the struct/union its
        # member's type stands for (through chains, arrays included); colour DFS over composites.
        # f(x) = what x stands for, or x itself at a chain's end; doubling gives the chain ends.
        term = np.where(nxt != 0, nxt, np.arange(ntypes, dtype=np.int64))
        steps = 1
        while steps < ntypes:
            term = term[term]
            steps *= 2
        comp_ids = ids[comp_sel]
        owners = np.repeat(comp_ids, vlens[comp_sel])
        targets = term[w[mem + 1]] if mem.size else np.zeros(0, dtype=np.int64)
        is_comp = np.zeros(ntypes, dtype=bool)
        is_comp[comp_ids] = True
        keep = is_comp[targets] & (targets >= first_id)
        graph: dict[int, list[int]] = {}
        for o, t in zip(owners[keep].tolist(), targets[keep].tolist(), strict=True):
            graph.setdefault(o, []).append(t)
        state: dict[int, int] = {}  # 1 = on stack, 2 = done
        for root in graph:
            if root in state:
                continue
            stack: list[tuple[int, int]] = [(root, 0)]
            state[root] = 1
            while stack:
                node, i = stack[-1]
                succ = graph.get(node, [])
                if i < len(succ):
                    stack[-1] = (node, i + 1)
                    nx = succ[i]
                    st = state.get(nx)
                    if st == 1:
                        raise CorruptError(f"BTF struct/union {nx} contains itself by value",
                                           path=self.source, offset=self._offset_of(nx))
                    if st is None:
                        state[nx] = 1
                        stack.append((nx, 0))
                else:
                    state[node] = 2
                    stack.pop()

    # ---- name index --------------------------------------------------------------------------

    def _words_np(self) -> npt.NDArray[np.uint32]:
        if self._np_words is None:
            self._np_words = np.frombuffer(self._words, dtype=np.uint32)
        return self._np_words

    def _meta(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(word index of each type, its kind, its vlen) as arrays, for vectorised indexes."""
        if self._np_meta is None:
            starts = np.frombuffer(self._starts, dtype=np.uint32).astype(np.int64)
            info = self._words_np()[starts + 1].astype(np.int64)
            self._np_meta = (starts, (info >> 24) & 0x1F, info & 0xFFFF)
        return self._np_meta

    def _vlen_entries(self, sel: npt.NDArray[np.bool_], step: int
                      ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Word index of every vlen entry of the selected types, and each entry's type index."""
        starts, _, vlens = self._meta()
        vl = vlens[sel]
        owners = np.nonzero(sel)[0].astype(np.int64)
        total = int(vl.sum())
        if total == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        first = np.repeat(np.cumsum(vl) - vl, vl)
        pos: npt.NDArray[np.int64] = np.repeat(starts[sel] + 3, vl) + step * (
            np.arange(total, dtype=np.int64) - first)
        return pos, np.repeat(owners, vl)

    def _name_sorted(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The name index, built once: type name offsets sorted, and the type ids in that order.

        Validates every type's name offset (CorruptError naming the first bad one)."""
        if self._name_index is None:
            starts, _, _ = self._meta()
            name_offs = self._words_np()[starts].astype(np.int64)
            bad = np.nonzero(name_offs >= self._total_str_len)[0]
            if bad.size:
                k = int(bad[0])
                raise CorruptError(f"BTF type {self.start_id + k} name offset "
                                   f"{int(name_offs[k]):#x} outside the string section",
                                   path=self.source, offset=self._woff(int(starts[k])))
            order = np.argsort(name_offs, kind="stable")
            self._name_index = (name_offs[order], order.astype(np.int64) + self.start_id)
        return self._name_index

    def _suffix_names(self) -> dict[bytes, list[int]]:
        """Built once: the names that types and enumerators reach through an offset into the
        middle of a string (legal, if unusual: a shared suffix), each with those offsets
        (split-aware, ascending). Vectorised over the used name offsets only; the string section
        itself is never split into per-string objects (kernel BTF has no such offsets at all)."""
        if self._suffixes is None:
            base_len = self._base_str_len
            strings = self._strings
            used = np.concatenate([self._name_sorted()[0], self._enum_entries()[0]])
            used = used[(used >= base_len) & (used < self._total_str_len)] - base_len
            table: dict[bytes, list[int]] = {}
            if used.size:
                section = np.frombuffer(strings, dtype=np.uint8)
                inside = used > 0
                inside[inside] = section[used[inside] - 1] != 0  # not right after a NUL
                for rel in np.unique(used[inside]).tolist():
                    key = strings[rel:strings.index(b"\0", rel)]
                    table.setdefault(key, []).append(rel + base_len)
            self._suffixes = table
        return self._suffixes

    def _whole_strings(self, key: bytes) -> list[int]:
        """Offsets (split-aware, ascending) of every string of this blob's section equal to
        ``key`` (non-empty, no NUL): ``bytes.find`` of NUL-key-NUL, no index of all strings."""
        strings = self._strings
        base_len = self._base_str_len
        found: list[int] = []
        if strings.startswith(key + b"\0"):  # a split blob's section need not start with NUL
            found.append(base_len)
        needle = b"\0" + key + b"\0"
        at = strings.find(needle)
        while at >= 0:
            found.append(base_len + at + 1)
            at = strings.find(needle, at + 1)
        return found

    def string_offsets(self, name: str) -> npt.NDArray[np.int64]:
        """String offsets (split-aware, base included) at which type or enumerator names equal to
        ``name`` can be found: every string equal to it, and any shared-suffix offset that a type
        or enumerator actually uses."""
        hit = self._hits_cache.get(name)
        if hit is not None:
            return hit
        base_hits = (self.base.string_offsets(name) if self.base is not None
                     else np.zeros(0, dtype=np.int64))
        own: list[int] = []
        if name:
            try:
                key = name.encode("utf-8")
            except UnicodeEncodeError:
                key = b""
            if key and b"\0" not in key:
                own = self._whole_strings(key) + self._suffix_names().get(key, [])
        hit = np.concatenate([base_hits, np.array(own, dtype=np.int64)])
        self._hits_cache[name] = hit
        return hit

    def _find_own(self, name: str) -> list[int]:
        cached = self._find_cache.get(name)
        if cached is not None:
            return cached
        offs, ids = self._name_sorted()
        hits = self.string_offsets(name)
        found: list[int] = []
        if hits.size and offs.size:
            lo = np.searchsorted(offs, hits, "left")
            hi = np.searchsorted(offs, hits, "right")
            for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
                found.extend(ids[a:b].tolist())
            found.sort()
        self._find_cache[name] = found
        return found

    def find(self, name: str, kind: BtfKind | int | tuple[BtfKind | int, ...] | None = None
             ) -> list[int]:
        """Type ids named ``name`` (base types first), optionally only of ``kind`` (or kinds)."""
        ids = self.base.find(name, kind) if self.base is not None else []
        mine = self._find_own(name)
        if kind is None:
            return ids + mine
        kinds = (kind,) if isinstance(kind, int) else kind
        return ids + [t for t in mine if self.kind(t) in kinds]

    def find_one(self, name: str, kind: BtfKind | int | tuple[BtfKind | int, ...] | None = None
                 ) -> int:
        """The first type named ``name`` (of ``kind``); complete definitions win over FWDs.

        Raises :class:`MissingDataError` if there is none.
        """
        ids = self.find(name, kind)
        if not ids:
            what = f"{BtfKind(kind).name} " if isinstance(kind, int) else ""
            raise MissingDataError(f"no BTF {what}type named {name!r}", path=self.source)
        for t in ids:
            if self.kind(t) != BtfKind.FWD:
                return t
        return ids[0]

    # ---- resolving ---------------------------------------------------------------------------

    def resolve(self, type_id: int) -> int:
        """Follow typedefs, cv-qualifiers (const/volatile/restrict) and type tags to the
        underlying type id (0 for void). Raises :class:`CorruptError` on a loop."""
        seen: set[int] = set()
        while type_id and self.kind(type_id) in _TRANSPARENT_KINDS:
            if type_id in seen:
                raise CorruptError(f"BTF type loop through type id {type_id}", path=self.source,
                                   offset=self._offset_of(type_id))
            seen.add(type_id)
            ref = self.type(type_id).type
            assert ref is not None
            type_id = ref
        return type_id

    def _offset_of(self, type_id: int) -> int | None:
        try:
            btf = self._owner(type_id)
        except CorruptError:
            return None
        return btf._woff(btf._starts[type_id - btf.start_id])

    @property
    def ptr_size(self) -> int:
        """Pointer size: BTF does not record it; taken from the INT ``long`` (default 8)."""
        if self._ptr_size is None:
            size = 8
            for name in ("long unsigned int", "long int", "unsigned long", "long"):
                ids = self.find(name, BtfKind.INT)
                if ids:
                    s = self.type(ids[0]).size
                    if s in (4, 8):
                        size = s
                        break
            self._ptr_size = size
        return self._ptr_size

    def size_of(self, type_id: int) -> int:
        """Size in bytes of ``type_id``; arrays multiply, typedefs/qualifiers look through.

        Raises :class:`MissingDataError` for void, functions and forward declarations, and
        :class:`CorruptError` for a reference loop.
        """
        cached = self._size_cache.get(type_id)
        if cached is not None:
            return cached
        mult = 1
        seen: set[int] = set()
        tid = type_id
        while True:
            if tid in seen:
                raise CorruptError(f"BTF type loop through type id {tid} while sizing type "
                                   f"{type_id}", path=self.source, offset=self._offset_of(tid))
            seen.add(tid)
            if tid == 0:
                raise MissingDataError(f"BTF type {type_id} is void and has no size",
                                       path=self.source)
            t = self.type(tid)
            if t.size is not None:
                result = mult * t.size
                break
            if t.kind == BtfKind.PTR:
                result = mult * self.ptr_size
                break
            if t.kind == BtfKind.ARRAY:
                assert t.array is not None
                mult *= t.array.nelems
                tid = t.array.type
                continue
            if t.kind in _TRANSPARENT_KINDS or t.kind == BtfKind.VAR:
                assert t.type is not None
                tid = t.type
                continue
            raise MissingDataError(f"BTF type {tid} ({t.kind_name} {t.name!r}) has no size",
                                   path=self.source, offset=t.offset)
        self._size_cache[type_id] = result
        return result

    # ---- members -----------------------------------------------------------------------------

    def _composite(self, type_or_name: int | str) -> int:
        if isinstance(type_or_name, int):
            tid = self.resolve(type_or_name)
        else:
            name = type_or_name
            for prefix in ("struct ", "union "):
                if name.startswith(prefix):
                    name = name[len(prefix):]
            ids = self.find(name, (BtfKind.STRUCT, BtfKind.UNION))
            if not ids:
                # A typedef to a struct (e.g. memdesc_flags_t) names it as well.
                for t in self.find(name, BtfKind.TYPEDEF):
                    r = self.resolve(t)
                    if r and self.kind(r) in _COMPOSITE_KINDS:
                        ids.append(r)
            if not ids:
                raise MissingDataError(f"no BTF struct or union named {type_or_name!r}",
                                       path=self.source)
            tid = ids[0]
        if tid == 0 or self.kind(tid) not in _COMPOSITE_KINDS:
            raise MissingDataError(f"BTF type {type_or_name!r} is not a struct or union",
                                   path=self.source)
        return tid

    def _find_member(self, comp: int, name: str) -> tuple[int, BtfMember] | None:
        """Member ``name`` of struct/union ``comp``, looking into anonymous struct/union members
        (depth-first, in declaration order, as C name lookup does).

        Returns (bit offset of the member from the start of ``comp``, member). Memoised per
        (type, name), so shared anonymous types cost once; a type containing itself by value is a
        :class:`CorruptError`."""
        return self._find_member_rec(comp, name, set())

    def _find_member_rec(self, tid: int, name: str, stack: set[int]
                         ) -> tuple[int, BtfMember] | None:
        key = (tid, name)
        if key in self._member_cache:
            return self._member_cache[key]
        if tid in stack:
            raise CorruptError(f"BTF struct/union {tid} contains itself by value",
                               path=self.source, offset=self._offset_of(tid))
        if len(stack) >= _MAX_NESTING:
            raise CorruptError(f"BTF anonymous members nested deeper than {_MAX_NESTING}",
                               path=self.source, offset=self._offset_of(tid))
        stack.add(tid)
        result: tuple[int, BtfMember] | None = None
        for m in self.type(tid).members:
            if m.name == name:
                result = (m.bit_offset, m)
                break
            if not m.name:
                r = self.resolve(m.type)
                if r and self.kind(r) in _COMPOSITE_KINDS:
                    sub = self._find_member_rec(r, name, stack)
                    if sub is not None:
                        result = (m.bit_offset + sub[0], sub[1])
                        break
        stack.discard(tid)
        self._member_cache[key] = result
        return result

    def member_offset(self, struct: int | str, path: str) -> MemberInfo:
        """Locate member ``path`` (``"a.b.c"``, ``"a[2].b"``) in a struct/union.

        ``struct`` is a type id or a name (``"page"``, ``"struct page"``, or a typedef to a
        struct). Anonymous struct/union members are searched transparently, as C does. Raises
        :class:`MissingDataError` if the member does not exist.
        """
        cur = self._composite(struct)
        bits = 0
        member_type = cur
        comps = path.split(".")
        designators = parse_member_path(path)
        if designators is None:
            raise MissingDataError(f"bad member path {path!r}", path=self.source)
        for n, (comp, idx) in enumerate(designators):
            if cur == 0 or self.kind(cur) not in _COMPOSITE_KINDS:
                raise MissingDataError(f"{'.'.join(comps[:n])!r} of {struct!r} is not a struct "
                                       f"or union", path=self.source)
            found = self._find_member(cur, comp)
            if found is None:
                raise MissingDataError(f"no member {comp!r} in {struct!r} (path {path!r})",
                                       path=self.source)
            off, m = found
            bits += off
            member_type = m.type
            bitfield = m.bitfield_size
            for i in idx:
                arr = self.resolve(member_type)
                if arr == 0 or self.kind(arr) != BtfKind.ARRAY:
                    raise MissingDataError(f"member {comp!r} of {struct!r} is not an array",
                                           path=self.source)
                at = self.type(arr).array
                assert at is not None
                bits += 8 * i * self.size_of(at.type)
                member_type = at.type
            cur = self.resolve(member_type)
            if n == len(comps) - 1:
                byte_size = self.size_of(member_type)
                # Pre-kind_flag BTF describes a bitfield with its INT's offset/bits.
                if not bitfield and not idx and cur and self.kind(cur) == BtfKind.INT:
                    ii = self.type(cur).int_info
                    assert ii is not None
                    if ii.offset or ii.bits != 8 * byte_size:
                        bits += ii.offset
                        bitfield = ii.bits
                return MemberInfo(bits, bitfield or 8 * byte_size, byte_size, member_type)
        raise AssertionError("unreachable")

    # ---- enums -------------------------------------------------------------------------------

    def _enum_entries(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64],
                                     npt.NDArray[np.int64]]:
        """Enumerator index, built once: name offsets sorted, with owning type id and position."""
        if self._enum_index is None:
            _, kinds, _ = self._meta()
            w = self._words_np()
            parts = []
            for k, step in ((BtfKind.ENUM, 2), (BtfKind.ENUM64, 3)):
                pos, owner = self._vlen_entries(kinds == k, step)
                if pos.size:
                    first = np.r_[0, np.nonzero(np.diff(owner))[0] + 1]
                    idx = np.arange(pos.size) - np.repeat(first, np.diff(np.r_[first,
                                                                               pos.size]))
                    parts.append((w[pos].astype(np.int64), owner + self.start_id, idx))
            if parts:
                names = np.concatenate([p[0] for p in parts])
                owners = np.concatenate([p[1] for p in parts])
                idxs = np.concatenate([p[2] for p in parts])
                order = np.argsort(names, kind="stable")
                self._enum_index = (names[order], owners[order], idxs[order].astype(np.int64))
            else:
                empty = np.zeros(0, dtype=np.int64)
                self._enum_index = (empty, empty, empty)
        return self._enum_index

    def _enum_id(self, enum: int | str) -> int:
        if isinstance(enum, int):
            tid = self.resolve(enum)
        else:
            name = enum[5:] if enum.startswith("enum ") else enum
            ids = self.find(name, (BtfKind.ENUM, BtfKind.ENUM64))
            if not ids:
                for t in self.find(name, BtfKind.TYPEDEF):
                    r = self.resolve(t)
                    if r and self.kind(r) in _ENUM_KINDS:
                        ids.append(r)
            if not ids:
                raise MissingDataError(f"no BTF enum named {enum!r}", path=self.source)
            tid = ids[0]
        if tid == 0 or self.kind(tid) not in _ENUM_KINDS:
            raise MissingDataError(f"BTF type {enum!r} is not an enum", path=self.source)
        return tid

    def enumerators(self, enum: int | str) -> dict[str, int]:
        """All enumerators of an enum (by type id, enum name, or typedef name) in order."""
        return {e.name: e.val for e in self.type(self._enum_id(enum)).enumerators}

    def enum_value(self, enum: int | str | None, enumerator: str) -> int:
        """Value of ``enumerator``; with ``enum`` None, searched across every enum.

        Raises :class:`MissingDataError` if it does not exist, or (searching all enums) if two
        enums define it with different values.
        """
        if enum is not None:
            vals = self.enumerators(enum)
            if enumerator not in vals:
                raise MissingDataError(f"no enumerator {enumerator!r} in enum {enum!r}",
                                       path=self.source)
            return vals[enumerator]
        hits = self.find_enumerator(enumerator)
        if not hits:
            raise MissingDataError(f"no enumerator {enumerator!r} in any BTF enum",
                                   path=self.source)
        values = {v for _, v in hits}
        if len(values) > 1:
            raise MissingDataError(f"enumerator {enumerator!r} is ambiguous: values "
                                   f"{sorted(values)}", path=self.source)
        return hits[0][1]

    def find_enumerator(self, enumerator: str) -> list[tuple[int, int]]:
        """Every (enum type id, value) defining ``enumerator`` (base first)."""
        hits = self.base.find_enumerator(enumerator) if self.base is not None else []
        names, owners, idxs = self._enum_entries()
        offs = self.string_offsets(enumerator)
        found: list[tuple[int, int]] = []
        if offs.size and names.size:
            lo = np.searchsorted(names, offs, "left")
            hi = np.searchsorted(names, offs, "right")
            for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
                found.extend(zip(owners[a:b].tolist(), idxs[a:b].tolist(), strict=True))
        found.sort()
        return hits + [(tid, self.type(tid).enumerators[i].val) for tid, i in found]

    # ---- variables ---------------------------------------------------------------------------

    def _vars(self) -> dict[int, tuple[str, BtfVarSecinfo]]:
        if self._var_index is None:
            index: dict[int, tuple[str, BtfVarSecinfo]] = {}
            if self._starts:
                starts = np.frombuffer(self._starts, dtype=np.uint32).astype(np.int64)
                kinds = (self._words_np()[starts + 1] >> 24) & 0x1F
                for k in np.nonzero(kinds == BtfKind.DATASEC)[0]:
                    t = self.type(self.start_id + int(k))
                    for si in t.secinfos:
                        index[si.type] = (t.name, si)
            self._var_index = index
        return self._var_index

    def find_var(self, name: str) -> VarInfo:
        """A VAR named ``name`` and its DATASEC placement (e.g. per-cpu variables in
        ``.data..percpu``). Raises :class:`MissingDataError` if there is none."""
        ids = self.find(name, BtfKind.VAR)
        if not ids:
            raise MissingDataError(f"no BTF variable named {name!r}", path=self.source)
        tid = ids[0]
        t = self.type(tid)
        assert t.type is not None and t.linkage is not None
        btf: Btf | None = self
        while btf is not None:
            hit = btf._vars().get(tid)
            if hit is not None:
                sec, si = hit
                return VarInfo(tid, t.type, t.linkage, sec, si.offset, si.size)
            btf = btf.base
        return VarInfo(tid, t.type, t.linkage, None, None, None)

    def datasecs(self) -> dict[str, int]:
        """DATASEC name -> type id (this blob and its base)."""
        out = self.base.datasecs() if self.base is not None else {}
        if self._starts:
            starts = np.frombuffer(self._starts, dtype=np.uint32).astype(np.int64)
            kinds = (self._words_np()[starts + 1] >> 24) & 0x1F
            for k in np.nonzero(kinds == BtfKind.DATASEC)[0]:
                tid = self.start_id + int(k)
                out[self.type(tid).name] = tid
        return out


# --------------------------------------------------------------------------------------------
# Locating BTF
# --------------------------------------------------------------------------------------------


def find_btf_blob(region: bytes | bytearray | memoryview | mmap.mmap, *, source: str,
                  start: int = 0, end: int | None = None, base_offset: int = 0,
                  max_size: int = 256 << 20) -> tuple[int, Btf]:
    """Scan ``region[start:end]`` for the first plausible BTF blob and parse it.

    A candidate is a little- or big-endian btf_header (magic, version 1, flags 0, sane hdr_len,
    sections inside the region and the blob at most ``max_size`` bytes, string section starting
    and ending with NUL) whose type section parses. ``region`` may be an ``mmap`` (searched in
    place). Returns (offset of the blob in ``region``, the parsed :class:`Btf`); ``base_offset`` is
    added to offsets in messages. Linear in the region size. Raises :class:`MissingDataError` if
    no candidate parses.
    """
    mv = memoryview(region).cast("B")
    try:
        stop = len(mv) if end is None else min(end, len(mv))
        le, be = b"\x9f\xeb\x01\x00", b"\xeb\x9f\x01\x00"  # magic, version 1, flags 0
        # The next little-endian hit is always known; big-endian hits are searched only up to it,
        # so a region without any big-endian blob is scanned once, not twice.
        p_le = _find(region, mv, le, start, stop)
        p_be, be_upto = -1, start
        cur = start
        last_err: KdlayoutError | None = None
        while True:
            limit = p_le if p_le >= 0 else stop
            if p_be < cur and be_upto < limit:
                q = _find(region, mv, be, max(cur, be_upto), min(stop, limit + len(be) - 1))
                p_be, be_upto = (q, q) if q >= 0 else (-1, limit)
            cands = [c for c in (p_le, p_be) if c >= cur]
            if not cands:
                break
            p = min(cands)
            try:
                hdr = parse_header(mv[p:min(stop, p + BTF_HEADER_MAX)], source=source,
                                   base_offset=base_offset + p, avail=stop - p)
                if hdr.blob_size <= max_size:
                    btf = Btf.parse(mv[p:p + hdr.blob_size], source=source,
                                    base_offset=base_offset + p)
                    if btf.nr_types > 1:
                        return p, btf
            except KdlayoutError as e:
                e.__traceback__ = None  # its frames would pin views of ``region`` (an mmap)
                last_err = e
            cur = p + 1
            if p == p_le:
                p_le = _find(region, mv, le, cur, stop)
            if p == p_be:
                p_be, be_upto = -1, cur
        why = f" (last candidate: {last_err.message})" if last_err is not None else ""
        raise MissingDataError(f"no BTF blob found in [{start:#x}, {stop:#x}){why}", path=source,
                               offset=base_offset + start)
    finally:
        mv.release()


def _find(region: bytes | bytearray | memoryview | mmap.mmap, mv: memoryview, needle: bytes,
          start: int, stop: int) -> int:
    if isinstance(region, (bytes, bytearray, mmap.mmap)):
        return region.find(needle, start, stop)
    # memoryview has no find(): search bounded windows (overlapping by the needle's length).
    win = 1 << 24
    i = start
    while i < stop:
        j = min(stop, i + win + len(needle) - 1)
        k = bytes(mv[i:j]).find(needle)
        if k >= 0:
            return i + k
        i += win
    return -1


def btf_from_elf(data: bytes | bytearray | memoryview, *, source: str,
                 base: Btf | None = None) -> Btf:
    """Parse the ``.BTF`` section of an ELF (vmlinux, or a module ``.ko`` with ``base``)."""
    from .vmlinuz import elf_section

    off, sec = elf_section(data, ".BTF", source=source)
    return Btf.parse(sec, base=base, source=f"{source}:.BTF", base_offset=off)


def btf_from_image(data: bytes | bytearray | memoryview, *, source: str,
                   base: Btf | None = None) -> Btf:
    """BTF from any kernel image: raw BTF (``/sys/kernel/btf/*``), an ELF with ``.BTF``, or a
    compressed ``vmlinuz`` (bzImage or a bare compressed vmlinux)."""
    mv = memoryview(data).cast("B")
    if len(mv) >= 2 and (mv[0], mv[1]) in ((0x9F, 0xEB), (0xEB, 0x9F)):
        return Btf.parse(mv, base=base, source=source)
    if bytes(mv[:4]) == b"\x7fELF":
        return btf_from_elf(mv, source=source, base=base)
    from .vmlinuz import extract_vmlinux

    vmlinux = extract_vmlinux(mv, source=source)
    return btf_from_elf(vmlinux, source=f"{source}!vmlinux", base=base)


def load_btf(path: str | PathLike[str], *, base: Btf | None = None) -> Btf:
    """Edge: read ``path`` (raw BTF, vmlinux ELF, vmlinuz, module ``.ko``) and parse its BTF."""
    p = str(path)
    try:
        with open(p, "rb") as f:
            data = f.read()
    except OSError as e:
        raise MissingDataError(f"cannot read: {e.strerror}", path=p) from None
    return btf_from_image(data, source=p, base=base)
