"""Note-stream parser and decoders (synthetic bytes: parser and error paths only)."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdlayout.elfcore import ElfCore
from kdlayout.errors import CorruptError
from kdlayout.notes import (
    NT_PRSTATUS,
    PRSTATUS_X86_64_SIZE,
    count_by_type,
    decode_prstatus_x86_64,
    find_vmcoreinfo,
    note_type_name,
    parse_notes,
    prstatus_notes,
)
from realdumps import fixture_params
from synth import SAMPLE_VMCOREINFO, note_bytes, prstatus_desc


def _stream() -> bytes:
    return (note_bytes("CORE", 1, prstatus_desc(7, rip=0xFFFFFFFF81234567, rsp=0xFFFFC900))
            + note_bytes("VMCOREINFO", 0, SAMPLE_VMCOREINFO.encode())
            + note_bytes("QEMU", 0, b"\x01" * 5))


def test_parse_names_types_offsets() -> None:
    data = _stream()
    notes = parse_notes(data, base_offset=0x1000, path="x")
    assert [n.name for n in notes] == ["CORE", "VMCOREINFO", "QEMU"]
    assert [n.type_name for n in notes] == ["NT_PRSTATUS", "VMCOREINFO", "QEMU_CPUSTATE"]
    assert notes[0].offset == 0x1000
    # header 12 + "CORE\0" padded to 8 + 336
    assert notes[1].offset == 0x1000 + 12 + 8 + PRSTATUS_X86_64_SIZE
    assert notes[1].desc_offset == notes[1].offset + 12 + 12  # "VMCOREINFO\0" -> 12
    assert bytes(notes[1].desc) == SAMPLE_VMCOREINFO.encode()
    assert len(notes[2].desc) == 5
    # desc_offset locates the descriptor bytes in the stream
    for n in notes:
        lo = n.desc_offset - 0x1000
        assert data[lo:lo + len(n.desc)] == bytes(n.desc)


def test_helpers() -> None:
    notes = parse_notes(_stream())
    vi = find_vmcoreinfo(notes)
    assert vi is not None and vi.name == "VMCOREINFO"
    assert len(prstatus_notes(notes)) == 1
    assert count_by_type(notes) == {"NT_PRSTATUS": 1, "VMCOREINFO": 1, "QEMU_CPUSTATE": 1}
    assert note_type_name("CORE", 2) == "NT_PRFPREG"
    assert note_type_name("LINUX", 0x202) == "NT_X86_XSTATE"
    assert note_type_name("XEN", 5) == "XEN:0x5"
    assert find_vmcoreinfo(parse_notes(note_bytes("VMCOREINFO", 1, b"x"))) is None


def test_decode_prstatus() -> None:
    (note,) = parse_notes(note_bytes("CORE", 1, prstatus_desc(42, rip=0xFFFFFFFF81234567,
                                                             rsp=0xFFFFC90000001000)))
    pr = decode_prstatus_x86_64(note)
    assert pr.pr_pid == 42
    assert pr.si_signo == 11 and pr.pr_cursig == 11
    assert pr.pr_reg.rip == 0xFFFFFFFF81234567
    assert pr.pr_reg.rsp == 0xFFFFC90000001000
    assert pr.pr_reg.r15 == 0 and pr.pr_reg.r14 == 1 and pr.pr_reg.gs == 26
    assert pr.pr_fpvalid == 1


def test_decode_prstatus_short_or_wrong() -> None:
    (short,) = parse_notes(note_bytes("CORE", NT_PRSTATUS, b"\0" * 100), base_offset=64)
    with pytest.raises(CorruptError) as ei:
        decode_prstatus_x86_64(short, path="f")
    assert ei.value.offset == 64 and ei.value.path == "f"
    (other,) = parse_notes(note_bytes("QEMU", 0, b"\0" * 400))
    with pytest.raises(CorruptError):
        decode_prstatus_x86_64(other)


def test_zero_padding_ends_stream() -> None:
    data = note_bytes("CORE", 1, prstatus_desc(1)) + b"\0" * 40
    assert len(parse_notes(data)) == 1
    assert len(parse_notes(note_bytes("CORE", 1, b"abcd") + b"\0\0\0")) == 1


def test_missing_desc_padding_tolerated() -> None:
    data = note_bytes("CORE", 5, b"abcde")[:-3]  # drop the padding of the last descriptor
    (n,) = parse_notes(data)
    assert bytes(n.desc) == b"abcde"


@pytest.mark.parametrize("cut", [1, 6, 11])
def test_truncated_header(cut: int) -> None:
    data = note_bytes("CORE", 1, b"abcd")
    data = data + data[:cut]
    with pytest.raises(CorruptError) as ei:
        parse_notes(data, base_offset=0x200, path="p")
    assert ei.value.offset == 0x200 + len(data) - cut
    assert ei.value.path == "p"


def test_desc_overflow() -> None:
    bad = struct.pack("<III", 5, 0x1000, 1) + b"CORE\0\0\0\0" + b"x" * 16
    data = note_bytes("CORE", 1, b"ok!!") + bad
    with pytest.raises(CorruptError) as ei:
        parse_notes(data, base_offset=100, path="p")
    assert ei.value.offset == 100 + len(note_bytes("CORE", 1, b"ok!!"))
    assert "descriptor size 4096" in str(ei.value)


def test_name_overflow() -> None:
    data = struct.pack("<III", 0xFFFFFFFF, 0, 1) + b"CORE"
    with pytest.raises(CorruptError) as ei:
        parse_notes(data, base_offset=8, path="p")
    assert ei.value.offset == 8
    assert "name size" in str(ei.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        notes = parse_notes(data)
    except CorruptError as exc:
        assert exc.offset is not None and 0 <= exc.offset < max(len(data), 1)
        return
    for n in notes:
        assert n.desc_offset + len(n.desc) <= len(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(_stream()) - 1),
       st.integers(min_value=0, max_value=255))
def test_mutations_never_crash(pos: int, byte: int) -> None:
    data = bytearray(_stream())
    data[pos] = byte
    try:
        parse_notes(bytes(data))
    except CorruptError as exc:
        assert exc.offset is not None


# -- real dumps: NT_PRSTATUS decoding against gdb --------------------------------------------------

def _gdb_registers(path: Path) -> dict[int, dict[str, int]]:
    """{LWP: {register: value}} as gdb reads them from the core's NT_PRSTATUS notes."""
    exe = shutil.which("gdb")
    if exe is None:
        pytest.skip("gdb is not installed")
    out = subprocess.run(
        [exe, "-nx", "-batch", "-c", str(path), "-ex",
         "thread apply all info registers rip rsp rbp rax rdi eflags"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "LC_ALL": "C"}).stdout
    regs: dict[int, dict[str, int]] = {}
    current: dict[str, int] | None = None
    for line in out.splitlines():
        m = re.match(r"Thread \d+ \(LWP (\d+)\):", line)
        if m:
            current = regs.setdefault(int(m.group(1)), {})
            continue
        if line.startswith("Thread "):
            current = None  # "process N": gdb's fallback for a pid it already used
            continue
        m = re.match(r"(\w+)\s+(0x[0-9a-f]+)", line)
        if m and current is not None:
            current[m.group(1)] = int(m.group(2), 16)
    return regs


@pytest.mark.parametrize(("fx", "key", "path"), fixture_params(("vmcore", "qemu_elf")))
def test_real_prstatus_matches_gdb(fx: Any, key: str, path: Path) -> None:
    with ElfCore.open(path) as core:
        decoded = [decode_prstatus_x86_64(n, path=str(path)) for n in prstatus_notes(core.notes)]
    assert decoded
    gdb = _gdb_registers(path)
    pids = [p.pr_pid for p in decoded]
    compared = 0
    for pr in decoded:
        if pr.pr_pid == 0 or pids.count(pr.pr_pid) > 1:
            continue  # gdb cannot tell these threads apart
        g = gdb[pr.pr_pid]
        r = pr.pr_reg
        assert (g["rip"], g["rsp"], g["rbp"], g["rax"], g["rdi"], g["eflags"]) == (
            r.rip, r.rsp, r.rbp, r.rax, r.rdi, r.eflags), pr.pr_pid
        compared += 1
    assert compared >= 1
