"""Find the crashed kernel's BTF inside the dump.

With CONFIG_DEBUG_INFO_BTF the kernel image carries its own BTF between ``__start_BTF`` and
``__stop_BTF`` (it backs ``/sys/kernel/btf/vmlinux``). When kallsyms gave those two symbols the
blob is read directly; otherwise (5.10, whose VMCOREINFO does not list the kallsyms tables, or a
dump whose kallsyms failed) the kernel image is scanned from ``SYMBOL(_stext)`` for a BTF header
whose sections parse.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..btf import Btf, parse_header
from ..errors import KdlayoutError, MissingDataError
from ..kimage import KernelImage
from ..physmem import PhysicalMemory
from ..vmcoreinfo import VmcoreInfo

# The vmlinux BTF of a distribution kernel is 3-8 MB; refuse absurd bounds from a corrupt table.
MAX_BTF_BYTES = 64 << 20
# How far past _stext to look for .BTF when scanning (x86_64 KERNEL_IMAGE_SIZE is 1 GiB with
# KASLR, but the image itself is a few tens of MB and .BTF follows .rodata).
SCAN_LIMIT = 256 << 20
SCAN_CHUNK = 8 << 20
_MAGICS = (b"\x9f\xeb\x01\x00", b"\xeb\x9f\x01\x00")  # magic, version 1, flags 0
# A vmlinux BTF has tens of thousands of types; a stray magic in rodata parses to far fewer.
MIN_TYPES = 1000


def find_btf(dump: PhysicalMemory, vmcoreinfo: VmcoreInfo | None,
             symbols: Mapping[str, int]) -> tuple[Btf, str]:
    """The vmlinux BTF of the crashed kernel and a description of where it was found.

    ``symbols`` are kallsyms results so far (``__start_BTF``/``__stop_BTF`` if known). Raises
    :class:`MissingDataError` when the dump holds no BTF.
    """
    image = KernelImage(dump, vmcoreinfo)
    path = dump.info.path
    start, stop = symbols.get("__start_BTF"), symbols.get("__stop_BTF")
    if start is not None and stop is not None and 0 < stop - start <= MAX_BTF_BYTES:
        data = image.read(start, stop - start)
        btf = Btf.parse(data, source=f"{path}: BTF at {start:#x}", base_offset=image.pa(start))
        return btf, (f"{path}: __start_BTF..__stop_BTF at {start:#x} ({stop - start} bytes, "
                     "bounds from kallsyms)")
    stext = vmcoreinfo.symbol("_stext") if vmcoreinfo is not None else None
    if stext is None:
        raise MissingDataError("no __start_BTF from kallsyms and no SYMBOL(_stext) to scan from",
                               path=path)
    return _scan(image, stext, path)


def _scan(image: KernelImage, stext: int, path: str) -> tuple[Btf, str]:
    pos = stext
    end = stext + SCAN_LIMIT
    while pos < end:
        chunk = _read_present(image, pos, SCAN_CHUNK + 4)
        for magic in _MAGICS:
            at = chunk.find(magic)
            while at >= 0:
                found = _try_blob(image, pos + at, path)
                if found is not None:
                    return found, (f"{path}: BTF found by scanning the kernel image at "
                                   f"{pos + at:#x} ({found.header.blob_size} bytes)")
                at = chunk.find(magic, at + 1)
        pos += SCAN_CHUNK
        image.release()  # the chunk's pages would otherwise stay mapped (RSS ~ bytes scanned)
    raise MissingDataError(
        f"no BTF in the kernel image {stext:#x}-{end:#x} (kernel built without "
        "CONFIG_DEBUG_INFO_BTF?)", path=path)


def _read_present(image: KernelImage, vaddr: int, size: int) -> bytes:
    """Bytes at ``vaddr``, with pages the dump lacks read as zeros (scanning only)."""
    try:
        return image.read(vaddr, size)
    except KdlayoutError:
        pass
    out = bytearray(size)
    step = 1 << 20
    for off in range(0, size, step):
        n = min(step, size - off)
        try:
            out[off:off + n] = image.read(vaddr + off, n)
        except KdlayoutError:
            continue
    return bytes(out)


def _try_blob(image: KernelImage, vaddr: int, path: str) -> Btf | None:
    source = f"{path}: BTF candidate at {vaddr:#x}"
    try:
        size = _claimed_size(image.read(vaddr, 64))
        if size is None or size > MAX_BTF_BYTES:
            return None
        blob = image.read(vaddr, size)
        parse_header(blob, source=source)
        btf = Btf.parse(blob, source=source, base_offset=image.pa(vaddr))
    except KdlayoutError:
        return None
    return btf if btf.nr_types >= MIN_TYPES else None


def _claimed_size(head: bytes) -> int | None:
    if len(head) < 24:
        return None
    little = head[0] == 0x9F
    words = [int.from_bytes(head[i:i + 4], "little" if little else "big") for i in range(4, 24, 4)]
    hdr_len, type_off, type_len, str_off, str_len = words
    if not 24 <= hdr_len <= 64:
        return None
    return hdr_len + max(type_off + type_len, str_off + str_len)
