"""Join a ``--split`` set into one kdump-compressed file (``makedumpfile --reassemble``).

A split set is N kdump-compressed files of one dump (``kdlayout dump --split`` or
``makedumpfile --split``): the same ``disk_dump_header``, the whole 1st and 2nd bitmaps in every
file, and in each sub header ``split`` 1 and the file's pfn range; each file's descriptor table
and page data hold only the dumped pfns of its range. :func:`reassemble_split` writes the file a
single-file dump would have been:

* block 0: the set's header (``DUMP_DH_COMPRESSED_INCOMPLETE`` set if any file carries it);
* the sub header area (sub header, notes, VMCOREINFO) of the first file, with ``split``,
  ``start_pfn``/``end_pfn`` and ``start_pfn_64``/``end_pfn_64`` cleared;
* the bitmaps of the first file (every file's must be equal);
* one descriptor per dumped pfn of the whole 2nd bitmap, then one shared zero page, then the
  page data of the files in pfn order, copied as stored (no page is decompressed). A
  descriptor pointing at its file's shared zero page (``offset`` = the end of that file's
  descriptor table, ``flags`` 0, ``size`` = the page size, the page there all zeros) points at
  the output's zero page; descriptors never filled (an incomplete file's tail: all zero) stay
  all zero;
* eraseinfo, if any file has one, after the data (the files' in order), as makedumpfile does.

For a set written by ``kdlayout dump --split`` the result is byte-identical to the single-file
dump written with the same header time. makedumpfile's own ``--reassemble`` writes the same
pages but recognises only its own zero-page position, so it stores each zero page of a
kdlayout set in full.

The output is written like the dump writer's: a mode-0600 temporary file in the target
directory, given its name only when complete (:func:`~kdlayout.writer.publish_file`); an input
as output is refused, an existing output unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from dataclasses import dataclass, replace
from typing import Final

import numpy as np

from . import codecs
from .diskdump import PAGE_DESC_SIZE, SUB_HEADER_SIZE, DiskDump
from .diskdump_write import FileSink, OutOfSpace
from .errors import KdlayoutError
from .writer import atomic_output, check_outputs, same_file

#: Descriptors handled per step (and written per batch).
_DESC_STEP: Final = 1 << 14
#: Bytes copied per ``copy_file_range``/``pread`` call.
_COPY_STEP: Final = 8 << 20
#: Byte offsets in ``kdump_sub_header`` of the fields a reassembled file clears or sets.
_SUB_SPLIT: Final = 12            # i32 split
_SUB_START_END: Final = 16        # u64 start_pfn, end_pfn
_SUB_ERASEINFO: Final = 64        # i64 offset_eraseinfo, u64 size_eraseinfo (version 5+)
_SUB_START_END_64: Final = 80     # u64 start_pfn_64, end_pfn_64 (version 6+)

_POPCOUNT: Final = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@dataclass(frozen=True)
class ReassembleResult:
    """What :func:`reassemble_split` wrote."""

    pages: int                 # descriptors in the output
    zero_pages: int            # of them pointing at the shared zero page
    unfilled: int              # descriptors never written (an incomplete input)
    data_bytes: int            # page data copied
    size: int                  # output size
    incomplete: bool           # the output header carries DUMP_DH_COMPRESSED_INCOMPLETE


def _count_bits(packed: bytes) -> int:
    arr = np.frombuffer(packed, dtype=np.uint8)
    return sum(int(_POPCOUNT[arr[i:i + (1 << 20)]].sum(dtype=np.int64))
               for i in range(0, arr.size, 1 << 20))


def _open_part(path: str) -> DiskDump:
    try:
        return DiskDump.open(path)
    except KdlayoutError:
        raise
    except (ValueError, struct.error) as exc:
        raise KdlayoutError(f"not a kdump-compressed file: {exc}", path=path) from None


def _check_set(parts: list[DiskDump]) -> list[DiskDump]:
    """The files sorted by start pfn, checked to be one dump's consecutive ranges."""
    first = parts[0]
    mask = ~codecs.DUMP_DH_COMPRESSED_INCOMPLETE
    head0 = replace(first.header, status=first.header.status & mask)
    for p in parts:
        if p.split_range is None:
            raise KdlayoutError("not a file of a --split set (split flag 0 in the sub header)",
                                path=p.path, offset=p.block_size + _SUB_SPLIT)
        if replace(p.header, status=p.header.status & mask) != head0:
            raise KdlayoutError(f"disk_dump_header differs from {first.path}'s: not a file of "
                                "the same split set", path=p.path, offset=0)
        if p.max_mapnr != first.max_mapnr:
            raise KdlayoutError(f"max_mapnr {p.max_mapnr:#x} differs from {first.path}'s "
                                f"{first.max_mapnr:#x}", path=p.path)
    ordered = sorted(parts, key=lambda p: p.split_range or (0, 0))
    end = 0
    for p in ordered:
        assert p.split_range is not None
        start, stop = p.split_range
        if start != end:
            what = "overlaps" if start < end else "leaves out"
            raise KdlayoutError(f"the set {what} pfns {min(start, end):#x}-{max(start, end):#x} "
                                f"(this file starts at {start:#x})", path=p.path)
        end = stop
    if end != first.max_mapnr:
        raise KdlayoutError(f"no file of the set holds pfns {end:#x}-{first.max_mapnr:#x}",
                            path=ordered[-1].path)
    return ordered


def _sub_header_area(first: DiskDump, eraseinfo: tuple[int, int] | None) -> bytes:
    """The sub header area of ``first`` with the split fields cleared (and eraseinfo set)."""
    h = first.header
    bs = first.block_size
    area = bytearray(first.source.read_at(bs, h.sub_hdr_size * bs))
    if len(area) < min(SUB_HEADER_SIZE, h.sub_hdr_size * bs):
        raise KdlayoutError("sub header area truncated", path=first.path, offset=bs)
    for name, off, size in (("note", first.sub_header.offset_note, first.sub_header.size_note),
                            ("vmcoreinfo", first.sub_header.offset_vmcoreinfo,
                             first.sub_header.size_vmcoreinfo)):
        if size and off is not None and not bs <= off <= off + size <= (1 + h.sub_hdr_size) * bs:
            raise KdlayoutError(f"the {name} area ({size} bytes at {off:#x}) is outside the sub "
                                "header blocks; cannot copy it", path=first.path, offset=off)
    o = h.byteorder
    struct.pack_into(o + "i", area, _SUB_SPLIT, 0)
    struct.pack_into(o + "QQ", area, _SUB_START_END, 0, 0)
    if h.header_version >= 6:
        struct.pack_into(o + "QQ", area, _SUB_START_END_64, 0, 0)
    if h.header_version >= 5:
        struct.pack_into(o + "qQ", area, _SUB_ERASEINFO, *(eraseinfo or (0, 0)))
    return bytes(area)


class _Copier:
    """Copies byte ranges from an input file to the output, in the kernel where it can."""

    def __init__(self, out: FileSink) -> None:
        self.out = out
        self.kernel = hasattr(os, "copy_file_range")

    def copy(self, src: DiskDump, fd_in: int, offset: int, size: int, dest: int) -> None:
        done = 0
        while done < size:
            n = min(_COPY_STEP, size - done)
            got = 0
            if self.kernel:
                try:
                    got = os.copy_file_range(fd_in, self.out.fd, n, offset + done, dest + done)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                        raise OutOfSpace(exc.errno, f"{os.strerror(exc.errno)} at offset "
                                         f"{dest + done:#x}", self.out.path) from None
                    if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS,
                                         errno.EOPNOTSUPP, errno.EBADF):
                        raise
                    self.kernel = False
            if not got:
                data = os.pread(fd_in, n, offset + done)
                if len(data) < n:
                    raise KdlayoutError(f"page data cut short: {n} bytes wanted, "
                                        f"{len(data)} read", path=src.path,
                                        offset=offset + done)
                self.out.pwrite(data, dest + done)
                got = n
            done += got


def reassemble_split(inputs: list[str], output: str, *,
                     overwrite: bool = False) -> ReassembleResult:
    """Join the split set ``inputs`` (any order) into the kdump-compressed file ``output``."""
    if not inputs:
        raise KdlayoutError("--reassemble needs the files of a split set and DUMPFILE")
    for i, path in enumerate(inputs):
        if any(same_file(p, path) for p in inputs[:i]):
            raise KdlayoutError("file given twice", path=path)
    check_outputs(inputs, [output], overwrite=overwrite)
    with contextlib.ExitStack() as stack:
        parts = []
        for path in inputs:
            part = _open_part(path)
            stack.callback(part.source.close)
            parts.append(part)
        ordered = _check_set(parts)
        try:
            with atomic_output(output, overwrite=overwrite) as fd:
                res = _write(ordered, FileSink(fd, output))
        except OutOfSpace as exc:     # the temporary file is gone: never a partial output
            raise KdlayoutError(f"no space left on the output device: {exc.strerror}",
                                path=output) from None
    return res


def _write(ordered: list[DiskDump], out: FileSink) -> ReassembleResult:
    first = ordered[0]
    h = first.header
    bs = first.block_size
    bitmap_off = (1 + h.sub_hdr_size) * bs
    bitmap_len = h.bitmap_blocks * bs
    bitmaps = first.source.read_at(bitmap_off, bitmap_len)
    if len(bitmaps) < bitmap_len:
        raise KdlayoutError("bitmaps cut short", path=first.path, offset=bitmap_off + len(bitmaps))
    for p in ordered[1:]:
        if p.source.read_at(bitmap_off, bitmap_len) != bitmaps:
            raise KdlayoutError(f"bitmaps differ from {first.path}'s: not a file of the same "
                                "split set", path=p.path, offset=bitmap_off)
    half = bitmap_len // 2
    nbytes = (first.max_mapnr + 7) // 8
    bitmap2 = bytearray(bitmaps[half:half + nbytes])
    if first.max_mapnr % 8 and bitmap2:
        bitmap2[-1] &= (1 << (first.max_mapnr % 8)) - 1
    total = _count_bits(bytes(bitmap2))
    if sum(p.num_dumpable for p in ordered) != total:
        raise KdlayoutError(f"the files' ranges hold {sum(p.num_dumpable for p in ordered)} "
                            f"dumped pfns, the 2nd bitmap {total}", path=first.path)
    desc_off = bitmap_off + bitmap_len
    zero_off = desc_off + total * PAGE_DESC_SIZE
    cursor = zero_off + bs
    incomplete = any(p.incomplete for p in ordered)

    out.reserve(cursor)
    out.pwrite(bytes(bs), zero_off)
    out.pwrite(bitmaps, bitmap_off)
    copier = _Copier(out)
    k = zeros = unfilled = 0
    data_bytes = 0
    for p in ordered:
        fsize = p.source.size
        zero_at = p.desc_end if p.source.read_at(p.desc_end, bs) == bytes(bs) else None
        fd_in = os.open(p.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            for first_desc in range(0, p.num_dumpable, _DESC_STEP):
                n = min(_DESC_STEP, p.num_dumpable - first_desc)
                d = p.descriptors(first_desc, n).copy()
                empty = (d["offset"] == 0) & (d["size"] == 0)
                if empty.any() and not p.incomplete:
                    i = int(np.flatnonzero(empty)[0])
                    raise KdlayoutError(f"page descriptor {first_desc + i} is empty in a "
                                        "complete file", path=p.path,
                                        offset=p.desc_offset + (first_desc + i) * PAGE_DESC_SIZE)
                is_zero = ((d["offset"] == zero_at) & (d["flags"] == 0) & (d["size"] == bs)
                           if zero_at is not None else np.zeros(n, dtype=bool))
                data = ~empty & ~is_zero
                offs = d["offset"].astype(np.int64)
                sizes = d["size"].astype(np.int64)
                bad = data & ((sizes > bs) | (sizes == 0) | (offs < p.desc_end)
                              | (offs + sizes > fsize))
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    raise KdlayoutError(f"page descriptor {first_desc + i}: {int(sizes[i])} "
                                        f"bytes at {int(offs[i]):#x} are not page data of this "
                                        f"{fsize}-byte file", path=p.path,
                                        offset=p.desc_offset + (first_desc + i) * PAGE_DESC_SIZE)
                idx = np.flatnonzero(data)
                new = np.cumsum(sizes[idx]) - sizes[idx] + cursor
                # copy runs stored back to back in the input with one call each
                if idx.size:
                    brk = np.flatnonzero(offs[idx][1:] != offs[idx][:-1] + sizes[idx][:-1]) + 1
                    starts = np.concatenate(([0], brk))
                    ends = np.concatenate((brk, [idx.size]))
                    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
                        lo = int(offs[idx[a]])
                        size = int(offs[idx[b - 1]] + sizes[idx[b - 1]]) - lo
                        copier.copy(p, fd_in, lo, size, int(new[a]))
                    step = int(sizes[idx].sum())
                    cursor += step
                    data_bytes += step
                d["offset"][idx] = new
                d["offset"][is_zero] = zero_off
                out.pwrite(d.tobytes(), desc_off + k * PAGE_DESC_SIZE)
                k += n
                zeros += int(is_zero.sum())
                unfilled += int(empty.sum())
        finally:
            os.close(fd_in)

    erase = b"".join(e for e in (p.eraseinfo for p in ordered) if e)
    erase_area = (cursor, len(erase)) if erase else None
    if erase:
        out.pwrite(erase, cursor)
        cursor += len(erase)
    status = h.status | (codecs.DUMP_DH_COMPRESSED_INCOMPLETE if incomplete else 0)
    block0 = bytearray(first.source.read_at(0, bs))
    struct.pack_into(h.byteorder + "I", block0, _HEADER_STATUS, status)
    out.pwrite(bytes(block0), 0)
    out.pwrite(_sub_header_area(first, erase_area), bs)
    out.finish()
    return ReassembleResult(pages=k, zero_pages=zeros, unfilled=unfilled, data_bytes=data_bytes,
                            size=cursor, incomplete=incomplete)


#: Byte offset of ``status`` in ``disk_dump_header``.
_HEADER_STATUS: Final = 424
