"""Synthetic printk log buffers inside synthetic ELF cores, for kdlayout.printk's tests.

The structures follow the kernel's definitions (kernel/printk/printk_ringbuffer.h, struct
printk_log of 3.5-5.9) with the member offsets of Debian's 6.1 and 5.4 builds; the VMCOREINFO
written with them names those offsets, so the reader finds everything the way it does on a real
dump. Everything lives in one kernel-image segment, translated by ``NUMBER(phys_base)``.
Only for error paths and the formats no fixture has: real dumps are checked against makedumpfile.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from synth import Seg, build_core, prstatus_desc

START_KERNEL_MAP = 0xFFFFFFFF80000000
PHYS_BASE = 0x1000000
KBASE = 0xFFFFFFFF81000000               # kernel-image address of the segment start
PADDR = KBASE - START_KERNEL_MAP + PHYS_BASE
SEG_SIZE = 0x20000
MASK64 = (1 << 64) - 1
ID_MASK = MASK64 >> 2

# Where the structures go, relative to KBASE.
PRB_PTR = 0x0
PRB = 0x100
DESCS = 0x400
INFOS = 0x2000
DATA = 0x8000

DESC_SIZE = 24
INFO_SIZE = 88

PRB_VMCOREINFO = """OSRELEASE=6.1.0-synthetic-amd64
PAGESIZE=4096
NUMBER(phys_base)={phys_base}
SYMBOL(prb)={prb:x}
SIZE(printk_ringbuffer)=88
OFFSET(printk_ringbuffer.desc_ring)=0
OFFSET(printk_ringbuffer.text_data_ring)=48
OFFSET(printk_ringbuffer.fail)=80
SIZE(prb_desc_ring)=48
OFFSET(prb_desc_ring.count_bits)=0
OFFSET(prb_desc_ring.descs)=8
OFFSET(prb_desc_ring.infos)=16
OFFSET(prb_desc_ring.head_id)=24
OFFSET(prb_desc_ring.tail_id)=32
SIZE(prb_desc)=24
OFFSET(prb_desc.state_var)=0
OFFSET(prb_desc.text_blk_lpos)=8
SIZE(prb_data_blk_lpos)=16
OFFSET(prb_data_blk_lpos.begin)=0
OFFSET(prb_data_blk_lpos.next)=8
SIZE(printk_info)=88
OFFSET(printk_info.seq)=0
OFFSET(printk_info.ts_nsec)=8
OFFSET(printk_info.text_len)=16
OFFSET(printk_info.caller_id)=20
OFFSET(printk_info.dev_info)=24
SIZE(dev_printk_info)=64
OFFSET(dev_printk_info.subsystem)=0
LENGTH(printk_info_subsystem)=16
OFFSET(dev_printk_info.device)=16
LENGTH(printk_info_device)=48
SIZE(prb_data_ring)=32
OFFSET(prb_data_ring.size_bits)=0
OFFSET(prb_data_ring.data)=8
OFFSET(prb_data_ring.head_lpos)=16
OFFSET(prb_data_ring.tail_lpos)=24
SIZE(atomic_long_t)=8
OFFSET(atomic_long_t.counter)=0
"""


@dataclass
class SynthRecord:
    """A record to place: text, timestamp, caller, state; ``lpos`` overrides the allocation."""

    text: bytes
    ts_nsec: int = 0
    caller_id: int = 1
    state: int = 2                       # finalized
    lpos: tuple[int, int] | None = None  # explicit (begin, next)
    text_len: int | None = None          # a lying text_len
    seq_delta: int = 0                   # make seq disagree with the descriptor index
    block_id_delta: int = 0              # make the data block's id disagree
    subsystem: bytes = b""
    device: bytes = b""


@dataclass
class Ring:
    """A lockless ring buffer image: 2**count_bits descriptors, 2**size_bits bytes of text."""

    count_bits: int = 4
    size_bits: int = 9
    first_id: int = 0x40
    records: list[SynthRecord] = field(default_factory=list)
    #: The data ring's first logical position: the kernel starts at -size (BLK0_LPOS), so the
    #: end of the first wrap overflows to 0.
    start_lpos: int | None = None
    head_id_override: int | None = None
    size_bits_override: int | None = None

    def build(self) -> bytearray:
        count, size = 1 << self.count_bits, 1 << self.size_bits
        seg = bytearray(SEG_SIZE)
        lpos = (-size) & MASK64 if self.start_lpos is None else self.start_lpos
        data = bytearray(size)
        tail_id = self.first_id
        head_id = (self.first_id + len(self.records) - 1) & ID_MASK
        for i, rec in enumerate(self.records):
            rid = (self.first_id + i) & ID_MASK
            idx = rid % count
            text_len = len(rec.text) if rec.text_len is None else rec.text_len
            if rec.lpos is not None:
                begin, nxt = rec.lpos
            elif not rec.text:
                begin = nxt = 0x3                            # EMPTY_LINE_LPOS
            else:
                blk = (8 + len(rec.text) + 7) & ~7
                begin = lpos
                if begin >> self.size_bits == ((begin + blk - 1) & MASK64) >> self.size_bits:
                    nxt = (begin + blk) & MASK64
                    off = begin % size
                else:                                       # wraps: stored whole at index 0
                    struct.pack_into("<Q", data, begin % size, rid)
                    nxt = ((((begin + blk) & MASK64) & ~(size - 1)) + blk) & MASK64
                    off = 0
                struct.pack_into("<Q", data, off, (rid + rec.block_id_delta) & MASK64)
                data[off + 8:off + 8 + len(rec.text)] = rec.text
                lpos = nxt
            state_var = (rec.state << 62) | rid
            struct.pack_into("<QQQ", seg, DESCS + idx * DESC_SIZE, state_var, begin, nxt)
            info = INFOS + idx * INFO_SIZE
            level_flags = (6 << 5) | 2                        # level 6 (info), LOG_NEWLINE
            struct.pack_into("<QQHBBI", seg, info, rid + rec.seq_delta, rec.ts_nsec, text_len,
                             0, level_flags, rec.caller_id)
            seg[info + 24:info + 24 + len(rec.subsystem)] = rec.subsystem
            seg[info + 40:info + 40 + len(rec.device)] = rec.device
        if self.head_id_override is not None:
            head_id = self.head_id_override
        seg[DATA:DATA + size] = data
        struct.pack_into("<Q", seg, PRB_PTR, KBASE + PRB)
        size_bits = self.size_bits if self.size_bits_override is None else self.size_bits_override
        struct.pack_into("<IxxxxQQQQQ", seg, PRB, self.count_bits, KBASE + DESCS, KBASE + INFOS,
                         head_id, tail_id, 0)
        struct.pack_into("<IxxxxQQQ", seg, PRB + 48, size_bits, KBASE + DATA, lpos, lpos)
        return seg


def vmcoreinfo_text(extra: str = "") -> str:
    return PRB_VMCOREINFO.format(phys_base=PHYS_BASE, prb=KBASE + PRB_PTR) + extra


UTS = 0x1F000             # struct uts_namespace (its new_utsname first, as since 4.x)
MEM_MAP = 0x19000         # FLATMEM's mem_map pointer (makedumpfile wants a memory model)
# Page tables (4 levels): the kernel image and a direct-map alias of the segment, 2 MiB pages.
PGD, PUD_K, PMD_K, PUD_D, PMD_D = 0x1A000, 0x1B000, 0x1C000, 0x1D000, 0x1E000
DIRECT_MAP = 0xFFFF888000000000
#: The direct-map address of segment offset 0 (for rings whose buffers are not in the image).
DBASE = DIRECT_MAP + PADDR


def _page_tables(segment: bytearray) -> None:
    def entry(table: int, va: int, shift: int, value: int) -> None:
        struct.pack_into("<Q", segment, table + 8 * ((va >> shift) & 511), value)

    big = PADDR | 0x83                                  # present, writable, 2 MiB page
    entry(PGD, KBASE, 39, (PADDR + PUD_K) | 0x3)
    entry(PUD_K, KBASE, 30, (PADDR + PMD_K) | 0x3)
    entry(PMD_K, KBASE, 21, big)
    entry(PGD, DBASE, 39, (PADDR + PUD_D) | 0x3)
    entry(PUD_D, DBASE, 30, (PADDR + PMD_D) | 0x3)
    entry(PMD_D, DBASE, 21, big)


def core_bytes(segment: bytes, vmcoreinfo: str) -> bytes:
    """An ELF core holding ``segment`` at the kernel image and ``vmcoreinfo``.

    ``init_uts_ns`` is added (sysname Linux, the OSRELEASE): makedumpfile checks it first.
    """
    release = next(line.split("=", 1)[1] for line in vmcoreinfo.splitlines()
                   if line.startswith("OSRELEASE="))
    segment = bytearray(segment)
    for i, name in enumerate((b"Linux", b"synth", release.encode(), b"#1", b"x86_64")):
        segment[UTS + 65 * i:UTS + 65 * i + len(name)] = name
    _page_tables(segment)
    struct.pack_into("<Q", segment, MEM_MAP, DBASE + MEM_MAP + 8)
    vmcoreinfo += (f"SYMBOL(init_uts_ns)={KBASE + UTS:x}\nSYMBOL(mem_map)={KBASE + MEM_MAP:x}\n"
                   "SIZE(page)=64\nOFFSET(page.flags)=0\nOFFSET(page._refcount)=52\n"
                   f"OFFSET(page.mapping)=24\nSYMBOL(init_top_pgt)={KBASE + PGD:x}\n"
                   "OFFSET(uts_namespace.name)=0\nNUMBER(pgtable_l5_enabled)=0\n")
    notes = [("CORE", 1, prstatus_desc(1)), ("VMCOREINFO", 0, vmcoreinfo.encode())]
    return build_core([Seg(PADDR, bytes(segment), vaddr=KBASE)], notes).data


# ---- 3.5-5.9: struct printk_log records -------------------------------------------------------

LOG_BUF_SYM = 0x100       # char *log_buf
LOG_BUF_LEN_SYM = 0x108   # u32 log_buf_len
FIRST_IDX_SYM = 0x110     # u32 log_first_idx
NEXT_IDX_SYM = 0x118      # u32 log_next_idx
LOG_END_SYM = 0x120       # unsigned log_end (pre-3.5)
LOG_BUF = 0x1000
PRINTK_LOG_SIZE = 16      # u64 ts_nsec; u16 len, text_len, dict_len; u8 facility; u8 flags:5, level:3

RECORDS_VMCOREINFO = """OSRELEASE=5.4.0-synthetic-amd64
PAGESIZE=4096
NUMBER(phys_base)={phys_base}
SYMBOL(log_buf)={log_buf:x}
SYMBOL(log_buf_len)={log_buf_len:x}
SYMBOL(log_first_idx)={first:x}
SYMBOL(clear_idx)={first:x}
SYMBOL(log_next_idx)={next:x}
SIZE(printk_log)=16
OFFSET(printk_log.ts_nsec)=0
OFFSET(printk_log.len)=8
OFFSET(printk_log.text_len)=10
"""

PLAIN_VMCOREINFO = """OSRELEASE=3.2.0-synthetic-amd64
PAGESIZE=4096
NUMBER(phys_base)={phys_base}
SYMBOL(log_buf)={log_buf:x}
SYMBOL(log_buf_len)={log_buf_len:x}
SYMBOL(log_end)={log_end:x}
"""


def records_vmcoreinfo() -> str:
    return RECORDS_VMCOREINFO.format(phys_base=PHYS_BASE, log_buf=KBASE + LOG_BUF_SYM,
                                     log_buf_len=KBASE + LOG_BUF_LEN_SYM,
                                     first=KBASE + FIRST_IDX_SYM, next=KBASE + NEXT_IDX_SYM)


def plain_vmcoreinfo() -> str:
    return PLAIN_VMCOREINFO.format(phys_base=PHYS_BASE, log_buf=KBASE + LOG_BUF_SYM,
                                   log_buf_len=KBASE + LOG_BUF_LEN_SYM, log_end=KBASE + LOG_END_SYM)


def printk_log_record(text: bytes, ts_nsec: int, dict_: bytes = b"") -> bytes:
    """One struct printk_log with its text and dict, padded to 8 bytes like log_store()."""
    length = (PRINTK_LOG_SIZE + len(text) + len(dict_) + 7) & ~7
    hdr = struct.pack("<QHHHBB", ts_nsec, length, len(text), len(dict_), 0, (6 << 5) | 2)
    return (hdr + text + dict_).ljust(length, b"\0")


def records_segment(records: list[bytes], *, buf_len: int = 0x400, first: int = 0,
                    wrap_at: int | None = None) -> tuple[bytearray, int]:
    """log_buf holding ``records`` from ``first`` on; with ``wrap_at``, records from that index
    go to offset 0 after a zero-length wrap marker. Returns the segment and log_next_idx."""
    seg = bytearray(SEG_SIZE)
    pos = first
    for i, rec in enumerate(records):
        if wrap_at is not None and i == wrap_at:
            seg[LOG_BUF + pos:LOG_BUF + pos + PRINTK_LOG_SIZE] = bytes(PRINTK_LOG_SIZE)
            pos = 0
        seg[LOG_BUF + pos:LOG_BUF + pos + len(rec)] = rec
        pos += len(rec)
    struct.pack_into("<Q", seg, LOG_BUF_SYM, KBASE + LOG_BUF)
    struct.pack_into("<I", seg, LOG_BUF_LEN_SYM, buf_len)
    struct.pack_into("<I", seg, FIRST_IDX_SYM, first)
    struct.pack_into("<I", seg, NEXT_IDX_SYM, pos)
    return seg, pos


def plain_segment(text: bytes, *, buf_len: int = 0x100, log_end: int | None = None) -> bytearray:
    """A pre-3.5 character ring holding the last ``buf_len`` characters of ``text``."""
    seg = bytearray(SEG_SIZE)
    end = len(text) if log_end is None else log_end
    for i, ch in enumerate(text[-buf_len:], start=max(0, len(text) - buf_len)):
        seg[LOG_BUF + i % buf_len] = ch
    struct.pack_into("<Q", seg, LOG_BUF_SYM, KBASE + LOG_BUF)
    struct.pack_into("<I", seg, LOG_BUF_LEN_SYM, buf_len)
    struct.pack_into("<I", seg, LOG_END_SYM, end)
    return seg
