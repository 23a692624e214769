"""Page compressors for the writer: a chunk of pages in, per-page sizes and flags plus the data out.

Each codec writes what makedumpfile writes for a page: zlib at level 1 (``Z_BEST_SPEED``), raw
LZO1X-1 (no header), a raw snappy block, one zstd frame at level 1; a page that does not shrink
is stored raw (flags 0, size = page size).

Backends, best first:

* the C libraries makedumpfile itself links (``libz``, ``liblzo2``, ``libsnappy``, ``libzstd``)
  called through :mod:`ctypes`: the page is compressed straight from the caller's buffer into
  the chunk's output buffer (no ``bytes`` copies; the caller may pass one to reuse), and ctypes
  drops the GIL for the whole of each call;
* the Python packages (python-lzo, python-snappy, zstandard) where a library is missing, and
  :mod:`zlib` from the standard library (which holds the GIL while it sets up each stream).

A :class:`PageCompressor` holds per-thread state (LZO work memory, a zstd context, the size
out-parameter): make one per thread with :func:`compressor_factory`.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import functools
import weakref
import zlib
from collections.abc import Callable
from typing import Final, NamedTuple, Protocol

import numpy as np

from . import codecs
from .errors import UnsupportedError

#: ``LZO1X_1_MEM_COMPRESS``: 16384 dictionary entries of one pointer each.
_LZO1X_1_MEM_COMPRESS: Final = 16384 * ctypes.sizeof(ctypes.c_void_p)
_ZSTD_LEVEL: Final = 1
_ZLIB_LEVEL: Final = 1


class CompressedChunk(NamedTuple):
    """Per page of a chunk: stored size and descriptor flags (0 for the zero pages, which the
    caller points at the shared zero page); ``data``: the stored bytes of the other pages, in
    order; ``buf``: the array ``data`` is a view of (the caller's ``out`` or a new one, which
    the caller may reuse once ``data`` is written), None when ``data`` is ``bytes``."""

    sizes: np.ndarray
    flags: np.ndarray
    data: bytes | memoryview
    buf: np.ndarray | None = None


class PageCompressor(Protocol):
    """Compresses the pages ``todo`` (indices, ascending) of ``(n_i, page_size)`` uint8 arrays
    taken as one sequence of pages (the runs of a chunk; not copied together)."""

    flag: int
    backend: str

    def compress(self, parts: list[np.ndarray], todo: np.ndarray,
                 out: np.ndarray | None = None) -> CompressedChunk:
        """Sizes/flags for every page (0 outside ``todo``) and the concatenated stored bytes;
        ``out``, if big enough, is the buffer the bytes are written into (the result's ``data``
        is then a view of it; backends that build ``bytes`` ignore it)."""


class _Pages:
    """Row ``i`` of the pages of several arrays taken as one sequence."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts = parts
        self.firsts = np.cumsum([0] + [len(p) for p in parts[:-1]]).tolist()

    def row(self, i: int) -> memoryview:
        k = bisect.bisect_right(self.firsts, i) - 1
        view: memoryview = self.parts[k][i - self.firsts[k]].data
        return view


# --------------------------------------------------------------------------------------------
# Pure Python backends: one ``bytes`` per page


class _PerPage:
    """Any ``bytes -> bytes`` page compressor."""

    def __init__(self, flag: int, backend: str, fn: Callable[[memoryview], bytes] | None) -> None:
        self.flag = flag
        self.backend = backend
        self.fn = fn

    def compress(self, parts: list[np.ndarray], todo: np.ndarray,
                 out: np.ndarray | None = None) -> CompressedChunk:
        n, ps = sum(len(p) for p in parts), parts[0].shape[1]
        sizes = np.zeros(n, dtype=np.uint32)
        flags = np.zeros(n, dtype=np.uint32)
        pages = _Pages(parts)
        if self.fn is None:                      # no compression: the pages as they are
            sizes[todo] = ps
            return CompressedChunk(sizes, flags, b"".join(pages.row(i) for i in todo.tolist()))
        fn = self.fn
        blobs: list[bytes | memoryview] = []
        for i in todo.tolist():
            page = pages.row(i)
            c = fn(page)
            if len(c) < ps:
                blobs.append(c)
                sizes[i] = len(c)
                flags[i] = self.flag
            else:
                blobs.append(page)
                sizes[i] = ps
        return CompressedChunk(sizes, flags, b"".join(blobs))


# --------------------------------------------------------------------------------------------
# ctypes backends: the C libraries, compressing from the input into one output buffer


class _Native:
    """Runs the codec's C call (GIL released) for every page, writing at a cursor in one output
    array; a page whose output is not smaller is copied raw over it. Subclasses implement
    :meth:`_pages`, the per-page loop, with nothing in it but the C call and list work."""

    flag: int
    backend: str

    def _bound(self, ps: int) -> int:
        raise NotImplementedError

    def _pages(self, srcs: list[int], dst0: int, bound: int, ps: int) -> list[int]:
        """Compress the pages at addresses ``srcs`` one after the other from ``dst0`` on (each
        given ``bound`` bytes of room); the stored size of each, pages that do not shrink
        copied raw (size ``ps``)."""
        raise NotImplementedError

    def compress(self, parts: list[np.ndarray], todo: np.ndarray,
                 out: np.ndarray | None = None) -> CompressedChunk:
        n, ps = sum(len(p) for p in parts), parts[0].shape[1]
        sizes = np.zeros(n, dtype=np.uint32)
        flags = np.zeros(n, dtype=np.uint32)
        if not todo.size:
            return CompressedChunk(sizes, flags, b"")
        parts = [p if p.flags.c_contiguous else np.ascontiguousarray(p) for p in parts]
        if len(parts) == 1:
            srcs = (todo * ps + parts[0].ctypes.data).tolist()
        else:         # address of every page: runs are contiguous inside, not between each other
            firsts = np.cumsum([0] + [len(p) for p in parts[:-1]])
            which = np.searchsorted(firsts, todo, side="right") - 1
            bases = np.array([p.ctypes.data for p in parts], dtype=np.int64)
            srcs = (bases[which] + (todo - firsts[which]) * ps).tolist()
        bound = self._bound(ps)
        # the cursor advances by at most ps a page; the last page may need the codec's bound
        need = (todo.size - 1) * ps + bound
        if out is None or out.size < need or not out.flags.c_contiguous:
            out = np.empty(need, dtype=np.uint8)
        done = np.array(self._pages(srcs, out.ctypes.data, bound, ps), dtype=np.uint32)
        sizes[todo] = done
        flags[todo] = np.where(done < ps, np.uint32(self.flag), np.uint32(0))
        return CompressedChunk(sizes, flags, out[:int(done.sum(dtype=np.int64))].data, out)


def _cdll(name: str) -> ctypes.CDLL | None:
    path = ctypes.util.find_library(name)
    if path is None:
        return None
    try:
        return ctypes.CDLL(path)
    except OSError:
        return None


@functools.cache
def _liblzo2() -> ctypes.CDLL | None:
    lib = _cdll("lzo2")
    if lib is None:
        return None
    try:
        init = lib.__lzo_init_v2
        version = lib.lzo_version
        fn = lib.lzo1x_1_compress
    except AttributeError:
        return None
    version.restype = ctypes.c_uint
    init.restype = ctypes.c_int
    init.argtypes = [ctypes.c_uint] + [ctypes.c_int] * 9
    # lzo_init(): the library checks the caller's type sizes (short, int, long, lzo_uint32_t,
    # lzo_uint, lzo_sizeof_dict_t, char *, lzo_voidp, lzo_callback_t = 6 pointers)
    p = ctypes.sizeof(ctypes.c_void_p)
    if init(version(), ctypes.sizeof(ctypes.c_short), ctypes.sizeof(ctypes.c_int),
            ctypes.sizeof(ctypes.c_long), 4, ctypes.sizeof(ctypes.c_size_t), p, p, p,
            6 * p) != 0:
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                   ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p]
    return lib


class _LzoNative(_Native):
    """``lzo1x_1_compress`` from liblzo2 (makedumpfile's call, so the same bytes)."""

    flag = codecs.DUMP_DH_COMPRESSED_LZO
    backend = "liblzo2 (ctypes)"

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._fn = lib.lzo1x_1_compress
        self._wrk = np.empty(_LZO1X_1_MEM_COMPRESS, dtype=np.uint8)
        self._wrk_ptr = self._wrk.ctypes.data
        self._len = ctypes.c_size_t()
        self._len_ref = ctypes.byref(self._len)

    def _bound(self, ps: int) -> int:
        return ps + ps // 16 + 64 + 3           # lzo1x_worst_compress()

    def _pages(self, srcs: list[int], dst0: int, bound: int, ps: int) -> list[int]:
        fn, length, ref, wrk, move = self._fn, self._len, self._len_ref, self._wrk_ptr, \
            ctypes.memmove
        got: list[int] = []
        cur = dst0
        for src in srcs:
            if fn(src, ps, cur, ref, wrk):
                raise UnsupportedError("lzo1x_1_compress failed")
            size = length.value
            if size >= ps:              # not smaller: the page as it is
                move(cur, src, ps)
                size = ps
            got.append(size)
            cur += size
        return got


@functools.cache
def _libsnappy() -> ctypes.CDLL | None:
    lib = _cdll("snappy")
    if lib is None:
        return None
    try:
        fn, bound = lib.snappy_compress, lib.snappy_max_compressed_length
    except AttributeError:
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                   ctypes.POINTER(ctypes.c_size_t)]
    bound.restype = ctypes.c_size_t
    bound.argtypes = [ctypes.c_size_t]
    return lib


class _SnappyNative(_Native):
    """``snappy_compress`` (snappy's C API, as makedumpfile): a raw snappy block."""

    flag = codecs.DUMP_DH_COMPRESSED_SNAPPY
    backend = "libsnappy (ctypes)"

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._fn = lib.snappy_compress
        self._max = lib.snappy_max_compressed_length
        self._len = ctypes.c_size_t()
        self._len_ref = ctypes.byref(self._len)

    def _bound(self, ps: int) -> int:
        return int(self._max(ps))

    def _pages(self, srcs: list[int], dst0: int, bound: int, ps: int) -> list[int]:
        fn, length, ref, move = self._fn, self._len, self._len_ref, ctypes.memmove
        got: list[int] = []
        cur = dst0
        for src in srcs:
            length.value = bound
            if fn(src, ps, cur, ref):
                raise UnsupportedError("snappy_compress failed")
            size = length.value
            if size >= ps:
                move(cur, src, ps)
                size = ps
            got.append(size)
            cur += size
        return got


@functools.cache
def _libzstd() -> ctypes.CDLL | None:
    lib = _cdll("zstd")
    if lib is None:
        return None
    try:
        create, free, comp = lib.ZSTD_createCCtx, lib.ZSTD_freeCCtx, lib.ZSTD_compress2
        bound, iserr, setp = lib.ZSTD_compressBound, lib.ZSTD_isError, lib.ZSTD_CCtx_setParameter
    except AttributeError:
        return None
    create.restype = ctypes.c_void_p
    create.argtypes = []
    free.restype = ctypes.c_size_t
    free.argtypes = [ctypes.c_void_p]
    comp.restype = ctypes.c_size_t
    comp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                     ctypes.c_size_t]
    setp.restype = ctypes.c_size_t
    setp.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    bound.restype = ctypes.c_size_t
    bound.argtypes = [ctypes.c_size_t]
    iserr.restype = ctypes.c_uint
    iserr.argtypes = [ctypes.c_size_t]
    return lib


#: ``ZSTD_c_compressionLevel``.
_ZSTD_C_COMPRESSIONLEVEL: Final = 100


class _ZstdNative(_Native):
    """One zstd frame a page at level 1 (makedumpfile: ``ZSTD_compressCCtx(..., 1)``), through
    ``ZSTD_compress2`` on a context whose level is set once (the same frame, ~8 % less time a
    page than passing the level each call); one context per thread."""

    flag = codecs.DUMP_DH_COMPRESSED_ZSTD
    backend = "libzstd (ctypes)"

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self._fn = lib.ZSTD_compress2
        self._iserr = lib.ZSTD_isError
        ctx = lib.ZSTD_createCCtx()
        if not ctx:
            raise UnsupportedError("ZSTD_createCCtx failed")
        self._ctx = ctx
        weakref.finalize(self, lib.ZSTD_freeCCtx, ctx)
        if self._iserr(lib.ZSTD_CCtx_setParameter(ctx, _ZSTD_C_COMPRESSIONLEVEL, _ZSTD_LEVEL)):
            raise UnsupportedError("ZSTD_CCtx_setParameter failed")

    def _bound(self, ps: int) -> int:
        return int(self._lib.ZSTD_compressBound(ps))

    def _pages(self, srcs: list[int], dst0: int, bound: int, ps: int) -> list[int]:
        fn, ctx, move = self._fn, self._ctx, ctypes.memmove
        got: list[int] = []
        cur = dst0
        for src in srcs:
            size = fn(ctx, cur, bound, src, ps)
            if size >= ps:              # not smaller, or an error code (huge): check, store raw
                if self._iserr(size):
                    raise UnsupportedError("ZSTD_compress2 failed")
                move(cur, src, ps)
                size = ps
            got.append(size)
            cur += size
        return got


@functools.cache
def _libz() -> ctypes.CDLL | None:
    lib = _cdll("z")
    if lib is None:
        return None
    try:
        fn, bound = lib.compress2, lib.compressBound
    except AttributeError:
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulong), ctypes.c_void_p,
                   ctypes.c_ulong, ctypes.c_int]
    bound.restype = ctypes.c_ulong
    bound.argtypes = [ctypes.c_ulong]
    return lib


class _ZlibNative(_Native):
    """``compress2(..., Z_BEST_SPEED)`` from libz: makedumpfile's call, so the same bytes as its
    pages (and as :func:`zlib.compress` at level 1, which builds the same stream). Unlike the
    standard module, which sets up the stream and its output buffer holding the GIL, the whole
    call runs without it."""

    flag = codecs.DUMP_DH_COMPRESSED_ZLIB
    backend = "libz (ctypes)"

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._fn = lib.compress2
        self._max = lib.compressBound
        self._len = ctypes.c_ulong()
        self._len_ref = ctypes.byref(self._len)

    def _bound(self, ps: int) -> int:
        return int(self._max(ps))

    def _pages(self, srcs: list[int], dst0: int, bound: int, ps: int) -> list[int]:
        fn, length, ref, move = self._fn, self._len, self._len_ref, ctypes.memmove
        got: list[int] = []
        cur = dst0
        for src in srcs:
            length.value = bound
            if fn(cur, ref, src, ps, _ZLIB_LEVEL):
                raise UnsupportedError("compress2 failed")
            size = length.value
            if size >= ps:
                move(cur, src, ps)
                size = ps
            got.append(size)
            cur += size
        return got


# --------------------------------------------------------------------------------------------
# Choosing


def compressor_factory(flag: int, *, native: bool = True) -> Callable[[], PageCompressor]:
    """A maker of per-thread compressors for ``flag`` (0: pages stored raw).

    ``native``: use the C library through ctypes where it loads (else, or with ``native=False``,
    the Python package; :class:`UnsupportedError` naming the pip package when that is missing).
    """
    if flag == 0:
        return lambda: _PerPage(0, "none", None)
    if flag == codecs.DUMP_DH_COMPRESSED_ZLIB:
        z_lib = _libz() if native else None
        if z_lib is not None:
            return lambda: _ZlibNative(z_lib)
        return lambda: _PerPage(flag, "zlib (stdlib)",
                                lambda b: zlib.compress(b, _ZLIB_LEVEL))
    codec = codecs.CODECS.get(flag)
    if codec is None:
        raise UnsupportedError(f"unknown compression flag {flag:#x}")
    if flag == codecs.DUMP_DH_COMPRESSED_LZO:
        lzo_lib = _liblzo2() if native else None
        if lzo_lib is not None:
            return lambda: _LzoNative(lzo_lib)
        lzo = codecs._import(codec)
        return lambda: _PerPage(flag, "python-lzo",     # it takes bytes only: one copy a page
                                lambda b: bytes(lzo.compress(bytes(b), 1, False)))
    if flag == codecs.DUMP_DH_COMPRESSED_SNAPPY:
        snappy_lib = _libsnappy() if native else None
        if snappy_lib is not None:
            return lambda: _SnappyNative(snappy_lib)
        snappy = codecs._import(codec)
        return lambda: _PerPage(flag, "python-snappy", lambda b: bytes(snappy.compress(bytes(b))))
    if flag == codecs.DUMP_DH_COMPRESSED_ZSTD:
        zstd_lib = _libzstd() if native else None
        if zstd_lib is not None:
            return lambda: _ZstdNative(zstd_lib)
        zstandard = codecs._import(codec)

        def make_zstd() -> PageCompressor:
            cctx = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)   # not thread-safe: one each
            return _PerPage(flag, "zstandard", lambda b: bytes(cctx.compress(b)))
        return make_zstd
    raise UnsupportedError(f"unknown compression flag {flag:#x}")


def backend_name(flag: int) -> str:
    """Which backend :func:`compressor_factory` picks for ``flag`` here."""
    return compressor_factory(flag)().backend
