"""The kernel's compressed symbol tables (kallsyms), decoded from bytes.

This is a format module: it takes the raw bytes of each table (the caller reads them from the dump,
see :mod:`kdlayout.sources.kallsyms_source`) and produces a :class:`SymbolTable`. The formats are
described in ``docs/kallsyms.md``; in short:

* ``kallsyms_num_syms``: u32 count.
* ``kallsyms_names``: per symbol a length (number of token bytes) then that many token bytes. A
  length >= 0x80 takes two bytes, ULEB128 style (``(b0 & 0x7f) | b1 << 7``) since Linux kernel
  commit 73bbb94466fd ("kallsyms: support "big" kernel symbols") (in v6.1). Whether a dump uses
  that form is detected (see :func:`split_names_detect`), never inferred from a version.
* ``kallsyms_token_table``: 256 NUL-terminated token strings; ``kallsyms_token_index``: 256 u16
  offsets of each token in the table. Expanding a symbol's token bytes gives ``<type><name>``.
* ``kallsyms_markers``: the offset in ``kallsyms_names`` of every 256th symbol.
* addresses, one of four :class:`AddressScheme` s, chosen by :func:`select_scheme` as the one that
  reproduces the VMCOREINFO ``SYMBOL()`` values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import accumulate, pairwise, repeat
from typing import NamedTuple, NoReturn

import numpy as np
import numpy.typing as npt

from .errors import CorruptError, MissingDataError

TOKENS = 256
TOKEN_INDEX_SIZE = TOKENS * 2
#: scripts/kallsyms refuses lengths above 0x3fff (two ULEB128 bytes).
MAX_NAME_TOKENS = 0x3FFF
#: Upper bound on ``kallsyms_num_syms`` accepted (x86_64 distribution kernels have ~200k).
MAX_SYMS = 1 << 22
#: Upper bound on the size of ``kallsyms_names`` (distribution kernels: ~2-3 MiB).
MAX_NAMES_BYTES = 64 << 20
#: Upper bound on the size of ``kallsyms_token_table`` (distribution kernels: ~2 KiB).
MAX_TOKEN_TABLE_BYTES = 1 << 16

_MASK64 = (1 << 64) - 1

U64Array = npt.NDArray[np.uint64]
#: ``markers_for(names_end_offset, count)``: candidate ``kallsyms_markers`` arrays found after the
#: names (one per plausible element size / alignment); used to detect the length encoding.
MarkersProbe = Callable[[int, int], Sequence[npt.NDArray[np.integer]]]


class AddressScheme(StrEnum):
    """How ``kallsyms_addresses``/``kallsyms_offsets`` encode symbol addresses."""

    #: ``kallsyms_addresses[i]`` is the address (an ``unsigned long``); before base-relative
    #: kallsyms, and later for configurations without ``CONFIG_KALLSYMS_BASE_RELATIVE``.
    ABSOLUTE = "absolute"
    #: ``kallsyms_relative_base + (u32)kallsyms_offsets[i]``; Linux kernel commit 2213e9a66bb8
    #: ("kallsyms: add support for relative offsets in kallsyms address table") (in v4.6).
    BASE_RELATIVE = "base-relative"
    #: Base-relative with ``CONFIG_KALLSYMS_ABSOLUTE_PERCPU`` (x86_64 SMP until v6.15): an offset
    #: >= 0 is an absolute per-CPU address, a negative one means ``relative_base - 1 - offset``.
    ABSOLUTE_PERCPU = "base-relative-absolute-percpu"
    #: ``&kallsyms_offsets[i] + (s32)kallsyms_offsets[i]``; Linux kernel commit a081b5789255
    #: ("kallsyms: Get rid of kallsyms relative base") (in v7.0).
    PLACE_RELATIVE = "place-relative"


class Symbol(NamedTuple):
    """One kallsyms entry: ``type`` is the nm-style type letter (``T``, ``t``, ``D``, ...)."""

    name: str
    address: int
    type: str


@dataclass(frozen=True)
class TokenTable:
    """The 256 expansion strings of the token bytes used in ``kallsyms_names``."""

    tokens: tuple[bytes, ...]
    table_size: int      # bytes of kallsyms_token_table actually used (through the last NUL)

    @property
    def lengths(self) -> npt.NDArray[np.int64]:
        return np.fromiter((len(t) for t in self.tokens), dtype=np.int64, count=TOKENS)


@dataclass(frozen=True)
class NameLayout:
    """Where each symbol's token bytes are in ``kallsyms_names``."""

    starts: npt.NDArray[np.int64]    # offset of each symbol's first token byte
    lengths: npt.NDArray[np.int64]   # token count of each symbol
    records: npt.NDArray[np.int64]   # offset of each symbol's length prefix (for markers)
    end: int                         # offset just past the last symbol
    big_lengths: bool                # two-byte lengths were decoded as such
    saw_high_bit: bool               # some length byte had bit 7 set (the two forms differ)


def _where(source: str, what: str, addr: int | None) -> str:
    return f"{what} at {addr:#x}" if addr is not None else what


def parse_token_table(table: bytes, index: bytes, *, source: str,
                      table_addr: int | None = None,
                      index_addr: int | None = None) -> TokenTable:
    """Decode ``kallsyms_token_table`` using ``kallsyms_token_index``.

    ``table`` may extend past the real table; ``index`` must hold at least 512 bytes. Raises
    :class:`CorruptError` naming the source and address for an index entry outside the table, a
    token not starting right after a NUL, an empty or unterminated token.
    """
    if len(index) < TOKEN_INDEX_SIZE:
        raise CorruptError(f"kallsyms_token_index is truncated ({len(index)} of "
                           f"{TOKEN_INDEX_SIZE} bytes) ({_where(source, 'table', index_addr)})",
                           path=source, offset=index_addr)
    offsets = np.frombuffer(index, dtype="<u2", count=TOKENS).astype(np.int64)
    tokens: list[bytes] = []
    table_end = 0
    for i, off in enumerate(offsets.tolist()):
        at = (table_addr + off) if table_addr is not None else None
        if off >= len(table):
            raise CorruptError(
                f"kallsyms_token_index[{i}]={off:#x} points outside kallsyms_token_table "
                f"({len(table)} bytes at {table_addr or 0:#x})", path=source, offset=index_addr)
        if off and table[off - 1] != 0:
            raise CorruptError(
                f"kallsyms_token_index[{i}]={off:#x} does not point at the start of a token "
                f"({_where(source, 'token', at)})", path=source, offset=at)
        end = table.find(b"\0", off)
        if end < 0:
            raise CorruptError(f"kallsyms token {i} is not NUL-terminated "
                               f"({_where(source, 'token', at)})", path=source, offset=at)
        if end == off:
            raise CorruptError(f"kallsyms token {i} is empty ({_where(source, 'token', at)})",
                               path=source, offset=at)
        tokens.append(bytes(table[off:end]))
        table_end = max(table_end, end + 1)
    return TokenTable(tuple(tokens), table_end)


def split_names(names: bytes | memoryview, num_syms: int, *, big: bool, source: str,
                names_addr: int | None = None) -> NameLayout:
    """Walk the length prefixes of ``kallsyms_names`` for ``num_syms`` symbols.

    With ``big`` a length byte with bit 7 set is followed by a second length byte. Raises
    :class:`CorruptError` if a length is zero or runs off ``names`` (bounded: every symbol takes at
    least two bytes, so at most ``len(names) // 2`` steps happen).

    The walk is inherently sequential (each record's position depends on the previous length);
    it runs as one ``itertools.accumulate`` over the bytes object, and everything else (lengths,
    the two-byte form, checks) is vectorised afterwards.
    """
    if num_syms < 0 or num_syms > MAX_SYMS:
        raise CorruptError(f"kallsyms_num_syms={num_syms} is implausible (limit {MAX_SYMS})",
                           path=source, offset=names_addr)
    buf = bytes(names)
    size = len(buf)
    if num_syms > size // 2:
        raise CorruptError(f"kallsyms_num_syms={num_syms} symbols cannot fit in {size} bytes of "
                           f"kallsyms_names ({_where(source, 'table', names_addr)})",
                           path=source, offset=names_addr)
    if big:
        def step(p: int, _: int) -> int:
            n = buf[p]
            if n & 0x80:
                return p + 2 + ((n & 0x7F) | (buf[p + 1] << 7))
            return p + 1 + n
    else:
        def step(p: int, _: int) -> int:
            return p + 1 + buf[p]
    walk: npt.NDArray[np.int64] | None
    try:
        walk = np.fromiter(accumulate(repeat(0, num_syms), step, initial=0), dtype=np.int64,
                           count=num_syms + 1)
    except IndexError:
        walk = None
    if walk is None:  # outside the handler: the error raised here does not chain the IndexError
        walk = _walk_slowly(buf, num_syms, big, source, names_addr)
    records = walk[:-1]
    end = int(walk[-1])
    arr = np.frombuffer(buf, dtype=np.uint8)
    first = arr[records].astype(np.int64)
    high = (first & 0x80) != 0
    saw_high = bool(high.any())
    if big and saw_high:
        second = arr[np.minimum(records + 1, size - 1)].astype(np.int64)
        lengths = np.where(high, (first & 0x7F) | (second << 7), first)
        starts = records + 1 + high
    else:
        lengths = first
        starts = records + 1
    zero = np.flatnonzero(lengths == 0)
    if len(zero):
        i = int(zero[0])
        at = names_addr + int(records[i]) if names_addr is not None else None
        raise CorruptError(f"kallsyms_names: symbol {i} has length 0 "
                           f"({_where(source, 'byte', at)})", path=source, offset=at)
    if end > size:
        i = int(np.searchsorted(walk, size, side="right")) - 1
        _names_overrun(source, names_addr, i, end, size)
    return NameLayout(starts, lengths, records, end, big, saw_high)


def _walk_slowly(buf: bytes, num_syms: int, big: bool, source: str,
                 names_addr: int | None) -> npt.NDArray[np.int64]:
    """The record walk one step at a time, to name the symbol that runs off the table."""
    pos = 0
    size = len(buf)
    out = [0]
    for i in range(num_syms):
        if pos >= size:
            _names_overrun(source, names_addr, i, pos, size)
        n = buf[pos]
        pos += 1
        if big and n & 0x80:
            if pos >= size:
                _names_overrun(source, names_addr, i, pos, size)
            n = (n & 0x7F) | (buf[pos] << 7)
            pos += 1
        pos += n
        out.append(pos)
    return np.array(out, dtype=np.int64)


def _names_overrun(source: str, names_addr: int | None, i: int, pos: int, size: int) -> NoReturn:
    at = names_addr + min(pos, size) if names_addr is not None else None
    raise CorruptError(f"kallsyms_names: symbol {i} runs off the end of the table "
                       f"({size} bytes; {_where(source, 'end', at)})", path=source, offset=at)


def markers_match(layout: NameLayout, markers: npt.NDArray[np.integer]) -> bool:
    """True if ``markers`` (``kallsyms_markers`` values) agree with ``layout``.

    ``kallsyms_markers[k]`` is the offset in ``kallsyms_names`` of symbol ``256 * k``.
    """
    want = layout.records[::256]
    if len(markers) < len(want) or not len(want):
        return False
    return bool(np.array_equal(np.asarray(markers[:len(want)], dtype=np.int64), want))


def expected_markers(layout: NameLayout) -> npt.NDArray[np.int64]:
    """The ``kallsyms_markers`` values the kernel would have written for ``layout``."""
    return layout.records[::256].copy()


def split_names_detect(names: bytes | memoryview, num_syms: int, *, source: str,
                       names_addr: int | None = None,
                       markers_for: MarkersProbe | None = None) -> NameLayout:
    """Walk ``kallsyms_names`` and detect whether it uses the two-byte ("big") length form.

    Decoding with the big form first: if no length byte has bit 7 set the two forms are
    identical. Otherwise both are tried and the one whose every-256th-symbol offsets equal
    ``kallsyms_markers`` (read through ``markers_for(end_offset, count)``) wins; if markers cannot
    be read, the only form that decodes without error wins. Raises :class:`CorruptError` if the
    forms cannot be told apart.
    """
    errors: list[CorruptError] = []
    try:
        big = split_names(names, num_syms, big=True, source=source, names_addr=names_addr)
    except CorruptError as exc:
        errors.append(exc.with_traceback(None))
        big = None
    if big is not None and not big.saw_high_bit:
        return big
    try:
        small: NameLayout | None = split_names(names, num_syms, big=False, source=source,
                                               names_addr=names_addr)
    except CorruptError as exc:
        errors.append(exc.with_traceback(None))
        small = None
    candidates = [c for c in (big, small) if c is not None]
    if not candidates:
        raise errors[0]
    if len(candidates) == 1:
        return candidates[0]
    if markers_for is not None:
        matching = [c for c in candidates
                    if any(markers_match(c, m) for m in markers_for(c.end, (num_syms + 255) // 256))]
        if len(matching) == 1:
            return matching[0]
    raise CorruptError("kallsyms_names: cannot tell one- from two-byte symbol lengths (both "
                       "decode and kallsyms_markers does not decide)", path=source,
                       offset=names_addr)


#: Separator written between expanded symbols; kernel symbol names never contain it.
_SEP = 0x0A


#: Symbols expanded per numpy gather in :func:`expand_names_text`: bounds the (token bytes x
#: longest token) matrix to ~1 MiB instead of ~50 MiB for a 200k-symbol kernel.
EXPAND_BLOCK = 1 << 12


def expand_names(names: bytes | memoryview, layout: NameLayout, tokens: TokenTable, *,
                 source: str) -> tuple[list[str], bytes]:
    """Expand every symbol's token bytes: returns (names without type, type letters).

    :func:`expand_names_text` without the split into one ``str`` per symbol.
    """
    text, types = expand_names_text(names, layout, tokens, source=source)
    return (text.decode("latin-1").split("\n") if types else []), types


def expand_names_text(names: bytes | memoryview, layout: NameLayout, tokens: TokenTable, *,
                      source: str) -> tuple[bytes, bytes]:
    """Expand every symbol's token bytes: returns (the names without type joined by ``\\n``,
    type letters). One bytes object instead of ~200k ``str`` (a sixth of the memory).

    Vectorised with numpy: the names bytes up to ``layout.end`` become one token stream (u16) in
    which each length prefix is replaced by a separator token; a (257 x longest token) matrix
    expands the stream :data:`EXPAND_BLOCK` symbols at a time (one gather per block, so the
    expanded rows never exist for the whole table at once); the type letters (first byte of each
    symbol's first token) are taken out, the padding dropped and the text split once.
    """
    n = len(layout.starts)
    if n == 0:
        return b"", b""
    buf = np.frombuffer(bytes(names), dtype=np.uint8, count=layout.end)
    stream = buf.astype(np.uint16)
    stream[layout.records] = TOKENS                       # separator token
    sep_rows = layout.records
    second = layout.starts - layout.records == 2          # two-byte length prefixes
    if second.any():
        keep_in = np.ones(layout.end, dtype=bool)
        keep_in[layout.records[second] + 1] = False
        stream = stream[keep_in]
        del keep_in
        sep_rows = np.flatnonzero(stream == TOKENS)
    width = max(len(t) for t in tokens.tokens)
    matrix = np.zeros((TOKENS + 1, width), dtype=np.uint8)
    for i, tok in enumerate(tokens.tokens):
        matrix[i, :len(tok)] = np.frombuffer(tok, dtype=np.uint8)
    matrix[TOKENS, 0] = _SEP
    if np.any(matrix[:TOKENS] == _SEP):
        raise CorruptError("kallsyms_token_table: a token contains a newline", path=source)
    # Every block reuses the same index, row and mask buffers (fresh multi-MiB arrays per block
    # would be page-faulted in again each time).
    bounds = [*sep_rows[::EXPAND_BLOCK].tolist(), len(stream)]
    longest = max(b - a for a, b in pairwise(bounds))
    idx_buf = np.empty(longest, dtype=np.intp)
    rows_buf = np.empty((longest, width), dtype=np.uint8)
    mask_buf = np.empty(longest * width, dtype=bool)
    texts: list[bytes] = []
    types = bytearray()
    for k, (a, b) in enumerate(pairwise(bounds)):
        lo = k * EXPAND_BLOCK
        idx = idx_buf[:b - a]
        idx[:] = stream[a:b]
        rows = rows_buf[:b - a]
        np.take(matrix, idx, axis=0, out=rows)             # one row per token byte
        first_rows = sep_rows[lo:lo + EXPAND_BLOCK] - (a - 1)  # each symbol's first token
        types += rows[first_rows, 0].tobytes()
        rows[first_rows, 0] = 0                            # drop the type letter ...
        if lo == 0:
            rows[0, 0] = 0                                 # ... and the leading separator
        flat = rows.reshape(-1)
        mask = mask_buf[:flat.size]
        np.not_equal(flat, 0, out=mask)
        texts.append(np.compress(mask, flat).tobytes())
    del idx_buf, rows_buf, mask_buf
    del stream
    text = b"".join(texts)
    del texts
    got = text.count(b"\n") + 1
    if got != n:
        raise CorruptError(f"kallsyms_names: expanded {got} names for {n} symbols",
                           path=source)
    return text, bytes(types)


def read_markers(data: bytes, count: int, width: int) -> npt.NDArray[np.int64]:
    """``count`` little-endian markers of ``width`` (4 or 8) bytes from ``data`` (may be short)."""
    dtype = "<u4" if width == 4 else "<u8"
    have = min(count, len(data) // width)
    return np.frombuffer(data, dtype=dtype, count=have).astype(np.int64)


# -- addresses ------------------------------------------------------------------------------


def decode_addresses(scheme: AddressScheme, raw: bytes, num_syms: int, *,
                     relative_base: int | None = None,
                     offsets_addr: int | None = None) -> U64Array:
    """Decode ``num_syms`` addresses from ``raw`` (``kallsyms_addresses`` or ``kallsyms_offsets``).

    ``relative_base`` is needed by the base-relative schemes, ``offsets_addr`` (the virtual
    address of ``kallsyms_offsets``) by the place-relative one. Arithmetic is modulo 2**64.
    """
    if scheme is AddressScheme.ABSOLUTE:
        if len(raw) < 8 * num_syms:
            raise ValueError("short kallsyms_addresses")
        return np.frombuffer(raw, dtype="<u8", count=num_syms).astype(np.uint64)
    if len(raw) < 4 * num_syms:
        raise ValueError("short kallsyms_offsets")
    off = np.frombuffer(raw, dtype="<i4", count=num_syms).astype(np.int64)
    with np.errstate(over="ignore"):
        if scheme is AddressScheme.PLACE_RELATIVE:
            if offsets_addr is None:
                raise ValueError("place-relative kallsyms needs the address of kallsyms_offsets")
            place = np.uint64(offsets_addr) + np.arange(num_syms, dtype=np.uint64) * np.uint64(4)
            return place + off.astype(np.uint64)  # two's complement wraps to subtraction
        if relative_base is None:
            raise ValueError("base-relative kallsyms needs kallsyms_relative_base")
        base = np.uint64(relative_base & _MASK64)
        if scheme is AddressScheme.BASE_RELATIVE:
            return base + (off & 0xFFFFFFFF).astype(np.uint64)
        # ABSOLUTE_PERCPU: >= 0 absolute, < 0 relative_base - 1 - offset.
        rel = base - np.uint64(1) - off.astype(np.uint64)
        return np.where(off >= 0, off.astype(np.uint64), rel)


class AddressCandidate(NamedTuple):
    """Addresses decoded with one scheme from a table at ``table_addr``."""

    scheme: AddressScheme
    table_addr: int
    addresses: U64Array


@dataclass(frozen=True)
class SchemeCheck:
    """Outcome of checking one address candidate against known symbol addresses."""

    scheme: AddressScheme
    table_addr: int
    matched: tuple[str, ...]
    mismatched: tuple[str, ...]
    sorted_fraction: float


def _indices_of(names: Sequence[str], wanted: Mapping[str, int]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        if name in wanted:
            found.setdefault(name, []).append(i)
    return found


def check_scheme(cand: AddressCandidate, names: Sequence[str], known: Mapping[str, int], *,
                 indices: Mapping[str, list[int]] | None = None) -> SchemeCheck:
    """Compare a candidate's addresses with ``known`` ``{name: address}`` (VMCOREINFO SYMBOLs).

    A known symbol matches if any kallsyms entry of that name has exactly that address; names
    absent from kallsyms are ignored. ``indices`` (name -> kallsyms indices) may be precomputed.
    """
    addresses = cand.addresses
    wanted = {k: v & _MASK64 for k, v in known.items()}
    if indices is None:
        indices = _indices_of(names, wanted)
    matched: list[str] = []
    mismatched: list[str] = []
    for name, idx in sorted(indices.items()):
        if wanted[name] in {int(addresses[i]) for i in idx}:
            matched.append(name)
        else:
            mismatched.append(name)
    if len(addresses) > 1:
        frac = float(np.count_nonzero(addresses[1:] >= addresses[:-1])) / (len(addresses) - 1)
    else:
        frac = 1.0
    return SchemeCheck(cand.scheme, cand.table_addr, tuple(matched), tuple(mismatched), frac)


def select_scheme(candidates: Sequence[AddressCandidate], names: Sequence[str],
                  known: Mapping[str, int], *, source: str, required: str = "_stext",
                  indices: Mapping[str, list[int]] | None = None,
                  ) -> tuple[AddressCandidate, list[SchemeCheck]]:
    """Pick the address candidate that reproduces ``known`` exactly.

    A candidate qualifies if ``required`` (``_stext``) is among the kallsyms names and its address
    matches exactly, and, when other known symbols are among the names, at least one of them
    matches too. The qualifying candidate with the most exact matches wins; a tie between
    candidates whose address arrays differ is an error (:class:`CorruptError`). A few mismatches
    are tolerated because some VMCOREINFO ``SYMBOL()`` lines hold a pointer's value rather than a
    symbol's address (``VMCOREINFO_SYMBOL_ARRAY(mem_section)`` with SPARSEMEM_EXTREME). Raises
    :class:`MissingDataError` if ``required`` is not known or not among the kallsyms names.
    ``indices`` (each known name found in kallsyms -> its indices) may be precomputed, e.g. by
    :meth:`SymbolTable.indices`; ``names`` is then not read.
    """
    if required not in known:
        raise MissingDataError(f"cannot choose a kallsyms address scheme: no SYMBOL({required})",
                               path=source)
    if indices is None:
        indices = _indices_of(names, known)
    if required not in indices:
        raise MissingDataError(f"{required} is not among the decoded kallsyms names",
                               path=source)
    checks = [check_scheme(c, names, known, indices=indices) for c in candidates]
    others = len(indices) - 1
    ok = [i for i, c in enumerate(checks)
          if required in c.matched and (others == 0 or len(c.matched) >= 2)]
    if not ok:
        detail = "; ".join(f"{c.scheme} at {c.table_addr:#x}: {len(c.matched)} of "
                           f"{len(indices)} match" for c in checks)
        raise CorruptError(f"no kallsyms address scheme reproduces SYMBOL({required}) and another "
                           f"VMCOREINFO symbol ({detail})", path=source)
    best = max(len(checks[i].matched) for i in ok)
    top = [i for i in ok if len(checks[i].matched) == best]
    first = candidates[top[0]]
    for i in top[1:]:
        other = candidates[i]
        if not np.array_equal(first.addresses, other.addresses):
            raise CorruptError(f"kallsyms address schemes {first.scheme} at "
                               f"{first.table_addr:#x} and {other.scheme} at "
                               f"{other.table_addr:#x} reproduce the VMCOREINFO symbols equally "
                               "well with different results; cannot choose", path=source)
    return first, checks


# -- the symbol table -----------------------------------------------------------------------


class SymbolTable:
    """Decoded kallsyms of the core kernel: names, addresses and type letters in kallsyms order.

    ``lookup(name)`` gives an address, ``name_at(addr)`` the symbol covering an address. Built
    from a list of names, or (:meth:`from_text`) from the names joined by ``\\n`` as one bytes
    object: then a name is decoded only when asked for, lookups search the text, and ``names``
    (a list of ~200k ``str``, six times the text's size) is only built if someone reads it.
    """

    addresses: U64Array
    types: bytes

    def __init__(self, names: list[str], addresses: U64Array, types: bytes) -> None:
        if not (len(names) == len(addresses) == len(types)):
            raise ValueError("names, addresses and types differ in length")
        self._names: list[str] | None = names
        self._text: bytes | None = None
        self._ends: npt.NDArray[np.int64] | None = None
        self._keys: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64],
                          npt.NDArray[np.int64]] | None = None
        self.addresses = addresses
        self.types = types
        self._by_name: dict[str, int] | None = None
        self._order: npt.NDArray[np.int64] | None = None
        self._sorted: U64Array | None = None

    @classmethod
    def from_text(cls, text: bytes, addresses: U64Array, types: bytes) -> SymbolTable:
        """A table whose names are ``text`` split at ``\\n`` (latin-1), decoded lazily."""
        count = text.count(b"\n") + 1 if types else 0
        if not (count == len(addresses) == len(types)) or (not types and text):
            raise ValueError("names, addresses and types differ in length")
        self = cls([], addresses[:0], b"")
        self._names = None
        self._text = text
        self.addresses = addresses
        self.types = types
        return self

    def __repr__(self) -> str:
        return f"SymbolTable({len(self)} symbols)"

    @property
    def names(self) -> list[str]:
        """Every name in kallsyms order (built on first use from the text, then kept)."""
        if self._names is None:
            assert self._text is not None
            self._names = self._text.decode("latin-1").split("\n") if self.types else []
            self._text = None
            self._ends = None
            self._keys = None
        return self._names

    def __len__(self) -> int:
        return len(self.types)

    def __iter__(self) -> Iterator[Symbol]:
        types = self.types.decode("latin-1")
        for name, addr, typ in zip(self.names, self.addresses.tolist(), types, strict=True):
            yield Symbol(name, addr, typ)

    def _line_ends(self) -> npt.NDArray[np.int64]:
        """Offset of the ``\\n`` after each name in the text (the last: the text's length)."""
        if self._ends is None:
            assert self._text is not None
            text = np.frombuffer(self._text, dtype=np.uint8)
            self._ends = np.append(np.flatnonzero(text == 0x0A), len(self._text))
        return self._ends

    def _line_keys(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64],
                                  npt.NDArray[np.int64]]:
        """Start and length of every name in the text, and a signature ``length << 16 |
        first byte << 8 | last byte`` (0 for an empty name) to pre-filter lookups (built once)."""
        if self._keys is None:
            assert self._text is not None
            ends = self._line_ends()
            starts = np.empty_like(ends)
            starts[0] = 0
            starts[1:] = ends[:-1] + 1
            lens = ends - starts
            sig = lens << 16
            if len(self._text):
                text = np.frombuffer(self._text, dtype=np.uint8)
                sig |= text[np.minimum(starts, len(text) - 1)].astype(np.int64) << 8
                sig |= text[np.maximum(ends - 1, 0)]
                sig[lens == 0] = 0
            self._keys = (starts, lens, sig)
        return self._keys

    def _name(self, i: int) -> str:
        if self._names is not None:
            return self._names[i]
        assert self._text is not None
        ends = self._line_ends()
        start = int(ends[i - 1]) + 1 if i else 0
        return self._text[start:int(ends[i])].decode("latin-1")

    def __getitem__(self, i: int) -> Symbol:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("symbol index out of range")
        return Symbol(self._name(i), int(self.addresses[i]), chr(self.types[i]))

    def indices(self, name: str) -> list[int]:
        """Index of every symbol called ``name``, ascending (static symbols can repeat)."""
        return self.indices_many((name,)).get(name, [])

    def indices_many(self, names: Iterable[str]) -> dict[str, list[int]]:
        """For each of ``names`` that is in the table, the index of every symbol so called
        (ascending). One vectorised pass over the text for all of them; no ``str`` is made for
        the other symbols."""
        wanted = set(names)
        found: dict[str, list[int]] = {}
        if self._names is not None:
            for i, n in enumerate(self._names):
                if n in wanted:
                    found.setdefault(n, []).append(i)
            return found
        assert self._text is not None
        keys: dict[bytes, str] = {}
        for name in wanted:
            try:
                key = name.encode("latin-1")
            except UnicodeEncodeError:
                continue
            if b"\n" not in key:
                keys[key] = name
        if not keys or not self.types:
            return found
        starts, lens, sig = self._line_keys()
        want = np.array([len(k) << 16 | k[0] << 8 | k[-1] if k else 0 for k in keys],
                        dtype=np.int64)
        cand = np.flatnonzero(np.isin(sig, want))
        text = self._text
        for i, at, n in zip(cand.tolist(), starts[cand].tolist(), lens[cand].tolist(),
                            strict=True):
            hit = keys.get(text[at:at + n])
            if hit is not None:
                found.setdefault(hit, []).append(i)
        return found

    def _index(self) -> dict[str, int]:
        if self._by_name is None:
            by_name: dict[str, int] = {}
            for i, name in enumerate(self.names):
                by_name.setdefault(name, i)
            self._by_name = by_name
        return self._by_name

    def _first(self, name: str) -> int | None:
        if self._names is None:
            found = self.indices(name)
            return found[0] if found else None
        return self._index().get(name)

    def lookup(self, name: str) -> int | None:
        """Address of the first symbol called ``name`` (kallsyms order), or ``None``."""
        i = self._first(name)
        return None if i is None else int(self.addresses[i])

    def require(self, name: str) -> int:
        """Like :meth:`lookup` but raise :class:`MissingDataError` if there is no such symbol."""
        addr = self.lookup(name)
        if addr is None:
            raise MissingDataError(f"symbol {name!r} is not in kallsyms")
        return addr

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._first(name) is not None

    def lookup_all(self, name: str) -> list[Symbol]:
        """Every symbol called ``name`` (static symbols can repeat)."""
        return [self[i] for i in self.indices(name)]

    def _sorted_view(self) -> tuple[npt.NDArray[np.int64], U64Array]:
        if self._order is None or self._sorted is None:
            order = np.argsort(self.addresses, kind="stable").astype(np.int64)
            self._order = order
            self._sorted = self.addresses[order]
        return self._order, self._sorted

    def name_at(self, addr: int) -> Symbol | None:
        """The symbol with the greatest address <= ``addr`` (first in kallsyms order on ties)."""
        order, sorted_addrs = self._sorted_view()
        if not len(sorted_addrs):
            return None
        i = int(np.searchsorted(sorted_addrs, np.uint64(addr & _MASK64), side="right")) - 1
        if i < 0:
            return None
        j = int(np.searchsorted(sorted_addrs, sorted_addrs[i], side="left"))
        return self[int(order[j])]

    def sorted_addresses(self) -> U64Array:
        """All addresses in ascending order."""
        return self._sorted_view()[1]

    def symbols_at(self, addr: int) -> list[Symbol]:
        """Every symbol whose address is exactly ``addr``."""
        order, sorted_addrs = self._sorted_view()
        key = np.uint64(addr & _MASK64)
        lo = int(np.searchsorted(sorted_addrs, key, side="left"))
        hi = int(np.searchsorted(sorted_addrs, key, side="right"))
        return [self[int(k)] for k in sorted(order[lo:hi].tolist())]


__all__ = [
    "AddressCandidate", "AddressScheme", "MarkersProbe", "NameLayout", "SchemeCheck", "Symbol", "SymbolTable",
    "TokenTable", "check_scheme", "decode_addresses", "expand_names", "expand_names_text",
    "expected_markers", "markers_match", "parse_token_table", "read_markers", "select_scheme",
    "split_names", "split_names_detect",
]
