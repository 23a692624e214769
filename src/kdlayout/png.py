"""A minimal PNG writer (palette images, zlib from the standard library; no PIL).

Enough for ``kdlayout scan --png``: an 8-bit indexed image whose palette is a list of RGB
triples. Follows the PNG specification (ISO/IEC 15948): signature, IHDR, PLTE, IDAT, IEND, each
chunk with its CRC-32; every scanline starts with filter type 0.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = ["encode_indexed", "write_indexed"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def encode_indexed(pixels: np.ndarray, palette: Sequence[tuple[int, int, int]]) -> bytes:
    """PNG bytes of a 2-D ``uint8`` array of palette indices (rows top to bottom)."""
    if pixels.ndim != 2 or pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError("pixels must be a non-empty 2-D array")
    if not 1 <= len(palette) <= 256:
        raise ValueError("a PNG palette has 1 to 256 entries")
    px = np.ascontiguousarray(pixels, dtype=np.uint8)
    if int(px.max()) >= len(palette):
        raise ValueError("pixel index beyond the palette")
    h, w = px.shape
    raw = np.zeros((h, w + 1), dtype=np.uint8)   # filter byte 0 ("None") per scanline
    raw[:, 1:] = px
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0)
    plte = b"".join(bytes((r & 255, g & 255, b & 255)) for r, g, b in palette)
    return (_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"PLTE", plte)
            + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + _chunk(b"IEND", b""))


def write_indexed(path: str, pixels: np.ndarray,
                  palette: Sequence[tuple[int, int, int]]) -> None:
    """Write :func:`encode_indexed` output to ``path``."""
    with open(path, "wb") as f:
        f.write(encode_indexed(pixels, palette))
