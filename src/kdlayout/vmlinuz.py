"""Kernel images: a ``vmlinuz`` bzImage down to its embedded vmlinux ELF, and ELF sections.

The format facts (Documentation/arch/x86/boot.rst, "THE REAL-MODE KERNEL HEADER"):

* the setup header sits at 0x1f1: ``setup_sects`` (u8 at 0x1f1; 0 means 4), ``boot_flag`` 0xAA55
  (u16 at 0x1fe), ``header`` "HdrS" (at 0x202), ``version`` (u16 at 0x206);
* from boot protocol 2.08 on, ``payload_offset`` (u32 at 0x248) and ``payload_length`` (u32 at
  0x24c) locate the compressed kernel, relative to the start of the protected-mode code, which
  begins at ``(setup_sects + 1) * 512`` in the file;
* the payload is vmlinux (stripped, but keeping the allocated ``.BTF`` section) compressed with one
  of gzip, bzip2, lzma, xz, lzo, lz4 (legacy frame) or zstd, followed by the uncompressed size as a
  little-endian u32 (x86 also appends relocation data after the ELF, inside the compressed data).

All functions parse from bytes; there is no I/O here. Output sizes are bounded (:data:`MAX_VMLINUX`)
so a lying or hostile image cannot exhaust memory.
"""

from __future__ import annotations

import bz2
import io
import lzma
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .errors import CorruptError, KdlayoutError, MissingDataError, UnsupportedError

MAX_VMLINUX: Final = 1 << 30  # decompressed vmlinux larger than 1 GiB is refused
_MAX_SCAN_TRIES: Final = 64

SETUP_SECTS_OFF: Final = 0x1F1
BOOT_FLAG_OFF: Final = 0x1FE
HEADER_OFF: Final = 0x202
VERSION_OFF: Final = 0x206
PAYLOAD_OFFSET_OFF: Final = 0x248
PAYLOAD_LENGTH_OFF: Final = 0x24C
BOOT_FLAG: Final = 0xAA55
HDRS: Final = b"HdrS"

# Compression magics, as the kernel's build writes them (scripts/Makefile.lib cmd_*).
COMPRESSION_MAGICS: Final[dict[str, bytes]] = {
    "gzip": b"\x1f\x8b\x08",
    "xz": b"\xfd7zXZ\x00",
    "lzma": b"\x5d\x00\x00",
    "bzip2": b"BZh",
    "lzo": b"\x89LZO",
    "lz4": b"\x02\x21\x4c\x18",  # LZ4 legacy frame
    "zstd": b"\x28\xb5\x2f\xfd",
}
LZ4_LEGACY_MAGIC: Final = 0x184C2102
LZ4_LEGACY_BLOCK: Final = 8 << 20


@dataclass(frozen=True, slots=True)
class SetupHeader:
    """The parts of the x86 boot setup header this module uses."""

    setup_sects: int
    version: int  # boot protocol, e.g. 0x20f
    payload_offset: int  # relative to the protected-mode code
    payload_length: int

    @property
    def pm_start(self) -> int:
        """File offset of the protected-mode code."""
        return ((self.setup_sects or 4) + 1) * 512

    @property
    def payload_start(self) -> int:
        """File offset of the compressed payload."""
        return self.pm_start + self.payload_offset


def parse_setup_header(data: bytes | bytearray | memoryview, *, source: str) -> SetupHeader:
    """Parse the x86 setup header of a bzImage; validate the payload lies inside ``data``.

    Raises :class:`CorruptError` if it is not a bzImage or the payload bounds lie, and
    :class:`UnsupportedError` for boot protocols before 2.08 (no payload fields).
    """
    mv = memoryview(data).cast("B")
    n = len(mv)
    if n < PAYLOAD_LENGTH_OFF + 4:
        raise CorruptError(f"too short for an x86 boot setup header ({n} bytes)", path=source,
                           offset=n)
    if bytes(mv[HEADER_OFF:HEADER_OFF + 4]) != HDRS:
        raise CorruptError("no x86 boot setup header ('HdrS' missing)", path=source,
                           offset=HEADER_OFF)
    boot_flag = struct.unpack_from("<H", mv, BOOT_FLAG_OFF)[0]
    if boot_flag != BOOT_FLAG:
        raise CorruptError(f"bad boot_flag {boot_flag:#06x}", path=source, offset=BOOT_FLAG_OFF)
    version = struct.unpack_from("<H", mv, VERSION_OFF)[0]
    if version < 0x208:
        raise UnsupportedError(f"boot protocol {version >> 8}.{version & 0xFF:02d} has no "
                               f"payload_offset (needs 2.08)", path=source, offset=VERSION_OFF)
    hdr = SetupHeader(mv[SETUP_SECTS_OFF], version,
                      *struct.unpack_from("<II", mv, PAYLOAD_OFFSET_OFF))
    if hdr.payload_length == 0 or hdr.payload_start + hdr.payload_length > n:
        raise CorruptError(f"payload [{hdr.payload_start:#x}, +{hdr.payload_length:#x}) lies "
                           f"outside the {n:#x}-byte image", path=source,
                           offset=PAYLOAD_OFFSET_OFF)
    return hdr


def detect_compression(data: bytes | bytearray | memoryview) -> str | None:
    """Name of the compression whose magic ``data`` starts with (see COMPRESSION_MAGICS)."""
    head = bytes(memoryview(data).cast("B")[:8])
    for name, magic in COMPRESSION_MAGICS.items():
        if head.startswith(magic):
            return name
    return None


def _too_big(source: str, offset: int, limit: int) -> CorruptError:
    return CorruptError(f"decompressed data exceeds {limit:#x} bytes", path=source, offset=offset)


def _gzip(data: memoryview, limit: int, source: str, offset: int) -> bytes:
    d = zlib.decompressobj(wbits=31)
    out = d.decompress(data, limit + 1)
    if len(out) > limit:
        raise _too_big(source, offset, limit)
    if not d.eof:
        raise CorruptError("gzip stream truncated", path=source, offset=offset)
    return out


def _xz(data: memoryview, limit: int, source: str, offset: int) -> bytes:
    return _lzma(data, limit, source, offset, lzma.FORMAT_XZ)


def _lzma_alone(data: memoryview, limit: int, source: str, offset: int) -> bytes:
    # The .lzma header: properties byte (lc/lp/pb, < 225), dictionary size, uncompressed size
    # (-1 = unknown, end marker). 5d 00 00 is common in any binary: check the header is sane
    # before decoding, so a scan does not decode garbage.
    if len(data) < 13:
        raise CorruptError("lzma header truncated", path=source, offset=offset)
    props, dict_size, size = struct.unpack_from("<BIQ", data, 0)
    if props >= 225 or not 4096 <= dict_size <= 1 << 30 or (size != (1 << 64) - 1
                                                           and size > limit):
        raise CorruptError(f"implausible lzma header (props {props:#x}, dictionary {dict_size:#x},"
                           f" size {size:#x})", path=source, offset=offset)
    return _lzma(data, limit, source, offset, lzma.FORMAT_ALONE)


def _lzma(data: memoryview, limit: int, source: str, offset: int, fmt: int) -> bytes:
    d = lzma.LZMADecompressor(format=fmt)
    out = d.decompress(data, limit + 1)
    if len(out) > limit:
        raise _too_big(source, offset, limit)
    if not d.eof:
        # The kernel's .lzma payloads are written with an end marker, so they reach eof.
        raise CorruptError(f"{'xz' if fmt == lzma.FORMAT_XZ else 'lzma'} stream truncated",
                           path=source, offset=offset)
    return out


def _bzip2(data: memoryview, limit: int, source: str, offset: int) -> bytes:
    d = bz2.BZ2Decompressor()
    out = d.decompress(data, limit + 1)
    if len(out) > limit:
        raise _too_big(source, offset, limit)
    if not d.eof:
        raise CorruptError("bzip2 stream truncated", path=source, offset=offset)
    return out


def _zstd(data: memoryview, limit: int, source: str, offset: int) -> bytes:
    try:
        import zstandard
    except ImportError:
        raise UnsupportedError("zstd-compressed kernel needs the 'zstandard' package",
                               path=source, offset=offset) from None
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as r:
        out: bytes = r.read(limit + 1)
    if len(out) > limit:
        raise _too_big(source, offset, limit)
    return out


def _lz4_legacy(data: memoryview, limit: int, source: str, offset: int) -> bytes:
    """The LZ4 legacy frame: magic, then (u32 LE compressed size, block) pairs, each block
    decompressing to at most 8 MiB; the kernel's appended size (4 bytes) ends it."""
    try:
        import lz4.block  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        raise UnsupportedError("lz4-compressed kernel needs the 'lz4' package", path=source,
                               offset=offset) from None
    n = len(data)
    pos = 4
    parts: list[bytes] = []
    total = 0
    while pos + 4 <= n:
        size = struct.unpack_from("<I", data, pos)[0]
        if size == LZ4_LEGACY_MAGIC:  # concatenated frames
            pos += 4
            continue
        if pos + 4 + size > n:
            if parts:
                break  # the trailing size_append word, or garbage after the last block
            raise CorruptError(f"lz4 block of {size:#x} bytes runs past the payload",
                               path=source, offset=offset + pos)
        if size == 0:
            break
        try:
            block = lz4.block.decompress(bytes(data[pos + 4:pos + 4 + size]),
                                         uncompressed_size=LZ4_LEGACY_BLOCK)
        except lz4.block.LZ4BlockError:
            if parts:
                break
            raise CorruptError("bad lz4 block", path=source, offset=offset + pos) from None
        total += len(block)
        if total > limit:
            raise _too_big(source, offset, limit)
        parts.append(block)
        pos += 4 + size
    if not parts:
        raise CorruptError("empty lz4 stream", path=source, offset=offset)
    return b"".join(parts)


def _lzo(data: memoryview, limit: int, source: str, offset: int) -> bytes:
    raise UnsupportedError("LZO-compressed kernel (lzop format) is not supported: no Python codec "
                           "for the lzop container", path=source, offset=offset)


_DECOMPRESSORS: Final[dict[str, Callable[[memoryview, int, str, int], bytes]]] = {
    "gzip": _gzip,
    "xz": _xz,
    "lzma": _lzma_alone,
    "bzip2": _bzip2,
    "zstd": _zstd,
    "lz4": _lz4_legacy,
    "lzo": _lzo,
}


def decompress(data: bytes | bytearray | memoryview, *, source: str, offset: int = 0,
               limit: int = MAX_VMLINUX) -> bytes:
    """Decompress a kernel payload whose format is detected from its magic.

    Output is bounded by ``limit``. Raises :class:`CorruptError` for a damaged stream,
    :class:`UnsupportedError` for an unknown or unsupported compression.
    """
    mv = memoryview(data).cast("B")
    kind = detect_compression(mv)
    if kind is None:
        raise UnsupportedError(f"unknown compression (magic {bytes(mv[:4]).hex()})", path=source,
                               offset=offset)
    try:
        return _DECOMPRESSORS[kind](mv, limit, source, offset)
    except KdlayoutError:
        raise
    except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error, MemoryError) as e:
        raise CorruptError(f"{kind} payload does not decompress: {e}", path=source,
                           offset=offset) from None
    except Exception as e:  # zstandard.ZstdError and friends have no common public base
        raise CorruptError(f"{kind} payload does not decompress: {type(e).__name__}: {e}",
                           path=source, offset=offset) from None


def is_bzimage(data: bytes | bytearray | memoryview) -> bool:
    """True if ``data`` carries an x86 boot setup header."""
    mv = memoryview(data).cast("B")
    return len(mv) >= HEADER_OFF + 4 and bytes(mv[HEADER_OFF:HEADER_OFF + 4]) == HDRS


def extract_vmlinux(data: bytes | bytearray | memoryview, *, source: str,
                    limit: int = MAX_VMLINUX) -> bytes:
    """The vmlinux ELF inside a kernel image.

    ``data`` may be an ELF already (returned as bytes), an x86 bzImage (payload located from the
    setup header), or a bare compressed vmlinux or other image holding one (found by scanning for
    compression magics, at most a bounded number of candidates). Raises :class:`CorruptError`,
    :class:`UnsupportedError` or :class:`MissingDataError` (no vmlinux found).
    """
    mv = memoryview(data).cast("B")
    if bytes(mv[:4]) == b"\x7fELF":
        return bytes(mv)
    if is_bzimage(mv):
        hdr = parse_setup_header(mv, source=source)
        start = hdr.payload_start
        out = decompress(mv[start:start + hdr.payload_length], source=source, offset=start,
                         limit=limit)
        if out[:4] != b"\x7fELF":
            raise CorruptError("bzImage payload does not decompress to an ELF", path=source,
                               offset=start)
        return out
    # Not a bzImage: scan for a compressed stream that yields an ELF.
    raw = bytes(mv)
    cands: list[tuple[int, str]] = []
    for name, magic in COMPRESSION_MAGICS.items():
        pos = raw.find(magic)
        tries = 0
        while pos >= 0 and tries < _MAX_SCAN_TRIES:
            cands.append((pos, name))
            pos = raw.find(magic, pos + 1)
            tries += 1
    cands.sort()
    last: KdlayoutError | None = None
    for pos, _name in cands[:_MAX_SCAN_TRIES]:
        try:
            out = decompress(mv[pos:], source=source, offset=pos, limit=limit)
        except KdlayoutError as e:
            last = e
            continue
        if out[:4] == b"\x7fELF":
            return out
    why = f" (last: {last.message})" if last is not None else ""
    raise MissingDataError(f"no compressed vmlinux ELF found in the image{why}", path=source,
                           offset=0)


# --------------------------------------------------------------------------------------------
# ELF sections (enough to find .BTF in vmlinux and in modules)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ElfSection:
    """One ELF section header (``Elf64_Shdr``/``Elf32_Shdr``) with its resolved name."""

    name: str
    sh_type: int
    sh_flags: int
    sh_addr: int
    sh_offset: int
    sh_size: int


SHT_NOBITS: Final = 8
SHN_XINDEX: Final = 0xFFFF


def elf_sections(data: bytes | bytearray | memoryview, *, source: str) -> list[ElfSection]:
    """Parse the section header table of an ELF32/ELF64, little or big endian.

    Every offset and count is validated against ``data``; raises :class:`CorruptError`.
    """
    mv = memoryview(data).cast("B")
    n = len(mv)
    if n < 0x34 or bytes(mv[:4]) != b"\x7fELF":
        raise CorruptError("not an ELF file", path=source, offset=0)
    ei_class, ei_data = mv[4], mv[5]
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        raise CorruptError(f"bad ELF class/data {ei_class}/{ei_data}", path=source, offset=4)
    e = "<" if ei_data == 1 else ">"
    if ei_class == 2:
        if n < 0x40:
            raise CorruptError("ELF64 header truncated", path=source, offset=n)
        shoff = struct.unpack_from(e + "Q", mv, 0x28)[0]
        shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", mv, 0x3A)
        shdr = struct.Struct(e + "IIQQQQIIQQ")
    else:
        shoff = struct.unpack_from(e + "I", mv, 0x20)[0]
        shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", mv, 0x2E)
        shdr = struct.Struct(e + "IIIIIIIIII")
    if shoff == 0:
        raise MissingDataError("ELF has no section header table", path=source, offset=0x20)
    if shentsize < shdr.size:
        raise CorruptError(f"ELF e_shentsize {shentsize} too small", path=source, offset=0x2E)
    if shoff > n - shdr.size:
        raise CorruptError(f"ELF section headers at {shoff:#x} past the end", path=source,
                           offset=0x20)
    first = shdr.unpack_from(mv, shoff)
    if shnum == 0:  # extended numbering: the count is in section 0's sh_size
        shnum = first[5]
    if shstrndx == SHN_XINDEX:
        shstrndx = first[6]
    if shnum > (n - shoff) // shentsize:
        raise CorruptError(f"ELF e_shnum {shnum} runs past the end of the file", path=source,
                           offset=shoff)
    raw = [shdr.unpack_from(mv, shoff + i * shentsize) for i in range(shnum)]
    for i, h in enumerate(raw):
        if h[1] != SHT_NOBITS and (h[4] > n or h[5] > n - h[4]):
            raise CorruptError(f"ELF section {i} [{h[4]:#x}, +{h[5]:#x}) past the end of the file",
                               path=source, offset=shoff + i * shentsize)
    if not 0 <= shstrndx < shnum:
        raise CorruptError(f"ELF e_shstrndx {shstrndx} out of range", path=source, offset=0x3E)
    st = raw[shstrndx]
    strtab = bytes(mv[st[4]:st[4] + st[5]])
    out = []
    for i, h in enumerate(raw):
        if h[0] >= max(len(strtab), 1) and h[0]:
            raise CorruptError(f"ELF section {i} name offset {h[0]:#x} outside .shstrtab",
                               path=source, offset=shoff + i * shentsize)
        end = strtab.find(b"\0", h[0])
        name = strtab[h[0]:end if end >= 0 else len(strtab)].decode("ascii", "replace")
        out.append(ElfSection(name, h[1], h[2], h[3], h[4], h[5]))
    return out


def elf_section(data: bytes | bytearray | memoryview, name: str, *, source: str
                ) -> tuple[int, memoryview]:
    """(file offset, contents) of the ELF section ``name``; :class:`MissingDataError` if absent."""
    for sec in elf_sections(data, source=source):
        if sec.name == name:
            if sec.sh_type == SHT_NOBITS:
                raise MissingDataError(f"ELF section {name} has no data (NOBITS)", path=source,
                                       offset=sec.sh_offset)
            mv = memoryview(data).cast("B")
            return sec.sh_offset, mv[sec.sh_offset:sec.sh_offset + sec.sh_size]
    raise MissingDataError(f"ELF has no {name} section", path=source, offset=0)
