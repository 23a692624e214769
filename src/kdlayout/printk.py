"""The crashed kernel's log buffer (``dmesg``) read from a dump, and makedumpfile's text of it.

Three log formats exist; which one a kernel has is told by the facts its layout offers, never by
the version string:

* **lockless ring buffer** (``SYMBOL(prb)``): Linux kernel commit 896fbe20b4e2 ("printk: use the
  lockless ringbuffer") (in v5.10). ``prb`` points at a ``struct printk_ringbuffer``: a
  descriptor ring (``descs[]`` with a state word and the text block's logical positions,
  ``infos[]`` with seq, timestamp, length, level, caller id, device info) and a text data ring of
  ``1 << size_bits`` bytes holding blocks ``{unsigned long id; char text[]}``.
* **variable-length records** (``SYMBOL(log_first_idx)``, 3.5 to 5.9): ``log_buf`` holds
  ``struct printk_log`` headers (``struct log`` before 3.11) each followed by its text and dict,
  from ``log_first_idx`` to ``log_next_idx``; a header of length 0 marks a wrap to offset 0.
* **plain text** (``SYMBOL(log_end)``, before 3.5): ``log_buf`` is a character ring, ``log_end``
  the running count of characters written.

Every pointer is a kernel virtual address: kernel-image addresses (``prb``, the static buffers)
are translated with :class:`~kdlayout.kimage.KernelImage` (``__pa_symbol``), anything else
(buffers ``memblock``-allocated for ``log_buf_len=``, in the direct map) through the crashed
kernel's own page tables (:class:`~kdlayout.memmodel.PageTables`).

Records are read the way the kernel's own reader (``kernel/printk/printk_ringbuffer.c``
``get_data()``/``desc_read()``) accepts them, and formatted the way ``makedumpfile --dump-dmesg``
prints them (:func:`format_makedumpfile`); ``docs/printk.md`` lists where the two disagree.
Structural corruption (absurd ring sizes, an id range longer than the ring, a pointer the dump
lacks) raises a one-line error; a bad single record is skipped and counted in
:attr:`PrintkLog.skipped`. Every loop is bounded by the ring's size.
"""

from __future__ import annotations

import re
import struct
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import BinaryIO, NamedTuple

from .errors import CorruptError, KdlayoutError, MissingDataError, NotInDumpError
from .kimage import KernelImage, in_kernel_image
from .layout import Layout
from .memmodel import PageTables, kernel_page_tables
from .physmem import PhysicalMemory

_MASK64 = (1 << 64) - 1
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

#: The kernel's ``LOG_BUF_LEN_MAX`` (``kernel/printk/printk.c``): no log buffer is larger.
LOG_BUF_LEN_MAX = 1 << 31

# kernel/printk/printk_ringbuffer.h: the state lives in the two top bits of state_var.
DESC_FLAGS_SHIFT = 62
DESC_ID_MASK = _MASK64 >> 2
DESC_RESERVED = 0
DESC_COMMITTED = 1
DESC_FINALIZED = 2
DESC_REUSABLE = 3
#: Data-less text block positions: bit 0 set means "no data block"; bit 1 the reason.
FAILED_LPOS = 0x1
EMPTY_LINE_LPOS = 0x3
_ID_SIZE = 8                    # sizeof(unsigned long): the id at the head of each data block

#: ``caller_id`` bit 31: the id is a CPU number (printk from interrupt context), else a pid.
CALLER_ID_CPU = 0x80000000


class LogFormat(Enum):
    """Which log buffer the crashed kernel has."""

    LOCKLESS = "lockless"        # printk_ringbuffer, 5.10+
    RECORDS = "records"          # variable-length struct printk_log records, 3.5-5.9
    PLAIN = "plain"              # character ring, before 3.5


class PrintkRecord(NamedTuple):
    """One log record, with the kernel's own field names.

    ``seq`` is ``None`` for the 3.5-5.9 format (its records carry no sequence number);
    ``level``/``facility``/``flags``/``caller_id`` are ``None`` where the layout does not locate
    them (the kernel's VMCOREINFO exports only seq, ts_nsec, text_len and caller_id; the others
    need BTF or DWARF). ``dev_info`` holds ``SUBSYSTEM``/``DEVICE`` (5.10+: ``struct
    dev_printk_info``) or the record's dict entries (3.5-5.9). ``truncated`` is set when
    ``text_len`` claimed more than the data block holds.
    """

    seq: int | None
    ts_nsec: int
    level: int | None
    facility: int | None
    flags: int | None
    caller_id: int | None
    text: bytes
    dev_info: tuple[tuple[str, str], ...] = ()
    truncated: bool = False


@dataclass
class PrintkLog:
    """The log of one crashed kernel."""

    format: LogFormat
    records: list[PrintkRecord] = field(default_factory=list)
    #: The raw characters of a plain (pre-3.5) log, oldest first; ``None`` for record formats.
    plain: bytes | None = None
    #: Records not shown, by reason (``reserved``, ``reusable``, ``miss``, ``lost``,
    #: ``bad-lpos``, ``block-id``, ``seq``).
    skipped: Counter[str] = field(default_factory=Counter)
    #: Anomalies worth telling the user (also covers :attr:`skipped` reasons that mean
    #: corruption rather than the ring's normal turnover).
    warnings: list[str] = field(default_factory=list)
    #: False when walking the records stopped early (a broken 3.5-5.9 record chain).
    complete: bool = True


#: Skip reasons that are the ring's normal life (records being written or recycled), not damage.
NORMAL_SKIPS = frozenset({"reserved", "reusable", "lost"})


# ---- kernel virtual memory ---------------------------------------------------------------------


class KernelMemory:
    """Reads of kernel virtual addresses: the image by ``__pa_symbol``, the rest by page tables."""

    def __init__(self, mem: PhysicalMemory, layout: Layout) -> None:
        self.mem = mem
        self.layout = layout
        self.path = mem.info.path
        self.image = KernelImage(mem, phys_base=layout.optional_int("NUMBER(phys_base)"))
        self._tables: PageTables | None = None

    def _page_tables(self) -> PageTables:
        if self._tables is None:
            self._tables = kernel_page_tables(self.mem, self.layout)
        return self._tables

    def read(self, vaddr: int, size: int, what: str) -> bytes:
        """``size`` bytes at ``vaddr``; errors name ``what`` and the address (one line)."""
        vaddr &= _MASK64
        try:
            if in_kernel_image(vaddr) and in_kernel_image(vaddr + max(size, 1) - 1):
                return self.image.read(vaddr, size)
            return self._page_tables().read(vaddr, size)
        except KdlayoutError as exc:
            raise _relabel(exc, f"{what} at {vaddr:#x} ({size} bytes): {exc.message}",
                           self.path) from None

    def u64(self, vaddr: int, what: str) -> int:
        value: int = _U64.unpack(self.read(vaddr, 8, what))[0]
        return value

    def u32(self, vaddr: int, what: str) -> int:
        value: int = _U32.unpack(self.read(vaddr, 4, what))[0]
        return value


def _relabel(exc: KdlayoutError, message: str, path: str) -> KdlayoutError:
    """A copy of ``exc`` (same class) with ``message``, located in ``path``."""
    where = exc.path or path
    if isinstance(exc, NotInDumpError):
        return NotInDumpError(message, paddr=exc.paddr, path=where, offset=exc.offset)
    return type(exc)(message, path=where, offset=exc.offset)


# ---- layout facts ------------------------------------------------------------------------------


class _Facts:
    """Layout lookups whose failure names the dump."""

    def __init__(self, layout: Layout, path: str) -> None:
        self.layout = layout
        self.path = path

    def req(self, key: str) -> int:
        try:
            return self.layout.int_value(key)
        except MissingDataError as exc:
            raise MissingDataError(f"printk log: {exc.message}", path=self.path) from None

    def opt(self, *keys: str) -> int | None:
        for key in keys:
            value = self.layout.optional_int(key)
            if value is not None:
                return value
        return None

    def first(self, *keys: str) -> int:
        value = self.opt(*keys)
        if value is None:
            raise MissingDataError(f"printk log: none of the layout facts {', '.join(keys)} "
                                   "could be resolved from any source", path=self.path)
        return value


def detect_format(layout: Layout) -> LogFormat:
    """The log format of the kernel ``layout`` describes, from the symbols it exports."""
    if layout.has("SYMBOL(prb)"):
        return LogFormat.LOCKLESS
    if layout.has("SYMBOL(log_buf)") and layout.has("SYMBOL(log_first_idx)"):
        return LogFormat.RECORDS
    if layout.has("SYMBOL(log_buf)") and layout.has("SYMBOL(log_end)"):
        return LogFormat.PLAIN
    raise MissingDataError("no printk log in the layout: neither SYMBOL(prb) (5.10+) nor "
                           "SYMBOL(log_buf) with SYMBOL(log_first_idx) or SYMBOL(log_end)")


def read_log(mem: PhysicalMemory, layout: Layout, *, partial: bool = False) -> PrintkLog:
    """Read the crashed kernel's log from ``mem`` using the resolved ``layout``.

    ``partial`` (makedumpfile's ``--partial-dmesg``): only the records since the log was last
    cleared (``dmesg -c``/``-C``, syslog ``SYSLOG_ACTION_CLEAR``), as the kernel's
    ``SYSLOG_ACTION_READ_ALL`` reads them: 5.10+ the records whose ``seq`` is at least
    ``clear_seq`` (a ``struct latched_seq`` since 5.13: the value of the copy its sequence
    selects); 3.5-5.9 the records from ``clear_idx`` on. Without the symbol the whole log is
    read with a warning; a pre-3.5 log has no record of clearing (whole log, a warning).
    """
    try:
        fmt = detect_format(layout)
    except MissingDataError as exc:
        raise exc.located(mem.info.path) from None
    kmem = KernelMemory(mem, layout)
    facts = _Facts(layout, mem.info.path)
    if fmt is LogFormat.LOCKLESS:
        log = _read_lockless(kmem, facts)
        if partial:
            _since_clear_seq(log, kmem, facts)
        return log
    if fmt is LogFormat.RECORDS:
        return _read_records(kmem, facts, partial=partial)
    log = _read_plain(kmem, facts)
    if partial:
        log.warnings.append("--partial-dmesg: a pre-3.5 log buffer keeps no mark of the last "
                            "clearing; the whole log is written")
    return log


def clear_seq(kmem: KernelMemory, facts: _Facts) -> int | None:
    """The crashed kernel's ``clear_seq`` (5.10+), None if the layout has no SYMBOL for it.

    Since 5.13 (Linux kernel commit 7d7a23a91c91, "printk: use seqcount_latch for clear_seq",
    as makedumpfile's commit bccc39c cites it; bookworm's 6.1 has it, bullseye's 5.10 not) a ``struct latched_seq {seqcount_latch_t latch; u64 val[2];}``: the value is
    ``val[latch.sequence & 1]``, as ``latched_seq_read_nolock()`` reads it (VMCOREINFO
    exports ``SIZE(latched_seq)`` and ``OFFSET(latched_seq.val)`` then); before, a plain u64.
    """
    sym = facts.opt("SYMBOL(clear_seq)")
    if sym is None:
        return None
    first = kmem.u64(sym, "printk log: clear_seq")
    o_val = facts.opt("OFFSET(latched_seq.val)")
    if facts.opt("SIZE(latched_seq)") is None or o_val is None:
        return first
    return kmem.u64(sym + o_val + 8 * (first & 1), "printk log: clear_seq.val")


def _since_clear_seq(log: PrintkLog, kmem: KernelMemory, facts: _Facts) -> None:
    """Keep the records of ``log`` (5.10+) whose seq is at least ``clear_seq``."""
    seq = clear_seq(kmem, facts)
    if seq is None:
        log.warnings.append("--partial-dmesg: the layout has no SYMBOL(clear_seq); the whole "
                            "log is written")
        return
    log.records = [r for r in log.records if r.seq is not None and r.seq >= seq]


# ---- 5.10+: the lockless ring buffer -----------------------------------------------------------


@dataclass(frozen=True)
class _Bits:
    """A bitfield's place: byte offset, shift inside the 64-bit word read there, width."""

    offset: int
    shift: int
    width: int

    def get(self, buf: bytes | memoryview, base: int) -> int:
        word = int.from_bytes(bytes(buf[base + self.offset:base + self.offset + 8])
                              .ljust(8, b"\0"), "little")
        return (word >> self.shift) & ((1 << self.width) - 1)


def _bitfield(facts: _Facts, struct_name: str, member: str, width: int) -> _Bits | None:
    """Where ``struct_name.member`` lives: a byte ``OFFSET`` or a ``BITOFFSET`` (BTF/DWARF)."""
    off = facts.opt(f"OFFSET({struct_name}.{member})")
    if off is not None:
        return _Bits(off, 0, width)
    bit = facts.opt(f"BITOFFSET({struct_name}.{member})")
    if bit is None:
        return None
    return _Bits(bit // 8, bit % 8, width)


class _RecordFields:
    """Where the per-record fields are in one ``printk_info``/``printk_log`` entry."""

    def __init__(self, facts: _Facts, struct_name: str) -> None:
        s = struct_name
        self.ts_nsec = facts.req(f"OFFSET({s}.ts_nsec)")
        self.text_len = facts.req(f"OFFSET({s}.text_len)")
        self.caller_id = facts.opt(f"OFFSET({s}.caller_id)")
        self.dict_len = facts.opt(f"OFFSET({s}.dict_len)")
        self.facility = _bitfield(facts, s, "facility", 8)
        # syslog levels are 0-7 (3 bits); the kernel's record flags are 5 bits (LOG_NEWLINE,
        # LOG_CONT): struct printk_info/printk_log declare "u8 flags:5; u8 level:3".
        self.level = _bitfield(facts, s, "level", 3)
        self.flags = _bitfield(facts, s, "flags", 5)

    def common(self, buf: bytes | memoryview, base: int
               ) -> tuple[int, int, int | None, int | None, int | None, int | None]:
        ts = int.from_bytes(buf[base + self.ts_nsec:base + self.ts_nsec + 8], "little")
        text_len = int.from_bytes(buf[base + self.text_len:base + self.text_len + 2], "little")
        caller = (None if self.caller_id is None else
                  int.from_bytes(buf[base + self.caller_id:base + self.caller_id + 4], "little"))
        level = None if self.level is None else self.level.get(buf, base)
        facility = None if self.facility is None else self.facility.get(buf, base)
        flags = None if self.flags is None else self.flags.get(buf, base)
        return ts, text_len, level, facility, flags, caller


def _cstr(raw: bytes | memoryview) -> str:
    data = bytes(raw)
    nul = data.find(b"\0")
    return (data if nul < 0 else data[:nul]).decode("utf-8", "backslashreplace")


def _read_lockless(kmem: KernelMemory, facts: _Facts) -> PrintkLog:
    log = PrintkLog(LogFormat.LOCKLESS)
    path = kmem.path
    counter = facts.req("OFFSET(atomic_long_t.counter)")
    rb_size = facts.req("SIZE(printk_ringbuffer)")
    o_desc_ring = facts.req("OFFSET(printk_ringbuffer.desc_ring)")
    o_text_ring = facts.req("OFFSET(printk_ringbuffer.text_data_ring)")
    o_count_bits = facts.req("OFFSET(prb_desc_ring.count_bits)")
    o_descs = facts.req("OFFSET(prb_desc_ring.descs)")
    o_infos = facts.req("OFFSET(prb_desc_ring.infos)")
    o_head_id = facts.req("OFFSET(prb_desc_ring.head_id)")
    o_tail_id = facts.req("OFFSET(prb_desc_ring.tail_id)")
    o_size_bits = facts.req("OFFSET(prb_data_ring.size_bits)")
    o_data = facts.req("OFFSET(prb_data_ring.data)")
    desc_size = facts.req("SIZE(prb_desc)")
    o_state = facts.req("OFFSET(prb_desc.state_var)") + counter
    o_lpos = facts.req("OFFSET(prb_desc.text_blk_lpos)")
    o_begin = o_lpos + facts.req("OFFSET(prb_data_blk_lpos.begin)")
    o_next = o_lpos + facts.req("OFFSET(prb_data_blk_lpos.next)")
    info_size = facts.req("SIZE(printk_info)")
    o_seq = facts.req("OFFSET(printk_info.seq)")
    fields = _RecordFields(facts, "printk_info")
    o_dev = facts.opt("OFFSET(printk_info.dev_info)")
    dev_parts: list[tuple[str, int, int]] = []
    if o_dev is not None:
        for member, length_key in (("subsystem", "LENGTH(printk_info_subsystem)"),
                                   ("device", "LENGTH(printk_info_device)")):
            off = facts.opt(f"OFFSET(dev_printk_info.{member})")
            length = facts.opt(length_key)
            if off is not None and length is not None:
                dev_parts.append((member.upper(), o_dev + off, length))

    for name, off, width in (("state_var", o_state, 8), ("text_blk_lpos.begin", o_begin, 8),
                             ("text_blk_lpos.next", o_next, 8)):
        if off + width > desc_size:
            raise CorruptError(f"printk log: prb_desc.{name} at {off} does not fit in "
                               f"SIZE(prb_desc)={desc_size}", path=path)
    if o_seq + 8 > info_size or fields.text_len + 2 > info_size:
        raise CorruptError(f"printk log: printk_info fields do not fit in "
                           f"SIZE(printk_info)={info_size}", path=path)

    prb_sym = facts.req("SYMBOL(prb)")
    rb_addr = kmem.u64(prb_sym, "printk log: the prb pointer")
    rb = kmem.read(rb_addr, rb_size, "printk log: struct printk_ringbuffer")

    def word(off: int, n: int = 8) -> int:
        return int.from_bytes(rb[off:off + n], "little")

    dr, tr = o_desc_ring, o_text_ring
    count_bits = word(dr + o_count_bits, 4)
    size_bits = word(tr + o_size_bits, 4)
    where = f"struct printk_ringbuffer at {rb_addr:#x}"
    if not 1 <= size_bits <= 31:
        raise CorruptError(f"printk log: {where}: text_data_ring.size_bits={size_bits} is not "
                           "in 1..31 (the kernel's LOG_BUF_LEN_MAX is 2 GiB)", path=path)
    if not 1 <= count_bits <= size_bits:
        raise CorruptError(f"printk log: {where}: desc_ring.count_bits={count_bits} is not in "
                           f"1..size_bits={size_bits}", path=path)
    count = 1 << count_bits
    ring_size = 1 << size_bits
    head_id = word(dr + o_head_id + counter) & DESC_ID_MASK
    tail_id = word(dr + o_tail_id + counter) & DESC_ID_MASK
    span = ((head_id - tail_id) & DESC_ID_MASK) + 1
    if span > count:
        raise CorruptError(f"printk log: {where}: tail_id {tail_id:#x} to head_id "
                           f"{head_id:#x} spans {span} descriptors, more than the ring's "
                           f"{count}", path=path)
    need = count * (desc_size + info_size) + ring_size
    if need > kmem.mem.total_bytes():
        raise CorruptError(f"printk log: {where}: {count} descriptors and a {ring_size}-byte "
                           f"text ring ({need} bytes) are more than the dump holds", path=path)
    descs = kmem.read(word(dr + o_descs), count * desc_size, "printk log: desc_ring.descs")
    infos = kmem.read(word(dr + o_infos), count * info_size, "printk log: desc_ring.infos")
    data = memoryview(kmem.read(word(tr + o_data), ring_size, "printk log: text_data_ring.data"))

    for i in range(span):
        rid = (tail_id + i) & DESC_ID_MASK
        idx = rid & (count - 1)
        d = idx * desc_size
        state_var = _U64.unpack_from(descs, d + o_state)[0]
        if state_var & DESC_ID_MASK != rid:
            log.skipped["miss"] += 1
            continue
        state = state_var >> DESC_FLAGS_SHIFT
        if state == DESC_RESERVED:
            log.skipped["reserved"] += 1
            continue
        if state == DESC_REUSABLE:
            log.skipped["reusable"] += 1
            continue
        begin = _U64.unpack_from(descs, d + o_begin)[0]
        nxt = _U64.unpack_from(descs, d + o_next)[0]
        base = idx * info_size
        seq = _U64.unpack_from(infos, base + o_seq)[0]
        if seq & (count - 1) != idx:
            # desc_reserve() keeps DESC_INDEX(seq) == DESC_INDEX(id) for every record.
            log.skipped["seq"] += 1
            continue
        ts, text_len, level, facility, flags, caller = fields.common(infos, base)
        block = _text_block(begin, nxt, size_bits)
        if block is None:
            log.skipped["bad-lpos"] += 1
            continue
        if block is _LOST:
            log.skipped["lost"] += 1
            continue
        if block is _EMPTY:
            text, truncated = b"", False
        else:
            off, size = block.offset, block.size
            if _U64.unpack_from(data, off)[0] != rid:
                log.skipped["block-id"] += 1
                continue
            avail = size - _ID_SIZE
            truncated = text_len > avail
            text = bytes(data[off + _ID_SIZE:off + _ID_SIZE + min(text_len, avail)])
        dev = tuple((key, value) for key, off, length in dev_parts
                    if (value := _cstr(infos[base + off:base + off + length])))
        log.records.append(PrintkRecord(seq, ts, level, facility, flags, caller, text, dev,
                                        truncated))
    _warn_skips(log, f"{where} (ids {tail_id:#x}..{head_id:#x})")
    return log


class TextBlock(NamedTuple):
    """A text data block: ``offset`` of its id in the data ring, ``size`` with id and padding."""

    offset: int
    size: int


_EMPTY = TextBlock(-1, 0)
_LOST = TextBlock(-2, 0)


def _text_block(begin: int, nxt: int, size_bits: int) -> TextBlock | None:
    """Where a text block lies in the data ring; ``_EMPTY`` (an empty line), ``_LOST``
    (data-less: the reservation failed or the data was dropped) or ``None`` (illegal).

    Follows the kernel's ``get_data()``: a regular block has ``begin`` and ``next - 1`` in the same
    wrap (a block may end exactly at the ring's end); a wrapping block is stored whole at index 0
    of the next wrap, its size is ``DATA_INDEX(next)``. Positions are unsigned longs that overflow
    (the first wrap starts at ``-size``), so all arithmetic is modulo 2**64.
    """
    ring_size = 1 << size_bits
    if begin & 1 and nxt & 1:
        return _EMPTY if begin == nxt == EMPTY_LINE_LPOS else _LOST
    if begin % _ID_SIZE or nxt % _ID_SIZE:
        return None
    last = (nxt - 1) & _MASK64
    if begin >> size_bits == last >> size_bits:
        size = (nxt - begin) & _MASK64
        off = begin & (ring_size - 1)
    elif ((begin + ring_size) & _MASK64) >> size_bits == last >> size_bits:
        size = nxt & (ring_size - 1)
        off = 0
    else:
        return None
    if size < _ID_SIZE or size > ring_size or off + size > ring_size:
        return None
    return TextBlock(off, size)


def _warn_skips(log: PrintkLog, where: str) -> None:
    bad = {k: v for k, v in sorted(log.skipped.items()) if k not in NORMAL_SKIPS}
    if bad:
        what = ", ".join(f"{n} {_SKIP_TEXT[k]}" for k, n in bad.items())
        log.warnings.append(f"{where}: skipped {sum(bad.values())} inconsistent records: {what}")


_SKIP_TEXT = {
    "miss": "whose descriptor holds another id",
    "seq": "whose seq does not map to their descriptor",
    "bad-lpos": "with an impossible text block position",
    "block-id": "whose text block belongs to another descriptor",
    "bad-len": "with a length beyond the buffer",
}


# ---- 3.5-5.9: variable-length records in log_buf ----------------------------------------------


def _read_records(kmem: KernelMemory, facts: _Facts, *, partial: bool = False) -> PrintkLog:
    log = PrintkLog(LogFormat.RECORDS)
    path = kmem.path
    # "struct log" was renamed "struct printk_log" in 3.11; VMCOREINFO names follow the struct.
    name = "printk_log" if facts.opt("SIZE(printk_log)") is not None else "log"
    hdr = facts.first(f"SIZE({name})")
    o_len = facts.req(f"OFFSET({name}.len)")
    fields = _RecordFields(facts, name)
    if max(o_len + 2, fields.text_len + 2, fields.ts_nsec + 8) > hdr or hdr < 1:
        raise CorruptError(f"printk log: struct {name} fields do not fit in SIZE({name})={hdr}",
                           path=path)
    buf_addr = kmem.u64(facts.req("SYMBOL(log_buf)"), "printk log: the log_buf pointer")
    buf_len = kmem.u32(facts.req("SYMBOL(log_buf_len)"), "printk log: log_buf_len")
    first = kmem.u32(facts.req("SYMBOL(log_first_idx)"), "printk log: log_first_idx")
    last = kmem.u32(facts.req("SYMBOL(log_next_idx)"), "printk log: log_next_idx")
    first_name = "log_first_idx"
    if partial:
        # makedumpfile's --partial-dmesg: the walk starts at clear_idx (syslog_print_all()
        # starts there unless clear_seq fell behind log_first_seq, the records it marked
        # overwritten; VMCOREINFO exports neither seq, so that case is taken when the layout
        # has both symbols from another source)
        clear_sym = facts.opt("SYMBOL(clear_idx)")
        if clear_sym is None:
            log.warnings.append("--partial-dmesg: the layout has no SYMBOL(clear_idx); the "
                                "whole log is written")
        else:
            stale = False
            seq_syms = (facts.opt("SYMBOL(clear_seq)"), facts.opt("SYMBOL(log_first_seq)"))
            if seq_syms[0] is not None and seq_syms[1] is not None:
                stale = (kmem.u64(seq_syms[0], "printk log: clear_seq")
                         < kmem.u64(seq_syms[1], "printk log: log_first_seq"))
            if not stale:
                first = kmem.u32(clear_sym, "printk log: clear_idx")
                first_name = "clear_idx"
    where = f"log_buf at {buf_addr:#x}"
    if not hdr <= buf_len <= LOG_BUF_LEN_MAX:
        raise CorruptError(f"printk log: log_buf_len={buf_len} is not in {hdr}..{LOG_BUF_LEN_MAX}",
                           path=path)
    if first > buf_len - hdr or last > buf_len - hdr:
        raise CorruptError(f"printk log: {where}: {first_name}={first} or log_next_idx={last} "
                           f"lies beyond log_buf_len={buf_len}", path=path)
    buf = memoryview(kmem.read(buf_addr, buf_len, "printk log: log_buf"))

    def u16(off: int) -> int:
        value: int = _U16.unpack_from(buf, off)[0]
        return value

    pos = first
    seen: set[int] = set()
    # Every record is at least a header long, so more steps than this means a cycle.
    for _ in range(buf_len // hdr + 2):
        if pos == last:
            break
        length = u16(pos + o_len)
        if length == 0:                 # the wrap marker: the record is at the buffer's start
            pos = 0
            if pos == last:
                break
            length = u16(o_len)
        if pos in seen:
            break                       # came round again: reported below as a cycle
        seen.add(pos)
        text_len = u16(pos + fields.text_len)
        dict_len = 0 if fields.dict_len is None else u16(pos + fields.dict_len)
        nxt = pos + length
        if length < hdr or hdr + text_len > length or nxt > buf_len - hdr:
            log.complete = False
            log.warnings.append(f"printk log: {where}: the record at index {pos:#x} (len "
                                f"{length}, text_len {text_len}) does not fit in the buffer; "
                                f"the log is cut there ({len(log.records)} records read)")
            break
        ts, _, level, facility, flags, caller = fields.common(buf, pos)
        text = bytes(buf[pos + hdr:pos + hdr + text_len])
        dict_raw = bytes(buf[pos + hdr + text_len:min(nxt, pos + hdr + text_len + dict_len)])
        dev = tuple((k, v) for k, _, v in (e.decode("utf-8", "backslashreplace").partition("=")
                                            for e in dict_raw.split(b"\0") if e))
        log.records.append(PrintkRecord(None, ts, level, facility, flags, caller, text, dev))
        pos = nxt
    if pos != last and log.complete:
        log.complete = False
        log.warnings.append(f"printk log: {where}: the record chain from {first_name} "
                            f"{first:#x} does not reach log_next_idx {last:#x} (a cycle); the "
                            f"log is cut after {len(log.records)} records")
    return log


# ---- before 3.5: a plain character ring -------------------------------------------------------


def _read_plain(kmem: KernelMemory, facts: _Facts) -> PrintkLog:
    path = kmem.path
    buf_addr = kmem.u64(facts.req("SYMBOL(log_buf)"), "printk log: the log_buf pointer")
    buf_len = kmem.u32(facts.req("SYMBOL(log_buf_len)"), "printk log: log_buf_len")
    # log_end is "unsigned long" before 2.6.25 and "unsigned" after; on a little-endian machine
    # its first four bytes are the low half either way (a count past 4 GiB wraps the index alike).
    log_end = kmem.u32(facts.req("SYMBOL(log_end)"), "printk log: log_end")
    if not 1 <= buf_len <= LOG_BUF_LEN_MAX or buf_len & (buf_len - 1):
        raise CorruptError(f"printk log: log_buf_len={buf_len} is not a power of two in "
                           f"1..{LOG_BUF_LEN_MAX}", path=path)
    if log_end < buf_len:
        text = kmem.read(buf_addr, log_end, "printk log: log_buf")
    else:
        idx = log_end & (buf_len - 1)
        raw = kmem.read(buf_addr, buf_len, "printk log: log_buf")
        text = raw[idx:] + raw[:idx]
    return PrintkLog(LogFormat.PLAIN, plain=text)


# ---- makedumpfile's text -----------------------------------------------------------------------

# C-locale isprint() or isspace(): the bytes makedumpfile copies as they are.
_PLAIN_BYTES = re.compile(rb"[^\x09-\x0d\x20-\x7e]")
_ESCAPES = tuple(bytes([b]) if 0x09 <= b <= 0x0D or 0x20 <= b <= 0x7E else b"\\x%02x" % b
                 for b in range(256))


def record_prefix(rec: PrintkRecord, *, caller_id: bool = False) -> bytes:
    """``[%5lld.%06ld] `` and, with ``caller_id``, ``[%8s] `` of ``T<pid>``/``C<cpu>``."""
    secs, nsec = divmod(rec.ts_nsec, 1_000_000_000)
    out = b"[%5d.%06d] " % (secs, nsec // 1000)
    if caller_id and rec.caller_id is not None:
        cid = rec.caller_id
        tag = b"%c%d" % (b"C"[0] if cid & CALLER_ID_CPU else b"T"[0], cid & ~CALLER_ID_CPU)
        out += b"[%8s] " % tag
    return out


def format_record(rec: PrintkRecord, *, caller_id: bool = False) -> bytes:
    """One record as ``makedumpfile --dump-dmesg`` prints it (see docs/printk.md).

    Bytes that are neither printable nor white space in the C locale become ``\\xNN``; a newline
    inside the text continues on a new line indented by the prefix's width; the record ends with
    a newline.
    """
    prefix = record_prefix(rec, caller_id=caller_id)
    text = rec.text
    if _PLAIN_BYTES.search(text) is not None:
        text = b"".join(_ESCAPES[b] for b in text)
    if b"\n" in text:
        text = text.replace(b"\n", b"\n" + b" " * len(prefix))
    return prefix + text + b"\n"


def iter_makedumpfile(log: PrintkLog, *, caller_id: bool = False) -> Iterator[bytes]:
    """The whole log as ``makedumpfile --dump-dmesg`` writes it, in pieces."""
    if log.plain is not None:
        yield log.plain
        return
    for rec in log.records:
        yield format_record(rec, caller_id=caller_id)


def format_makedumpfile(log: PrintkLog, *, caller_id: bool = False) -> bytes:
    """The whole log as one ``bytes``."""
    return b"".join(iter_makedumpfile(log, caller_id=caller_id))


def write_makedumpfile(log: PrintkLog, out: BinaryIO, *, caller_id: bool = False) -> int:
    """Write the log's text to ``out`` in 64 KiB pieces; returns the number of bytes written."""
    n = 0
    for piece in _batched(iter_makedumpfile(log, caller_id=caller_id)):
        out.write(piece)
        n += len(piece)
    return n


def _batched(pieces: Iterable[bytes], limit: int = 1 << 16) -> Iterator[bytes]:
    pending: list[bytes] = []
    size = 0
    for p in pieces:
        pending.append(p)
        size += len(p)
        if size >= limit:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)

