"""A small writer of *synthetic* kdump-compressed and flattened images, for unit tests only.

It follows the on-disk layout described in makedumpfile's diskdump_mod.h / makedumpfile.h (64-bit,
little-endian) so parser and error-path tests can build exactly the malformed input they need.
Nothing here is used as ground truth for real dumps.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

BLOCK = 4096
DESC = struct.Struct("<qIIQ")
FLAG_ZLIB, FLAG_LZO, FLAG_SNAPPY, FLAG_INCOMPLETE, FLAG_ZSTD = 0x1, 0x2, 0x4, 0x8, 0x20

HEADER_FIELD = {  # byte offsets inside disk_dump_header
    "header_version": 8, "utsname": 12, "timestamp": 408, "status": 424, "block_size": 428,
    "sub_hdr_size": 432, "bitmap_blocks": 436, "max_mapnr": 440, "nr_cpus": 460,
}
SUB_FIELD = {  # byte offsets inside kdump_sub_header
    "phys_base": 0, "dump_level": 8, "split": 12, "offset_vmcoreinfo": 32,
    "size_vmcoreinfo": 40, "offset_note": 48, "size_note": 56, "max_mapnr_64": 96,
}


def compress(method: int, page: bytes) -> bytes:
    """Compress one page like makedumpfile would for ``method``."""
    if method == FLAG_ZLIB:
        return zlib.compress(page)
    if method == FLAG_LZO:
        import lzo
        out: bytes = lzo.compress(page, 1, False)
        return out
    if method == FLAG_SNAPPY:
        import snappy
        out = snappy.compress(page)
        return out
    if method == FLAG_ZSTD:
        import zstandard
        out = zstandard.ZstdCompressor().compress(page)
        return out
    raise ValueError(method)


def elf_note(name: bytes, ntype: int, desc: bytes) -> bytes:
    """One ELF note (4-byte aligned name and descriptor)."""
    n = name + b"\0"
    pad = lambda b: b + bytes(-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(n), len(desc), ntype) + pad(n) + pad(desc)


@dataclass
class Image:
    """A built image and where its parts landed."""

    data: bytearray
    desc_offset: int
    data_offset: int
    bitmap_offset: int
    dumped: list[int]
    pages: dict[int, bytes]
    zero_offset: int | None
    vmcoreinfo: bytes | None = None
    desc_of: dict[int, int] = field(default_factory=dict)   # pfn -> descriptor file offset


def build(pages: dict[int, bytes], *, max_mapnr: int = 64, method: int = FLAG_ZLIB,
          header_version: int = 6, release: str = "6.1.0-synth", nr_cpus: int = 2,
          vmcoreinfo: bytes | None = b"OSRELEASE=6.1.0-synth\nPAGESIZE=4096\n",
          in_memory: Iterable[int] | None = None, dump_level: int = 31,
          incomplete: bool = False, raw_pfns: Iterable[int] = ()) -> Image:
    """Build a kdump-compressed image holding ``pages`` (pfn -> 4096 bytes).

    All-zero pages share one zero page written right after the descriptors. Pages in ``raw_pfns``
    are stored uncompressed (flags 0).
    """
    raw_set = set(raw_pfns)
    dumped = sorted(pages)
    vmci = vmcoreinfo or b""
    notes = elf_note(b"CORE", 1, bytes(336)) * nr_cpus
    vmci_note_off = len(notes)
    if vmcoreinfo is not None:
        notes += elf_note(b"VMCOREINFO", 0, vmci)
    sub_size = 104 + len(notes)
    sub_hdr_size = -(-sub_size // BLOCK)
    half = -(-((max_mapnr + 7) // 8) // BLOCK) * BLOCK
    bitmap_blocks = 2 * half // BLOCK
    status = method | (FLAG_INCOMPLETE if incomplete else 0)

    hdr = bytearray(BLOCK)
    uts = b"".join(s.encode().ljust(65, b"\0")
                   for s in ("Linux", "synth", release, "#1 SMP", "x86_64", "(none)"))
    struct.pack_into("<8si390s6xqqIiiIIIIIIi", hdr, 0, b"KDUMP   ", header_version, uts,
                     1700000000, 0, status, BLOCK, sub_hdr_size, bitmap_blocks,
                     min(max_mapnr, 0xFFFFFFFF), max_mapnr, 0, 0, 0, nr_cpus)
    sub = bytearray(sub_hdr_size * BLOCK)
    off_note = BLOCK + 104
    off_vmci = off_note + vmci_note_off + 12 + 12 if vmcoreinfo is not None else 0
    struct.pack_into("<QiiQQqQqQqQQQQ", sub, 0, 0x1000000, dump_level, 0, 0, 0,
                     off_vmci, len(vmci), off_note, len(notes), 0, 0, 0, 0, max_mapnr)
    sub[104:104 + len(notes)] = notes

    bm1 = bytearray(half)
    bm2 = bytearray(half)
    for p in (in_memory if in_memory is not None else range(max_mapnr)):
        bm1[p // 8] |= 1 << (p % 8)
    for p in dumped:
        bm2[p // 8] |= 1 << (p % 8)

    bitmap_offset = (1 + sub_hdr_size) * BLOCK
    desc_offset = bitmap_offset + 2 * half
    data_offset = desc_offset + DESC.size * len(dumped)
    descs = bytearray()
    body = bytearray()
    zero_offset = None
    if any(not any(pages[p]) for p in dumped):
        zero_offset = data_offset
        body += bytes(BLOCK)
    desc_of = {}
    for i, p in enumerate(dumped):
        page = pages[p]
        assert len(page) == BLOCK
        desc_of[p] = desc_offset + DESC.size * i
        if not any(page):
            assert zero_offset is not None
            descs += DESC.pack(zero_offset, BLOCK, 0, 0)
            continue
        comp = compress(method, page)
        if p in raw_set or len(comp) >= BLOCK:
            descs += DESC.pack(data_offset + len(body), BLOCK, 0, 0)
            body += page
        else:
            descs += DESC.pack(data_offset + len(body), len(comp), method, 0)
            body += comp
    data = hdr + sub + bm1 + bm2 + descs + body
    return Image(bytearray(data), desc_offset, data_offset, bitmap_offset, dumped, dict(pages),
                 zero_offset, vmcoreinfo, desc_of)


def pattern_page(pfn: int) -> bytes:
    """A compressible page that differs per pfn."""
    line = f"pfn {pfn:#010x} ".encode()
    return (line * (BLOCK // len(line) + 1))[:BLOCK]


# ---- flattened


def flat_header(sig: bytes = b"makedumpfile", ftype: int = 1, version: int = 1) -> bytes:
    """The 4096-byte makedumpfile_header of the flattened format."""
    return struct.pack(">16sqq", sig, ftype, version).ljust(4096, b"\0")


def flat_record(offset: int, data: bytes, size: int | None = None) -> bytes:
    """One makedumpfile_data_header plus its data."""
    return struct.pack(">qq", offset, len(data) if size is None else size) + data


FLAT_END = struct.pack(">qq", -1, -1)


def flatten(image: bytes, chunks: Iterable[tuple[int, int]] | None = None,
            rewrites: Iterable[tuple[int, bytes]] = ()) -> bytes:
    """Flatten ``image`` into records of ``chunks`` ((offset, size) pairs, default 3000-byte
    pieces), then append ``rewrites`` records (offset, data) before the end marker."""
    out = bytearray(flat_header())
    if chunks is None:
        chunks = [(o, min(3000, len(image) - o)) for o in range(0, len(image), 3000)]
    for off, size in chunks:
        out += flat_record(off, bytes(image[off:off + size]))
    for off, data in rewrites:
        out += flat_record(off, data)
    out += FLAT_END
    return bytes(out)
