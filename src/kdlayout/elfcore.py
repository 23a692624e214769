"""ELF64 core files: kexec ``/proc/vmcore`` copies and QEMU ``dump-guest-memory`` output.

Layout facts this reader relies on (System V gABI, ELF-64 object file format):

* The ELF header (64 bytes) gives the program header table (``e_phoff``, ``e_phentsize`` = 56,
  ``e_phnum``). When a core has 0xffff (``PN_XNUM``) or more program headers, ``e_phnum`` holds
  ``PN_XNUM`` and the real count is ``sh_info`` of section header 0 (at ``e_shoff``). QEMU writes
  that layout for guests with many RAM blocks, with the section header before the program headers.
* ``PT_NOTE`` segments hold the note stream (:mod:`kdlayout.notes`): one ``NT_PRSTATUS`` per CPU,
  ``VMCOREINFO``, and for QEMU one ``QEMU`` CPU-state note per CPU.
* ``PT_LOAD`` segments map physical memory: ``p_paddr`` is the physical address, ``p_filesz``
  bytes are stored at ``p_offset``. Bytes in ``[p_filesz, p_memsz)`` are *not* in the dump
  (makedumpfile's ELF output uses that for excluded pages); they are absent from :meth:`ranges` and
  reading them raises :class:`~kdlayout.errors.NotInDumpError`.
* kexec vmcores (x86_64) carry a first ``PT_LOAD`` for the kernel text whose ``p_vaddr`` is the
  (KASLR-shifted) ``__START_KERNEL_map`` address; its physical range also lies inside a RAM
  segment. Physical ranges of segments may therefore overlap; the reader uses one segment per
  physical byte, preferring the segment that starts lower and is longer.
* ``/proc/kcore`` marks segments with no physical address with ``p_paddr == -1``; they are skipped.

Opening validates every header against the file size and touches no page data.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
import stat
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import CorruptError, NotInDumpError, UnsupportedError
from .notes import Note, find_vmcoreinfo, parse_notes, prstatus_notes
from .physmem import PAGE_SIZE, DumpInfo, MemoryRange, PhysicalMemory

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2
ET_CORE = 4
EM_386 = 3
EM_X86_64 = 62
#: Machines accepted in an ELF64 core. QEMU writes EM_386 when the guest CPU was not in long mode
#: at dump time (e.g. still in firmware); the physical memory layout is the same.
MACHINES = {EM_X86_64: "x86_64", EM_386: "i386"}
PT_LOAD = 1
PT_NOTE = 4
PN_XNUM = 0xFFFF
EHDR_SIZE = 64
PHDR_SIZE = 56
SHDR_SIZE = 64

_NO_PADDR = 0xFFFF_FFFF_FFFF_FFFF
#: Physical ranges must end at or below this (x86_64 physical addresses have at most 52 bits).
MAX_PHYS_END = 1 << 63
#: Program headers beyond this count are refused (UnsupportedError): the table and the arrays derived
#: from it are held in memory. QEMU writes one PT_LOAD per RAM block, makedumpfile -E one per run
#: of kept pages; both stay far below.
MAX_PHDRS = 1 << 24
#: With the pread fallback (files that cannot be mmapped), note segments are read into memory.
MAX_NOTE_SEGMENT_COPY = 64 << 20

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SH_INFO = struct.Struct("<I")

# Field offsets in Elf64_Ehdr, for error messages.
_OFF_E_TYPE = 0x10
_OFF_E_MACHINE = 0x12
_OFF_E_PHOFF = 0x20
_OFF_E_SHOFF = 0x28
_OFF_E_PHENTSIZE = 0x36
_OFF_E_PHNUM = 0x38
_OFF_E_SHENTSIZE = 0x3A

PHDR_DTYPE = np.dtype([
    ("p_type", "<u4"), ("p_flags", "<u4"), ("p_offset", "<u8"), ("p_vaddr", "<u8"),
    ("p_paddr", "<u8"), ("p_filesz", "<u8"), ("p_memsz", "<u8"), ("p_align", "<u8"),
])
assert PHDR_DTYPE.itemsize == PHDR_SIZE


class ElfHeader(NamedTuple):
    """The fields of ``Elf64_Ehdr`` a core reader needs, with ``PN_XNUM`` resolved."""

    e_type: int
    e_machine: int
    e_phoff: int
    e_shoff: int
    e_phentsize: int
    e_phnum: int          # the real number of program headers
    e_shentsize: int
    e_shnum: int
    pn_xnum: bool         # e_phnum was PN_XNUM and the count came from section header 0


class LoadSegment(NamedTuple):
    """One ``PT_LOAD`` program header (``Elf64_Phdr``)."""

    phdr_index: int       # index in the program header table
    phdr_offset: int      # file offset of the program header
    p_offset: int
    p_vaddr: int
    p_paddr: int
    p_filesz: int
    p_memsz: int
    p_flags: int

    @property
    def stored(self) -> MemoryRange:
        """The physical range whose bytes are in the file."""
        return MemoryRange(self.p_paddr, self.p_filesz)


class _Reader:
    """Bounded byte access to the file: an mmap/buffer (zero-copy) or pread (fallback)."""

    def __init__(self, path: str, size: int, mv: memoryview | None, fd: int | None,
                 mm: mmap.mmap | None) -> None:
        self.path = path
        self.size = size
        self.mv = mv
        self.fd = fd
        self.mm = mm

    def slice(self, offset: int, size: int) -> memoryview:
        """Bytes ``[offset, offset + size)``; the caller has checked the bounds."""
        if self.mv is None and self.fd is None:
            raise ValueError(f"{self.path}: read after close()")
        if self.mv is not None:
            return self.mv[offset:offset + size]
        assert self.fd is not None
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise CorruptError(f"short read: {len(data)} of {size} bytes", path=self.path,
                               offset=offset)
        return memoryview(data)

    def close(self) -> None:
        if self.mv is not None:
            # A caller may still hold a view; then the mapping goes away with it.
            with contextlib.suppress(BufferError):
                self.mv.release()
            self.mv = None
        if self.mm is not None:
            with contextlib.suppress(BufferError):
                self.mm.close()
            self.mm = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def parse_elf_header(data: bytes | memoryview, file_size: int, *, path: str) -> ElfHeader:
    """Parse and validate an ``Elf64_Ehdr`` of an x86_64 little-endian core.

    ``data`` holds the first 64 bytes of the file (fewer means the file is truncated). The
    returned ``e_phnum`` may still be ``PN_XNUM``; the reader resolves it from section header 0.
    """
    if file_size == 0:
        raise CorruptError("empty file, not an ELF core", path=path, offset=0)
    if bytes(data[:4]) != ELF_MAGIC:
        raise CorruptError(f"bad ELF magic {bytes(data[:4])!r}", path=path, offset=0)
    if len(data) < 6:
        raise CorruptError(f"truncated ELF header ({len(data)} of {EHDR_SIZE} bytes)",
                           path=path, offset=0)
    ei_class, ei_data = data[4], data[5]
    if ei_class == ELFCLASS32:
        raise UnsupportedError("32-bit ELF cores are not supported", path=path, offset=4)
    if ei_class != ELFCLASS64:
        raise CorruptError(f"bad ELF class {ei_class}", path=path, offset=4)
    if ei_data == ELFDATA2MSB:
        raise UnsupportedError("big-endian ELF cores are not supported", path=path, offset=5)
    if ei_data != ELFDATA2LSB:
        raise CorruptError(f"bad ELF data encoding {ei_data}", path=path, offset=5)
    if len(data) < EHDR_SIZE:
        raise CorruptError(f"truncated ELF header ({len(data)} of {EHDR_SIZE} bytes)",
                           path=path, offset=0)
    (_ident, e_type, e_machine, _version, _entry, e_phoff, e_shoff, _flags, _ehsize,
     e_phentsize, e_phnum, e_shentsize, e_shnum, _shstrndx) = _EHDR.unpack_from(data, 0)
    if e_type != ET_CORE:
        raise UnsupportedError(f"ELF file is not a core dump (e_type {e_type})", path=path,
                               offset=_OFF_E_TYPE)
    if e_machine not in MACHINES:
        raise UnsupportedError(f"ELF core for machine {e_machine} is not supported (x86_64 only)",
                               path=path, offset=_OFF_E_MACHINE)
    if e_phentsize != PHDR_SIZE:
        raise CorruptError(f"e_phentsize is {e_phentsize}, expected {PHDR_SIZE}", path=path,
                           offset=_OFF_E_PHENTSIZE)
    if e_phnum == 0:
        raise CorruptError("no program headers (e_phnum 0)", path=path, offset=_OFF_E_PHNUM)
    return ElfHeader(e_type, e_machine, e_phoff, e_shoff, e_phentsize, e_phnum, e_shentsize,
                     e_shnum, False)


def _read_xnum(reader: _Reader, hdr: ElfHeader) -> ElfHeader:
    """Resolve ``e_phnum == PN_XNUM`` from ``sh_info`` of section header 0."""
    path = reader.path
    if hdr.e_shoff == 0:
        raise CorruptError("e_phnum is PN_XNUM but there is no section header (e_shoff 0)",
                           path=path, offset=_OFF_E_SHOFF)
    if hdr.e_shentsize != SHDR_SIZE:
        raise CorruptError(f"e_shentsize is {hdr.e_shentsize}, expected {SHDR_SIZE}",
                           path=path, offset=_OFF_E_SHENTSIZE)
    if hdr.e_shoff > reader.size or reader.size - hdr.e_shoff < SHDR_SIZE:
        raise CorruptError(
            f"section header 0 (needed for PN_XNUM) at {hdr.e_shoff:#x} is beyond the end of the "
            f"file ({reader.size} bytes)", path=path, offset=hdr.e_shoff)
    (sh_info,) = _SH_INFO.unpack_from(reader.slice(hdr.e_shoff + 44, 4), 0)
    if sh_info == 0:
        raise CorruptError("e_phnum is PN_XNUM but sh_info of section header 0 is 0",
                           path=path, offset=hdr.e_shoff + 44)
    return hdr._replace(e_phnum=sh_info, pn_xnum=True)


def _first_true(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


class ElfCore(PhysicalMemory):
    """Physical memory of an ELF64 x86_64 core (kexec ``/proc/vmcore`` or QEMU dump).

    Construct with :meth:`open` (a path; mmapped read-only) or :meth:`from_buffer` (bytes, for
    tests). ``info.format`` is ``"elf-qemu"`` for QEMU ``dump-guest-memory`` output (``PN_XNUM``,
    section headers or ``QEMU`` notes) and ``"elf-kexec"`` otherwise.
    """

    def __init__(self, reader: _Reader) -> None:
        self._reader = reader
        self.path = reader.path
        self._segments: tuple[LoadSegment, ...] | None = None
        try:
            self._parse()
        except BaseException:
            reader.close()
            raise

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ElfCore:
        """Open and mmap the ELF core at ``path`` read-only."""
        spath = str(path)
        fd = os.open(spath, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)
            size = st.st_size
            if stat.S_ISDIR(st.st_mode):
                raise UnsupportedError("is a directory, not a crash dump", path=spath)
            if size == 0:
                raise CorruptError("empty file, not an ELF core", path=spath, offset=0)
            try:
                mm: mmap.mmap | None = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError, OverflowError):
                mm = None  # e.g. /proc/kcore: fall back to pread
        except BaseException:
            os.close(fd)
            raise
        if mm is not None:
            # the descriptor stays open for read_into (pread into the caller's buffer)
            return cls(_Reader(spath, len(mm), memoryview(mm), fd, mm))
        return cls(_Reader(spath, size, None, fd, None))

    @classmethod
    def from_buffer(cls, data: bytes | bytearray | memoryview, path: str = "<buffer>") -> ElfCore:
        """An ELF core held in memory (tests, or a core already read)."""
        mv = memoryview(data).cast("B")
        if isinstance(data, bytearray):
            mv = mv.toreadonly()
        return cls(_Reader(path, len(mv), mv, None, None))

    # -- parsing ----------------------------------------------------------------------------------

    def _parse(self) -> None:
        r = self._reader
        path = r.path
        head = r.slice(0, min(r.size, EHDR_SIZE))
        hdr = parse_elf_header(head, r.size, path=path)
        if hdr.e_phnum == PN_XNUM:
            hdr = _read_xnum(r, hdr)
        self.header = hdr

        # Program header table: every header must be inside the file.
        phoff, phnum = hdr.e_phoff, hdr.e_phnum
        if phoff == 0:
            raise CorruptError("e_phoff is 0 but the core has program headers", path=path,
                               offset=_OFF_E_PHOFF)
        fit = max(0, (r.size - phoff) // PHDR_SIZE) if phoff <= r.size else 0
        if fit < phnum:
            raise CorruptError(
                f"program header {fit} of {phnum} is truncated or beyond the end of the file "
                f"({r.size} bytes)", path=path, offset=phoff + fit * PHDR_SIZE)
        if phnum > MAX_PHDRS:
            raise UnsupportedError(f"{phnum} program headers, more than the {MAX_PHDRS} supported",
                                   path=path, offset=_OFF_E_PHNUM)
        table = np.frombuffer(r.slice(phoff, phnum * PHDR_SIZE), dtype=PHDR_DTYPE).copy()
        self._phdrs = table

        size = np.uint64(r.size)
        off = table["p_offset"]
        filesz = table["p_filesz"]
        memsz = table["p_memsz"]
        ptype = table["p_type"]
        paddr = table["p_paddr"]
        in_file = (off <= size) & (filesz <= size - np.minimum(off, size))
        relevant = (ptype == PT_LOAD) | (ptype == PT_NOTE)
        i = _first_true(relevant & ~in_file)
        if i is not None:
            kind = "PT_LOAD" if ptype[i] == PT_LOAD else "PT_NOTE"
            raise CorruptError(
                f"{kind} program header {i}: file range {int(off[i]):#x}+{int(filesz[i]):#x} "
                f"extends beyond the end of the file ({r.size} bytes)",
                path=path, offset=phoff + i * PHDR_SIZE)
        is_load = (ptype == PT_LOAD) & (paddr != np.uint64(_NO_PADDR))
        i = _first_true(is_load & (filesz > memsz))
        if i is not None:
            raise CorruptError(f"PT_LOAD program header {i}: p_filesz > p_memsz",
                               path=path, offset=phoff + i * PHDR_SIZE)
        limit = np.uint64(MAX_PHYS_END)
        i = _first_true(is_load & ((paddr > limit) | (memsz > limit - np.minimum(paddr, limit))))
        if i is not None:
            raise CorruptError(
                f"PT_LOAD program header {i}: physical range {int(paddr[i]):#x}+"
                f"{int(memsz[i]):#x} ends beyond 2^63", path=path, offset=phoff + i * PHDR_SIZE)

        self._load_idx = np.flatnonzero(is_load)
        self._build_pieces(table[self._load_idx])

        # Notes.
        notes: list[Note] = []
        note_segments = 0
        for k in np.flatnonzero(ptype == PT_NOTE).tolist():
            o, n = int(off[k]), int(filesz[k])
            note_segments += 1
            if n == 0:
                continue
            if r.mv is None and n > MAX_NOTE_SEGMENT_COPY:
                raise UnsupportedError(f"PT_NOTE of {n} bytes is too large to read", path=path,
                                       offset=phoff + k * PHDR_SIZE)
            notes.extend(parse_notes(r.slice(o, n), base_offset=o, path=path))
        self._notes = tuple(notes)

        qemu = hdr.pn_xnum or hdr.e_shnum > 0 or any(n.name == "QEMU" for n in notes)
        vmci = find_vmcoreinfo(notes)
        self._vmcoreinfo_note = vmci
        nr_cpus = len(prstatus_notes(notes)) or None
        self.info = DumpInfo(
            path=path, format="elf-qemu" if qemu else "elf-kexec", arch=MACHINES[hdr.e_machine],
            page_size=PAGE_SIZE, nr_cpus=nr_cpus,
            extra={"e_phnum": phnum, "pn_xnum": hdr.pn_xnum,
                   "load_segments": len(self._load_idx), "note_segments": note_segments,
                   "notes": len(notes)})

    def _build_pieces(self, loads: np.ndarray) -> None:
        """Turn possibly overlapping PT_LOADs into sorted, disjoint pieces (paddr -> offset)."""
        starts = loads["p_paddr"].astype(np.int64)
        ends = starts + loads["p_filesz"].astype(np.int64)
        offs = loads["p_offset"].astype(np.int64)
        keep = ends > starts
        starts, ends, offs = starts[keep], ends[keep], offs[keep]
        order = np.lexsort((-(ends - starts), starts))
        starts, ends, offs = starts[order], ends[order], offs[order]
        if starts.size:
            covered = np.maximum.accumulate(ends)
            prev_cov = np.concatenate((np.array([np.iinfo(np.int64).min], dtype=np.int64),
                                       covered[:-1]))
            new_start = np.maximum(starts, prev_cov)
            keep = new_start < ends
            offs = (offs + (new_start - starts))[keep]
            starts, ends = new_start[keep], ends[keep]
        # Coalesce neighbours contiguous in both physical address and file offset.
        if starts.size > 1:
            joins = (starts[1:] == ends[:-1]) & (offs[1:] == offs[:-1] + (ends[:-1] - starts[:-1]))
            first = np.concatenate(([True], ~joins))
            group = np.cumsum(first) - 1
            last_in_group = np.concatenate((first[1:], [True]))
            starts, offs = starts[first], offs[first]
            ends = ends[last_in_group]
            assert group[-1] + 1 == starts.size
        self._starts: list[int] = starts.tolist()
        self._ends: list[int] = ends.tolist()
        self._offs: list[int] = offs.tolist()
        # Ranges: merge pieces that touch physically.
        ranges: list[MemoryRange] = []
        for s, e in zip(self._starts, self._ends, strict=True):
            if ranges and ranges[-1].end == s:
                ranges[-1] = MemoryRange(ranges[-1].start, e - ranges[-1].start)
            else:
                ranges.append(MemoryRange(s, e - s))
        self._ranges = tuple(ranges)
        self._range_starts = [r.start for r in ranges]

    # -- PhysicalMemory -------------------------------------------------------------------------

    def ranges(self) -> Sequence[MemoryRange]:
        """Stored physical ranges, sorted and disjoint (``[p_filesz, p_memsz)`` tails excluded)."""
        return self._ranges

    def contains(self, paddr: int, size: int = 1) -> bool:
        """True if every byte of ``[paddr, paddr + size)`` is stored (O(log ranges))."""
        i = bisect.bisect_right(self._range_starts, paddr) - 1
        return i >= 0 and paddr + size <= self._ranges[i].end

    def _locate(self, paddr: int) -> int:
        i = bisect.bisect_right(self._starts, paddr) - 1
        if i < 0 or paddr >= self._ends[i]:
            return -1
        return i

    def _missing(self, paddr: int, at: int, size: int) -> NotInDumpError:
        return NotInDumpError(
            f"physical address {at:#x} (reading {size:#x} bytes at {paddr:#x}) is not in the dump",
            paddr=at, path=self.path)

    def read(self, paddr: int, size: int) -> bytes:
        """``size`` bytes at physical address ``paddr``; may span adjacent segments."""
        if size < 0 or paddr < 0:
            raise ValueError(f"bad physical read {paddr:#x}+{size:#x}")
        if size == 0:
            return b""
        i = self._locate(paddr)
        if i < 0:
            raise self._missing(paddr, paddr, size)
        end = paddr + size
        if end <= self._ends[i]:
            o = self._offs[i] + (paddr - self._starts[i])
            return bytes(self._reader.slice(o, size))
        parts: list[bytes] = []
        cur = paddr
        while True:
            n = min(self._ends[i], end) - cur
            o = self._offs[i] + (cur - self._starts[i])
            parts.append(bytes(self._reader.slice(o, n)))
            cur += n
            if cur >= end:
                return b"".join(parts)
            i += 1
            if i >= len(self._starts) or self._starts[i] != cur:
                raise self._missing(paddr, cur, size)

    def view(self, paddr: int, size: int) -> np.ndarray:
        """Read-only ``uint8`` array; zero-copy when ``[paddr, paddr + size)`` is in one piece."""
        if size < 0 or paddr < 0:
            raise ValueError(f"bad physical read {paddr:#x}+{size:#x}")
        i = self._locate(paddr)
        if i < 0:
            raise self._missing(paddr, paddr, size)
        if paddr + size <= self._ends[i] and self._reader.mv is not None:
            o = self._offs[i] + (paddr - self._starts[i])
            arr = np.frombuffer(self._reader.mv, dtype=np.uint8, count=size, offset=o)
            arr.flags.writeable = False
            return arr
        arr = np.frombuffer(self.read(paddr, size), dtype=np.uint8)
        return arr

    def read_into(self, paddr: int, out: np.ndarray) -> None:
        """Like :meth:`PhysicalMemory.read_into`, with ``preadv`` from the file when the range
        lies in one segment (no mapping of the file is touched)."""
        size = out.nbytes
        i = self._locate(paddr)
        fd = self._reader.fd
        if (i < 0 or paddr + size > self._ends[i] or fd is None or not out.flags.c_contiguous
                or not out.flags.writeable):
            super().read_into(paddr, out)
            return
        o = self._offs[i] + (paddr - self._starts[i])
        got = 0
        buf = out.reshape(-1).view(np.uint8)
        while got < size:
            n = os.preadv(fd, [buf[got:].data], o + got)
            if n <= 0:
                raise CorruptError(f"short read: {got} of {size} bytes", path=self._reader.path,
                                   offset=o + got)
            got += n

    @property
    def vmcoreinfo(self) -> bytes | None:
        """The VMCOREINFO note's descriptor, or None."""
        note = self._vmcoreinfo_note
        return bytes(note.desc) if note is not None else None

    @property
    def vmcoreinfo_note(self) -> Note | None:
        """The VMCOREINFO note (with its file offset), or None."""
        return self._vmcoreinfo_note

    @property
    def notes(self) -> Sequence[Note]:
        """All notes of all ``PT_NOTE`` segments, in file order."""
        return self._notes

    def close(self) -> None:
        """Unmap and close the file."""
        self._reader.close()

    def __enter__(self) -> ElfCore:
        return self

    # -- ELF specifics --------------------------------------------------------------------------

    @property
    def segments(self) -> tuple[LoadSegment, ...]:
        """The ``PT_LOAD`` program headers with a physical address, in table order."""
        if self._segments is None:
            t = self._phdrs[self._load_idx]
            phoff = self.header.e_phoff
            self._segments = tuple(
                LoadSegment(i, phoff + i * PHDR_SIZE, *row)
                for i, row in zip(self._load_idx.tolist(),
                                  zip(t["p_offset"].tolist(), t["p_vaddr"].tolist(),
                                      t["p_paddr"].tolist(), t["p_filesz"].tolist(),
                                      t["p_memsz"].tolist(), t["p_flags"].tolist(),
                                      strict=True), strict=True))
        return self._segments

    def absent_ranges(self) -> list[MemoryRange]:
        """Physical ranges ``[p_paddr + p_filesz, p_paddr + p_memsz)`` described by a PT_LOAD
        but not stored in the file (and not stored by another segment either)."""
        out: list[MemoryRange] = []
        for seg in self.segments:
            lo, hi = seg.p_paddr + seg.p_filesz, seg.p_paddr + seg.p_memsz
            cur = lo
            while cur < hi:
                i = self._locate(cur)
                if i >= 0:
                    cur = self._ends[i]
                    continue
                j = bisect.bisect_right(self._starts, cur)
                nxt = min(hi, self._starts[j]) if j < len(self._starts) else hi
                out.append(MemoryRange(cur, nxt - cur))
                cur = nxt
        out.sort(key=lambda m: m.start)
        merged: list[MemoryRange] = []
        for m in out:
            if merged and m.start <= merged[-1].end:
                end = max(merged[-1].end, m.end)
                merged[-1] = MemoryRange(merged[-1].start, end - merged[-1].start)
            else:
                merged.append(m)
        return merged

    def vaddr_to_paddr(self, vaddr: int) -> int | None:
        """Physical address of ``vaddr`` through the segments' ``p_vaddr`` mapping, or None.

        In a kexec vmcore the kernel text segment maps the kernel image's virtual addresses and
        the RAM segments map the direct map; QEMU dumps usually have ``p_vaddr`` 0.
        """
        for seg in self.segments:
            if seg.p_vaddr and seg.p_vaddr <= vaddr < seg.p_vaddr + seg.p_memsz:
                return seg.p_paddr + (vaddr - seg.p_vaddr)
        return None


def open_elf(path: str | Path) -> ElfCore:
    """Open an ELF core file; see :class:`ElfCore`."""
    return ElfCore.open(path)
