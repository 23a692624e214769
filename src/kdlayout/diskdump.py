"""Reader for makedumpfile's kdump-compressed ("diskdump") format.

File layout, in blocks of ``block_size`` bytes (the crashed kernel's page size)::

    block 0                      disk_dump_header (signature "KDUMP   ", utsname, counts)
    block 1                      kdump_sub_header, then the ELF notes (sub_hdr_size blocks in all)
    block 1 + sub_hdr_size       1st bitmap (pfns in memory), then 2nd bitmap (pfns dumped);
                                 bitmap_blocks blocks for the two
    next block                   page_desc_t[number of dumped pfns], in pfn order
    then                         page data, each page compressed on its own (or stored raw)

A pfn's descriptor number is its rank in the 2nd bitmap (the count of dumped pfns below it), which
is computed from a per-64-bit-word cumulative popcount in numpy. Only 64-bit targets are handled;
the header is read in the target's byte order, detected from ``header_version``.

The reader works on any random-access :class:`ByteSource`: a plain file (:class:`FileSource`,
read with ``pread``) or the virtual image of a flattened file (:mod:`kdlayout.flattened`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol, runtime_checkable

import numpy as np
from cachetools import LRUCache

from . import codecs
from .errors import CorruptError, KdlayoutError, NotInDumpError, UnsupportedError
from .physmem import DumpInfo, MemoryRange, PhysicalMemory

if TYPE_CHECKING:
    from .notes import Note

KDUMP_SIGNATURE: Final = b"KDUMP   "
DISKDUMP_SIGNATURE: Final = b"DISKDUMP"
SUPPORTED_HEADER_VERSIONS: Final = range(1, 7)

#: disk_dump_header up to ``tasks[]`` on a 64-bit target (timeval is two longs, 8-aligned).
_HEADER_FMT: Final = "8si390s6xqqIiiIIIIIIi"
HEADER_SIZE: Final = struct.calcsize("<" + _HEADER_FMT)          # 464
_UTSNAME_FIELD: Final = 65
#: kdump_sub_header on a 64-bit target, all fields up to version 6.
_SUB_FMT: Final = "QiiQQqQqQqQQQQ"
SUB_HEADER_SIZE: Final = struct.calcsize("<" + _SUB_FMT)         # 104
#: Bytes of the sub header that exist in each header_version.
_SUB_SIZE_BY_VERSION: Final = {1: 16, 2: 32, 3: 48, 4: 64, 5: 80, 6: 104}

PAGE_DESC_DTYPE_LE: Final = np.dtype([("offset", "<i8"), ("size", "<u4"), ("flags", "<u4"),
                                      ("page_flags", "<u8")])
PAGE_DESC_SIZE: Final = PAGE_DESC_DTYPE_LE.itemsize              # 24

MIN_BLOCK_SIZE: Final = 1024
#: More CPUs than any Linux build supports (x86 MAXSMP is 8192) means a lying header.
MAX_NR_CPUS: Final = 1 << 16
MAX_BLOCK_SIZE: Final = 1 << 20
_32BIT_MACHINES: Final = frozenset({"i386", "i486", "i586", "i686", "arm", "armv7l", "armv6l",
                                    "mips", "ppc", "s390", "sparc", "sh4"})
#: Decompressed pages kept per dump.
PAGE_CACHE_PAGES: Final = 256
#: Reads of at most this many pages fill the page cache (bigger ones would only flush it).
_CACHE_READS_UP_TO: Final = 16
#: Descriptor table spans up to this many bytes are read in one piece by read_pages().
_DESC_SPAN_READ: Final = 8 << 20
#: Bitmap bytes unpacked at a time when finding runs (bounded memory for huge dumps).
_RUN_CHUNK: Final = 1 << 22

_POPCOUNT8: Final = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# Byte sources


@runtime_checkable
class ByteSource(Protocol):
    """Random access to the bytes of a (possibly virtual) diskdump image."""

    @property
    def path(self) -> str:
        """The file named in error messages."""

    @property
    def size(self) -> int:
        """Length of the image in bytes."""

    def read_at(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset``; shorter only at the end of the image."""

    def locate(self, offset: int) -> int | None:
        """The offset in :attr:`path` that holds image byte ``offset`` (None: not stored)."""

    def close(self) -> None:
        """Release the file."""


class FileSource:
    """A plain file as a :class:`ByteSource`, read with ``pread``.

    Not an mmap on purpose: touching an mmap'ed page that the file no longer backs (a file
    truncated while open, a hole on a full tmpfs) kills the process with SIGBUS, where ``pread``
    returns short data that the format checks turn into a :class:`CorruptError`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._fd: int | None = os.open(self._path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            self._size = os.fstat(self._fd).st_size
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def path(self) -> str:
        """The file named in error messages."""
        return self._path

    @property
    def size(self) -> int:
        """Length of the file in bytes (at open time)."""
        return self._size

    def read_at(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset``; shorter only at the end of the file."""
        if self._fd is None:
            raise ValueError(f"{self._path}: read after close")
        if offset < 0 or n <= 0 or offset >= self._size:
            return b""
        n = min(n, self._size - offset)
        data = os.pread(self._fd, n, offset)
        if len(data) == n or not data:
            return data
        parts = [data]                       # pread may return less than asked: keep reading
        got = len(data)
        while got < n:
            more = os.pread(self._fd, n - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def locate(self, offset: int) -> int | None:
        """The file offset of image byte ``offset`` (the same offset here)."""
        return offset

    def close(self) -> None:
        """Release the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class BytesSource:
    """An in-memory image (bytes/bytearray/memoryview) as a :class:`ByteSource`."""

    def __init__(self, data: bytes | bytearray | memoryview, path: str = "<bytes>") -> None:
        self._data = memoryview(data).cast("B")
        self._path = path

    @property
    def path(self) -> str:
        """The file named in error messages."""
        return self._path

    @property
    def size(self) -> int:
        """Length of the image in bytes."""
        return len(self._data)

    def read_at(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset``; shorter only at the end."""
        if offset < 0 or n <= 0:
            return b""
        return bytes(self._data[offset:offset + n])

    def locate(self, offset: int) -> int | None:
        """The file offset of image byte ``offset`` (the same offset here)."""
        return offset

    def close(self) -> None:
        """Release the file."""
        pass


# --------------------------------------------------------------------------------------------
# Headers


class Utsname(NamedTuple):
    """``struct new_utsname`` of the crashed kernel."""

    sysname: str
    nodename: str
    release: str
    version: str
    machine: str
    domainname: str


@dataclass(frozen=True)
class DiskDumpHeader:
    """``struct disk_dump_header`` (block 0)."""

    signature: bytes
    header_version: int
    utsname: Utsname
    timestamp_sec: int
    timestamp_usec: int
    status: int
    block_size: int
    sub_hdr_size: int
    bitmap_blocks: int
    max_mapnr: int
    total_ram_blocks: int
    device_blocks: int
    written_blocks: int
    current_cpu: int
    nr_cpus: int
    tasks: tuple[int, ...]
    byteorder: str                   # "<" or ">"

    @property
    def compression(self) -> int:
        """The ``DUMP_DH_COMPRESSED_*`` method bits of ``status``."""
        return self.status & codecs.COMPRESSION_MASK

    @property
    def incomplete(self) -> bool:
        """DUMP_DH_COMPRESSED_INCOMPLETE: makedumpfile ran out of space while writing."""
        return bool(self.status & codecs.DUMP_DH_COMPRESSED_INCOMPLETE)


@dataclass(frozen=True)
class KdumpSubHeader:
    """``struct kdump_sub_header`` (block 1); fields newer than the header_version are None."""

    phys_base: int
    dump_level: int
    split: int | None = None
    start_pfn: int | None = None
    end_pfn: int | None = None
    offset_vmcoreinfo: int | None = None
    size_vmcoreinfo: int | None = None
    offset_note: int | None = None
    size_note: int | None = None
    offset_eraseinfo: int | None = None
    size_eraseinfo: int | None = None
    start_pfn_64: int | None = None
    end_pfn_64: int | None = None
    max_mapnr_64: int | None = None


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_header(buf: bytes, path: str) -> DiskDumpHeader:
    """Parse ``disk_dump_header`` from the start of ``buf`` (the first block of the file).

    Raises :class:`CorruptError` for a short or inconsistent header and :class:`UnsupportedError`
    for a header_version newer than 6 or a 32-bit target.
    """
    if len(buf) < HEADER_SIZE:
        raise CorruptError(f"disk_dump_header truncated: {len(buf)} of {HEADER_SIZE} bytes",
                           path=path, offset=len(buf))
    if buf[:8] == DISKDUMP_SIGNATURE:
        raise UnsupportedError("the old diskdump format (signature DISKDUMP) is not supported, "
                               "only makedumpfile's KDUMP", path=path, offset=0)
    if buf[:8] != KDUMP_SIGNATURE:
        raise CorruptError(f"bad signature {bytes(buf[:8])!r}, expected {KDUMP_SIGNATURE!r}",
                           path=path, offset=0)
    le, be = struct.unpack_from("<i", buf, 8)[0], struct.unpack_from(">i", buf, 8)[0]
    if 1 <= le <= 0xFFFF:
        order = "<"
    elif 1 <= be <= 0xFFFF:
        order = ">"
    else:
        raise CorruptError(f"bad header_version {le}", path=path, offset=8)
    fields = struct.unpack_from(order + _HEADER_FMT, buf, 0)
    (sig, version, uts, ts_sec, ts_usec, status, block_size, sub_hdr_size, bitmap_blocks,
     max_mapnr, total_ram_blocks, device_blocks, written_blocks, current_cpu, nr_cpus) = fields
    if version not in SUPPORTED_HEADER_VERSIONS:
        raise UnsupportedError(f"disk_dump_header version {version} is newer than 6",
                               path=path, offset=8)
    utsname = Utsname(*(_cstr(uts[i * _UTSNAME_FIELD:(i + 1) * _UTSNAME_FIELD])
                        for i in range(6)))
    if utsname.machine in _32BIT_MACHINES:
        raise UnsupportedError(f"32-bit target {utsname.machine!r}: only 64-bit dumps are read",
                               path=path, offset=12 + 4 * _UTSNAME_FIELD)
    if not (MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE) or block_size & (block_size - 1):
        raise CorruptError(f"bad block_size {block_size}", path=path, offset=428)
    if sub_hdr_size < 1:
        raise CorruptError(f"bad sub_hdr_size {sub_hdr_size}", path=path, offset=432)
    if not 0 <= nr_cpus <= MAX_NR_CPUS:
        raise CorruptError(f"bad nr_cpus {nr_cpus}", path=path, offset=460)
    # tasks[] is a flexible array makedumpfile does not fill: read what lies in block 0
    ntasks = max(0, min(nr_cpus, (min(len(buf), block_size) - HEADER_SIZE) // 8))
    tasks: tuple[int, ...] = struct.unpack_from(f"{order}{ntasks}Q", buf, HEADER_SIZE)
    return DiskDumpHeader(
        signature=sig, header_version=version, utsname=utsname, timestamp_sec=ts_sec,
        timestamp_usec=ts_usec, status=status, block_size=block_size, sub_hdr_size=sub_hdr_size,
        bitmap_blocks=bitmap_blocks, max_mapnr=max_mapnr, total_ram_blocks=total_ram_blocks,
        device_blocks=device_blocks, written_blocks=written_blocks, current_cpu=current_cpu,
        nr_cpus=nr_cpus, tasks=tasks, byteorder=order)


def parse_sub_header(buf: bytes, header_version: int, byteorder: str, *, path: str,
                     offset: int) -> KdumpSubHeader:
    """Parse ``kdump_sub_header`` (the fields that exist in ``header_version``) from ``buf``."""
    need = _SUB_SIZE_BY_VERSION[header_version]
    if len(buf) < need:
        raise CorruptError(f"kdump_sub_header truncated: {len(buf)} of {need} bytes",
                           path=path, offset=offset + len(buf))
    padded = bytes(buf[:need]) + bytes(SUB_HEADER_SIZE - need)
    v = struct.unpack(byteorder + _SUB_FMT, padded)
    names = ("phys_base", "dump_level", "split", "start_pfn", "end_pfn", "offset_vmcoreinfo",
             "size_vmcoreinfo", "offset_note", "size_note", "offset_eraseinfo", "size_eraseinfo",
             "start_pfn_64", "end_pfn_64", "max_mapnr_64")
    present = {1: 2, 2: 5, 3: 7, 4: 9, 5: 11, 6: 14}[header_version]
    kwargs: dict[str, Any] = dict(zip(names[:present], v[:present], strict=True))
    return KdumpSubHeader(**kwargs)


# --------------------------------------------------------------------------------------------
# Bitmap helpers (numpy)


def bit_runs(bitmap: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs of set bits among the first ``nbits`` bits of an LSB-first ``uint8`` bitmap.

    Returns ``(starts, ends)`` int64 arrays (ends exclusive). Works in bounded chunks.
    """
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    prev = np.zeros(1, dtype=np.int8)
    nbytes = (nbits + 7) // 8
    for lo in range(0, nbytes, _RUN_CHUNK):
        chunk = bitmap[lo:min(lo + _RUN_CHUNK, nbytes)]
        bits = np.unpackbits(chunk, bitorder="little").astype(np.int8)
        base = lo * 8
        if base + bits.size > nbits:
            bits = bits[:nbits - base]
        d = np.diff(bits, prepend=prev)
        starts.append(np.flatnonzero(d == 1).astype(np.int64) + base)
        ends.append(np.flatnonzero(d == -1).astype(np.int64) + base)
        prev = bits[-1:]
    if prev.size and prev[0] == 1:
        ends.append(np.array([nbits], dtype=np.int64))
    empty = np.zeros(0, dtype=np.int64)
    return (np.concatenate(starts) if starts else empty, np.concatenate(ends) if ends else empty)


class Rank:
    """Rank (count of set bits below a position) over an LSB-first bitmap, in numpy."""

    def __init__(self, bitmap: np.ndarray) -> None:
        pad = (-bitmap.size) % 8
        padded = np.concatenate([bitmap, np.zeros(pad, dtype=np.uint8)]) if pad else bitmap
        self.bitmap = padded
        words = _POPCOUNT8[padded].reshape(-1, 8).sum(axis=1, dtype=np.int64)
        #: cum[i] = set bits in words 0..i-1
        self.cum = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(words)])
        self.total = int(self.cum[-1])

    def test(self, pos: np.ndarray) -> np.ndarray:
        """Whether each position's bit is set (positions must be < 8 * len(bitmap))."""
        out: np.ndarray = ((self.bitmap[pos >> 3] >> (pos & 7).astype(np.uint8)) & 1).astype(bool)
        return out

    def rank(self, pos: np.ndarray) -> np.ndarray:
        """Set bits strictly below each position."""
        pos = np.asarray(pos, dtype=np.int64)
        word = pos >> 6
        byte_in_word = (pos >> 3) & 7
        r = self.cum[word].copy()
        # whole bytes of the word below the position's byte
        for k in range(7):
            sel = byte_in_word > k
            if sel.any():
                r[sel] += _POPCOUNT8[self.bitmap[(word[sel] << 3) + k]]
        below = (np.left_shift(1, (pos & 7)) - 1).astype(np.uint8)
        r += _POPCOUNT8[self.bitmap[pos >> 3] & below]
        out: np.ndarray = r
        return out


# --------------------------------------------------------------------------------------------
# The reader


class DiskDump(PhysicalMemory):
    """Physical memory held by a kdump-compressed file (or a flattened one, via its source)."""

    def __init__(self, source: ByteSource, *, format: str = "diskdump") -> None:
        self.source = source
        self.path = source.path
        fsize = source.size
        try:
            head = source.read_at(0, MIN_BLOCK_SIZE)
            self.header = parse_header(head, self.path)
            h = self.header
            bs = h.block_size
            if len(head) < bs:
                head = source.read_at(0, bs)
                if len(h.tasks) < h.nr_cpus:
                    self.header = h = parse_header(head, self.path)
        except KdlayoutError as exc:
            raise self._relocate(exc) from None
        self.block_size = bs
        self.page_size = bs
        self._order = h.byteorder
        self.incomplete = h.incomplete

        # sub header
        sub_off = bs
        sub_area = h.sub_hdr_size * bs
        if sub_off + sub_area > fsize:
            raise self._corrupt(f"sub_hdr_size {h.sub_hdr_size} blocks runs past the end of the "
                                f"{fsize}-byte file", 432)
        sub_raw = source.read_at(sub_off, min(SUB_HEADER_SIZE, sub_area))
        if len(sub_raw) < _SUB_SIZE_BY_VERSION[h.header_version]:
            raise self._corrupt("kdump_sub_header truncated", sub_off + len(sub_raw))
        try:
            self.sub_header = parse_sub_header(sub_raw, h.header_version, self._order,
                                               path=self.path, offset=sub_off)
        except KdlayoutError as exc:
            raise self._relocate(exc) from None
        sh = self.sub_header

        # page count and split range
        if h.header_version >= 6 and sh.max_mapnr_64:
            self.max_mapnr = int(sh.max_mapnr_64)
        else:
            self.max_mapnr = h.max_mapnr
        self.split_range: tuple[int, int] | None = None
        if sh.split:
            start = sh.start_pfn_64 if h.header_version >= 6 else sh.start_pfn
            end = sh.end_pfn_64 if h.header_version >= 6 else sh.end_pfn
            assert start is not None and end is not None
            if not 0 <= start <= end <= self.max_mapnr:
                raise self._corrupt(f"split pfn range {start:#x}-{end:#x} outside max_mapnr "
                                    f"{self.max_mapnr:#x}", sub_off + 16)
            self.split_range = (start, end)

        # notes / vmcoreinfo areas: validated now, read on demand
        self._note_area = self._area("note", sh.offset_note, sh.size_note, sub_off + 48)
        self._vmcoreinfo_area = self._area("vmcoreinfo", sh.offset_vmcoreinfo, sh.size_vmcoreinfo,
                                           sub_off + 32)

        # bitmaps
        self.bitmap_offset = (1 + h.sub_hdr_size) * bs
        bitmap_len = h.bitmap_blocks * bs
        if h.bitmap_blocks == 0:
            raise self._corrupt("bitmap_blocks is 0", 436)
        half = bitmap_len // 2
        if self.max_mapnr > half * 8:
            raise self._corrupt(f"bitmap_blocks {h.bitmap_blocks} ({half} bytes per bitmap) cannot "
                                f"hold max_mapnr {self.max_mapnr:#x}", 436)
        if self.bitmap_offset + bitmap_len > fsize:
            # (also for an incomplete dump: with its bitmaps cut short no page was written)
            raise self._corrupt(f"bitmaps ({bitmap_len} bytes at {self.bitmap_offset:#x}) run "
                                f"past the end of the {fsize}-byte file", 436)
        nbytes = (self.max_mapnr + 7) // 8
        self._bitmap1 = self._read_bitmap(self.bitmap_offset, nbytes)
        bitmap2 = self._read_bitmap(self.bitmap_offset + half, nbytes)
        self._mask_bitmap(bitmap2)
        self._bitmap2 = bitmap2
        self._rank = Rank(bitmap2)
        self.num_dumpable = self._rank.total

        # descriptor table
        self.desc_offset = self.bitmap_offset + bitmap_len
        self.desc_end = self.desc_offset + PAGE_DESC_SIZE * self.num_dumpable
        if self.desc_end > fsize and not self.incomplete:
            raise self._corrupt(
                f"page descriptor table ({self.num_dumpable} entries) ends at {self.desc_end:#x}, "
                f"past the end of the {fsize}-byte file", self.desc_offset)
        self._desc_dtype = (PAGE_DESC_DTYPE_LE if self._order == "<"
                            else PAGE_DESC_DTYPE_LE.newbyteorder(">"))
        self._cache: LRUCache[int, bytes] = LRUCache(maxsize=PAGE_CACHE_PAGES)
        self._ranges: list[MemoryRange] | None = None
        self._notes: list[Note] | None = None
        self._zero_offset: int | None = None
        self._zero_checked = False

        machine = h.utsname.machine or "unknown"
        release = h.utsname.release or self._vmcoreinfo_release()
        self.info = DumpInfo(path=self.path, format=format, arch=machine, page_size=bs,
                             nr_cpus=h.nr_cpus, release=release,
                             incomplete=self.incomplete, dump_level=sh.dump_level)
        self.info.extra.update(header_version=h.header_version, compression=h.compression,
                               excluded_vmemmap=bool(h.status & codecs.DUMP_DH_EXCLUDED_VMEMMAP),
                               phys_base=sh.phys_base, max_mapnr=self.max_mapnr,
                               num_dumpable=self.num_dumpable)

    # ---- construction helpers

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> DiskDump:
        """Open a kdump-compressed file by path (read with pread)."""
        src = FileSource(path)
        try:
            return cls(src)
        except BaseException:
            src.close()
            raise

    def _corrupt(self, message: str, offset: int | None) -> CorruptError:
        return CorruptError(message, path=self.path, offset=self._where(offset))

    def _relocate(self, exc: KdlayoutError) -> KdlayoutError:
        """Map an error's image offset to the offset in the file (differs when flattened)."""
        exc.offset = self._where(exc.offset)
        return exc.located(self.path)

    def _where(self, offset: int | None) -> int | None:
        if offset is None:
            return None
        loc = self.source.locate(offset)
        return loc if loc is not None else offset

    def _area(self, what: str, off: int | None, size: int | None,
              field_off: int) -> tuple[int, int] | None:
        if not off or not size:
            return None
        if off < 0 or size < 0 or off + size > self.source.size:
            raise self._corrupt(f"{what} area {off:#x}+{size:#x} outside the "
                                f"{self.source.size}-byte file", field_off)
        return off, size

    def _read_bitmap(self, offset: int, nbytes: int) -> np.ndarray:
        raw = self.source.read_at(offset, nbytes)
        arr = np.zeros(nbytes, dtype=np.uint8)
        arr[:len(raw)] = np.frombuffer(raw, dtype=np.uint8)   # missing tail only if incomplete
        return arr

    def _mask_bitmap(self, bitmap: np.ndarray) -> None:
        """Clear bits at or above max_mapnr and, in a split file, outside its pfn range."""
        n = self.max_mapnr
        if n % 8 and bitmap.size:
            bitmap[-1] &= np.uint8((1 << (n % 8)) - 1)
        if self.split_range is not None:
            start, end = self.split_range
            bitmap[:start // 8] = 0
            if start % 8 and start // 8 < bitmap.size:
                bitmap[start // 8] &= np.uint8(0xFF ^ ((1 << (start % 8)) - 1))
            if end < n:
                if end % 8:
                    bitmap[end // 8] &= np.uint8((1 << (end % 8)) - 1)
                    bitmap[end // 8 + 1:] = 0
                else:
                    bitmap[end // 8:] = 0

    # ---- header-level facts

    @property
    def release(self) -> str:
        """utsname release of the crashed kernel ("" if the writer left it empty, as QEMU does;
        ``info.release`` then falls back to VMCOREINFO's OSRELEASE)."""
        return self.header.utsname.release

    def _vmcoreinfo_release(self) -> str | None:
        vmci = self.vmcoreinfo
        if not vmci:
            return None
        for line in vmci.split(b"\n"):
            if line.startswith(b"OSRELEASE="):
                return line[len(b"OSRELEASE="):].decode("utf-8", "replace").strip() or None
        return None

    @property
    def nr_cpus(self) -> int:
        """CPUs of the crashed machine (header ``nr_cpus``)."""
        return self.header.nr_cpus

    @property
    def dump_level(self) -> int:
        """makedumpfile's ``-d`` dump level (sub header)."""
        return self.sub_header.dump_level

    @property
    def phys_base(self) -> int:
        """The kernel ``phys_base`` the writer recorded (sub header)."""
        return self.sub_header.phys_base

    @property
    def vmcoreinfo(self) -> bytes | None:
        """The VMCOREINFO text the sub header points at, if any."""
        if self._vmcoreinfo_area is None:
            return None
        off, size = self._vmcoreinfo_area
        return self.source.read_at(off, size)

    @property
    def note_bytes(self) -> bytes:
        """The raw ELF note stream of the sub header's note area (b"" if none)."""
        if self._note_area is None:
            return b""
        off, size = self._note_area
        return self.source.read_at(off, size)

    @property
    def note_offset(self) -> int | None:
        """Image offset of the note area (None if the dump has none)."""
        return self._note_area[0] if self._note_area else None

    @property
    def notes(self) -> Sequence[Note]:
        """The ELF notes of the sub header's note area (header_version 4+)."""
        if self._notes is None:
            if self._note_area is None:
                self._notes = []
            else:
                from .notes import parse_notes
                base = self._where(self._note_area[0])
                self._notes = list(parse_notes(self.note_bytes, path=self.path,
                                               base_offset=base if base is not None else 0))
        return self._notes

    @property
    def writer(self) -> str:
        """Who wrote the file, feature-detected: ``"qemu"`` when the note area carries QEMU's
        per-CPU ``QEMU`` notes (dump-guest-memory), else ``"makedumpfile"``.

        QEMU's sub header ``phys_base`` is not the kernel's (use VMCOREINFO's NUMBER(phys_base))
        and its utsname is empty.
        """
        return "qemu" if any(n.name == "QEMU" for n in self.notes) else "makedumpfile"

    @property
    def eraseinfo(self) -> bytes | None:
        """makedumpfile's eraseinfo text (header_version 5+), if the dump carries one."""
        sh = self.sub_header
        area = self._area("eraseinfo", sh.offset_eraseinfo, sh.size_eraseinfo,
                          self.block_size + 64)
        return None if area is None else self.source.read_at(*area)

    # ---- bitmaps and descriptors

    def is_in_memory(self, pfns: np.ndarray) -> np.ndarray:
        """1st bitmap: whether each pfn was RAM in the crashed machine."""
        pfns = np.asarray(pfns, dtype=np.int64)
        ok = (pfns >= 0) & (pfns < self.max_mapnr)
        out = np.zeros(pfns.shape, dtype=bool)
        p = pfns[ok]
        out[ok] = ((self._bitmap1[p >> 3] >> (p & 7).astype(np.uint8)) & 1).astype(bool)
        return out

    def is_dumped(self, pfns: np.ndarray) -> np.ndarray:
        """2nd bitmap: whether each pfn has a page descriptor."""
        pfns = np.asarray(pfns, dtype=np.int64)
        ok = (pfns >= 0) & (pfns < self.max_mapnr)
        out = np.zeros(pfns.shape, dtype=bool)
        out[ok] = self._rank.test(pfns[ok])
        return out

    def dumped_pfns(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """The pfns in ``[start, end)`` that have a descriptor (2nd bitmap), ascending int64.

        Element ``i`` owns descriptor number (dumped pfns below ``start``) + ``i``.
        """
        end = self.max_mapnr if end is None else min(end, self.max_mapnr)
        start = max(start, 0)
        if start >= end:
            return np.zeros(0, dtype=np.int64)
        lo = start // 8
        bits = np.unpackbits(self._bitmap2[lo:(end + 7) // 8], bitorder="little")
        pfns = np.flatnonzero(bits).astype(np.int64) + lo * 8
        out: np.ndarray = pfns[(pfns >= start) & (pfns < end)]
        return out

    def desc_index(self, pfns: np.ndarray) -> np.ndarray:
        """Descriptor number of each pfn (its rank in the 2nd bitmap); -1 for pfns not dumped."""
        pfns = np.asarray(pfns, dtype=np.int64)
        dumped = self.is_dumped(pfns)
        out = np.full(pfns.shape, -1, dtype=np.int64)
        out[dumped] = self._rank.rank(pfns[dumped])
        return out

    def descriptors(self, first: int, count: int) -> np.ndarray:
        """``count`` page descriptors from number ``first`` as a structured numpy array.

        Fields: offset, size, flags, page_flags. Descriptors past the end of an incomplete file
        come back as all-zero entries (never written).
        """
        if first < 0 or count < 0 or first + count > self.num_dumpable:
            raise ValueError(f"descriptors {first}+{count} outside 0..{self.num_dumpable}")
        off = self.desc_offset + PAGE_DESC_SIZE * first
        raw = self.source.read_at(off, PAGE_DESC_SIZE * count)
        if len(raw) < PAGE_DESC_SIZE * count:
            if not self.incomplete:
                raise self._corrupt("page descriptor table truncated",
                                    off + len(raw) - len(raw) % PAGE_DESC_SIZE)
            raw = raw + bytes(PAGE_DESC_SIZE * count - len(raw))
        return np.frombuffer(raw, dtype=self._desc_dtype)

    def ranges(self) -> Sequence[MemoryRange]:
        """Runs of dumped pfns (2nd bitmap), in bytes; computed once."""
        if self._ranges is None:
            starts, ends = bit_runs(self._bitmap2, self.max_mapnr)
            if self.incomplete:
                starts, ends = self._written_runs(starts, ends)
            ps = self.page_size
            self._ranges = [MemoryRange(int(s) * ps, int(e - s) * ps)
                            for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
        return self._ranges

    def _written_runs(self, starts: np.ndarray,
                      ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """In an incomplete dump, keep only pfns whose descriptor and data were written."""
        avail = max(0, min(self.num_dumpable,
                           (self.source.size - self.desc_offset) // PAGE_DESC_SIZE))
        desc = self.descriptors(0, avail)
        end = desc["offset"].astype(np.int64) + desc["size"].astype(np.int64)
        written = np.zeros(self.num_dumpable, dtype=bool)
        written[:avail] = (desc["offset"] > 0) & (desc["size"] > 0) & (end <= self.source.size)
        bits = np.zeros(self._bitmap2.size * 8, dtype=bool)
        # descriptor k belongs to the k-th dumped pfn
        lengths = ends - starts
        pfns = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) \
            + np.arange(int(lengths.sum()), dtype=np.int64)
        bits[pfns[written]] = True
        packed = np.packbits(bits, bitorder="little")
        return bit_runs(packed, self.max_mapnr)

    # ---- reading

    def read(self, paddr: int, size: int) -> bytes:
        """``size`` bytes at physical address ``paddr``, decompressing the pages involved."""
        if size < 0 or paddr < 0:
            raise ValueError(f"bad read {paddr:#x}+{size}")
        if size == 0:
            return b""
        ps = self.page_size
        first = paddr // ps
        last = (paddr + size - 1) // ps
        lo = paddr - first * ps
        if last >= self.max_mapnr:
            raise self._not_in_dump(paddr, size)
        if first == last:
            if not self._dumped(first):
                raise self._not_in_dump(paddr, size)
            page = self._cache.get(first)
            if page is None:
                k = self._rank_one(first)
                raw = self.source.read_at(self.desc_offset + PAGE_DESC_SIZE * k, PAGE_DESC_SIZE)
                if len(raw) < PAGE_DESC_SIZE:
                    raw = raw + bytes(PAGE_DESC_SIZE - len(raw))   # checked in _decode
                off, dsize, flags, _pf = struct.unpack(self._order + "qIIQ", raw)
                page = self._decode(first, k, off, dsize, flags)
                self._cache[first] = page
            return page[lo:lo + size] if size < ps else page
        if not self._rank.test(np.arange(first, last + 1, dtype=np.int64)).all():
            raise self._not_in_dump(paddr, size)
        pages = self.read_pages(np.arange(first, last + 1, dtype=np.int64))
        return pages.reshape(-1)[lo:lo + size].tobytes()

    def view(self, paddr: int, size: int) -> np.ndarray:
        """``size`` bytes at ``paddr`` as a read-only uint8 array (pages decompressed in bulk)."""
        if size <= 0 or paddr < 0:
            return np.frombuffer(self.read(paddr, size), dtype=np.uint8)
        ps = self.page_size
        first, last = paddr // ps, (paddr + size - 1) // ps
        if first == last or last >= self.max_mapnr:
            return np.frombuffer(self.read(paddr, size), dtype=np.uint8)
        pfns = np.arange(first, last + 1, dtype=np.int64)
        if not self._rank.test(pfns).all():
            raise self._not_in_dump(paddr, size)
        lo = paddr - first * ps
        out: np.ndarray = self.read_pages(pfns).reshape(-1)[lo:lo + size]
        out.flags.writeable = False
        return out

    def read_pages(self, pfns: np.ndarray) -> np.ndarray:
        """The pages at ``pfns`` as a ``(len(pfns), page_size)`` uint8 array.

        Descriptors are looked up in bulk (numpy rank) and pages that use the shared zero page
        are left zero without touching the file; only the other pages are decompressed, one by
        one. Raises :class:`NotInDumpError` for the first pfn that is not dumped.
        """
        pfns = np.asarray(pfns, dtype=np.int64).reshape(-1)
        ps = self.page_size
        out = np.zeros((pfns.size, ps), dtype=np.uint8)
        if pfns.size == 0:
            return out
        k = self.desc_index(pfns)
        if (k < 0).any():
            bad = int(pfns[int(np.flatnonzero(k < 0)[0])])
            raise self._not_in_dump(max(bad, 0) * ps, ps)
        desc = self._gather_descriptors(k)
        offs = desc["offset"].astype(np.int64)
        zero = self._zero_page_offset()
        todo = np.flatnonzero(~((offs == zero) & (desc["flags"] == 0) & (desc["size"] == ps))
                              if zero is not None else np.ones(pfns.size, dtype=bool))
        keep = pfns.size <= _CACHE_READS_UP_TO
        pl, kl = pfns[todo].tolist(), k[todo].tolist()
        ol, sl, fl = offs[todo].tolist(), desc["size"][todo].tolist(), desc["flags"][todo].tolist()
        for i, pfn, kk, off, dsize, flags in zip(todo.tolist(), pl, kl, ol, sl, fl, strict=True):
            page = self._cache.get(pfn)
            if page is None:
                page = self._decode(pfn, kk, off, dsize, flags)
                if keep:
                    self._cache[pfn] = page
            out[i] = np.frombuffer(page, dtype=np.uint8)
        return out

    def _gather_descriptors(self, k: np.ndarray) -> np.ndarray:
        """Descriptors number ``k`` (any order, repeats allowed) with bounded reads."""
        kmin, kmax = int(k.min()), int(k.max())
        if (kmax - kmin + 1) * PAGE_DESC_SIZE <= _DESC_SPAN_READ:
            span: np.ndarray = self.descriptors(kmin, kmax - kmin + 1)[k - kmin]
            return span
        uniq, inverse = np.unique(k, return_inverse=True)
        parts = [self.descriptors(int(u), 1) for u in uniq.tolist()]
        out: np.ndarray = np.concatenate(parts)[inverse]
        return out

    def _zero_page_offset(self) -> int | None:
        """File offset of makedumpfile's shared zero page (written right after the descriptor
        table), if the page stored there is all zeros; checked once."""
        if not self._zero_checked:
            raw = self.source.read_at(self.desc_end, self.page_size)
            ok = len(raw) == self.page_size and not any(raw)
            self._zero_offset = self.desc_end if ok else None
            self._zero_checked = True
        return self._zero_offset

    def read_page(self, pfn: int) -> bytes:
        """The whole page at ``pfn``; :class:`NotInDumpError` if it is not dumped."""
        return self.read(pfn * self.page_size, self.page_size)

    def _dumped(self, pfn: int) -> bool:
        return bool((int(self._bitmap2[pfn >> 3]) >> (pfn & 7)) & 1)

    def _rank_one(self, pfn: int) -> int:
        """Descriptor number of one dumped pfn (plain-int fast path of :meth:`desc_index`)."""
        word = pfn >> 6
        bits = int.from_bytes(self._rank.bitmap[word * 8:word * 8 + 8].tobytes(), "little")
        return int(self._rank.cum[word]) + (bits & ((1 << (pfn & 63)) - 1)).bit_count()

    def _decode(self, pfn: int, k: int, off: int, size: int, flags: int) -> bytes:
        """Validate descriptor ``k`` (of ``pfn``) and return its decompressed page."""
        doff = self.desc_offset + PAGE_DESC_SIZE * k
        ps = self.page_size
        fsize = self.source.size
        if self.incomplete and (off == 0 or size == 0 or off + size > fsize
                                or doff + PAGE_DESC_SIZE > fsize):
            raise NotInDumpError(
                f"page {pfn:#x} was not written: the dump is incomplete (descriptor "
                f"{k} at image offset {doff:#x})", paddr=pfn * ps, path=self.path,
                offset=self._where(min(doff, fsize)))
        if doff + PAGE_DESC_SIZE > fsize:
            raise self._corrupt("page descriptor table truncated", doff)
        if off < self.desc_end or size <= 0 or off + size > fsize:
            raise self._corrupt(f"descriptor {k} of pfn {pfn:#x} points at {off:#x}+{size:#x}, "
                                f"outside the page data area (file size {fsize:#x})", doff)
        try:
            codec = codecs.codec_for_flags(flags)
        except KdlayoutError as exc:
            raise exc.located(self.path, self._where(doff)) from None
        if codec is None and size != ps:
            raise self._corrupt(f"descriptor {k} of pfn {pfn:#x}: raw page of {size} bytes, "
                                f"expected {ps}", doff)
        if codec is not None and size > self.block_size:
            raise self._corrupt(f"descriptor {k} of pfn {pfn:#x}: compressed size {size} exceeds "
                                f"block_size {self.block_size}", doff)
        data = self.source.read_at(off, size)
        try:
            return codecs.decompress(flags, data, ps)
        except CorruptError as exc:
            raise self._corrupt(f"descriptor {k} of pfn {pfn:#x}: {exc.message}", doff) from None
        except UnsupportedError as exc:
            raise exc.located(self.path, self._where(doff)) from None

    def close(self) -> None:
        """Release the underlying file."""
        self._cache.clear()
        self.source.close()
