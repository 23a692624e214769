"""Byte layout of makedumpfile's kdump-compressed format, for writing.

The reader (:mod:`kdlayout.diskdump`) owns the format's constants and record types; this module
only packs them back into bytes, and provides the two output sinks: a regular file written with
``pwrite`` and makedumpfile's flattened stream (``-F``), which turns every positioned write into a
record ``{be64 offset, be64 size} + data`` so the image can go down a pipe.

Layout written (blocks of ``block_size`` = page size)::

    block 0                       disk_dump_header v6
    block 1                       kdump_sub_header v6, then the input's ELF notes
    block 1 + sub_hdr_size        1st bitmap (valid pfns), 2nd bitmap (dumped pfns),
                                  bitmap_blocks / 2 blocks each
    next block                    page_desc_t[number of dumped pfns], in pfn order
    right after the table         one page of zeros, shared by every zero page's descriptor
    then                          page data
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Final, Protocol

from .diskdump import (
    _HEADER_FMT,
    _SUB_FMT,
    _UTSNAME_FIELD,
    HEADER_SIZE,
    KDUMP_SIGNATURE,
    SUB_HEADER_SIZE,
    DiskDumpHeader,
    KdumpSubHeader,
    Utsname,
)
from .flattened import FLAT_HEADER_SIZE, MAKEDUMPFILE_SIGNATURE, TYPE_FLAT_HEADER

HEADER_VERSION: Final = 6
#: Flattened records carry at most this many data bytes (makedumpfile's own records stay
#: below 64 KiB; ``makedumpfile -R`` reads them through a bounded buffer).
FLAT_RECORD_MAX: Final = 1 << 16
_FLAT_VERSION: Final = 1
_FLAT_DATA_HEADER: Final = struct.Struct(">qq")


def pack_header(h: DiskDumpHeader) -> bytes:
    """``struct disk_dump_header`` (little-endian 64-bit target) followed by ``tasks[]``."""
    uts = b"".join(f.encode()[:_UTSNAME_FIELD - 1].ljust(_UTSNAME_FIELD, b"\0") for f in h.utsname)
    raw = struct.pack("<" + _HEADER_FMT, h.signature, h.header_version, uts, h.timestamp_sec,
                      h.timestamp_usec, h.status, h.block_size, h.sub_hdr_size, h.bitmap_blocks,
                      h.max_mapnr & 0xFFFFFFFF if h.max_mapnr <= 0xFFFFFFFF else 0xFFFFFFFF,
                      h.total_ram_blocks, h.device_blocks, h.written_blocks, h.current_cpu,
                      h.nr_cpus)
    assert len(raw) == HEADER_SIZE
    return raw + struct.pack(f"<{len(h.tasks)}Q", *h.tasks)


def pack_sub_header(s: KdumpSubHeader) -> bytes:
    """``struct kdump_sub_header`` version 6 (every field must be set)."""
    vals = (s.phys_base, s.dump_level, s.split, s.start_pfn, s.end_pfn, s.offset_vmcoreinfo,
            s.size_vmcoreinfo, s.offset_note, s.size_note, s.offset_eraseinfo, s.size_eraseinfo,
            s.start_pfn_64, s.end_pfn_64, s.max_mapnr_64)
    raw = struct.pack("<" + _SUB_FMT, *(0 if v is None else v for v in vals))
    assert len(raw) == SUB_HEADER_SIZE
    return raw


def make_header(*, utsname: Utsname, timestamp: float, status: int, block_size: int,
                sub_hdr_size: int, bitmap_blocks: int, max_mapnr: int,
                nr_cpus: int) -> DiskDumpHeader:
    """A v6 header as makedumpfile fills it (block counters 0, ``tasks[]`` zeros)."""
    return DiskDumpHeader(
        signature=KDUMP_SIGNATURE, header_version=HEADER_VERSION, utsname=utsname,
        timestamp_sec=int(timestamp), timestamp_usec=int((timestamp % 1) * 1e6), status=status,
        block_size=block_size, sub_hdr_size=sub_hdr_size, bitmap_blocks=bitmap_blocks,
        max_mapnr=max_mapnr, total_ram_blocks=0, device_blocks=0, written_blocks=0,
        current_cpu=0, nr_cpus=nr_cpus, tasks=(0,) * nr_cpus, byteorder="<")


class OutOfSpace(OSError):
    """The output device is full (ENOSPC/EDQUOT/EFBIG) at a known offset."""


@dataclass
class SinkStats:
    """Bytes a sink accepted."""

    bytes_written: int = 0
    records: int = 0


class Sink(Protocol):
    """Where the image goes: positioned writes."""

    stats: SinkStats

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        """Write all of ``data`` at image ``offset``; :class:`OutOfSpace` if the device is full."""

    def reserve(self, size: int) -> None:
        """Allocate the first ``size`` bytes now, so later rewrites of them cannot fail for space."""

    def finish(self) -> None:
        """Flush; the image is complete."""


_NOSPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


#: Bytes written between two ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` calls.
WRITEBACK_EVERY: Final = 8 << 20
_SYNC_FILE_RANGE_WRITE: Final = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux), None where missing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    call: Callable[[int, int, int, int], int] = fn
    return call


class FileSink:
    """A regular file written with ``pwrite``. Every :data:`WRITEBACK_EVERY` bytes it starts
    the kernel's writeback of the file (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does
    not wait), so the final ``fsync`` has little left to do."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.stats = SinkStats()
        self._unsynced = 0

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset``."""
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            try:
                n = os.pwrite(self.fd, view[done:], offset + done)
            except OSError as exc:
                if exc.errno in _NOSPACE:
                    raise OutOfSpace(exc.errno, f"{os.strerror(exc.errno)} at offset "
                                     f"{offset + done:#x}", self.path) from None
                raise
            if n <= 0:
                raise OutOfSpace(errno.ENOSPC, f"short write at offset {offset + done:#x}",
                                 self.path)
            done += n
        self.stats.bytes_written += len(view)
        self.stats.records += 1
        self._unsynced += len(view)
        if self._unsynced >= WRITEBACK_EVERY:
            self._unsynced = 0
            kick = _sync_file_range()
            if kick is not None:
                kick(self.fd, 0, 0, _SYNC_FILE_RANGE_WRITE)    # errors: fsync reports them

    def reserve(self, size: int) -> None:
        """``posix_fallocate`` the first ``size`` bytes (written zeros where unsupported)."""
        try:
            os.posix_fallocate(self.fd, 0, size)
        except OSError as exc:
            if exc.errno in _NOSPACE:
                raise OutOfSpace(exc.errno, f"{os.strerror(exc.errno)} reserving {size} bytes",
                                 self.path) from None
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            chunk = bytes(1 << 20)
            for off in range(0, size, len(chunk)):
                self.pwrite(chunk[:min(len(chunk), size - off)], off)

    def finish(self) -> None:
        """``fsync`` the file."""
        os.fsync(self.fd)


class FlatSink:
    """makedumpfile's flattened stream: a 4096-byte header, records, an end marker."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.stats = SinkStats()
        head = (MAKEDUMPFILE_SIGNATURE.ljust(16, b"\0")
                + struct.pack(">qq", TYPE_FLAT_HEADER, _FLAT_VERSION))
        self._write(head.ljust(FLAT_HEADER_SIZE, b"\0"))

    def _write(self, data: bytes | memoryview) -> None:
        try:
            self.stream.write(data)
        except OSError as exc:
            if exc.errno in _NOSPACE:
                raise OutOfSpace(exc.errno, os.strerror(exc.errno), "<stdout>") from None
            raise

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        """One record per at most :data:`FLAT_RECORD_MAX` bytes."""
        view = memoryview(data).cast("B")
        for lo in range(0, len(view), FLAT_RECORD_MAX):
            part = view[lo:lo + FLAT_RECORD_MAX]
            self._write(_FLAT_DATA_HEADER.pack(offset + lo, len(part)))
            self._write(part)
            self.stats.records += 1
        self.stats.bytes_written += len(view)

    def reserve(self, size: int) -> None:
        """Nothing to reserve in a stream."""

    def finish(self) -> None:
        """Write the end marker and flush."""
        self._write(_FLAT_DATA_HEADER.pack(-1, -1))
        self.stream.flush()
