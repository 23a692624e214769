"""Synthetic ELF64 x86_64 cores for parser and error-path unit tests.

Only for those: expected results of real dumps come from independent tools, never from here.
The builder records where each structure was written, so tests can truncate or corrupt the file
exactly at a header boundary.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
NHDR = struct.Struct("<III")
PRSTATUS = struct.Struct("<iiih2xQQiiii8q27Qi4x")

PT_LOAD = 1
PT_NOTE = 4
PN_XNUM = 0xFFFF

SAMPLE_VMCOREINFO = (
    "OSRELEASE=6.1.0-synthetic-amd64\n"
    "BUILD-ID=0123456789abcdef0123456789abcdef01234567\n"
    "PAGESIZE=4096\n"
    "SYMBOL(init_uts_ns)=ffffffff82c13440\n"
    "SYMBOL(mem_section)=ffff888237fd2000\n"
    "SYMBOL(vmemmap_base)=ffffffff82a2a100\n"
    "SIZE(page)=64\n"
    "OFFSET(page.flags)=0\n"
    "OFFSET(page._refcount)=52\n"
    "LENGTH(zone.free_area)=11\n"
    "NUMBER(NR_FREE_PAGES)=0\n"
    "NUMBER(PG_lru)=4\n"
    "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129\n"
    "NUMBER(phys_base)=469762048\n"
    "NUMBER(pgtable_l5_enabled)=0\n"
    "NUMBER(sme_mask)=0\n"
    "KERNELOFFSET=1e000000\n"
    "CRASHTIME=1700000000\n"
)


def note_bytes(name: str, ntype: int, desc: bytes) -> bytes:
    """One ELF note with 4-byte padding of name and descriptor."""
    raw_name = name.encode() + b"\0" if name else b""
    out = NHDR.pack(len(raw_name), len(desc), ntype)
    out += raw_name + b"\0" * (-len(raw_name) % 4)
    out += desc + b"\0" * (-len(desc) % 4)
    return out


def prstatus_desc(pid: int, rip: int = 0xFFFFFFFF81000000, rsp: int = 0xFFFFC90000003F00) -> bytes:
    """An x86_64 struct elf_prstatus with the given pid, rip and rsp (other registers = index)."""
    regs = list(range(27))
    regs[16] = rip
    regs[19] = rsp
    return PRSTATUS.pack(11, 0, 0, 11, 0, 0, pid, 0, 0, 0, *([0] * 8), *regs, 1)


@dataclass
class Seg:
    """A PT_LOAD to write: physical address, stored bytes and optional larger p_memsz."""

    paddr: int
    data: bytes
    memsz: int | None = None
    vaddr: int = 0


@dataclass
class Layout:
    """Where the builder put things."""

    data: bytes
    phoff: int
    phdr_offsets: list[int] = field(default_factory=list)
    note_offset: int = 0
    note_size: int = 0
    note_offsets: list[int] = field(default_factory=list)
    seg_offsets: list[int] = field(default_factory=list)
    shoff: int = 0


def build_core(segs: list[Seg], notes: list[tuple[str, int, bytes]] | None = None, *,
               xnum: bool = False, machine: int = 62, phentsize: int = 56,
               extra_phdrs: int = 0) -> Layout:
    """Build an ELF core.

    Default layout is kexec's: ELF header, program headers (PT_NOTE first), notes, segment data.
    ``xnum=True`` gives QEMU's PN_XNUM layout: ELF header, section header 0 holding the real count
    in ``sh_info``, then the program headers. ``extra_phdrs`` pads the table with PT_NULL entries.
    """
    if notes is None:
        notes = [("CORE", 1, prstatus_desc(1)), ("CORE", 1, prstatus_desc(2)),
                 ("VMCOREINFO", 0, SAMPLE_VMCOREINFO.encode())]
    note_offsets: list[int] = []
    blob = b""
    for name, ntype, desc in notes:
        note_offsets.append(len(blob))
        blob += note_bytes(name, ntype, desc)
    nphdr = 1 + len(segs) + extra_phdrs
    shoff = 64 if xnum else 0
    phoff = 64 + (64 if xnum else 0)
    pos = phoff + nphdr * 56
    note_offset = pos
    pos += len(blob)
    seg_offsets = []
    for s in segs:
        seg_offsets.append(pos)
        pos += len(s.data)
    e_phnum = PN_XNUM if xnum else nphdr
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    out = bytearray(EHDR.pack(ident, 4, machine, 1, 0, phoff, shoff, 0, 64, phentsize, e_phnum,
                              64 if xnum else 0, 1 if xnum else 0, 0))
    if xnum:
        out += SHDR.pack(0, 0, 0, 0, 0, 0, 0, nphdr, 0, 0)
    phdr_offsets = []
    phdr_offsets.append(len(out))
    out += PHDR.pack(PT_NOTE, 0, note_offset, 0, 0, len(blob), len(blob), 0)
    for s, off in zip(segs, seg_offsets, strict=True):
        phdr_offsets.append(len(out))
        memsz = s.memsz if s.memsz is not None else len(s.data)
        out += PHDR.pack(PT_LOAD, 7, off, s.vaddr, s.paddr, len(s.data), memsz, 0)
    for _ in range(extra_phdrs):
        phdr_offsets.append(len(out))
        out += PHDR.pack(0, 0, 0, 0, 0, 0, 0, 0)
    assert len(out) == note_offset
    out += blob
    for s in segs:
        out += s.data
    return Layout(bytes(out), phoff, phdr_offsets, note_offset, len(blob),
                  [note_offset + o for o in note_offsets], seg_offsets, shoff)


def page_pattern(pfn: int, npages: int = 1, page_size: int = 4096) -> bytes:
    """Distinct, recognisable content for pages ``pfn .. pfn + npages``."""
    out = bytearray()
    for p in range(pfn, pfn + npages):
        out += struct.pack("<Q", p) * (page_size // 8)
    return bytes(out)


def default_core(xnum: bool = False) -> Layout:
    """Three RAM segments: two adjacent, one with an unstored tail, and a kernel-text alias."""
    return build_core([
        Seg(0x0000, page_pattern(0, 4)),
        Seg(0x4000, page_pattern(4, 2)),              # adjacent to the first
        Seg(0x10000, page_pattern(16, 2), memsz=0x4000),  # pfn 18, 19 not stored
        Seg(0x1000, page_pattern(1, 1), vaddr=0xFFFFFFFF81000000),  # alias inside segment 0
    ], xnum=xnum)
