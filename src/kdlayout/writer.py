"""Writer stage: a filtered kdump-compressed dump (makedumpfile's format) from physical memory.

Input: the dump's :class:`~kdlayout.physmem.PhysicalMemory` and :class:`PageBitmaps` (which pfns
are in memory, which to dump), from the scanner (:func:`scan_bitmaps`) or, at dump level 0,
straight from the dump's ranges (:func:`level0_bitmaps`). Output: the image, through a
:class:`~kdlayout.diskdump_write.Sink` (a file or makedumpfile's flattened stream).

Pipeline: the main thread walks the runs of dumped pfns in chunks of ``chunk_pages`` pages and
hands each chunk to a compression thread (or, with one thread, works on it inline); the thread
(:class:`_ChunkWork`) reads the chunk's pages into a buffer of its own
(:meth:`~kdlayout.physmem.PhysicalMemory.read_into`: ``preadv``, no mapping of the input, so no
page faults and no RSS tied to the dump), finds the zero pages (numpy) and compresses the others
page by page (:mod:`kdlayout.compress`: the C libraries through ctypes, GIL released) into an
output buffer from a pool. The main thread only writes the finished chunks in pfn order: page
data appended straight from that buffer (then handed back), descriptors built per chunk with
numpy and batched into the descriptor table. At most ``2 * threads`` chunks are in flight, so
memory is bounded by the chunk size, not by the RAM size (the bitmaps take 2 bits per pfn).

Safety (:func:`write_dump_file`): the image goes to a temporary file (mode 0600) in the target
directory, renamed over the target only when complete. If the device fills up, the header gets
``DUMP_DH_COMPRESSED_INCOMPLETE``, the descriptors of every page fully written are in place (the
area for header, bitmaps and descriptor table is allocated before any page is written), the file
is kept under its final name (like makedumpfile) and :class:`IncompleteDumpError` says how many
pages were saved.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import select
import struct
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Final, NamedTuple, Protocol

import numpy as np

from . import codecs
from .compress import PageCompressor, compressor_factory
from .diskdump import (
    PAGE_DESC_DTYPE_LE,
    PAGE_DESC_SIZE,
    SUB_HEADER_SIZE,
    KdumpSubHeader,
    Utsname,
    bit_runs,
)
from .diskdump_write import FileSink, OutOfSpace, Sink, make_header, pack_header, pack_sub_header
from .errors import KdlayoutError, NotInDumpError
from .kimage import KernelImage
from .layout import Layout
from .notes import Note
from .physmem import PhysicalMemory
from .vmcoreinfo import VmcoreInfo

#: Pages per unit of work handed to a compression worker (512: 10 % faster than 256 with two
#: worker processes, 2 MiB more peak RSS).
DEFAULT_CHUNK_PAGES: Final = 512
#: Room beyond ``chunk_pages`` pages in an output buffer: a codec's bound for its last page.
_OUT_SLACK: Final = 1 << 16
#: Descriptors collected before one write into the descriptor table.
_DESC_BATCH: Final = 1 << 14
#: NT_PRSTATUS.
_NT_PRSTATUS: Final = 1
_MASK64: Final = 0xFFFFFFFFFFFFFFFF
_UTS_FIELD: Final = 65

CODEC_FLAGS: Final = {"none": 0, "zlib": codecs.DUMP_DH_COMPRESSED_ZLIB,
                      "lzo": codecs.DUMP_DH_COMPRESSED_LZO,
                      "snappy": codecs.DUMP_DH_COMPRESSED_SNAPPY,
                      "zstd": codecs.DUMP_DH_COMPRESSED_ZSTD}


class IncompleteDumpError(KdlayoutError):
    """The output filled the device: an incomplete (but readable) dump was left behind."""


class PageBitmaps(NamedTuple):
    """What to write: packed little-endian bitmaps over ``[0, max_pfn)``."""

    max_pfn: int
    valid: np.ndarray            # 1st bitmap: the pfn has RAM in the dump
    dumpable: np.ndarray         # 2nd bitmap: the pfn is written
    dump_level: int
    excluded: dict[str, int]     # excluded pages per class (empty at level 0)


#: Compression workers per codec when none are asked for (measured, docs/writer.md): two
#: forked processes for every codec (each with its own interpreter lock, so even LZO's ~1 µs of
#: C a page gains from the second core); one, inline, for pages stored uncompressed.
DEFAULT_THREADS: Final = {0: 1, codecs.DUMP_DH_COMPRESSED_ZLIB: 2,
                          codecs.DUMP_DH_COMPRESSED_LZO: 2,
                          codecs.DUMP_DH_COMPRESSED_SNAPPY: 2,
                          codecs.DUMP_DH_COMPRESSED_ZSTD: 2}


@dataclass(frozen=True)
class WriteOptions:
    """How to write: page compression (a ``DUMP_DH_COMPRESSED_*`` flag, 0 for none), workers
    (``threads``; None: :data:`DEFAULT_THREADS` of the codec; 1: in the calling thread), and
    whether more than one worker means forked processes (the default, where ``os.fork``
    exists and the calling process runs no other thread) or threads of this process."""

    compression: int = codecs.DUMP_DH_COMPRESSED_ZLIB
    threads: int | None = None
    processes: bool = True
    chunk_pages: int = DEFAULT_CHUNK_PAGES
    timestamp: float | None = None   # header time (default: now); fixed for reproducible output


@dataclass
class WriteResult:
    """What was written."""

    pages_dumped: int            # set bits of the 2nd bitmap (descriptors in the table)
    pages_written: int = 0       # descriptors filled (all of them unless incomplete)
    zero_pages: int = 0          # pages pointing at the shared zero page
    raw_pages: int = 0           # pages stored uncompressed (compression did not shrink them)
    data_bytes: int = 0          # bytes of page data (without the zero page)
    size: int = 0                # image size
    incomplete: bool = False
    error: str | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Bitmaps


def level0_bitmaps(dump: PhysicalMemory, dump_level: int = 0) -> PageBitmaps:
    """Every pfn with any byte in the dump is valid and dumped (no layout needed): dump level 0,
    or 1 (zero pages are found while writing, see :func:`scan_bitmaps`)."""
    ps = dump.info.page_size
    ranges = dump.ranges()
    max_pfn = -(-ranges[-1].end // ps) if ranges else 0
    packed = np.zeros((max_pfn + 7) // 8, dtype=np.uint8)     # 1 bit per pfn, never 1 byte
    for r in ranges:
        _set_bits(packed, r.start // ps, -(-r.end // ps))
    return PageBitmaps(max_pfn, packed, packed, dump_level, {})


def _set_bits(packed: np.ndarray, a: int, b: int) -> None:
    """Set bits ``[a, b)`` of a packed little-endian bitmap."""
    if a >= b:
        return
    lo, hi = a >> 3, (b - 1) >> 3
    first = (0xFF << (a & 7)) & 0xFF
    last = 0xFF >> (7 - ((b - 1) & 7))
    if lo == hi:
        packed[lo] |= first & last
        return
    packed[lo] |= first
    packed[lo + 1:hi] = 0xFF
    packed[hi] |= last


def scan_bitmaps(dump: PhysicalMemory, layout: Layout, dump_level: int, *,
                 threads: int = 2, window_pages: int | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 keep_zero: bool = True) -> PageBitmaps:
    """Bitmaps of a dump at ``dump_level`` from the scanner (2 bits per pfn kept).

    Zero pages (level bit 1) stay in the 2nd bitmap, as in makedumpfile's kdump-compressed
    output: the writer finds them while copying and points them at the shared zero page (readers
    such as crash report an excluded page otherwise). So the scanner runs at ``dump_level & ~1``
    and reads no page content. ``keep_zero=False`` (ELF output, which has no shared zero page)
    lets the scanner drop zero pages itself.
    """
    from .scanner import DEFAULT_BLOCK_PAGES, scan  # the stage before ours
    res = scan(dump, layout, dump_level=dump_level & ~1 if keep_zero else dump_level,
               threads=threads,
               window_pages=window_pages or DEFAULT_BLOCK_PAGES, progress=progress)
    return PageBitmaps(res.max_pfn, res.valid_bits, res.dumpable_bits, dump_level,
                       dict(res.counts))


# --------------------------------------------------------------------------------------------
# Header pieces from the input


def serialize_notes(notes: list[Note] | tuple[Note, ...]) -> tuple[bytes, int | None, int]:
    """ELF notes as a PT_NOTE segment; also (offset, size) of the VMCOREINFO descriptor in it."""
    out = bytearray()
    vmci_off: int | None = None
    vmci_size = 0
    for n in notes:
        name = n.name.encode() + b"\0"
        desc = bytes(n.desc)
        out += np.array([len(name), len(desc), n.type], dtype="<u4").tobytes()
        out += name.ljust(-(-len(name) // 4) * 4, b"\0")
        if n.name == "VMCOREINFO" and vmci_off is None:
            vmci_off, vmci_size = len(out), len(desc)
        out += desc.ljust(-(-len(desc) // 4) * 4, b"\0")
    return bytes(out), vmci_off, vmci_size


def _vmcoreinfo(dump: PhysicalMemory) -> VmcoreInfo | None:
    raw = dump.vmcoreinfo
    return VmcoreInfo.parse(raw, path=dump.info.path) if raw else None


def _phys_base(vmci: VmcoreInfo | None) -> int:
    value = vmci.phys_base if vmci is not None else None
    return 0 if value is None else value


def _utsname(dump: PhysicalMemory, vmci: VmcoreInfo | None) -> Utsname:
    """The crashed kernel's utsname: ``init_uts_ns`` read from memory where VMCOREINFO names it
    (libkdumpfile, hence drgn, needs a plausible one), else OSRELEASE and the dump's arch."""
    release = ((vmci.osrelease if vmci is not None else None) or dump.info.release or "").strip()
    fallback = Utsname("Linux", "(none)", release, "", dump.info.arch, "(none)")
    uts = vmci.symbol("init_uts_ns") if vmci is not None else None
    if uts is None or dump.info.arch != "x86_64":
        return fallback
    try:
        raw = KernelImage(dump, vmci).read(uts, 8 + 6 * _UTS_FIELD)
    except KdlayoutError:
        return fallback
    for off in (0, 4, 8):          # struct uts_namespace: name first, or after a kref
        if raw[off:off + 6] != b"Linux\0":
            continue
        fields = [raw[off + i * _UTS_FIELD:off + (i + 1) * _UTS_FIELD].split(b"\0", 1)[0]
                  .decode("utf-8", "replace") for i in range(6)]
        if not release or fields[2] == release:
            return Utsname(*fields)
    return fallback


# --------------------------------------------------------------------------------------------
# Compression


class _Chunk(NamedTuple):
    """One compressed chunk: per page zero?, stored size, flags; data of the non-zero pages;
    ``buf``: the output buffer ``data`` views, to hand back once written (None if it is not
    one of ours)."""

    zero: np.ndarray
    sizes: np.ndarray
    flags: np.ndarray
    data: bytes | memoryview
    buf: np.ndarray | None


class _ThreadState(threading.local):
    """Per thread: its :class:`~kdlayout.compress.PageCompressor` (contexts are not shared) and
    the buffer its chunks are read into (reused: no fresh memory, no page faults per chunk)."""

    comp: PageCompressor | None = None
    pages: np.ndarray | None = None


class _ChunkWork:
    """The work on one chunk, done by a compression worker (a forked process, a thread, or the
    writing thread itself): read its pages with ``preadv`` into the worker's buffer, find the
    zero pages, compress the others into an output buffer (a slot of the shared mapping, or one
    from a pool the writing thread hands buffers back to).

    Reads of an :class:`~kdlayout.elfcore.ElfCore` run in parallel (positionless ``preadv`` on
    its file descriptor); other inputs read by threads (a kdump-compressed file being refiltered
    keeps a page cache) are read under a lock. Forked workers each have their own copy of the
    input object; every reader uses positionless reads, so they share the file descriptor
    safely."""

    def __init__(self, dump: PhysicalMemory, make: Callable[[], PageCompressor],
                 chunk_pages: int) -> None:
        from .elfcore import ElfCore
        self.dump = dump
        self.ps = dump.info.page_size
        self.make = make
        self.chunk_pages = chunk_pages
        self.local = _ThreadState()
        self.free: deque[np.ndarray] = deque()      # output buffers handed back
        self.read_lock: contextlib.AbstractContextManager[object] = (
            contextlib.nullcontext() if isinstance(dump, ElfCore) else threading.Lock())

    def give_back(self, c: _Chunk) -> None:
        """``c`` is written: its output buffer can take another chunk (so there are never more
        buffers than chunks in flight, plus one)."""
        if c.buf is not None:
            self.free.append(c.buf)

    def __call__(self, chunk: list[tuple[int, int]]) -> _Chunk:
        try:
            out = self.free.popleft()
        except IndexError:      # room for a whole chunk, whatever its pages: one size for all
            out = np.empty(self.chunk_pages * self.ps + _OUT_SLACK, dtype=np.uint8)
        c = self.process(chunk, out)
        if c.buf is not out:                  # not used (no data, or bytes from a Python codec)
            self.free.append(out)
        return c

    def process(self, chunk: list[tuple[int, int]], out: np.ndarray) -> _Chunk:
        """Read, zero-test and compress ``chunk``; the data go into ``out`` (room for
        ``chunk_pages`` pages and :data:`_OUT_SLACK`) where the backend writes into a buffer
        (then ``buf`` is ``out``), else they are ``bytes`` (``buf`` None)."""
        ps, local = self.ps, self.local
        comp = local.comp
        if comp is None:
            comp = local.comp = self.make()
        n = sum(b - a for a, b in chunk)
        buf = local.pages
        if buf is None or buf.size < n * ps:
            buf = local.pages = np.empty(max(n, self.chunk_pages) * ps, dtype=np.uint8)
        pages = buf[:n * ps].reshape(n, ps)
        i = 0
        with self.read_lock:
            for a, b in chunk:
                _read_pages(self.dump, a, b, ps, pages[i:i + b - a])
                i += b - a
        # zero test: OR of each page's 64-bit words (numpy, without the GIL)
        zero: np.ndarray = np.bitwise_or.reduce(pages.view("<u8"), axis=1) == 0
        c = comp.compress([pages], np.flatnonzero(~zero), out)
        return _Chunk(zero, c.sizes, c.flags, c.data, out if c.buf is out else None)


class _Runner(Protocol):
    """Where chunks are worked on: :meth:`submit` them, take the results back in the same
    order with :meth:`result`, then hand each back with :meth:`done` once written."""

    workers: int

    def submit(self, chunk: list[tuple[int, int]]) -> None: ...

    def result(self) -> _Chunk: ...

    def done(self, c: _Chunk) -> None: ...

    def close(self) -> None: ...


class _Inline:
    """Every chunk worked on in the calling thread, when it is submitted."""

    workers = 1

    def __init__(self, work: _ChunkWork) -> None:
        self.work = work
        self.ready: deque[_Chunk] = deque()

    def submit(self, chunk: list[tuple[int, int]]) -> None:
        self.ready.append(self.work(chunk))

    def result(self) -> _Chunk:
        return self.ready.popleft()

    def done(self, c: _Chunk) -> None:
        self.work.give_back(c)

    def close(self) -> None:
        self.ready.clear()


class _Threads:
    """A pool of compression threads (the C calls drop the GIL; the Python around them, about
    a microsecond a page, does not)."""

    def __init__(self, work: _ChunkWork, workers: int) -> None:
        self.work = work
        self.workers = workers
        self.pool = ThreadPoolExecutor(max_workers=workers,
                                       thread_name_prefix="kdlayout-compress")
        self.pending: deque[Future[_Chunk]] = deque()

    def submit(self, chunk: list[tuple[int, int]]) -> None:
        self.pending.append(self.pool.submit(self.work, chunk))

    def result(self) -> _Chunk:
        return self.pending.popleft().result()

    def done(self, c: _Chunk) -> None:
        self.work.give_back(c)

    def close(self) -> None:
        for f in self.pending:
            f.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)


class _Slot(NamedTuple):
    """One chunk's place in the memory shared with the worker processes."""

    meta: np.ndarray        # int64: runs, pages, data bytes, status (0 ok, 1 error message)
    runs: np.ndarray        # (chunk_pages, 2) int64: the chunk's pfn runs
    zero: np.ndarray        # uint8 per page
    sizes: np.ndarray       # uint32 per page
    flags: np.ndarray       # uint32 per page
    data: np.ndarray        # uint8: the stored bytes (or the error message)


_MSG: Final = struct.Struct("<I")


class _Processes:
    """Compression worker processes (``fork``): each runs :class:`_ChunkWork` with an
    interpreter lock of its own, so the per-page Python of two workers runs in parallel and no
    lock changes hands between them. Chunks are passed through slots of one shared anonymous
    mapping (the runs in, zero flags, sizes, flags and the data out: nothing is copied between
    the processes); a pipe carries the slot numbers each way. Chunk ``k`` uses slot
    ``k % slots``, which is free again once chunk ``k - slots`` is written.

    A worker failing reports its error in its slot (raised here as :class:`KdlayoutError`); one
    that dies is noticed within a second. Closing the task pipe ends the workers."""

    def __init__(self, work: _ChunkWork, workers: int, slots: int) -> None:
        n, ps = work.chunk_pages, work.ps
        head = 32 + 16 * n + 9 * n
        data_off = -(-head // 4096) * 4096
        slot_bytes = -(-(data_off + n * ps + _OUT_SLACK) // 4096) * 4096
        self.work = work
        self.workers = workers
        self.mem = mmap.mmap(-1, slots * slot_bytes)        # MAP_SHARED | MAP_ANONYMOUS
        whole = np.frombuffer(self.mem, dtype=np.uint8)
        self.slots: list[_Slot] = []
        for k in range(slots):
            b = whole[k * slot_bytes:(k + 1) * slot_bytes]
            self.slots.append(_Slot(
                b[:32].view("<i8"), b[32:32 + 16 * n].view("<i8").reshape(n, 2),
                b[32 + 16 * n:32 + 17 * n], b[32 + 17 * n:32 + 21 * n].view("<u4"),
                b[32 + 21 * n:32 + 25 * n].view("<u4"), b[data_off:]))
        self.order: deque[int] = deque()
        self.finished: set[int] = set()
        self.inbox = bytearray()
        self.next_slot = 0
        self.pids: list[int] = []
        task_r, self.task_w = os.pipe()
        self.done_r, done_w = os.pipe()
        try:
            for _ in range(workers):
                pid = os.fork()
                if pid == 0:                                  # the worker
                    code = 1
                    try:
                        os.close(self.task_w)
                        os.close(self.done_r)
                        self._serve(task_r, done_w)
                        code = 0
                    finally:
                        os._exit(code)
                self.pids.append(pid)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(task_r)
            os.close(done_w)

    def _serve(self, task_r: int, done_w: int) -> None:
        """The worker's loop: slot numbers in, the slot filled, its number back."""
        while True:
            msg = os.read(task_r, _MSG.size)
            if len(msg) < _MSG.size:                      # the task pipe closed: done
                return
            (k,) = _MSG.unpack(msg)
            slot = self.slots[k]
            try:
                chunk = [(int(a), int(b)) for a, b in slot.runs[:int(slot.meta[0])].tolist()]
                c = self.work.process(chunk, slot.data)
                n = len(c.zero)
                slot.zero[:n] = c.zero
                slot.sizes[:n] = c.sizes
                slot.flags[:n] = c.flags
                if c.buf is None and len(c.data):            # bytes from a Python backend
                    slot.data[:len(c.data)] = np.frombuffer(c.data, dtype=np.uint8)
                slot.meta[1:4] = (n, len(c.data), 0)
            except Exception as exc:          # reported to the parent, raised there
                text = str(exc).encode("utf-8", "replace")[:4096]
                slot.data[:len(text)] = np.frombuffer(text, dtype=np.uint8)
                slot.meta[1:4] = (0, len(text), 1)
            os.write(done_w, _MSG.pack(k))

    def submit(self, chunk: list[tuple[int, int]]) -> None:
        k = self.next_slot
        self.next_slot = (k + 1) % len(self.slots)
        slot = self.slots[k]
        slot.runs[:len(chunk)] = chunk
        slot.meta[0] = len(chunk)
        self.order.append(k)
        os.write(self.task_w, _MSG.pack(k))

    def _wait(self, k: int) -> None:
        while k not in self.finished:
            ready, _, _ = select.select([self.done_r], [], [], 1.0)
            if not ready:
                for pid in self.pids:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        self.pids.remove(pid)
                        raise KdlayoutError("a compression worker process died")
                continue
            got = os.read(self.done_r, 4096)
            if not got:
                raise KdlayoutError("the compression worker processes died")
            self.inbox += got
            whole = len(self.inbox) // _MSG.size * _MSG.size
            for (j,) in _MSG.iter_unpack(self.inbox[:whole]):
                self.finished.add(j)
            del self.inbox[:whole]
        self.finished.discard(k)

    def result(self) -> _Chunk:
        k = self.order.popleft()
        self._wait(k)
        slot = self.slots[k]
        n, size, status = (int(v) for v in slot.meta[1:4])
        if status:
            raise KdlayoutError("compression worker: "
                                + bytes(slot.data[:size]).decode("utf-8", "replace"))
        return _Chunk(slot.zero[:n].view(bool), slot.sizes[:n], slot.flags[:n],
                      slot.data[:size].data, None)

    def done(self, c: _Chunk) -> None:
        """Nothing to hand back: the slot is reused by the chunk ``slots`` later."""

    def close(self) -> None:
        """End the workers (they finish the chunk at hand) and reap them."""
        if self.task_w >= 0:
            os.close(self.task_w)
            self.task_w = -1
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.pids.clear()
        if self.done_r >= 0:
            os.close(self.done_r)
            self.done_r = -1


def _read_pages(dump: PhysicalMemory, a: int, b: int, ps: int, out: np.ndarray) -> None:
    """Read pages ``[a, b)`` into the ``(b - a, ps)`` uint8 array ``out`` (read, not mapped: no
    page faults on the dump file, whose lock two threads would fight over, and no RSS growing
    with it); bytes the dump lacks (partial frames at the edge of a range) read as zeros."""
    try:
        dump.read_into(a * ps, out.reshape(-1))
    except NotInDumpError:
        flat = out.reshape(-1)
        flat[:] = 0
        for r in dump.iter_ranges(a * ps, b * ps):
            flat[r.start - a * ps:r.end - a * ps] = np.frombuffer(dump.read(r.start, r.size),
                                                                  dtype=np.uint8)


def _read_run(dump: PhysicalMemory, a: int, b: int, ps: int) -> np.ndarray:
    """Pages ``[a, b)`` as a new ``(b - a, ps)`` array (see :func:`_read_pages`)."""
    v = np.empty((b - a, ps), dtype=np.uint8)
    _read_pages(dump, a, b, ps, v)
    return v


def _chunks(runs: Iterable[tuple[int, int]], per: int) -> Iterator[list[tuple[int, int]]]:
    """Runs of dumped pfns cut and grouped into chunks of at most ``per`` pages."""
    cur: list[tuple[int, int]] = []
    n = 0
    for s, e in runs:
        while s < e:
            take = min(e - s, per - n)
            cur.append((s, s + take))
            n += take
            s += take
            if n == per:
                yield cur
                cur, n = [], 0
    if cur:
        yield cur


# --------------------------------------------------------------------------------------------
# The image


@dataclass(frozen=True)
class ImageLayout:
    """Offsets of the parts of the image."""

    block_size: int
    sub_hdr_size: int
    bitmap_blocks: int
    bitmap_offset: int
    desc_offset: int
    zero_page_offset: int
    data_offset: int


def plan_image(page_size: int, note_size: int, max_pfn: int, pages_dumped: int) -> ImageLayout:
    """Where header, sub header + notes, bitmaps, descriptors, zero page and data go."""
    bs = page_size
    sub_hdr_size = -(-(SUB_HEADER_SIZE + note_size) // bs)
    nbytes = (max_pfn + 7) // 8
    half = max(1, (nbytes + bs - 1) // bs)
    bitmap_off = (1 + sub_hdr_size) * bs
    desc_off = bitmap_off + 2 * half * bs
    zero_off = desc_off + pages_dumped * PAGE_DESC_SIZE
    return ImageLayout(bs, sub_hdr_size, 2 * half, bitmap_off, desc_off, zero_off, zero_off + bs)


def count_dumpable(bm: PageBitmaps, start: int = 0, end: int | None = None) -> int:
    """Set bits of the 2nd bitmap in ``[start, end)`` (default: all of it)."""
    end = bm.max_pfn if end is None else min(end, bm.max_pfn)
    if end <= start:
        return 0
    lo, hi = -(-start // 8), end // 8                      # whole bytes inside the range
    if lo >= hi:
        bits = np.unpackbits(bm.dumpable[start >> 3:(end + 7) >> 3], bitorder="little")
        return int(bits[start & 7:(start & 7) + end - start].sum())
    total = int(_popcount_bytes(bm.dumpable[lo:hi]).sum(dtype=np.int64))
    return total + count_dumpable(bm, start, lo * 8) + count_dumpable(bm, hi * 8, end)


#: Bitmap bytes looked at per step when walking runs (512 Ki pfns): memory stays bounded
#: whatever the RAM size and however fragmented the bitmap.
_RUN_WINDOW: Final = 1 << 16


def _runs(bitmap: np.ndarray, lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """Runs ``(start, end)`` of set bits in ``[lo, hi)``, window by window (a run crossing a
    window edge comes in two pieces)."""
    for b0 in range(lo >> 3, (hi + 7) >> 3, _RUN_WINDOW):
        b1 = min(b0 + _RUN_WINDOW, (hi + 7) >> 3)
        starts, ends = bit_runs(bitmap[b0:b1], (b1 - b0) * 8)
        base = b0 * 8
        for st, en in zip(starts.tolist(), ends.tolist(), strict=True):
            a, b = max(st + base, lo), min(en + base, hi)
            if a < b:
                yield a, b


def write_kdump(dump: PhysicalMemory, bm: PageBitmaps, sink: Sink, opts: WriteOptions,
                progress: Callable[[int, int], None] | None = None, *,
                split: tuple[int, int] | None = None) -> WriteResult:
    """Write the kdump-compressed image of ``dump`` filtered by ``bm`` into ``sink``.

    ``split``: one file of a ``--split`` set holding the pfns ``[start, end)``: the sub header
    carries the split flag and the range, both bitmaps are whole (as makedumpfile writes them),
    and descriptors and page data are those of the range only.

    Returns a :class:`WriteResult`; on a full device (:class:`OutOfSpace`) the image is left
    consistent with ``DUMP_DH_COMPRESSED_INCOMPLETE`` set and ``incomplete`` in the result.
    """
    t0 = time.perf_counter()
    make = compressor_factory(opts.compression)
    ps = dump.info.page_size
    notes = list(dump.notes)
    note_bytes, vmci_off, vmci_size = serialize_notes(notes)
    lo, hi = split if split is not None else (0, bm.max_pfn)
    dumped_total = count_dumpable(bm, lo, hi)
    lay = plan_image(ps, len(note_bytes), bm.max_pfn, dumped_total)
    nr_cpus = sum(1 for n in notes if n.type == _NT_PRSTATUS and n.name == "CORE") \
        or (dump.info.nr_cpus or 1)
    vmci = _vmcoreinfo(dump)
    stamp = time.time() if opts.timestamp is None else opts.timestamp
    header = make_header(utsname=_utsname(dump, vmci), timestamp=stamp,
                         status=opts.compression, block_size=ps, sub_hdr_size=lay.sub_hdr_size,
                         bitmap_blocks=lay.bitmap_blocks, max_mapnr=min(bm.max_pfn, 0xFFFFFFFF),
                         nr_cpus=nr_cpus)
    note_off = ps + SUB_HEADER_SIZE
    s32 = (min(lo, 0xFFFFFFFF), min(hi, 0xFFFFFFFF)) if split is not None else (0, 0)
    sub = KdumpSubHeader(
        phys_base=_phys_base(vmci), dump_level=bm.dump_level, split=int(split is not None),
        start_pfn=s32[0], end_pfn=s32[1],
        offset_vmcoreinfo=note_off + vmci_off if vmci_off is not None else 0,
        size_vmcoreinfo=vmci_size, offset_note=note_off, size_note=len(note_bytes),
        offset_eraseinfo=0, size_eraseinfo=0,
        start_pfn_64=lo if split is not None else 0, end_pfn_64=hi if split is not None else 0,
        max_mapnr_64=bm.max_pfn)
    res = WriteResult(pages_dumped=dumped_total)

    # everything but page data first, in space reserved up front
    sink.reserve(lay.data_offset)
    sink.pwrite(pack_header(header), 0)
    sink.pwrite(pack_sub_header(sub) + note_bytes, ps)
    half = lay.bitmap_blocks // 2 * ps
    for i, bits in enumerate((bm.valid, bm.dumpable)):
        raw = np.zeros(half, dtype=np.uint8)
        raw[:bits.size] = bits
        sink.pwrite(raw.data, lay.bitmap_offset + i * half)
    sink.pwrite(bytes(ps), lay.zero_page_offset)
    res.timings["header"] = time.perf_counter() - t0

    cursor = lay.data_offset
    k_written = 0                          # descriptors in the file
    descs: list[np.ndarray] = []           # finished but not yet written
    k_done = 0                             # descriptors finished (written + pending)
    threads = max(1, opts.threads if opts.threads is not None
                  else DEFAULT_THREADS.get(opts.compression, 1))
    work = _ChunkWork(dump, make, max(8, opts.chunk_pages))
    t_wait = t_write = 0.0

    def flush_descs() -> None:
        nonlocal k_written, descs
        if descs:
            table = np.concatenate(descs)
            sink.pwrite(table.data, lay.desc_offset + k_written * PAGE_DESC_SIZE)
            k_written += len(table)
            descs = []

    def store(c: _Chunk, last_pfn: int) -> None:
        nonlocal cursor, k_done, t_write
        t = time.perf_counter()
        nonzero = ~c.zero
        d = np.zeros(len(c.zero), dtype=PAGE_DESC_DTYPE_LE)
        # offsets: the cursor plus the sizes before (zero pages have size 0 here)
        offs = np.cumsum(c.sizes, dtype=np.int64)
        offs -= c.sizes
        offs += cursor
        d["offset"] = np.where(nonzero, offs, lay.zero_page_offset)
        d["size"] = np.where(nonzero, c.sizes, ps)
        d["flags"] = c.flags
        sink.pwrite(c.data, cursor)
        cursor += len(c.data)
        descs.append(d)
        k_done += len(d)
        nz = int(np.count_nonzero(nonzero))
        res.zero_pages += len(d) - nz
        res.raw_pages += nz - int(np.count_nonzero(c.flags))
        res.data_bytes += len(c.data)
        if k_done - k_written >= _DESC_BATCH:
            flush_descs()
        t_write += time.perf_counter() - t
        if progress is not None:
            progress(last_pfn, bm.max_pfn)

    runner: _Runner
    if threads == 1:
        runner = _Inline(work)             # no hand-offs at all
    elif opts.processes and hasattr(os, "fork") and threading.active_count() == 1:
        # forking copies only the calling thread: with other threads alive (a library caller's
        # own) a lock one of them holds would stay locked in the child, so they get threads
        runner = _Processes(work, threads, 2 * threads)
    else:
        runner = _Threads(work, threads)
    try:
        # the workers read, test and compress; this thread only writes, in pfn order
        it = _chunks(_runs(bm.dumpable, lo, hi), work.chunk_pages)
        in_flight: deque[int] = deque()   # last pfn of each chunk submitted, oldest first
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < 2 * runner.workers - (threads == 1):
                nxt = next(it, None)
                if nxt is None:
                    exhausted = True
                    break
                runner.submit(nxt)
                in_flight.append(nxt[-1][1])
            if not in_flight:
                break
            t = time.perf_counter()
            c = runner.result()
            t_wait += time.perf_counter() - t
            store(c, in_flight.popleft())
            runner.done(c)
        flush_descs()
        t = time.perf_counter()
        sink.finish()
        res.timings["finish"] = time.perf_counter() - t
    except OutOfSpace as exc:
        runner.close()
        flush_descs()                      # into the reserved table: cannot run out of space
        res.incomplete = True
        res.error = str(exc.strerror)
        sink.pwrite(pack_header(replace(
            header, status=header.status | codecs.DUMP_DH_COMPRESSED_INCOMPLETE)), 0)
        with contextlib.suppress(OSError):
            sink.finish()
    finally:
        runner.close()
    res.pages_written = k_written
    res.size = cursor
    res.timings.update(read_compress=t_wait, write=t_write)
    res.seconds = time.perf_counter() - t0
    return res


# --------------------------------------------------------------------------------------------
# Files


def same_file(a: str, b: str) -> bool:
    """True if ``b`` names the file ``a`` (same path, symlink or hard link: st_dev/st_ino)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_outputs(inputs: Sequence[str], outputs: Sequence[str], *, overwrite: bool) -> None:
    """The writer's refusals for output files, before anything is read or written: an output
    that is one of the ``inputs`` (the dump, or the files of a split set; also through a
    symlink or hard link), a name given twice, and an existing file unless ``overwrite``
    (makedumpfile's ``-f``)."""
    for i, path in enumerate(outputs):
        if any(same_file(src, path) for src in inputs):
            raise KdlayoutError("refusing to overwrite the input dump", path=path)
        if any(same_file(p, path) for p in outputs[:i]):
            raise KdlayoutError("DUMPFILE given twice", path=path)
        if not overwrite and os.path.lexists(path):
            raise KdlayoutError("file exists; refusing to overwrite it (-f forces)", path=path)


def publish_file(tmp: str, path: str, overwrite: bool) -> None:
    """Give the finished temporary file its final name (no clobbering unless ``overwrite``)."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise KdlayoutError("file appeared while writing; refusing to overwrite it",
                            path=path) from None
    except OSError as exc:             # no hard links here (vfat, some FUSE): check, rename
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(path):
            raise KdlayoutError("file appeared while writing; refusing to overwrite it",
                                path=path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def temp_file_for(path: str) -> tuple[int, str]:
    """A mode-0600 temporary file next to ``path`` (same directory, so it can be renamed)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (best effort)."""
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def atomic_output(path: str, *, overwrite: bool = False) -> Iterator[int]:
    """A mode-0600 temporary file next to ``path``, open for writing (its descriptor is
    yielded); when the block ends without an error the file is synced and renamed to ``path``
    (no clobbering unless ``overwrite``; see :func:`publish_file`), else removed. For outputs
    that have no incomplete state worth keeping (the writer's own dump files do: it handles a
    full device itself)."""
    fd, tmp = temp_file_for(path)
    try:
        yield fd
        os.fsync(fd)
        publish_file(tmp, path, overwrite)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)


def write_dump_file(dump: PhysicalMemory, bm: PageBitmaps, path: str, opts: WriteOptions, *,
                    input_path: str | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    elf: bool = False, overwrite: bool = False) -> WriteResult:
    """Write the image to ``path`` safely: a mode-0600 temporary file in the same directory,
    renamed over ``path`` when complete.

    On a full device the incomplete image (flag set, readable) is renamed to ``path`` and
    :class:`IncompleteDumpError` is raised; on any other error the temporary file is removed.
    Refuses a ``path`` that is the input file. ``elf``: write an ELF core (:func:`write_elf`)
    instead; an ELF output that runs out of space is removed (ELF has no incomplete flag).
    An existing ``path`` is refused unless ``overwrite`` (makedumpfile's ``-f``); without it the
    final name is taken with ``link()``, so a file that appeared meanwhile is not clobbered.
    """
    check_outputs([input_path or dump.info.path], [path], overwrite=overwrite)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = temp_file_for(path)
    try:
        sink = FileSink(fd, path)
        try:
            res = (write_elf(dump, bm, sink, progress) if elf
                   else write_kdump(dump, bm, sink, opts, progress))
        except OutOfSpace as exc:      # before any page: nothing readable to keep
            raise KdlayoutError(f"no space left on the output device: {exc.strerror}",
                                path=path) from None
        if res.incomplete:            # drop the half-written chunk: frees space, clean tail
            with contextlib.suppress(OSError):
                os.ftruncate(fd, res.size)
        publish_file(tmp, path, overwrite)
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    if res.incomplete:
        raise IncompleteDumpError(
            f"incomplete dump, {res.error}: {res.pages_written} of {res.pages_dumped} pages "
            f"saved; the header carries DUMP_DH_COMPRESSED_INCOMPLETE", path=path)
    return res


# --------------------------------------------------------------------------------------------
# Split sets (makedumpfile --split)


#: Split boundaries are multiples of this many pfns: crash counts a split file's dumpable pages
#: in 64-bit words of the 2nd bitmap from its start_pfn, so a start inside a word would count
#: the previous file's pages too (makedumpfile --reassemble and kdlayout do not care).
SPLIT_ALIGN: Final = 64


def split_ranges(bm: PageBitmaps, n: int) -> list[tuple[int, int]]:
    """``n`` consecutive pfn ranges covering ``[0, max_pfn)`` with about the same number of
    dumped pfns each: boundaries are the exact balance points rounded down to
    :data:`SPLIT_ALIGN` pfns, so counts differ by less than ``2 * SPLIT_ALIGN``."""
    if n < 1:
        raise ValueError("need at least one range")
    pop = _popcount_bytes(bm.dumpable)
    block = 4096                                   # bytes of bitmap per block
    nblk = -(-pop.size // block)
    padded = np.zeros(nblk * block, dtype=np.uint8)
    padded[:pop.size] = pop
    cum = np.cumsum(padded.reshape(nblk, block).sum(axis=1, dtype=np.int64))
    total = int(cum[-1]) if nblk else 0
    bounds = [0]
    for k in range(1, n):
        target = total * k // n                    # file k-1 ends after the target-th pfn
        if target == 0:
            bounds.append(bounds[-1])
            continue
        j = int(np.searchsorted(cum, target, side="left"))
        before = int(cum[j - 1]) if j else 0
        inner = np.cumsum(padded[j * block:(j + 1) * block], dtype=np.int64) + before
        byte = j * block + int(np.searchsorted(inner, target, side="left"))
        left = target - (int(inner[byte - j * block - 1]) if byte > j * block else before)
        bits = np.flatnonzero(np.unpackbits(bm.dumpable[byte:byte + 1], bitorder="little"))
        pfn = (byte * 8 + int(bits[left - 1]) + 1) // SPLIT_ALIGN * SPLIT_ALIGN
        bounds.append(max(bounds[-1], min(pfn, bm.max_pfn)))
    bounds.append(bm.max_pfn)
    return list(itertools.pairwise(bounds))


def _popcount_bytes(bitmap: np.ndarray) -> np.ndarray:
    """Set bits of every byte (a table lookup, one byte per byte)."""
    table = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(
        axis=1, dtype=np.uint8)
    out: np.ndarray = table[bitmap]
    return out


class _NoPageSink:
    """A sink that takes header, bitmaps and the reserved descriptor table, and reports a full
    device at the first page write (a split file's placeholder, or one written after the
    device filled up)."""

    def __init__(self, inner: FileSink) -> None:
        self.inner = inner
        self.stats = inner.stats
        self.limit: int | None = None

    def reserve(self, size: int) -> None:
        self.inner.reserve(size)
        self.limit = size

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        if self.limit is not None and offset >= self.limit:
            raise OutOfSpace(errno.ENOSPC, "no space left for this file's pages (an earlier "
                             "file of the set filled the device)", self.inner.path)
        self.inner.pwrite(data, offset)

    def finish(self) -> None:
        self.inner.finish()


def write_split_files(dump: PhysicalMemory, bm: PageBitmaps, paths: list[str],
                      opts: WriteOptions, *, input_path: str | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      overwrite: bool = False) -> list[WriteResult]:
    """Write a ``--split`` set: one kdump-compressed file per path, each with the whole bitmaps,
    the split flag and its pfn range (:func:`split_ranges`: equal numbers of dumped pages) in the
    sub header, and the descriptors and pages of its range only.

    Safety as :func:`write_dump_file`: every file is written to a temporary name and all are
    renamed only when all are written. Header, bitmaps and descriptor table of every file are
    written into reserved space first, flagged incomplete, before any page; on a full device
    the file being written and all later ones keep that flag (later ones without pages), the
    earlier ones are complete, and :class:`IncompleteDumpError` says what was saved. If even
    the tables do not fit, or on any other error, every temporary file is removed.
    """
    if len(paths) < 2:
        raise KdlayoutError("--split needs at least two DUMPFILEs")
    check_outputs([input_path or dump.info.path], paths, overwrite=overwrite)
    ranges = split_ranges(bm, len(paths))
    # one header for all (makedumpfile --reassemble wants the disk_dump_headers byte-equal)
    opts = replace(opts, timestamp=time.time() if opts.timestamp is None else opts.timestamp)
    tmps: list[tuple[int, str, str]] = []          # fd, temporary name, final name
    results: list[WriteResult] = []
    full: str | None = None
    try:
        # 1. every file's header, bitmaps and descriptor table in reserved space, flagged
        #    incomplete with no page: if the device fills up later, every file not finished
        #    says so (if even these do not fit, nothing is kept)
        for path, rng in zip(paths, ranges, strict=True):
            fd, tmp = temp_file_for(path)
            tmps.append((fd, tmp, path))
            try:
                write_kdump(dump, bm, _NoPageSink(FileSink(fd, path)), opts, split=rng)
            except OutOfSpace as exc:
                raise KdlayoutError(f"no space left on the output device: {exc.strerror}",
                                    path=path) from None
        # 2. the pages, file by file; after a full device the rest stay as they are
        for (fd, _tmp, path), rng in zip(tmps, ranges, strict=True):
            sink: Sink = FileSink(fd, path) if full is None else _NoPageSink(FileSink(fd, path))
            res = write_kdump(dump, bm, sink, opts, progress, split=rng)
            if res.incomplete:
                full = full or res.error or "no space left"
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, res.size)
            results.append(res)
        for _fd, tmp, path in tmps:
            publish_file(tmp, path, overwrite)
        for directory in {os.path.dirname(os.path.abspath(p)) for _, _, p in tmps}:
            fsync_dir(directory)
    except BaseException:
        for _fd, tmp, _path in tmps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    finally:
        for fd, _tmp, _path in tmps:
            with contextlib.suppress(OSError):
                os.close(fd)
    if full is not None:
        saved = sum(r.pages_written for r in results)
        flagged = [p for p, r in zip(paths, results, strict=True) if r.incomplete]
        raise IncompleteDumpError(
            f"incomplete split dump, {full}: {saved} of {count_dumpable(bm)} pages saved; "
            f"DUMP_DH_COMPRESSED_INCOMPLETE in {', '.join(flagged)}", path=paths[0])
    return results


# --------------------------------------------------------------------------------------------
# ELF output (makedumpfile -E)

_ELF_HEADER_SIZE: Final = 64
_PHDR_SIZE: Final = 56
_SHDR_SIZE: Final = 64
_PN_XNUM: Final = 0xFFFF
_PT_LOAD: Final = 1
_PT_NOTE: Final = 4
_EM_X86_64: Final = 62
_ELF_COPY: Final = 1 << 22


class LoadRun(NamedTuple):
    """One PT_LOAD of the ELF output: ``filesz`` bytes stored for ``paddr`` (``vaddr`` as the
    input's segment), then ``memsz - filesz`` bytes of zeros that are not stored."""

    vaddr: int
    paddr: int
    filesz: int
    memsz: int


def zero_page_bits(dump: PhysicalMemory, bm: PageBitmaps) -> np.ndarray:
    """Packed bitmap of the written pfns whose content is all zeros (reads their pages)."""
    ps = dump.info.page_size
    out = np.zeros(bm.dumpable.size, dtype=np.uint8)
    for chunk in _chunks(_runs(bm.dumpable, 0, bm.max_pfn), 2048):
        for a, b in chunk:
            pages = _read_run(dump, a, b, ps)
            z = ~pages.any(axis=1)
            idx = np.flatnonzero(z) + a
            np.bitwise_or.at(out, idx >> 3, (1 << (idx & 7)).astype(np.uint8))
    return out


def elf_load_runs(dump: PhysicalMemory, bm: PageBitmaps,
                  zero: np.ndarray | None = None) -> list[LoadRun]:
    """The input's PT_LOADs (or its ranges, with ``p_vaddr`` 0) cut to the runs of written pfns.

    Pages flagged in ``zero`` are not stored: a run of them becomes the ``p_memsz`` tail of the
    PT_LOAD before it (or a PT_LOAD with ``p_filesz`` 0), which readers return as zeros. Segments
    that alias the same physical memory (a kexec vmcore's kernel-text segment) are cut alike.
    """
    ps = dump.info.page_size
    segs: list[tuple[int, int, int]] = [
        (int(s.p_vaddr), int(s.p_paddr), int(s.p_filesz))
        for s in getattr(dump, "segments", ()) if int(s.p_filesz) > 0]
    if not segs:
        segs = [(0, r.start, r.size) for r in dump.ranges()]
    starts, ends = bit_runs(bm.dumpable, bm.max_pfn)
    out: list[LoadRun] = []
    for vaddr, paddr, size in segs:
        lo_pfn, hi_pfn = paddr // ps, -(-(paddr + size) // ps)
        i = int(np.searchsorted(ends, lo_pfn, side="right"))
        j = int(np.searchsorted(starts, hi_pfn, side="left"))
        for s, e in zip(starts[i:j].tolist(), ends[i:j].tolist(), strict=True):
            a, b = max(s * ps, paddr), min(e * ps, paddr + size)
            if a >= b:
                continue
            # sub-runs of stored / zero pages inside [a, b)
            pa, pb = a // ps, -(-b // ps)
            if zero is None:
                isz = np.zeros(pb - pa, dtype=bool)
            else:
                isz = np.unpackbits(zero[pa >> 3:(pb + 7) >> 3], bitorder="little")[
                    pa & 7:(pa & 7) + pb - pa].astype(bool)
            cuts = np.flatnonzero(np.diff(isz.astype(np.int8))) + 1
            bounds = [0, *cuts.tolist(), pb - pa]
            for k in range(len(bounds) - 1):
                x = max((pa + bounds[k]) * ps, a)
                y = min((pa + bounds[k + 1]) * ps, b)
                va = vaddr + (x - paddr) if vaddr else 0
                if isz[bounds[k]]:
                    if out and out[-1].paddr + out[-1].memsz == x and k > 0:
                        last = out[-1]
                        out[-1] = last._replace(memsz=last.memsz + (y - x))
                    else:
                        out.append(LoadRun(va, x, 0, y - x))
                else:
                    out.append(LoadRun(va, x, y - x, y - x))
    return out


def write_elf(dump: PhysicalMemory, bm: PageBitmaps, sink: Sink,
              progress: Callable[[int, int], None] | None = None) -> WriteResult:
    """Write an ELF64 core holding the input's notes and one PT_LOAD per run of written pages
    (excluded pages are in no segment; at level bit 1 zero pages are ``p_memsz`` tails, as
    readers need them, see :func:`elf_load_runs`). More than 65534 program headers use PN_XNUM.
    """
    import struct
    t0 = time.perf_counter()
    ps = dump.info.page_size
    zero = zero_page_bits(dump, bm) if bm.dump_level & 1 else None
    runs = elf_load_runs(dump, bm, zero)
    note_bytes, _, _ = serialize_notes(list(dump.notes))
    nphdr = 1 + len(runs)
    xnum = nphdr >= _PN_XNUM
    shoff = _ELF_HEADER_SIZE if xnum else 0
    phoff = _ELF_HEADER_SIZE + (_SHDR_SIZE if xnum else 0)
    note_off = phoff + nphdr * _PHDR_SIZE
    pos = -(-(note_off + len(note_bytes)) // ps) * ps
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    machine = _EM_X86_64 if dump.info.arch == "x86_64" else 0
    head = bytearray(struct.pack("<16sHHIQQQIHHHHHH", ident, 4, machine, 1, 0, phoff, shoff, 0,
                                 _ELF_HEADER_SIZE, _PHDR_SIZE, _PN_XNUM if xnum else nphdr,
                                 _SHDR_SIZE if xnum else 0, 1 if xnum else 0, 0))
    if xnum:
        head += struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, nphdr, 0, 0)
    head += struct.pack("<IIQQQQQQ", _PT_NOTE, 0, note_off, 0, 0, len(note_bytes),
                        len(note_bytes), 0)
    offsets = []
    for r in runs:
        offsets.append(pos)
        head += struct.pack("<IIQQQQQQ", _PT_LOAD, 7, pos, r.vaddr, r.paddr, r.filesz, r.memsz,
                            0)
        pos += r.filesz
    head += note_bytes
    res = WriteResult(pages_dumped=count_dumpable(bm))
    sink.pwrite(bytes(head), 0)
    total = sum(r.filesz for r in runs)
    done = 0
    for r, off in zip(runs, offsets, strict=True):
        for a in range(0, r.filesz, _ELF_COPY):
            n = min(_ELF_COPY, r.filesz - a)
            first, last = (r.paddr + a) // ps, -(-(r.paddr + a + n) // ps)
            pages = _read_run(dump, first, last, ps)
            lo = r.paddr + a - first * ps
            sink.pwrite(pages.reshape(-1)[lo:lo + n].data, off + a)
            done += n
        if progress is not None:
            progress(done, total)
    sink.finish()
    res.pages_written = res.pages_dumped
    res.zero_pages = int(np.unpackbits(zero).sum()) if zero is not None else 0
    res.data_bytes = total
    res.size = pos
    res.seconds = time.perf_counter() - t0
    return res
