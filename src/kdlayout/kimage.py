"""Reads from the crashed kernel's own image (text, rodata, data, bss) by virtual address.

On x86_64 the kernel image is mapped at ``__START_KERNEL_map`` (``0xffffffff80000000``) and its
virtual addresses translate linearly to physical ones::

    pa = va - __START_KERNEL_map + phys_base          (mod 2**64)

which is the kernel's own ``__pa_symbol()``. ``phys_base`` absorbs both the physical load address
and the KASLR virtual offset, so it can "wrap" (look negative); arithmetic is modulo 2**64.

``phys_base`` is taken from the first of these that is available (the one used is recorded in
:attr:`KernelImage.phys_base`):

1. an explicit value passed by the caller (``method="explicit"``);
2. VMCOREINFO ``NUMBER(phys_base)``, written by x86_64 ``arch_crash_save_vmcoreinfo()`` since
   Linux kernel commit 401721ecd1dc ("kexec: export the value of phys_base instead of symbol
   address") (in v4.10) (``method="vmcoreinfo"``);
3. the PT_LOAD of an ELF dump (kexec ``/proc/vmcore`` saved as a file, or a vmlinux ELF) whose
   ``p_vaddr`` lies in the kernel-image region: ``phys_base = p_paddr - (p_vaddr -
   __START_KERNEL_map)`` (``method="elf-pt-load"``);
4. a probe: for every 2 MiB-aligned physical address ``P`` held by the dump, assume the kernel
   text (``SYMBOL(_stext)`` rounded down to 2 MiB, ``CONFIG_PHYSICAL_ALIGN``) was loaded at ``P``
   and accept the first candidate where ``SYMBOL(init_uts_ns)`` reads back as a ``struct
   new_utsname`` with sysname ``Linux`` and the release from VMCOREINFO ``OSRELEASE``
   (``method="init_uts_ns-probe"``).

Only kernel-image addresses are translated here. The direct map, vmalloc and vmemmap need a
page-table walk and are not this module's business.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .errors import CorruptError, KdlayoutError, MissingDataError, NotInDumpError, UnsupportedError
from .physmem import PhysicalMemory, release_mapping

#: x86_64 ``__START_KERNEL_map``: the base of the kernel-image mapping.
START_KERNEL_MAP = 0xFFFFFFFF80000000
#: Upper bound of the kernel-image region: ``KERNEL_IMAGE_SIZE`` is 1 GiB with
#: ``CONFIG_RANDOMIZE_BASE`` (512 MiB without); modules start right after it.
KERNEL_IMAGE_REGION_SIZE = 1 << 30
#: ``CONFIG_PHYSICAL_ALIGN`` on x86_64 distribution kernels (also the KASLR granularity).
PHYSICAL_ALIGN = 0x200000

_MASK64 = (1 << 64) - 1
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_READ_CHUNK = 4096
#: Upper bound on physical addresses probed by the ``init_uts_ns`` fallback.
_PROBE_LIMIT = 1 << 40


@runtime_checkable
class VmcoreInfoLike(Protocol):
    """What this module needs of a parsed VMCOREINFO: the raw value of one key, or ``None``."""

    def get(self, key: str) -> str | None:
        """The value text of ``key`` (e.g. ``"SYMBOL(_stext)"``), or ``None`` if absent."""
        ...


def vmcoreinfo_of(mem: PhysicalMemory) -> VmcoreInfoLike | None:
    """The parsed VMCOREINFO note of ``mem`` (:class:`kdlayout.vmcoreinfo.VmcoreInfo`), if any."""
    raw = mem.vmcoreinfo
    if raw is None:
        return None
    from .vmcoreinfo import VmcoreInfo

    return VmcoreInfo.parse(raw, path=mem.info.path)


def vmcoreinfo_value(vi: VmcoreInfoLike | None, key: str) -> str | None:
    """``vi.get(key)``, treating a missing VMCOREINFO or a raised MissingDataError as absent."""
    if vi is None:
        return None
    try:
        value = vi.get(key)
    except MissingDataError:
        return None
    return None if value is None else str(value)


def vmcoreinfo_symbol(vi: VmcoreInfoLike | None, name: str) -> int | None:
    """VMCOREINFO ``SYMBOL(name)`` as an int (hex text in the note), or ``None``."""
    return _hex_value(vi, f"SYMBOL({name})")


def vmcoreinfo_number(vi: VmcoreInfoLike | None, name: str) -> int | None:
    """VMCOREINFO ``NUMBER(name)`` as an int (decimal text in the note), or ``None``."""
    value = vmcoreinfo_value(vi, f"NUMBER({name})")
    if value is None:
        return None
    try:
        return int(value, 10) & _MASK64
    except ValueError:
        return None


def vmcoreinfo_kernel_offset(vi: VmcoreInfoLike | None) -> int | None:
    """VMCOREINFO ``KERNELOFFSET`` (the KASLR virtual offset, hex text), or ``None``."""
    return _hex_value(vi, "KERNELOFFSET")


def _hex_value(vi: VmcoreInfoLike | None, key: str) -> int | None:
    value = vmcoreinfo_value(vi, key)
    if value is None:
        return None
    try:
        return int(value, 16) & _MASK64
    except ValueError:
        return None


@dataclass(frozen=True)
class PhysBase:
    """The ``phys_base`` in use and where it came from."""

    value: int
    method: str          # "explicit", "vmcoreinfo", "elf-pt-load", "init_uts_ns-probe"
    detail: str


@dataclass(frozen=True)
class LoadSegment:
    """The virtual/physical placement of one ELF PT_LOAD (duck-typed from the dump reader)."""

    p_vaddr: int
    p_paddr: int
    p_memsz: int


def in_kernel_image(vaddr: int) -> bool:
    """True if ``vaddr`` lies in the x86_64 kernel-image region."""
    return START_KERNEL_MAP <= vaddr < START_KERNEL_MAP + KERNEL_IMAGE_REGION_SIZE


def load_segments(mem: PhysicalMemory) -> list[LoadSegment]:
    """The PT_LOAD placements a dump reader exposes (``segments``/``load_segments``), else ``[]``.

    Any object with integer ``p_vaddr`` and ``p_paddr`` attributes (and optionally ``p_memsz`` or
    ``memsz``/``size``) is accepted, so this works with the ELF core reader without importing it.
    """
    found: list[LoadSegment] = []
    for attr in ("segments", "load_segments", "phdrs"):
        segs = getattr(mem, attr, None)
        if callable(segs):
            segs = segs()
        if not isinstance(segs, Iterable):
            continue
        for seg in segs:
            vaddr = getattr(seg, "p_vaddr", getattr(seg, "vaddr", None))
            paddr = getattr(seg, "p_paddr", getattr(seg, "paddr", None))
            size = getattr(seg, "p_memsz", getattr(seg, "memsz", getattr(seg, "size", 0)))
            ptype = getattr(seg, "p_type", getattr(seg, "type", 1))
            if ptype not in (1, "PT_LOAD"):
                continue
            if isinstance(vaddr, int) and isinstance(paddr, int):
                found.append(LoadSegment(vaddr, paddr, int(size or 0)))
        if found:
            break
    return found


class KernelImage:
    """Virtual-address reads from the crashed kernel's image in a :class:`PhysicalMemory`."""

    def __init__(self, mem: PhysicalMemory, vmcoreinfo: VmcoreInfoLike | None = None, *,
                 phys_base: int | None = None) -> None:
        """Set up translation for ``mem``; ``vmcoreinfo`` defaults to the dump's own note.

        Raises :class:`UnsupportedError` for a non-x86_64 dump and :class:`MissingDataError` if
        ``phys_base`` cannot be determined by any method in the module docstring.
        """
        self.mem = mem
        self.source = mem.info.path
        if mem.info.arch not in ("x86_64", "x86-64", "amd64"):
            raise UnsupportedError(
                f"kernel-image reads are implemented for x86_64 only, not {mem.info.arch}",
                path=self.source)
        self.vmcoreinfo = vmcoreinfo if vmcoreinfo is not None else vmcoreinfo_of(mem)
        self.kernel_offset = vmcoreinfo_kernel_offset(self.vmcoreinfo)
        self.phys_base = self._find_phys_base(phys_base)

    # -- phys_base -------------------------------------------------------------------------

    def _find_phys_base(self, explicit: int | None) -> PhysBase:
        if explicit is not None:
            return PhysBase(explicit & _MASK64, "explicit", "given by the caller")
        number = vmcoreinfo_number(self.vmcoreinfo, "phys_base")
        if number is not None:
            return PhysBase(number, "vmcoreinfo", f"VMCOREINFO NUMBER(phys_base)={number:#x}")
        from_elf = self._phys_base_from_segments(load_segments(self.mem))
        if from_elf is not None:
            return from_elf
        probed = self._phys_base_from_probe()
        if probed is not None:
            return probed
        raise MissingDataError(
            "cannot determine phys_base: no VMCOREINFO NUMBER(phys_base), no kernel-image "
            "PT_LOAD, and no 2 MiB-aligned load address where SYMBOL(init_uts_ns) holds the "
            "OSRELEASE", path=self.source)

    def _phys_base_from_segments(self, segs: Sequence[LoadSegment]) -> PhysBase | None:
        for seg in segs:
            if in_kernel_image(seg.p_vaddr):
                value = (seg.p_paddr - (seg.p_vaddr - START_KERNEL_MAP)) & _MASK64
                return PhysBase(value, "elf-pt-load",
                                f"PT_LOAD p_vaddr={seg.p_vaddr:#x} p_paddr={seg.p_paddr:#x}")
        return None

    def _phys_base_from_probe(self) -> PhysBase | None:
        stext = vmcoreinfo_symbol(self.vmcoreinfo, "_stext")
        uts = vmcoreinfo_symbol(self.vmcoreinfo, "init_uts_ns")
        release = vmcoreinfo_value(self.vmcoreinfo, "OSRELEASE")
        if stext is None or uts is None or not release or not in_kernel_image(stext):
            return None
        text_base = stext & ~(PHYSICAL_ALIGN - 1)
        want = release.encode("ascii", "replace")
        for rng in self.mem.ranges():
            first = (rng.start + PHYSICAL_ALIGN - 1) & ~(PHYSICAL_ALIGN - 1)
            for load in range(first, min(rng.end, _PROBE_LIMIT), PHYSICAL_ALIGN):
                candidate = (load - (text_base - START_KERNEL_MAP)) & _MASK64
                pa = (uts - START_KERNEL_MAP + candidate) & _MASK64
                try:
                    blob = self.mem.read(pa, 16 + 65 * 3)
                except KdlayoutError:
                    continue
                if _looks_like_utsname(blob, want):
                    return PhysBase(candidate, "init_uts_ns-probe",
                                    f"kernel text at physical {load:#x} (init_uts_ns matches "
                                    f"OSRELEASE {release})")
        return None

    # -- translation and reads ---------------------------------------------------------------

    def pa(self, vaddr: int) -> int:
        """Physical address of kernel-image virtual address ``vaddr``."""
        if not in_kernel_image(vaddr):
            raise MissingDataError(
                f"address {vaddr:#x} is not in the kernel image region "
                f"({START_KERNEL_MAP:#x}-{START_KERNEL_MAP + KERNEL_IMAGE_REGION_SIZE:#x})",
                path=self.source)
        return (vaddr - START_KERNEL_MAP + self.phys_base.value) & _MASK64

    def read(self, vaddr: int, size: int) -> bytes:
        """``size`` bytes at kernel-image address ``vaddr``.

        Raises :class:`MissingDataError` (:class:`NotInDumpError` for pages the dump lacks) naming
        the virtual and physical address.
        """
        if size < 0:
            raise ValueError("negative size")
        if size and not in_kernel_image(vaddr + size - 1):
            self.pa(vaddr + size - 1)  # raises with the message
        paddr = self.pa(vaddr)
        try:
            return self.mem.read(paddr, size)
        except NotInDumpError as exc:
            raise NotInDumpError(
                f"kernel-image range {vaddr:#x}-{vaddr + size:#x} (physical {paddr:#x}) is not "
                "in the dump", paddr=exc.paddr, path=self.source) from None

    def contains(self, vaddr: int, size: int = 1) -> bool:
        """True if every byte of ``[vaddr, vaddr + size)`` is in the kernel image and the dump."""
        if not (in_kernel_image(vaddr) and in_kernel_image(vaddr + max(size, 1) - 1)):
            return False
        return self.mem.contains(self.pa(vaddr), size)

    def read_u64(self, vaddr: int) -> int:
        """Little-endian u64 at ``vaddr``."""
        value: int = _U64.unpack(self.read(vaddr, 8))[0]
        return value

    def read_u32(self, vaddr: int) -> int:
        """Little-endian u32 at ``vaddr``."""
        value: int = _U32.unpack(self.read(vaddr, 4))[0]
        return value

    def read_cstring(self, vaddr: int, max_len: int = 4096) -> bytes:
        """The NUL-terminated string at ``vaddr`` (without the NUL), at most ``max_len`` bytes.

        Reads page by page, so a short string at the end of a dumped range is fine. Raises
        :class:`CorruptError` if no NUL occurs within ``max_len`` bytes.
        """
        out = bytearray()
        addr = vaddr
        while len(out) < max_len:
            chunk = min(_READ_CHUNK - (addr % _READ_CHUNK), max_len - len(out))
            data = self.read(addr, chunk)
            nul = data.find(b"\0")
            if nul >= 0:
                out += data[:nul]
                return bytes(out)
            out += data
            addr += chunk
        raise CorruptError(f"no NUL terminator within {max_len} bytes of string at {vaddr:#x}",
                           path=self.source)

    def release(self) -> None:
        """Unmap the dump file pages that reads so far have mapped (see :func:`release_mapping`);
        for scans that read tens of MiB of the image in chunks."""
        release_mapping(self.mem)

    def __repr__(self) -> str:
        return (f"KernelImage({self.source!r}, phys_base={self.phys_base.value:#x} "
                f"via {self.phys_base.method})")


_UTS_FIELD = 65  # __NEW_UTS_LEN + 1


def _looks_like_utsname(blob: bytes, release: bytes) -> bool:
    """True if a ``struct new_utsname`` with sysname Linux and ``release`` starts in ``blob[:16]``.

    ``struct uts_namespace`` starts with the utsname in newer kernels and with a ``struct kref``
    (4 bytes, padded) in older ones, so a few leading offsets are tried.
    """
    for off in (0, 4, 8):
        if blob[off:off + 6] != b"Linux\0":
            continue
        rel = blob[off + 2 * _UTS_FIELD:off + 3 * _UTS_FIELD]
        if rel.startswith(release + b"\0"):
            return True
    return False
