"""VMCOREINFO: the ``KEY=VALUE`` text the crashed kernel exports about its own layout.

The kernel builds this text at boot (``kernel/vmcore_info.c``, ``kernel/crash_core.c`` in older
kernels, plus ``arch_crash_save_vmcoreinfo()``) and appends ``CRASHTIME`` at crash time. One entry
per line; the key families and the printf formats the kernel uses are:

=========================  ============================================  ======================
line                       meaning                                       value
=========================  ============================================  ======================
``OSRELEASE=``             ``init_uts_ns.name.release``                  text
``BUILD-ID=``              GNU build id of vmlinux (hex digits)           text
``PAGESIZE=``              ``PAGE_SIZE``                                 decimal
``SYMBOL(name)=``          address of a kernel symbol                    hex, no ``0x``
``SIZE(type)=``            ``sizeof(struct type)`` (or of a typedef)     decimal
``OFFSET(type.member)=``   ``offsetof(struct type, member)``             decimal
``LENGTH(name)=``          number of elements of an array                decimal
``NUMBER(name)=``          a constant; signed (``%ld``); some arches     decimal or ``0x`` hex
                           print ``0x%lx`` (``NUMBER(PAGE_OFFSET)``)
``KERNELOFFSET=``          KASLR offset of the kernel image              hex, no ``0x``
``CRASHTIME=``             seconds since the epoch at the crash          decimal
``CONFIG_X=``              selected config options (``y``)               text
=========================  ============================================  ======================

x86_64 adds ``NUMBER(phys_base)``, ``SYMBOL(init_top_pgt)``, ``NUMBER(pgtable_l5_enabled)``,
``SYMBOL(node_data)``/``LENGTH(node_data)``, ``KERNELOFFSET``, ``NUMBER(KERNEL_IMAGE_SIZE)`` and
``NUMBER(sme_mask)``. Since v6.0 the ``SYMBOL(kallsyms_*)`` entries are there too: Linux kernel
commit 5fd8fea935a1 ("vmcoreinfo: include kallsyms symbols") (in v6.0) and Linux kernel commit
f09bddbd8661 ("vmcoreinfo: add kallsyms_num_syms symbol") (in v6.0).

Parsing never fails on content: a line that is not ``KEY=VALUE``, is not UTF-8, or has a value that
does not parse for its key family is kept out of the typed tables and reported as a
:class:`VmcoreInfoWarning` with its byte offset. A NUL-padded tail is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .errors import CorruptError, MissingDataError

if TYPE_CHECKING:
    from .notes import Note

#: VMCOREINFO is one page or less in every kernel (VMCOREINFO_BYTES == PAGE_SIZE); accept files up
#: to this size when reading a text file.
MAX_VMCOREINFO_FILE = 1 << 20

_KEY_RE = re.compile(r"^(SYMBOL|OFFSET|SIZE|LENGTH|NUMBER)\((.+)\)$")
_HEX_RE = re.compile(r"^(?:0[xX])?[0-9a-fA-F]+$")
_DEC_RE = re.compile(r"^[0-9]+$")
_SDEC_RE = re.compile(r"^-?[0-9]+$")


class VmcoreInfoLine(NamedTuple):
    """One ``KEY=VALUE`` line and where it was found."""

    offset: int     # byte offset of the line (base offset + position in the text)
    key: str
    value: str


class VmcoreInfoWarning(NamedTuple):
    """A line that was skipped or only partly understood."""

    offset: int
    message: str


def _parse_hex(value: str) -> int | None:
    return int(value, 16) if _HEX_RE.match(value) else None


def _parse_unsigned(value: str) -> int | None:
    if _DEC_RE.match(value):
        return int(value)
    if value[:2] in ("0x", "0X"):
        return _parse_hex(value)
    return None


def _parse_number(value: str) -> int | None:
    if _SDEC_RE.match(value):
        return int(value)
    if value[:2] in ("0x", "0X"):
        return _parse_hex(value)
    return None


@dataclass
class VmcoreInfo:
    """Parsed VMCOREINFO text with typed accessors.

    ``lines`` keeps every well-formed ``KEY=VALUE`` line in order with its offset; ``entries`` maps
    each key to its value (the last occurrence wins, a conflicting duplicate is warned about).
    """

    lines: tuple[VmcoreInfoLine, ...]
    warnings: tuple[VmcoreInfoWarning, ...]
    path: str | None = None
    base_offset: int = 0
    entries: dict[str, str] = field(default_factory=dict)
    _symbols: dict[str, int] = field(default_factory=dict, repr=False)
    _offsets: dict[str, int] = field(default_factory=dict, repr=False)
    _sizes: dict[str, int] = field(default_factory=dict, repr=False)
    _lengths: dict[str, int] = field(default_factory=dict, repr=False)
    _numbers: dict[str, int] = field(default_factory=dict, repr=False)
    _where: dict[str, int] = field(default_factory=dict, repr=False)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview, *, path: str | None = None,
              base_offset: int = 0) -> VmcoreInfo:
        """Parse VMCOREINFO text; ``base_offset`` is the file offset of ``data[0]``."""
        raw = bytes(data)
        # The kernel pads the note descriptor with NULs; a NUL ends the text.
        nul = raw.find(b"\0")
        if nul >= 0:
            tail = raw[nul:]
            raw = raw[:nul]
        else:
            tail = b""
        lines: list[VmcoreInfoLine] = []
        warnings: list[VmcoreInfoWarning] = []
        pos = 0
        for chunk in raw.split(b"\n"):
            where = base_offset + pos
            pos += len(chunk) + 1
            chunk = chunk.rstrip(b"\r")
            if not chunk.strip():
                continue
            try:
                text = chunk.decode("utf-8")
            except UnicodeDecodeError:
                warnings.append(VmcoreInfoWarning(where, "line is not UTF-8, skipped"))
                continue
            key, sep, value = text.partition("=")
            key = key.strip()
            if not sep or not key:
                warnings.append(VmcoreInfoWarning(where, f"not KEY=VALUE, skipped: {text[:60]!r}"))
                continue
            lines.append(VmcoreInfoLine(where, key, value.strip()))
        if tail.strip(b"\0"):
            warnings.append(VmcoreInfoWarning(
                base_offset + len(raw), "data after the terminating NUL, ignored"))
        info = cls(tuple(lines), (), path=path, base_offset=base_offset)
        info._index(warnings)
        info.warnings = tuple(warnings)
        return info

    @classmethod
    def from_note(cls, note: Note, *, path: str | None = None) -> VmcoreInfo:
        """Parse the descriptor of a VMCOREINFO ELF note (see :func:`kdlayout.notes.find_vmcoreinfo`)."""
        return cls.parse(note.desc, path=path, base_offset=note.desc_offset)

    @classmethod
    def from_file(cls, path: str | Path) -> VmcoreInfo:
        """Parse a text file holding VMCOREINFO (e.g. a copy of ``/sys/kernel/vmcoreinfo`` data
        or ``makedumpfile -g`` output)."""
        p = Path(path)
        with p.open("rb") as f:
            data = f.read(MAX_VMCOREINFO_FILE + 1)
        if len(data) > MAX_VMCOREINFO_FILE:
            raise CorruptError(f"VMCOREINFO file larger than {MAX_VMCOREINFO_FILE} bytes",
                               path=str(p), offset=MAX_VMCOREINFO_FILE)
        return cls.parse(data, path=str(p))

    def _index(self, warnings: list[VmcoreInfoWarning]) -> None:
        tables: dict[str, tuple[dict[str, int], object]] = {
            "SYMBOL": (self._symbols, _parse_hex),
            "OFFSET": (self._offsets, _parse_unsigned),
            "SIZE": (self._sizes, _parse_unsigned),
            "LENGTH": (self._lengths, _parse_unsigned),
            "NUMBER": (self._numbers, _parse_number),
        }
        for line in self.lines:
            old = self.entries.get(line.key)
            if old is not None and old != line.value:
                warnings.append(VmcoreInfoWarning(
                    line.offset, f"{line.key} repeated with a different value, the last one wins"))
            self.entries[line.key] = line.value
            self._where[line.key] = line.offset
            m = _KEY_RE.match(line.key)
            if not m:
                continue
            table, parser = tables[m.group(1)]
            assert callable(parser)
            number = parser(line.value)
            if number is None:
                warnings.append(VmcoreInfoWarning(
                    line.offset, f"{line.key}: value {line.value[:40]!r} is not a number"))
                continue
            table[m.group(2)] = number

    # -- typed accessors ------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        """The raw value of ``key`` (e.g. ``"OSRELEASE"``, ``"SYMBOL(swapper_pg_dir)"``)."""
        return self.entries.get(key)

    def where(self, key: str) -> int | None:
        """Byte offset of the line that defined ``key``."""
        return self._where.get(key)

    def symbol(self, name: str) -> int | None:
        """``SYMBOL(name)``: the address of kernel symbol ``name``."""
        return self._symbols.get(name)

    def offset(self, struct: str, member: str) -> int | None:
        """``OFFSET(struct.member)``: ``offsetof(struct <struct>, <member>)``."""
        return self._offsets.get(f"{struct}.{member}")

    def size(self, name: str) -> int | None:
        """``SIZE(name)``: ``sizeof(struct <name>)`` (or of the typedef ``name``)."""
        return self._sizes.get(name)

    def length(self, name: str) -> int | None:
        """``LENGTH(name)``: number of elements of array ``name`` (or ``struct.member``)."""
        return self._lengths.get(name)

    def number(self, name: str) -> int | None:
        """``NUMBER(name)``: a kernel constant; may be negative."""
        return self._numbers.get(name)

    def require_symbol(self, name: str) -> int:
        """Like :meth:`symbol` but raise :class:`MissingDataError` when absent."""
        value = self.symbol(name)
        if value is None:
            raise MissingDataError(f"VMCOREINFO has no SYMBOL({name})", path=self.path,
                                   offset=self.base_offset)
        return value

    @property
    def symbols(self) -> Mapping[str, int]:
        """All ``SYMBOL()`` entries."""
        return self._symbols

    @property
    def offsets(self) -> Mapping[str, int]:
        """All ``OFFSET()`` entries keyed ``"struct.member"``."""
        return self._offsets

    @property
    def sizes(self) -> Mapping[str, int]:
        """All ``SIZE()`` entries."""
        return self._sizes

    @property
    def lengths(self) -> Mapping[str, int]:
        """All ``LENGTH()`` entries."""
        return self._lengths

    @property
    def numbers(self) -> Mapping[str, int]:
        """All ``NUMBER()`` entries."""
        return self._numbers

    # -- plain keys -----------------------------------------------------------------------------

    @property
    def osrelease(self) -> str | None:
        """``OSRELEASE``: the crashed kernel's ``uname -r``."""
        return self.get("OSRELEASE")

    @property
    def build_id(self) -> str | None:
        """``BUILD-ID``: hex GNU build id of the crashed kernel's vmlinux."""
        return self.get("BUILD-ID")

    @property
    def page_size(self) -> int | None:
        """``PAGESIZE`` in bytes."""
        value = self.get("PAGESIZE")
        return _parse_unsigned(value) if value is not None else None

    @property
    def kernel_offset(self) -> int | None:
        """``KERNELOFFSET``: the KASLR offset of the kernel image."""
        value = self.get("KERNELOFFSET")
        return _parse_hex(value) if value is not None else None

    @property
    def crash_time(self) -> int | None:
        """``CRASHTIME``: seconds since the epoch when the kernel crashed."""
        value = self.get("CRASHTIME")
        return _parse_number(value) if value is not None else None

    @property
    def phys_base(self) -> int | None:
        """``NUMBER(phys_base)`` (x86_64): physical address the kernel was loaded at minus its
        link-time address, as the kernel's ``unsigned long`` (the line is printed with ``%ld``, so
        it can read negative; it is returned modulo 2^64)."""
        value = self.number("phys_base")
        return None if value is None else value & 0xFFFF_FFFF_FFFF_FFFF

    def config(self, option: str) -> str | None:
        """Value of ``CONFIG_<option>`` (the prefix may be given or not)."""
        key = option if option.startswith("CONFIG_") else f"CONFIG_{option}"
        return self.get(key)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)
