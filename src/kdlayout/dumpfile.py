"""Open a crash dump of any supported format, chosen by its magic.

=============================  =======================================  ========================
magic at offset 0              format                                   reader
=============================  =======================================  ========================
``\\x7fELF``                   ELF64 core (kexec ``/proc/vmcore``,      :mod:`kdlayout.elfcore`
                               QEMU ``dump-guest-memory``, ``-E``)
``KDUMP   `` (8 bytes)         kdump-compressed (makedumpfile, QEMU     :mod:`kdlayout.diskdump`
                               ``kdump-*``)
``DISKDUMP`` (8 bytes)         the older diskdump format                :mod:`kdlayout.diskdump`
``makedumpfile`` + NULs        makedumpfile's flattened stream (``-F``)  :mod:`kdlayout.flattened`
(16-byte field)
=============================  =======================================  ========================

This is the edge that opens files; the format modules parse bytes.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from .errors import CorruptError, UnsupportedError
from .physmem import PhysicalMemory

ELF_MAGIC = b"\x7fELF"
KDUMP_SIGNATURE = b"KDUMP   "
DISKDUMP_SIGNATURE = b"DISKDUMP"
FLATTENED_SIGNATURE = b"makedumpfile"
FLATTENED_SIGNATURE_FIELD = 16


def detect_format(head: bytes, *, path: str) -> str:
    """The format of a file starting with ``head`` (at least 16 bytes if the file has them).

    Returns ``"elf"``, ``"diskdump"`` or ``"flattened"``; raises :class:`CorruptError` at offset 0
    for an empty file or an unknown magic.
    """
    if not head:
        raise CorruptError("empty file, not a crash dump", path=path, offset=0)
    if head.startswith(ELF_MAGIC):
        return "elf"
    if head.startswith(KDUMP_SIGNATURE) or head.startswith(DISKDUMP_SIGNATURE):
        return "diskdump"
    field = head[:FLATTENED_SIGNATURE_FIELD]
    if (field.startswith(FLATTENED_SIGNATURE) and len(field) == FLATTENED_SIGNATURE_FIELD
            and not field[len(FLATTENED_SIGNATURE):].strip(b"\0")):
        return "flattened"
    raise CorruptError(f"not a crash dump (magic {head[:8].hex()} {head[:8]!r})",
                       path=path, offset=0)


def _import(name: str, *, path: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(f"kdlayout.{name}")
    except ImportError as exc:
        raise UnsupportedError(f"{what} dumps are not supported by this build ({exc})",
                               path=path, offset=0) from exc


def open_dump(path: str | os.PathLike[str]) -> PhysicalMemory:
    """Open the crash dump at ``path`` with the reader its magic selects.

    Raises :class:`CorruptError` (empty file, unknown magic, malformed headers),
    :class:`UnsupportedError` (a format or variant kdlayout does not read) or ``OSError``.
    """
    spath = str(path)
    p = Path(spath)
    if p.is_dir():
        raise UnsupportedError("is a directory, not a crash dump", path=spath)
    with p.open("rb") as f:
        head = f.read(FLATTENED_SIGNATURE_FIELD)
    kind = detect_format(head, path=spath)
    mem: PhysicalMemory
    if kind == "elf":
        from .elfcore import ElfCore
        return ElfCore.open(spath)
    if kind == "diskdump":
        mod = _import("diskdump", path=spath, what="kdump-compressed")
        cls = getattr(mod, "DiskDump", None)
        if cls is None:
            raise UnsupportedError("kdump-compressed reader missing", path=spath, offset=0)
        mem = cls.open(spath)
        return mem
    mod = _import("flattened", path=spath, what="flattened")
    opener = getattr(mod, "open_flattened", None)
    if opener is None:
        raise UnsupportedError("flattened reader missing", path=spath, offset=0)
    mem = opener(spath)
    return mem
