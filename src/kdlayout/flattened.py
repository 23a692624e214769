"""Reader for makedumpfile's flattened format (``makedumpfile -F``, QEMU ``dump-guest-memory``).

A flattened file is a stream that can be written to a pipe: a 4096-byte ``makedumpfile_header``
(signature "makedumpfile", big-endian int64 type and version), then records, each a big-endian
``makedumpfile_data_header`` {int64 offset, int64 buf_size} followed by ``buf_size`` bytes that
belong at ``offset`` of the kdump-compressed image, and an end marker with offset = buf_size = -1.
Later records overwrite earlier ones where they overlap (writers rewrite headers).

:func:`index_flattened` reads the record headers only, in one pass that skips the data, and
resolves overlaps (last writer wins) into sorted, non-overlapping segments held in numpy arrays.
:class:`FlatSource` serves the virtual image from them as a :class:`~kdlayout.diskdump.ByteSource`,
so :func:`open_flattened` is a :class:`~kdlayout.diskdump.DiskDump` over it, and :func:`reassemble`
writes the image out like ``makedumpfile -R``.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from array import array
from dataclasses import dataclass
from typing import Final

import numpy as np

from .diskdump import DiskDump, FileSource
from .errors import CorruptError, UnsupportedError

MAKEDUMPFILE_SIGNATURE: Final = b"makedumpfile"
FLAT_HEADER_SIZE: Final = 4096
TYPE_FLAT_HEADER: Final = 1
END_FLAG_FLAT_HEADER: Final = -1
_DATA_HEADER: Final = struct.Struct(">qq")
#: No image offset or record end beyond this is sane (256 TiB).
MAX_IMAGE_SIZE: Final = 1 << 48
_COPY_CHUNK: Final = 1 << 20
#: Bytes read at a time while walking record headers.
_HEADER_WINDOW: Final = 1 << 16


@dataclass(frozen=True)
class FlatHeader:
    """``struct makedumpfile_header``."""

    signature: bytes
    type: int
    version: int


@dataclass(frozen=True)
class FlatIndex:
    """Where each byte of the virtual image lives in the flattened file.

    ``rec_*`` are the records in file order; ``seg_*`` are the resolved segments, sorted by image
    offset and non-overlapping: image bytes ``[seg_start[i], seg_end[i])`` are file bytes from
    ``seg_pos[i]``. Image bytes in no segment are zero (holes).
    """

    path: str
    file_size: int
    header: FlatHeader
    rec_offset: np.ndarray
    rec_size: np.ndarray
    rec_pos: np.ndarray
    seg_start: np.ndarray
    seg_end: np.ndarray
    seg_pos: np.ndarray
    image_size: int
    end_marker_pos: int

    @property
    def nr_records(self) -> int:
        """Number of data records in the file."""
        return int(self.rec_offset.size)


def parse_flat_header(buf: bytes | memoryview, path: str) -> FlatHeader:
    """Parse and check the 4096-byte flattened header at the start of ``buf``."""
    if len(buf) < FLAT_HEADER_SIZE:
        raise CorruptError(f"flattened header truncated: {len(buf)} of {FLAT_HEADER_SIZE} bytes",
                           path=path, offset=len(buf))
    sig, ftype, version = struct.unpack_from(">16sqq", buf, 0)
    if sig[:len(MAKEDUMPFILE_SIGNATURE) + 1] != MAKEDUMPFILE_SIGNATURE + b"\0":
        raise CorruptError(f"bad flattened signature {sig!r}", path=path, offset=0)
    if ftype != TYPE_FLAT_HEADER:
        raise UnsupportedError(f"flattened header type {ftype}, only {TYPE_FLAT_HEADER} is known",
                               path=path, offset=16)
    return FlatHeader(sig, ftype, version)


def _index(src: FileSource) -> FlatIndex:
    """One pass over the record headers of ``src`` (data skipped; headers read in windows)."""
    path, size = src.path, src.size
    header = parse_flat_header(src.read_at(0, FLAT_HEADER_SIZE), path)
    offs, sizes, poss = array("q"), array("q"), array("q")
    pos = FLAT_HEADER_SIZE
    unpack = _DATA_HEADER.unpack_from
    hsize = _DATA_HEADER.size
    win, win_at = b"", 0                     # a window of the file around the next header
    while True:
        if pos + hsize > size:
            raise CorruptError(f"flattened file ends without an end marker ({size - pos} bytes "
                               "after the last record)", path=path, offset=pos)
        if not win_at <= pos <= win_at + len(win) - hsize:
            win, win_at = src.read_at(pos, _HEADER_WINDOW), pos
            if len(win) < hsize:
                raise CorruptError("flattened file shrank while reading", path=path, offset=pos)
        off, bsize = unpack(win, pos - win_at)
        if off == END_FLAG_FLAT_HEADER and bsize == END_FLAG_FLAT_HEADER:
            break
        if off < 0 or bsize <= 0:
            raise CorruptError(f"bad flattened record: offset {off}, size {bsize}", path=path,
                               offset=pos)
        if off + bsize > MAX_IMAGE_SIZE:
            raise CorruptError(f"flattened record at image offset {off:#x}+{bsize:#x} is beyond "
                               f"any sane image size", path=path, offset=pos)
        if pos + hsize + bsize > size:
            raise CorruptError(f"flattened record of {bsize} bytes truncated: "
                               f"{size - pos - hsize} bytes left in the file", path=path,
                               offset=pos)
        offs.append(off)
        sizes.append(bsize)
        poss.append(pos + hsize)
        pos += hsize + bsize
    rec_offset = np.frombuffer(offs, dtype=np.int64) if offs else np.zeros(0, np.int64)
    rec_size = np.frombuffer(sizes, dtype=np.int64) if sizes else np.zeros(0, np.int64)
    rec_pos = np.frombuffer(poss, dtype=np.int64) if poss else np.zeros(0, np.int64)
    seg_start, seg_end, seg_pos = resolve_segments(rec_offset, rec_size, rec_pos)
    image_size = int(seg_end.max()) if seg_end.size else 0
    return FlatIndex(path, size, header, rec_offset, rec_size, rec_pos, seg_start, seg_end,
                     seg_pos, image_size, pos)


def resolve_segments(offset: np.ndarray, size: np.ndarray,
                     pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn records (in write order) into sorted, non-overlapping segments; last writer wins.

    Returns ``(start, end, file_pos)``. Records that overlap nothing pass through in numpy; only
    clusters of mutually overlapping records are painted, newest first, in Python.
    """
    order = np.argsort(offset, kind="stable")
    s, e, p = offset[order], offset[order] + size[order], pos[order]
    if s.size < 2:
        return s, e, p
    runmax = np.maximum.accumulate(e)
    overlaps = s[1:] < runmax[:-1]
    if not overlaps.any():
        return s, e, p
    # cluster boundaries: a record starts a new cluster unless it overlaps one before it
    new = np.concatenate([[True], ~overlaps])
    cluster_id = np.cumsum(new) - 1
    sizes = np.bincount(cluster_id)
    single = sizes[cluster_id] == 1
    out_s, out_e, out_p = [s[single]], [e[single]], [p[single]]
    starts_idx = np.flatnonzero(new)
    for c in np.flatnonzero(sizes > 1).tolist():
        lo = int(starts_idx[c])
        members = order[lo:lo + int(sizes[c])]
        cs, ce, cp = _paint(offset[members], offset[members] + size[members], pos[members],
                            members)
        out_s.append(cs)
        out_e.append(ce)
        out_p.append(cp)
    rs, re_, rp = np.concatenate(out_s), np.concatenate(out_e), np.concatenate(out_p)
    o = np.argsort(rs, kind="stable")
    return rs[o], re_[o], rp[o]


def _paint(s: np.ndarray, e: np.ndarray, p: np.ndarray,
           write_order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resolve one cluster of overlapping records: each elementary interval takes the file
    position of the last record (highest ``write_order``) covering it.

    Vectorised with a segment tree over the elementary intervals: every record puts its rank on
    the O(log n) canonical nodes of its interval range (numpy, one pass per tree level), then
    each leaf takes the maximum along its path to the root.
    """
    points = np.unique(np.concatenate([s, e]))
    nseg = points.size - 1
    j0 = np.searchsorted(points, s).astype(np.int64)
    j1 = np.searchsorted(points, e).astype(np.int64)
    rank = np.empty(s.size, dtype=np.int64)
    rank[np.argsort(write_order, kind="stable")] = np.arange(s.size, dtype=np.int64)
    leaves = 1 << max(0, int(nseg - 1).bit_length())
    tree = np.full(2 * leaves, -1, dtype=np.int64)
    lo, hi, who = j0 + leaves, j1 + leaves, rank
    while lo.size:
        take = (lo & 1).astype(bool) & (lo < hi)
        np.maximum.at(tree, lo[take], who[take])
        lo = lo + take
        take = (hi & 1).astype(bool) & (lo < hi)
        hi = hi - take
        np.maximum.at(tree, hi[take], who[take])
        lo, hi = lo >> 1, hi >> 1
        live = lo < hi
        lo, hi, who = lo[live], hi[live], who[live]
    level = 1
    while level < leaves:                  # push maxima down, one tree level at a time
        nodes = np.arange(level, 2 * level)
        for child in (2 * nodes, 2 * nodes + 1):
            tree[child] = np.maximum(tree[child], tree[nodes])
        level *= 2
    owner_rank = tree[leaves:leaves + nseg]
    keep = owner_rank >= 0
    by_rank = np.argsort(rank)             # record index of each rank
    own = by_rank[owner_rank[keep]]
    seg_s, seg_e = points[:-1][keep], points[1:][keep]
    seg_p = p[own] + (seg_s - s[own])
    return seg_s.astype(np.int64), seg_e.astype(np.int64), seg_p.astype(np.int64)


def index_flattened(path: str | os.PathLike[str]) -> FlatIndex:
    """Index a flattened file: one pass over its record headers (data is skipped)."""
    with FlatSource(path) as src:
        return src.index


class FlatSource:
    """The virtual kdump-compressed image of a flattened file, as a ``ByteSource``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._file = FileSource(path)
        try:
            self.index = _index(self._file)
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> FlatSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> str:
        """The flattened file (named in error messages)."""
        return self._file.path

    @property
    def size(self) -> int:
        """Size of the virtual image (end of the furthest record)."""
        return self.index.image_size

    def read_at(self, offset: int, n: int) -> bytes:
        """Image bytes ``[offset, offset + n)`` (holes read as zeros; short at the image end)."""
        ix = self.index
        end = min(offset + n, ix.image_size)
        if offset < 0 or n <= 0 or offset >= end:
            return b""
        i = int(np.searchsorted(ix.seg_end, offset, side="right"))
        f = self._file
        if i < ix.seg_start.size:
            s0 = int(ix.seg_start[i])
            if s0 <= offset and end <= int(ix.seg_end[i]):       # one segment: one read
                return f.read_at(int(ix.seg_pos[i]) + (offset - s0), end - offset)
        out = bytearray(end - offset)
        while i < ix.seg_start.size:
            s, e = int(ix.seg_start[i]), int(ix.seg_end[i])
            if s >= end:
                break
            lo, hi = max(s, offset), min(e, end)
            if lo < hi:
                chunk = f.read_at(int(ix.seg_pos[i]) + (lo - s), hi - lo)
                out[lo - offset:lo - offset + len(chunk)] = chunk
            i += 1
        return bytes(out)

    def locate(self, offset: int) -> int | None:
        """File offset of image byte ``offset`` (None for a hole)."""
        ix = self.index
        i = int(np.searchsorted(ix.seg_end, offset, side="right"))
        if i < ix.seg_start.size and ix.seg_start[i] <= offset:
            return int(ix.seg_pos[i]) + offset - int(ix.seg_start[i])
        return None

    def close(self) -> None:
        """Release the file."""
        self._file.close()


def open_flattened(path: str | os.PathLike[str]) -> DiskDump:
    """Open a flattened file as the kdump-compressed dump it encodes (``info.format`` is
    ``"flattened"``)."""
    src = FlatSource(path)
    try:
        dump = DiskDump(src, format="flattened")
    except BaseException:
        src.close()
        raise
    dump.info.extra.update(flattened_records=src.index.nr_records,
                           flattened_version=src.index.header.version)
    return dump


def reassemble(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> int:
    """Write the kdump-compressed image of flattened file ``src`` to ``dst`` (like
    ``makedumpfile -R``); returns the image size.

    Written to a temporary file next to ``dst`` and renamed over it at the end; holes stay sparse.
    Refuses ``dst`` naming the same file as ``src``.
    """
    src_path, dst_path = os.fspath(src), os.fspath(dst)
    if os.path.realpath(src_path) == os.path.realpath(dst_path) or (
            os.path.exists(dst_path) and os.path.samefile(src_path, dst_path)):
        raise ValueError(f"reassemble: destination {dst_path!r} is the source file")
    with FlatSource(src_path) as fs, open(src_path, "rb") as fin:
        ix = fs.index
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(dst_path) + ".",
                                   suffix=".tmp", dir=os.path.dirname(os.path.abspath(dst_path)))
        try:
            with os.fdopen(fd, "wb") as fout:
                fout.truncate(ix.image_size)
                for s, e, p in zip(ix.seg_start.tolist(), ix.seg_end.tolist(),
                                   ix.seg_pos.tolist(), strict=True):
                    fin.seek(p)
                    fout.seek(s)
                    left = e - s
                    while left > 0:
                        chunk = fin.read(min(left, _COPY_CHUNK))
                        if not chunk:
                            raise CorruptError("flattened file shrank while reading",
                                               path=src_path, offset=p)
                        fout.write(chunk)
                        left -= len(chunk)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dst_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return ix.image_size
