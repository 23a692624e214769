"""ELF note streams: the per-CPU register notes and VMCOREINFO of a crash dump.

A note stream is a sequence of ``Elf64_Nhdr`` records (``n_namesz``, ``n_descsz``, ``n_type``, each
a little-endian ``u32``), each followed by the name and the descriptor, both padded to 4 bytes.
ELF cores (``PT_NOTE`` segments) and kdump-compressed files (the note area of the sub-header) carry
the same stream, so this module is format-neutral: it parses a buffer and reports offsets relative
to a base offset the caller passes (the file offset of the stream).

Decoders here:

* ``NT_PRSTATUS`` (name ``CORE``) for x86_64: ``struct elf_prstatus`` with ``pr_reg`` as the
  x86_64 ``struct user_regs_struct``; :func:`decode_prstatus_x86_64`.
* ``VMCOREINFO`` (name ``VMCOREINFO``, type 0): the text is parsed by :mod:`kdlayout.vmcoreinfo`;
  :func:`find_vmcoreinfo` finds the note.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from .errors import CorruptError

NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_PRPSINFO = 3
NT_TASKSTRUCT = 4
NT_AUXV = 6
NT_X86_XSTATE = 0x202
NT_SIGINFO = 0x53494749
NT_FILE = 0x46494C45
NT_PRXFPREG = 0x46E62B7F

VMCOREINFO_NOTE_NAME = "VMCOREINFO"
VMCOREINFO_NOTE_TYPE = 0

#: Upper bound on the number of notes in one stream. A crash dump holds one NT_PRSTATUS per CPU plus
#: a handful of others; a stream claiming more is corrupt, and the bound keeps memory bounded.
MAX_NOTES = 1 << 20

_NHDR = struct.Struct("<III")

_CORE_TYPE_NAMES: dict[int, str] = {
    NT_PRSTATUS: "NT_PRSTATUS",
    NT_PRFPREG: "NT_PRFPREG",
    NT_PRPSINFO: "NT_PRPSINFO",
    NT_TASKSTRUCT: "NT_TASKSTRUCT",
    NT_AUXV: "NT_AUXV",
    NT_SIGINFO: "NT_SIGINFO",
    NT_FILE: "NT_FILE",
}
_LINUX_TYPE_NAMES: dict[int, str] = {
    NT_PRXFPREG: "NT_PRXFPREG",
    NT_X86_XSTATE: "NT_X86_XSTATE",
}


class Note(NamedTuple):
    """One ELF note (``Elf64_Nhdr`` plus name and descriptor)."""

    name: str            # without the terminating NUL
    type: int            # n_type
    desc: memoryview     # the descriptor bytes, n_descsz long, no padding
    offset: int          # offset of the note header in the file (base offset + position)
    desc_offset: int     # offset of the first descriptor byte in the file

    @property
    def type_name(self) -> str:
        """Symbolic name of the note type (``NT_PRSTATUS``, ``VMCOREINFO``, ...)."""
        return note_type_name(self.name, self.type)


def _align4(n: int) -> int:
    return (n + 3) & ~3


def note_type_name(name: str, ntype: int) -> str:
    """Symbolic name of note type ``ntype`` in the namespace of note ``name``.

    Note types are only meaningful together with the note name: type 0 is VMCOREINFO for
    ``"VMCOREINFO"`` and QEMU's CPU state for ``"QEMU"``.
    """
    if name == "CORE" and ntype in _CORE_TYPE_NAMES:
        return _CORE_TYPE_NAMES[ntype]
    if name == "LINUX" and ntype in _LINUX_TYPE_NAMES:
        return _LINUX_TYPE_NAMES[ntype]
    if name == VMCOREINFO_NOTE_NAME and ntype == VMCOREINFO_NOTE_TYPE:
        return "VMCOREINFO"
    if name == "QEMU" and ntype == 0:
        return "QEMU_CPUSTATE"
    if name == "VMCOREDD":
        return "VMCOREDD"
    return f"{name or '<anon>'}:{ntype:#x}"


def parse_notes(data: bytes | bytearray | memoryview, *, base_offset: int = 0,
                path: str | None = None) -> tuple[Note, ...]:
    """Parse a note stream into :class:`Note` records.

    ``data`` is the whole stream (e.g. the file bytes of one ``PT_NOTE`` segment); ``base_offset``
    is its offset in the file, used for :attr:`Note.offset` and in error messages. The descriptors
    are zero-copy memoryviews of ``data``.

    An all-zero note header ends the stream (per-CPU note buffers are zero padded). A header or a
    name/descriptor that does not fit in ``data`` raises :class:`CorruptError` naming the offset of
    the note header. The padding after the last descriptor may be missing.
    """
    buf = memoryview(data).cast("B")
    end = len(buf)
    pos = 0
    notes: list[Note] = []
    while pos < end:
        where = base_offset + pos
        if end - pos < _NHDR.size:
            if not any(buf[pos:end]):
                break  # zero padding shorter than a header
            raise CorruptError(
                f"truncated note header ({end - pos} of {_NHDR.size} bytes left in the note area)",
                path=path, offset=where)
        namesz, descsz, ntype = _NHDR.unpack_from(buf, pos)
        if namesz == 0 and descsz == 0 and ntype == 0:
            break
        name_at = pos + _NHDR.size
        desc_at = name_at + _align4(namesz)
        if namesz > end - name_at or desc_at > end:
            raise CorruptError(
                f"note name size {namesz} overflows the note area ({end - name_at} bytes left)",
                path=path, offset=where)
        if descsz > end - desc_at:
            raise CorruptError(
                f"note descriptor size {descsz} overflows the note area ({end - desc_at} bytes left)",
                path=path, offset=where)
        raw_name = bytes(buf[name_at:name_at + namesz])
        name = raw_name.split(b"\0", 1)[0].decode("latin-1")
        notes.append(Note(name, ntype, buf[desc_at:desc_at + descsz], where, base_offset + desc_at))
        if len(notes) > MAX_NOTES:
            raise CorruptError(f"more than {MAX_NOTES} notes in one note area",
                               path=path, offset=where)
        pos = desc_at + _align4(descsz)
    return tuple(notes)


def find_vmcoreinfo(notes: Iterable[Note]) -> Note | None:
    """The first VMCOREINFO note (name ``VMCOREINFO``, type 0), or None."""
    for note in notes:
        if note.name == VMCOREINFO_NOTE_NAME and note.type == VMCOREINFO_NOTE_TYPE:
            return note
    return None


def prstatus_notes(notes: Iterable[Note]) -> list[Note]:
    """The ``NT_PRSTATUS`` notes (name ``CORE``), one per CPU that saved its registers."""
    return [n for n in notes if n.name == "CORE" and n.type == NT_PRSTATUS]


class X86_64Regs(NamedTuple):
    """x86_64 ``struct user_regs_struct`` (the ``pr_reg`` of ``struct elf_prstatus``)."""

    r15: int
    r14: int
    r13: int
    r12: int
    rbp: int
    rbx: int
    r11: int
    r10: int
    r9: int
    r8: int
    rax: int
    rcx: int
    rdx: int
    rsi: int
    rdi: int
    orig_rax: int
    rip: int
    cs: int
    eflags: int
    rsp: int
    ss: int
    fs_base: int
    gs_base: int
    ds: int
    es: int
    fs: int
    gs: int


class TimeVal(NamedTuple):
    """``struct __kernel_old_timeval`` as stored in ``struct elf_prstatus``."""

    tv_sec: int
    tv_usec: int


class PrStatus(NamedTuple):
    """x86_64 ``struct elf_prstatus`` (``include/linux/elfcore.h``), 336 bytes."""

    si_signo: int        # pr_info.si_signo
    si_code: int
    si_errno: int
    pr_cursig: int
    pr_sigpend: int
    pr_sighold: int
    pr_pid: int
    pr_ppid: int
    pr_pgrp: int
    pr_sid: int
    pr_utime: TimeVal
    pr_stime: TimeVal
    pr_cutime: TimeVal
    pr_cstime: TimeVal
    pr_reg: X86_64Regs
    pr_fpvalid: int


# elf_siginfo (3 x int), short pr_cursig + 2 pad, 2 x unsigned long, 4 x pid_t, 4 x timeval,
# 27 x unsigned long registers, int pr_fpvalid + 4 pad.
_PRSTATUS_X86_64 = struct.Struct("<iiih2xQQiiii8q27Qi4x")
PRSTATUS_X86_64_SIZE = _PRSTATUS_X86_64.size
assert PRSTATUS_X86_64_SIZE == 336


def decode_prstatus_x86_64(note: Note, *, path: str | None = None) -> PrStatus:
    """Decode an x86_64 ``NT_PRSTATUS`` note into a :class:`PrStatus` (``struct elf_prstatus``).

    Raises :class:`CorruptError` if the note is not ``CORE``/``NT_PRSTATUS`` or its descriptor is
    shorter than the 336-byte x86_64 ``struct elf_prstatus``.
    """
    if note.name != "CORE" or note.type != NT_PRSTATUS:
        raise CorruptError(f"note {note.type_name} is not NT_PRSTATUS", path=path,
                           offset=note.offset)
    if len(note.desc) < PRSTATUS_X86_64_SIZE:
        raise CorruptError(
            f"NT_PRSTATUS descriptor is {len(note.desc)} bytes, x86_64 struct elf_prstatus "
            f"needs {PRSTATUS_X86_64_SIZE}", path=path, offset=note.offset)
    v = _PRSTATUS_X86_64.unpack_from(note.desc, 0)
    times = [TimeVal(v[10 + 2 * i], v[11 + 2 * i]) for i in range(4)]
    return PrStatus(
        si_signo=v[0], si_code=v[1], si_errno=v[2], pr_cursig=v[3],
        pr_sigpend=v[4], pr_sighold=v[5],
        pr_pid=v[6], pr_ppid=v[7], pr_pgrp=v[8], pr_sid=v[9],
        pr_utime=times[0], pr_stime=times[1], pr_cutime=times[2], pr_cstime=times[3],
        pr_reg=X86_64Regs(*v[18:45]), pr_fpvalid=v[45])


def count_by_type(notes: Sequence[Note]) -> dict[str, int]:
    """Number of notes of each symbolic type, in order of first appearance."""
    counts: dict[str, int] = {}
    for n in notes:
        counts[n.type_name] = counts.get(n.type_name, 0) + 1
    return counts
