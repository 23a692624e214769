"""One physical-memory interface over every dump format.

A :class:`PhysicalMemory` answers three questions about the crashed machine's RAM:

* which physical ranges the dump holds (:meth:`PhysicalMemory.ranges`),
* the bytes at a physical address (:meth:`PhysicalMemory.read`), raising
  :class:`~kdlayout.errors.NotInDumpError` for anything the dump does not hold,
* a zero-copy numpy view of a contiguous stored range (:meth:`PhysicalMemory.view`), which the
  scanner uses to read ``struct page`` arrays in bounded chunks.

Format modules (``elfcore``, ``diskdump``, ``flattened``) parse bytes; this module is the edge that
opens files and picks the format (:func:`open_dump`).
"""

from __future__ import annotations

import abc
import ctypes
import ctypes.util
import mmap
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import numpy as np

from .errors import KdlayoutError, NotInDumpError

if TYPE_CHECKING:
    from .notes import Note

PAGE_SIZE = 4096


@dataclass(frozen=True)
class MemoryRange:
    """A run of physical memory the dump holds: ``[start, start + size)``."""

    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size

    def __contains__(self, paddr: object) -> bool:
        return isinstance(paddr, int) and self.start <= paddr < self.end


@dataclass
class DumpInfo:
    """Format-level facts about a dump, filled by the reader that opened it."""

    path: str
    format: str                      # "elf-kexec", "elf-qemu", "diskdump", "flattened", ...
    arch: str                        # "x86_64", ...
    page_size: int = PAGE_SIZE
    nr_cpus: int | None = None
    release: str | None = None       # utsname release from a header, if the format has one
    incomplete: bool = False         # makedumpfile's DUMP_DH_COMPRESSED_INCOMPLETE and the like
    dump_level: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


class PhysicalMemory(abc.ABC):
    """Physical memory of the crashed machine as held by one dump file."""

    info: DumpInfo

    @abc.abstractmethod
    def ranges(self) -> Sequence[MemoryRange]:
        """Physical ranges held by the dump, sorted by start, non-overlapping."""

    @abc.abstractmethod
    def read(self, paddr: int, size: int) -> bytes:
        """Return ``size`` bytes at physical address ``paddr``.

        Raises :class:`NotInDumpError` if any byte of the range is not in the dump.
        """

    def view(self, paddr: int, size: int) -> np.ndarray:
        """A read-only ``uint8`` array of ``size`` bytes at ``paddr``.

        Zero-copy (a view of the mmap) where the format stores the range uncompressed; otherwise a
        fresh array. Raises :class:`NotInDumpError` like :meth:`read`.
        """
        return np.frombuffer(self.read(paddr, size), dtype=np.uint8)

    def read_into(self, paddr: int, out: np.ndarray) -> None:
        """Fill the writable ``uint8`` array ``out`` with the bytes at ``paddr``: a copy into
        memory the caller owns, so reading does not map the dump file (no page faults, no
        RSS growing with the dump). Raises :class:`NotInDumpError` like :meth:`read`."""
        out[:] = self.view(paddr, out.nbytes)

    @property
    def vmcoreinfo(self) -> bytes | None:
        """The raw VMCOREINFO text of the crashed kernel, if the dump carries one."""
        return None

    @property
    def notes(self) -> Sequence[Note]:
        """ELF notes carried by the dump (NT_PRSTATUS per CPU, VMCOREINFO, ...)."""
        return ()

    def contains(self, paddr: int, size: int = 1) -> bool:
        """True if every byte of ``[paddr, paddr + size)`` is in the dump."""
        end = paddr + size
        for r in self.ranges():
            if r.start <= paddr < r.end:
                if end <= r.end:
                    return True
                paddr = r.end
            elif r.start > paddr:
                return False
        return False

    def total_bytes(self) -> int:
        return sum(r.size for r in self.ranges())

    def iter_ranges(self, start: int, end: int) -> Iterator[MemoryRange]:
        """Stored ranges clipped to ``[start, end)``."""
        for r in self.ranges():
            lo, hi = max(r.start, start), min(r.end, end)
            if lo < hi:
                yield MemoryRange(lo, hi - lo)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the file and mappings."""

    def __enter__(self) -> PhysicalMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _not_in_dump(self, paddr: int, size: int) -> NotInDumpError:
        return NotInDumpError(
            f"physical range {paddr:#x}-{paddr + size:#x} is not in the dump",
            paddr=paddr, path=self.info.path)


_MADV_DONTNEED: Final = 4
_AROUND: Final = 64 << 10
_libc: ctypes.CDLL | None = None


def release_view(pages: np.ndarray, *, whole_mapping: bool = False) -> None:
    """Drop the page-table entries of a zero-copy view (:meth:`PhysicalMemory.view`) of a
    read-only file mapping once the caller is done with it, so RSS stays flat in the dump size
    (the page cache keeps the data; a later access maps it again). Only whole pages inside the
    view are dropped; arrays that own their memory, and writable or anonymous mappings, are
    left alone. ``whole_mapping`` drops every page of the file mapping the view lies in: the
    kernel maps neighbours of a faulting page too (fault-around, large folios), which a
    per-view release misses, so long scans call it now and then."""
    global _libc
    base: object = pages
    while isinstance(base, np.ndarray):
        base = base.base
    if not isinstance(base, mmap.mmap | memoryview) or sys.platform != "linux":
        return
    if isinstance(base, memoryview) and not isinstance(base.obj, mmap.mmap):
        return
    # only read-only (file, ACCESS_READ) mappings: dropping pages of a writable or anonymous
    # mapping would lose data
    with memoryview(base) as mv:
        if not mv.readonly:
            return
        whole = np.frombuffer(mv, dtype=np.uint8)
        m_lo, m_hi = whole.ctypes.data, whole.ctypes.data + whole.nbytes
        del whole
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    # Out to the kernel's fault-around window (fault_around_bytes, 64 KiB by default): a read
    # fault maps the neighbouring pages of the file too, and leaving those mapped would let RSS
    # grow with the dump after all. Neighbours another reader still uses are just mapped again.
    lo = max(pages.ctypes.data // _AROUND * _AROUND, -(-m_lo // mmap.PAGESIZE) * mmap.PAGESIZE)
    hi = min(-(-(pages.ctypes.data + pages.nbytes) // _AROUND) * _AROUND,
             m_hi // mmap.PAGESIZE * mmap.PAGESIZE)
    if whole_mapping:
        lo, hi = -(-m_lo // mmap.PAGESIZE) * mmap.PAGESIZE, m_hi // mmap.PAGESIZE * mmap.PAGESIZE
    if hi > lo:
        _libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_DONTNEED)


def release_mapping(mem: PhysicalMemory) -> None:
    """Drop every page of ``mem``'s file mapping(s) from the process (where ``mem`` reads a file
    through a read-only mmap, as :class:`~kdlayout.elfcore.ElfCore` does): the pages reads and
    views touched stay mapped and count in RSS until then. The page cache keeps them; a later
    read maps them again. A no-op for dumps that are not read through a mapping."""
    # one view is enough: a mapped dump maps its whole file once (ElfCore); other readers'
    # views own their memory (a compressed dump's may cost a page decompression), no more
    for r in mem.ranges():
        try:
            v = mem.view(r.start, 1)
        except KdlayoutError:
            continue
        release_view(v, whole_mapping=True)
        return
