"""Page decompressors for kdump-compressed (diskdump) files.

A page descriptor's ``flags`` names the method that compressed its page, with the same bit values as
the header's ``status`` word: zlib, LZO (raw LZO1X), snappy (raw snappy block) and zstd (one zstd
frame). zlib is in the standard library; the others come from optional packages, imported on first
use, and a missing one is an :class:`~kdlayout.errors.UnsupportedError` naming the pip package.

Every decompressor is bounded: it never produces more than the expected page size, and a page that
does not decompress to exactly that size is a :class:`~kdlayout.errors.CorruptError`.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from types import ModuleType
from typing import Any, Final, NamedTuple

from .errors import CorruptError, UnsupportedError

DUMP_DH_COMPRESSED_ZLIB: Final = 0x1
DUMP_DH_COMPRESSED_LZO: Final = 0x2
DUMP_DH_COMPRESSED_SNAPPY: Final = 0x4
DUMP_DH_COMPRESSED_INCOMPLETE: Final = 0x8
DUMP_DH_EXCLUDED_VMEMMAP: Final = 0x10
DUMP_DH_COMPRESSED_ZSTD: Final = 0x20

#: Descriptor / status bits that name a compression method.
COMPRESSION_MASK: Final = (DUMP_DH_COMPRESSED_ZLIB | DUMP_DH_COMPRESSED_LZO
                           | DUMP_DH_COMPRESSED_SNAPPY | DUMP_DH_COMPRESSED_ZSTD)


class Codec(NamedTuple):
    """One page compression method."""

    flag: int
    name: str
    module: str | None        # Python module to import, None for the standard library
    pip_package: str | None   # what to ``pip install`` when the module is missing


CODECS: Final[dict[int, Codec]] = {
    DUMP_DH_COMPRESSED_ZLIB: Codec(DUMP_DH_COMPRESSED_ZLIB, "zlib", None, None),
    DUMP_DH_COMPRESSED_LZO: Codec(DUMP_DH_COMPRESSED_LZO, "lzo", "lzo", "python-lzo"),
    DUMP_DH_COMPRESSED_SNAPPY: Codec(DUMP_DH_COMPRESSED_SNAPPY, "snappy", "snappy",
                                     "python-snappy"),
    DUMP_DH_COMPRESSED_ZSTD: Codec(DUMP_DH_COMPRESSED_ZSTD, "zstd", "zstandard", "zstandard"),
}

_modules: dict[str, ModuleType] = {}


def codec_for_flags(flags: int) -> Codec | None:
    """The codec a descriptor's ``flags`` names; ``None`` for a page stored raw.

    Raises :class:`CorruptError` if more than one method bit is set and :class:`UnsupportedError`
    for bits outside the known methods (callers add the path and offset).
    """
    method = flags & COMPRESSION_MASK
    unknown = flags & ~COMPRESSION_MASK
    if unknown:
        raise UnsupportedError(f"page descriptor flags {flags:#x} name an unknown compression")
    if method == 0:
        return None
    if method & (method - 1):
        raise CorruptError(f"page descriptor flags {flags:#x} name more than one compression")
    return CODECS[method]


def _import(codec: Codec) -> ModuleType:
    assert codec.module is not None
    mod = _modules.get(codec.module)
    if mod is None:
        try:
            mod = importlib.import_module(codec.module)
        except ImportError as exc:
            raise UnsupportedError(
                f"pages are {codec.name}-compressed but the Python module {codec.module!r} is "
                f"missing: pip install {codec.pip_package}") from exc
        _modules[codec.module] = mod
    return mod


def require(flags: int) -> None:
    """Raise :class:`UnsupportedError` now if the codec ``flags`` names cannot be loaded."""
    codec = codec_for_flags(flags)
    if codec is not None and codec.module is not None:
        _import(codec)


def _zlib(data: bytes, out_len: int) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, out_len)
        if not d.eof:
            # Either the end-of-stream marker is still pending, or there is more than a page.
            if d.decompress(d.unconsumed_tail, 1):
                raise CorruptError(f"zlib data decompresses to more than {out_len} bytes")
            if not d.eof:
                raise CorruptError(f"zlib data truncated after {len(out)} bytes")
    except zlib.error as exc:
        raise CorruptError(f"bad zlib data: {exc}") from None
    return out


def _lzo(data: bytes, out_len: int) -> bytes:
    lzo = _import(CODECS[DUMP_DH_COMPRESSED_LZO])
    try:
        out: bytes = lzo.decompress(data, False, out_len)
    except Exception as exc:  # python-lzo raises lzo.error (and ValueError-likes)
        raise CorruptError(f"bad lzo data: {exc}") from None
    return out


def _varint(data: bytes) -> int:
    """The little-endian base-128 length that starts a raw snappy block (-1 if malformed)."""
    value = 0
    for i, byte in enumerate(data[:5]):
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value
    return -1


def _snappy(data: bytes, out_len: int) -> bytes:
    snappy = _import(CODECS[DUMP_DH_COMPRESSED_SNAPPY])
    declared = _varint(data)
    if declared != out_len:
        # Checked before decompressing so a lying length cannot allocate unbounded memory.
        raise CorruptError(f"snappy data declares {declared} bytes, expected {out_len}")
    try:
        out: bytes = snappy.uncompress(data)
    except Exception as exc:  # snappy.UncompressError and friends
        raise CorruptError(f"bad snappy data: {exc}") from None
    return out


def _zstd(data: bytes, out_len: int) -> bytes:
    zstandard = _import(CODECS[DUMP_DH_COMPRESSED_ZSTD])
    try:
        params: Any = zstandard.get_frame_parameters(data)
        if params.content_size not in (out_len, zstandard.CONTENTSIZE_UNKNOWN):
            raise CorruptError(
                f"zstd frame declares {params.content_size} bytes, expected {out_len}")
        out: bytes = zstandard.ZstdDecompressor().decompress(data, max_output_size=out_len)
    except zstandard.ZstdError as exc:
        raise CorruptError(f"bad zstd data: {exc}") from None
    return out


_DECOMPRESS: Final[dict[int, Callable[[bytes, int], bytes]]] = {
    DUMP_DH_COMPRESSED_ZLIB: _zlib,
    DUMP_DH_COMPRESSED_LZO: _lzo,
    DUMP_DH_COMPRESSED_SNAPPY: _snappy,
    DUMP_DH_COMPRESSED_ZSTD: _zstd,
}


def decompress(flags: int, data: bytes, out_len: int) -> bytes:
    """Decompress one page stored with descriptor ``flags`` into exactly ``out_len`` bytes.

    ``flags`` with no method bit means the page is stored raw: ``data`` must then be ``out_len``
    bytes long. Raises :class:`CorruptError` for data that does not decode to exactly ``out_len``
    bytes and :class:`UnsupportedError` for an unknown method or a missing codec package.
    """
    codec = codec_for_flags(flags)
    if codec is None:
        if len(data) != out_len:
            raise CorruptError(f"raw page is {len(data)} bytes, expected {out_len}")
        return bytes(data)
    out = _DECOMPRESS[codec.flag](bytes(data), out_len)
    if len(out) != out_len:
        raise CorruptError(f"{codec.name} page decompressed to {len(out)} bytes, expected {out_len}")
    return out
