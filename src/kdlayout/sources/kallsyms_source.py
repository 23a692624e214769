"""Find the kallsyms tables in a dump and decode them into a :class:`SymbolTable`.

Locating the tables (see ``docs/kallsyms.md``):

1. VMCOREINFO lists them since v6.0: Linux kernel commit 5fd8fea935a1 ("vmcoreinfo: include
   kallsyms symbols") (in v6.0) added ``SYMBOL(kallsyms_names)``, ``kallsyms_token_table``,
   ``kallsyms_token_index``, ``kallsyms_offsets``/``kallsyms_relative_base`` or
   ``kallsyms_addresses``, and Linux kernel commit f09bddbd8661 ("vmcoreinfo: add
   kallsyms_num_syms symbol") (in v6.0) added ``kallsyms_num_syms``.
2. Otherwise (5.10 and other pre-6.0 kernels) the kernel image is scanned from ``SYMBOL(_stext)``
   for ``kallsyms_token_index`` (256 strictly ascending u16 starting at 0), the token table right
   before it, then backwards ``kallsyms_markers``, ``kallsyms_names`` and ``kallsyms_num_syms``,
   and the address tables where ``scripts/kallsyms`` puts them in either output order.

The address scheme is never inferred from a version: every scheme the located tables permit is
decoded and the one reproducing VMCOREINFO ``SYMBOL(_stext)`` and every other VMCOREINFO
``SYMBOL()`` found among the kallsyms names is chosen (:func:`kdlayout.kallsyms.select_scheme`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import cachetools
import numpy as np
import numpy.typing as npt

from ..errors import CorruptError, KdlayoutError, MissingDataError
from ..kallsyms import (
    MAX_NAMES_BYTES,
    MAX_SYMS,
    MAX_TOKEN_TABLE_BYTES,
    TOKEN_INDEX_SIZE,
    TOKENS,
    AddressCandidate,
    AddressScheme,
    NameLayout,
    SchemeCheck,
    SymbolTable,
    TokenTable,
    decode_addresses,
    expand_names_text,
    markers_match,
    parse_token_table,
    read_markers,
    select_scheme,
    split_names,
    split_names_detect,
)
from ..kimage import (
    KernelImage,
    VmcoreInfoLike,
    in_kernel_image,
    vmcoreinfo_of,
    vmcoreinfo_symbol,
)
from ..physmem import PhysicalMemory

#: How far past ``_stext`` the scan looks (the image is tens of MiB; rodata follows text).
SCAN_LIMIT = 256 << 20
SCAN_CHUNK = 8 << 20
_PAGE = 4096
_MASK64 = (1 << 64) - 1

#: VMCOREINFO ``SYMBOL()`` names whose value is *not* the symbol's address: the kernel prints them
#: with ``VMCOREINFO_SYMBOL_ARRAY()``, i.e. the variable's value. ``mem_section`` is a pointer
#: (``struct mem_section **``) under SPARSEMEM_EXTREME, so VMCOREINFO holds the allocated root
#: array while kallsyms holds the variable's address. Consumers comparing or merging the two
#: must treat these names separately; scheme selection ignores them.
VMCOREINFO_VALUE_SYMBOLS = frozenset({"mem_section"})

_TABLE_SYMBOLS = ("kallsyms_num_syms", "kallsyms_names", "kallsyms_token_table",
                  "kallsyms_token_index", "kallsyms_offsets", "kallsyms_relative_base",
                  "kallsyms_addresses", "kallsyms_markers", "kallsyms_seqs_of_names")


@dataclass(frozen=True)
class AddressTables:
    """Where the address table may be: ``kallsyms_offsets`` (+ ``kallsyms_relative_base``) or
    ``kallsyms_addresses`` (``None``: not present / not known)."""

    offsets: int | None = None
    relative_base: int | None = None
    addresses: int | None = None


@dataclass(frozen=True)
class KallsymsLocations:
    """Virtual addresses of the kallsyms tables; ``address_tables`` lists every placement of the
    address table to try (one from VMCOREINFO, several from a scan)."""

    num_syms: int
    names: int
    token_table: int
    token_index: int
    address_tables: tuple[AddressTables, ...]


@dataclass(frozen=True)
class KallsymsProvenance:
    """How a symbol table was obtained from a dump."""

    source: str                       # dump path
    located_by: str                   # "vmcoreinfo" or "scan"
    scheme: AddressScheme
    big_lengths: bool                 # two-byte lengths decoded (or no long name at all)
    long_names_seen: bool             # some length byte had bit 7 set
    kernel_offset: int | None         # VMCOREINFO KERNELOFFSET
    phys_base: int
    phys_base_method: str
    locations: KallsymsLocations
    address_table: int                # kallsyms_offsets / kallsyms_addresses actually used
    checked: tuple[str, ...]          # VMCOREINFO SYMBOL()s reproduced exactly
    checks: tuple[SchemeCheck, ...] = field(repr=False, default=())


@dataclass(frozen=True)
class KallsymsResult:
    """A decoded symbol table with its provenance."""

    table: SymbolTable
    provenance: KallsymsProvenance

    def describe(self) -> str:
        """One line: where the tables were found and how addresses were decoded."""
        p = self.provenance
        koff = f"{p.kernel_offset:#x}" if p.kernel_offset is not None else "unknown"
        return (f"kallsyms of {p.source} ({len(self.table)} symbols; tables located by "
                f"{p.located_by}, kallsyms_names at {p.locations.names:#x}; {p.scheme} "
                f"addresses reproduce {len(p.checked)} VMCOREINFO symbols; KERNELOFFSET {koff}; "
                f"phys_base {p.phys_base:#x} via {p.phys_base_method})")


# -- public entry points -------------------------------------------------------------------

# Keyed explicitly by the dump object; the cached result holds the KernelImage, which holds the
# dump, so the id cannot be reused while the entry lives.
_cache: cachetools.LRUCache[tuple[int, str], KallsymsResult] = cachetools.LRUCache(maxsize=8)


def symbols_from_dump(dump: PhysicalMemory,
                      vmcoreinfo: VmcoreInfoLike | None = None) -> KallsymsResult:
    """The crashed kernel's kallsyms, decoded from ``dump`` (cached per dump object).

    Raises :class:`MissingDataError` if the tables cannot be found, :class:`CorruptError` if they
    are found but do not decode or no address scheme reproduces the VMCOREINFO symbols.
    """
    key = (id(dump), dump.info.path)
    hit = _cache.get(key)
    if hit is not None:
        return hit
    image = KernelImage(dump, vmcoreinfo if vmcoreinfo is not None else vmcoreinfo_of(dump))
    result = load_kallsyms(image)
    _cache[key] = result
    return result


def load_kallsyms(image: KernelImage, *,
                  known: Mapping[str, int] | None = None) -> KallsymsResult:
    """Locate and decode kallsyms through ``image`` (uncached).

    ``known`` overrides the ``{name: address}`` used to choose the address scheme (default: every
    VMCOREINFO ``SYMBOL()``).
    """
    checks = dict(known) if known is not None else vmcoreinfo_symbols(image.vmcoreinfo)
    locs = locations_from_vmcoreinfo(image.vmcoreinfo)
    if locs is not None:
        return decode_at(image, locs, "vmcoreinfo", checks)
    errors: list[str] = []
    found = scan_locations(image, checks)
    if found is not None:
        try:
            return decode_at(image, found, "scan", checks)
        except KdlayoutError as exc:
            errors.append(str(exc))
    detail = f"; {errors[-1]}" if errors else ""
    raise MissingDataError(
        "kallsyms tables not found: VMCOREINFO does not list them and no token table in the "
        f"kernel image decodes to symbols matching VMCOREINFO{detail}", path=image.source)


def vmcoreinfo_symbols(vi: VmcoreInfoLike | None) -> dict[str, int]:
    """Every VMCOREINFO ``SYMBOL(name)`` that is a symbol address (not the kallsyms tables, not
    :data:`VMCOREINFO_VALUE_SYMBOLS`)."""
    if vi is None:
        return {}
    table = getattr(vi, "symbols", None)
    out: dict[str, int] = {}
    if isinstance(table, Mapping):
        out = {str(k): int(v) & _MASK64 for k, v in table.items()}
    else:
        for name in ("_stext", "init_uts_ns", "init_top_pgt", "swapper_pg_dir", "mem_section",
                     "node_online_map", "vmap_area_list", "high_memory", "contig_page_data",
                     "mem_map", "prb", "log_buf", "phys_base", "node_data"):
            value = vmcoreinfo_symbol(vi, name)
            if value is not None:
                out[name] = value
    for name in (*_TABLE_SYMBOLS, *VMCOREINFO_VALUE_SYMBOLS):
        out.pop(name, None)
    return out


def locations_from_vmcoreinfo(vi: VmcoreInfoLike | None) -> KallsymsLocations | None:
    """The table addresses VMCOREINFO lists (v6.0+), or ``None`` if it does not list them."""
    sym = {n: vmcoreinfo_symbol(vi, n) for n in _TABLE_SYMBOLS}
    num, names, table, index = (sym["kallsyms_num_syms"], sym["kallsyms_names"],
                                sym["kallsyms_token_table"], sym["kallsyms_token_index"])
    if num is None or names is None or table is None or index is None:
        return None
    if sym["kallsyms_offsets"] is None and sym["kallsyms_addresses"] is None:
        return None
    tables = AddressTables(sym["kallsyms_offsets"], sym["kallsyms_relative_base"],
                           sym["kallsyms_addresses"])
    return KallsymsLocations(num, names, table, index, (tables,))


# -- decoding at known locations -----------------------------------------------------------


def _read_upto(image: KernelImage, vaddr: int, size: int) -> bytes:
    """Up to ``size`` bytes at ``vaddr``, stopping at the first byte not in the dump."""
    try:
        return image.read(vaddr, size)
    except KdlayoutError:
        pass
    out = bytearray()
    addr = vaddr
    end = vaddr + size
    while addr < end:
        step = min(_PAGE - addr % _PAGE, end - addr)
        try:
            out += image.read(addr, step)
        except KdlayoutError:
            break
        addr += step
    return bytes(out)


def _read_back(image: KernelImage, end: int, size: int) -> tuple[int, bytes]:
    """The longest run of dumped bytes ending at ``end``, at most ``size`` long: (start, bytes)."""
    start = (end - size) & ~7
    try:
        return start, image.read(start, end - start)
    except KdlayoutError:
        pass
    out: list[bytes] = []
    addr = end
    while addr > start:
        step = min(addr - start, addr % _PAGE or _PAGE)
        try:
            out.append(image.read(addr - step, step))
        except KdlayoutError:
            break
        addr -= step
    return addr, b"".join(reversed(out))


def _align(x: int, a: int) -> int:
    return (x + a - 1) & ~(a - 1)


def _markers_probe(image: KernelImage, names_addr: int,
                   ) -> Callable[[int, int], list[npt.NDArray[np.integer]]]:
    def probe(end: int, count: int) -> list[npt.NDArray[np.integer]]:
        out: list[npt.NDArray[np.integer]] = []
        for align in (8, 4):
            at = _align(names_addr + end, align)
            for width in (8, 4):
                data = _read_upto(image, at, count * width)
                if len(data) == count * width:
                    out.append(read_markers(data, count, width))
        return out
    return probe


def decode_at(image: KernelImage, locs: KallsymsLocations, how: str,
              known: Mapping[str, int]) -> KallsymsResult:
    """Decode the tables at ``locs`` and choose the address scheme reproducing ``known``.

    ``how`` ("vmcoreinfo", "scan") is recorded in the provenance. Raises :class:`CorruptError`
    or :class:`MissingDataError` (one line, naming the dump and address) for bad tables.
    """
    src = image.source
    num_syms = image.read_u32(locs.num_syms)
    if num_syms == 0 or num_syms > MAX_SYMS:
        raise CorruptError(f"kallsyms_num_syms={num_syms} at {locs.num_syms:#x} is implausible "
                           f"(limit {MAX_SYMS})", path=src)
    tokens = _read_tokens(image, locs)
    # kallsyms_names precedes kallsyms_token_table in every scripts/kallsyms output order.
    if locs.names < locs.token_table and locs.token_table - locs.names <= MAX_NAMES_BYTES:
        names_size = locs.token_table - locs.names
    else:
        names_size = min(MAX_NAMES_BYTES, num_syms * (2 + 0x3FFF))
    names = _read_upto(image, locs.names, names_size)
    if not names:
        image.read(locs.names, 1)  # raises the not-in-dump error naming the address
    layout = split_names_detect(names, num_syms, source=src, names_addr=locs.names,
                                markers_for=_markers_probe(image, locs.names))
    text, types = expand_names_text(names, layout, tokens, source=src)
    del names
    table = SymbolTable.from_text(text, np.zeros(len(types), dtype=np.uint64), types)
    del text
    # Only the known symbols are looked up (in the text): no str object per symbol.
    indices = table.indices_many(known)
    candidates: list[AddressCandidate] = []
    for tables in locs.address_tables:
        candidates.extend(_address_candidates(image, tables, num_syms))
    if not candidates:
        where = ", ".join(f"{t}" for t in locs.address_tables)
        raise MissingDataError(f"no kallsyms address table could be read ({where})", path=src)
    chosen, checks = select_scheme(candidates, (), known, source=src, indices=indices)
    check = next(c for c in checks
                 if c.scheme is chosen.scheme and c.table_addr == chosen.table_addr)
    table.addresses = chosen.addresses
    prov = KallsymsProvenance(
        source=src, located_by=how, scheme=chosen.scheme, big_lengths=layout.big_lengths,
        long_names_seen=layout.saw_high_bit, kernel_offset=image.kernel_offset,
        phys_base=image.phys_base.value, phys_base_method=image.phys_base.method,
        locations=locs, address_table=chosen.table_addr, checked=check.matched,
        checks=tuple(checks))
    return KallsymsResult(table, prov)


def _read_tokens(image: KernelImage, locs: KallsymsLocations) -> TokenTable:
    index = image.read(locs.token_index, TOKEN_INDEX_SIZE)
    if locs.token_table < locs.token_index <= locs.token_table + MAX_TOKEN_TABLE_BYTES:
        size = locs.token_index - locs.token_table
    else:
        size = MAX_TOKEN_TABLE_BYTES
    table = _read_upto(image, locs.token_table, size)
    if not table:
        image.read(locs.token_table, 1)
    return parse_token_table(table, index, source=image.source, table_addr=locs.token_table,
                             index_addr=locs.token_index)


def _address_candidates(image: KernelImage, tables: AddressTables,
                        num_syms: int) -> list[AddressCandidate]:
    out: list[AddressCandidate] = []
    if tables.offsets is not None:
        try:
            raw = image.read(tables.offsets, 4 * num_syms)
        except KdlayoutError:
            raw = b""
        if raw:
            if tables.relative_base is not None:
                try:
                    base: int | None = image.read_u64(tables.relative_base)
                except KdlayoutError:
                    base = None
                if base is not None:
                    for scheme in (AddressScheme.BASE_RELATIVE, AddressScheme.ABSOLUTE_PERCPU):
                        out.append(AddressCandidate(scheme, tables.offsets, decode_addresses(
                            scheme, raw, num_syms, relative_base=base)))
            out.append(AddressCandidate(AddressScheme.PLACE_RELATIVE, tables.offsets,
                                        decode_addresses(AddressScheme.PLACE_RELATIVE, raw,
                                                         num_syms, offsets_addr=tables.offsets)))
    if tables.addresses is not None:
        try:
            raw = image.read(tables.addresses, 8 * num_syms)
        except KdlayoutError:
            raw = b""
        if raw:
            out.append(AddressCandidate(AddressScheme.ABSOLUTE, tables.addresses,
                                        decode_addresses(AddressScheme.ABSOLUTE, raw, num_syms)))
    return out


# -- the scan ------------------------------------------------------------------------------


def _scan_start(image: KernelImage, known: Mapping[str, int]) -> int | None:
    stext = known.get("_stext")
    if stext is None:
        stext = vmcoreinfo_symbol(image.vmcoreinfo, "_stext")
    return stext


def token_index_candidates(data: bytes, *, max_first: int = 64,
                           max_last: int = 0x4000) -> list[int]:
    """Offsets in ``data`` (4-byte aligned) where a ``kallsyms_token_index`` could start.

    That is 256 little-endian u16, the first 0, strictly ascending, the second at most
    ``max_first`` (the first token is short) and the last below ``max_last``. Vectorised: a cheap
    filter on the first few entries, then the full check on the survivors.
    """
    n = len(data) // 4 * 2
    if n < TOKENS:
        return []
    u16 = np.frombuffer(data, dtype="<u2", count=n)
    pairs = u16.reshape(-1, 2)                      # 4-byte aligned (u16[2k], u16[2k+1])
    limit = (n - TOKENS) // 2 + 1
    cand = np.flatnonzero((pairs[:limit, 0] == 0) & (pairs[:limit, 1] >= 2)
                          & (pairs[:limit, 1] <= max_first)) * 2
    if not len(cand):
        return []
    for k in range(2, 8):                           # a few more rising steps, vectorised
        cand = cand[u16[cand + k] > u16[cand + k - 1]]
        if not len(cand):
            return []
    out: list[int] = []
    for i in cand.tolist():
        window = u16[i:i + TOKENS]
        if window[-1] < max_last and bool(np.all(window[1:] > window[:-1])):
            out.append(i * 2)
    return out


def scan_locations(image: KernelImage,
                   known: Mapping[str, int]) -> KallsymsLocations | None:
    """Table locations found by scanning the kernel image (see the module docstring).

    Scans from ``SYMBOL(_stext)`` (or ``known["_stext"]``) for at most :data:`SCAN_LIMIT` bytes in
    :data:`SCAN_CHUNK` pieces, skipping pages not in the dump; stops at the first token index
    whose surroundings (token table, markers, names, num_syms) are consistent. The address table
    placements returned are candidates; the caller decides by decoding.
    """
    start = _scan_start(image, known)
    if start is None:
        raise MissingDataError("no SYMBOL(_stext) to scan the kernel image from for kallsyms",
                               path=image.source)
    pos = start & ~(_PAGE - 1)
    end = pos + SCAN_LIMIT
    overlap = TOKEN_INDEX_SIZE
    while pos < end:
        chunk = _read_upto(image, pos, SCAN_CHUNK + overlap)
        if not chunk:
            nxt = _next_present(image, pos)
            if nxt is None:
                break
            pos = nxt
            continue
        for off in token_index_candidates(chunk):
            ti = pos + off
            found = _locations_around_index(image, ti)
            if found is not None:
                return found
        pos += max(len(chunk) - overlap, _PAGE)
        del chunk
        image.release()  # the chunk's pages would otherwise stay mapped (RSS ~ bytes scanned)
    return None


def _next_present(image: KernelImage, vaddr: int) -> int | None:
    """The first kernel-image address above ``vaddr`` whose page the dump holds, or ``None``."""
    pa = image.pa(vaddr)
    best: int | None = None
    for rng in image.mem.ranges():
        if rng.end > pa + _PAGE:
            start = max(rng.start, pa + _PAGE) & ~(_PAGE - 1)
            if best is None or start < best:
                best = start
    if best is None:
        return None
    nxt = vaddr + (best - pa)
    return nxt if in_kernel_image(nxt) else None


def _locations_around_index(image: KernelImage, ti: int) -> KallsymsLocations | None:
    index = image.read(ti, TOKEN_INDEX_SIZE)
    idx = np.frombuffer(index, dtype="<u2").astype(np.int64)
    last = int(idx[-1])
    # The token table ends (after its last NUL) 0-7 bytes of alignment before the index.
    lo, blob = _read_back(image, ti, last + 1 + 256 + 8)
    tt = None
    for tt_cand in range(ti - last - 2, lo - 1, -1):
        rel = tt_cand - lo
        try:
            tokens = parse_token_table(blob[rel:], index, source=image.source,
                                       table_addr=tt_cand, index_addr=ti)
        except CorruptError:
            continue
        end = tt_cand + tokens.table_size
        if ti - 8 < end <= ti and not any(blob[end - lo:]) and all(
                t.isascii() and t.isprintable() for t in (x.decode("latin-1")
                                                          for x in tokens.tokens)):
            tt = tt_cand
            break
    if tt is None:
        return None
    tried: set[tuple[int, int, int]] = set()
    for window in (1 << 16, 1 << 20, MARKERS_WINDOW):
        for cand in _markers_before(image, tt, window):
            if cand in tried:
                continue
            tried.add(cand)
            found = _names_before(image, ti, tt, *cand)
            if found is not None:
                return found
    return None


#: How far below the token table ``kallsyms_markers`` may end: ``kallsyms_seqs_of_names`` (3 or 4
#: bytes per symbol, v6.2+ and backports) can sit between them.
MARKERS_WINDOW = 4 * MAX_SYMS // 2


def _markers_before(image: KernelImage, tt: int, window: int) -> list[tuple[int, int, int]]:
    """Candidate ``kallsyms_markers`` arrays below ``tt``: (address, count, width), nearest first.

    A markers array starts with 0 and rises strictly (every 256th symbol's offset in the names);
    each maximal strictly rising run that starts at a 0, with u64 (8-aligned) or u32 (4-aligned)
    elements, is a candidate, as are the same run shortened by one or two elements (the table
    after it may happen to continue the rise).
    """
    lo, blob = _read_back(image, tt, window)
    if lo % 8:
        blob = blob[8 - lo % 8:]
        lo += 8 - lo % 8
    found: list[tuple[int, int, int]] = []
    for width in (8, 4):
        dtype = "<u8" if width == 8 else "<u4"
        arr = np.frombuffer(blob[:len(blob) // width * width], dtype=dtype)
        if len(arr) < 2:
            continue
        rising = arr[1:] > arr[:-1]
        zeros = np.flatnonzero(arr[:-1] == 0)
        zeros = zeros[rising[zeros]]
        if not len(zeros):
            continue
        # Run length of rising steps from each zero: distance to the next non-rising step.
        breaks = np.flatnonzero(~rising)
        nxt = np.searchsorted(breaks, zeros)
        run_end = np.where(nxt < len(breaks), breaks[np.minimum(nxt, len(breaks) - 1)],
                           len(arr) - 1)
        counts = run_end - zeros + 1
        for z, c in zip(zeros[::-1].tolist(), counts[::-1].tolist(), strict=True):
            if c < 2:
                continue
            for shorter in (0, 1, 2):
                if c - shorter >= 2:
                    found.append((lo + z * width, c - shorter, width))
    found.sort(key=lambda t: -(t[0] + t[1] * t[2]))
    return found


_U32 = struct.Struct("<I")


def _names_before(image: KernelImage, ti: int, tt: int, markers: int, count: int,
                  width: int) -> KallsymsLocations | None:
    """The location set whose ``kallsyms_num_syms``/``kallsyms_names`` precede ``markers``.

    ``num_syms`` must lie in ``(256 * (count - 1), 256 * count]``, the names must end within 8
    bytes before the markers, and every 256th symbol must start where the markers say.
    """
    mk = read_markers(image.read(markers, count * width), count, width)
    last = int(mk[-1])
    hi = markers - last            # names start at or before this
    lo, blob = _read_back(image, hi, 1 << 16)
    if lo % 4:
        blob = blob[4 - lo % 4:]
        lo += 4 - lo % 4
    u32 = np.frombuffer(blob[:len(blob) // 4 * 4], dtype="<u4").astype(np.int64)
    lo_n, hi_n = 256 * (count - 1) + 1, 256 * count
    hits = np.flatnonzero((u32 >= lo_n) & (u32 <= hi_n))[::-1]   # nearest first
    for h in hits.tolist():
        num_addr = lo + 4 * int(h)
        n = int(u32[h])
        # Labels are 8-aligned on 64-bit before v7.0 and 4-aligned since.
        for names in ((num_addr + 8, num_addr + 4) if num_addr % 8 == 0 else (num_addr + 4,)):
            if names > hi:
                continue
            data = _read_upto(image, names, markers - names)
            if len(data) != markers - names or int(mk[-1]) >= len(data):
                continue
            # Cheap pre-check: a record (non-zero length byte) at every marked offset.
            if not np.all(np.frombuffer(data, dtype=np.uint8)[mk]):
                continue
            layouts: list[NameLayout] = []
            for big in (True, False):
                try:
                    layouts.append(split_names(data, n, big=big, source=image.source,
                                               names_addr=names))
                except CorruptError:
                    continue
            if any(markers_match(lay, mk) and markers - 8 < names + lay.end <= markers
                   for lay in layouts):
                return KallsymsLocations(num_addr, names, tt, ti,
                                         _address_layouts(ti, num_addr, n))
    return None


def _address_layouts(ti: int, num_addr: int, n: int) -> tuple[AddressTables, ...]:
    """Every place ``scripts/kallsyms`` may have put the address table, relative to the others."""
    tt_end = ti + TOKEN_INDEX_SIZE
    rb = num_addr - 8
    offs8 = _align(tt_end, 8)
    return (
        # Output order before Linux kernel commit 404bad70fcf7 ("scripts/kallsyms: change the
        # output order") (in v6.4): [offsets][relative_base][num_syms] or [addresses][num_syms],
        # each label 8-aligned on 64-bit.
        AddressTables(offsets=rb - _align(4 * n, 8), relative_base=rb),
        AddressTables(addresses=num_addr - 8 * n),
        # Since then [token_index][offsets][relative_base] ...
        AddressTables(offsets=offs8, relative_base=_align(offs8 + 4 * n, 8)),
        # ... and since v7.0 (4-aligned labels, no relative base) [token_index][offsets].
        AddressTables(offsets=_align(tt_end, 4)),
    )
