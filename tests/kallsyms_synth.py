"""Synthetic kallsyms tables for error-path tests, written from the format description in
docs/kallsyms.md (not from kdlayout's decoder): a token table where token ``i`` is a short string,
names as token-byte sequences, and a tiny PhysicalMemory holding the tables at a kernel-image
address with a VMCOREINFO that lists them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from kdlayout.physmem import DumpInfo, MemoryRange, PhysicalMemory

START_KERNEL_MAP = 0xFFFFFFFF80000000
TEXT = 0xFFFFFFFF81000000
PHYS = 0x1000000


def token_strings() -> list[bytes]:
    """256 distinct non-empty tokens: printable characters map to themselves, the rest to pairs."""
    out = []
    for i in range(256):
        if 0x21 <= i <= 0x7E:
            out.append(bytes([i]))
        else:
            out.append(b"%c%c" % (0x61 + i % 26, 0x41 + i // 26 % 26))
    return out


def token_table(tokens: Sequence[bytes]) -> tuple[bytes, bytes]:
    """(kallsyms_token_table, kallsyms_token_index) for ``tokens``."""
    table = b""
    index = []
    for t in tokens:
        index.append(len(table))
        table += t + b"\0"
    return table, struct.pack("<256H", *index)


def encode_name(type_char: str, name: str, *, big: bool = True) -> bytes:
    """One kallsyms_names record using only single-character tokens (plus the length prefix)."""
    body = (type_char + name).encode()
    n = len(body)
    if n <= 0x7F:
        return bytes([n]) + body
    if not big:
        raise ValueError("long name needs the two-byte form")
    return bytes([(n & 0x7F) | 0x80, n >> 7]) + body


class BlobMemory(PhysicalMemory):
    """Physical memory holding one blob at ``base`` (everything else is absent)."""

    def __init__(self, blob: bytes, base: int = PHYS, vmcoreinfo: bytes | None = None,
                 path: str = "<synthetic>") -> None:
        self.info = DumpInfo(path=path, format="synthetic", arch="x86_64")
        self._blob = blob
        self._base = base
        self._vmcoreinfo = vmcoreinfo

    @property
    def vmcoreinfo(self) -> bytes | None:
        return self._vmcoreinfo

    def ranges(self) -> Sequence[MemoryRange]:
        return [MemoryRange(self._base, len(self._blob))]

    def read(self, paddr: int, size: int) -> bytes:
        if paddr < self._base or paddr + size > self._base + len(self._blob):
            raise self._not_in_dump(paddr, size)
        off = paddr - self._base
        return self._blob[off:off + size]


def build_image(symbols: Sequence[tuple[str, str, int]], *, extra_vmcoreinfo: str = "",
                num_syms: int | None = None, big: bool = True,
                names_override: bytes | None = None) -> tuple[BlobMemory, dict[str, int]]:
    """A kernel image at TEXT (physical PHYS) with base-relative kallsyms for ``symbols``
    (``(type, name, address)``, sorted by address) in the v6.4+ order; VMCOREINFO lists them."""
    blob = bytearray(0x2000)                     # some "text" first
    addrs: dict[str, int] = {}

    def put(label: str, data: bytes, align: int = 8) -> int:
        while len(blob) % align:
            blob.append(0)
        addrs[label] = TEXT + len(blob)
        blob.extend(data)
        return addrs[label]

    n = len(symbols) if num_syms is None else num_syms
    names = names_override
    if names is None:
        names = b"".join(encode_name(t, nm, big=big) for t, nm, _ in symbols)
    put("kallsyms_num_syms", struct.pack("<I", n))
    put("kallsyms_names", names)
    markers = []
    off = 0
    for i, (t, nm, _) in enumerate(symbols):
        if i % 256 == 0:
            markers.append(off)
        off += len(encode_name(t, nm, big=big))
    put("kallsyms_markers", struct.pack(f"<{len(markers)}I", *markers))
    table, index = token_table(token_strings())
    put("kallsyms_token_table", table)
    put("kallsyms_token_index", index)
    base = symbols[0][2]
    put("kallsyms_offsets", struct.pack(f"<{len(symbols)}I", *(a - base for _, _, a in symbols)))
    put("kallsyms_relative_base", struct.pack("<Q", base))
    blob.extend(bytes(4096))
    vi = "OSRELEASE=synthetic\nNUMBER(phys_base)=0\n"
    vi += "".join(f"SYMBOL({k})={v:x}\n" for k, v in addrs.items())
    for _t, nm, a in symbols:
        if nm == "_stext":
            vi += f"SYMBOL(_stext)={a:x}\n"
    vi += extra_vmcoreinfo
    return BlobMemory(bytes(blob), vmcoreinfo=vi.encode()), addrs
