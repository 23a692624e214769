"""VMCOREINFO text parser (synthetic text for parsing rules; real dumps in test_elfcore/test_info)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdlayout.dumpfile import open_dump
from kdlayout.errors import CorruptError, MissingDataError
from kdlayout.notes import find_vmcoreinfo, parse_notes
from kdlayout.vmcoreinfo import VmcoreInfo
from realdumps import fixture_params
from synth import SAMPLE_VMCOREINFO, note_bytes


def test_typed_accessors() -> None:
    vi = VmcoreInfo.parse(SAMPLE_VMCOREINFO.encode(), path="v")
    assert vi.osrelease == "6.1.0-synthetic-amd64"
    assert vi.build_id == "0123456789abcdef0123456789abcdef01234567"
    assert vi.page_size == 4096
    assert vi.symbol("init_uts_ns") == 0xFFFFFFFF82C13440
    assert vi.symbol("nope") is None
    assert vi.offset("page", "_refcount") == 52
    assert vi.offset("page", "nope") is None
    assert vi.size("page") == 64
    assert vi.length("zone.free_area") == 11
    assert vi.number("PAGE_BUDDY_MAPCOUNT_VALUE") == -129
    assert vi.number("NR_FREE_PAGES") == 0
    assert vi.phys_base == 469762048
    assert VmcoreInfo.parse(b"NUMBER(phys_base)=-283115520\n").phys_base == 0xFFFFFFFFEF200000
    assert vi.kernel_offset == 0x1E000000
    assert vi.crash_time == 1700000000
    assert vi.get("SIZE(page)") == "64"
    assert "OSRELEASE" in vi and len(vi) == 18
    assert vi.warnings == ()
    assert vi.require_symbol("mem_section") == 0xFFFF888237FD2000
    with pytest.raises(MissingDataError):
        vi.require_symbol("absent")


def test_line_offsets() -> None:
    text = SAMPLE_VMCOREINFO.encode()
    vi = VmcoreInfo.parse(text, base_offset=0x500)
    for line in vi.lines:
        lo = line.offset - 0x500
        assert text[lo:].startswith(f"{line.key}={line.value}".encode())
    assert vi.where("PAGESIZE") == 0x500 + text.index(b"PAGESIZE=")


def test_hex_numbers_and_config() -> None:
    vi = VmcoreInfo.parse(b"NUMBER(PAGE_OFFSET)=0xffff888000000000\nNUMBER(VA_BITS)=48\n"
                          b"CONFIG_KALLSYMS=y\nSYMBOL(x)=0xffffffff81000000\n")
    assert vi.number("PAGE_OFFSET") == 0xFFFF888000000000
    assert vi.number("VA_BITS") == 48
    assert vi.config("KALLSYMS") == "y" and vi.config("CONFIG_KALLSYMS") == "y"
    assert vi.symbol("x") == 0xFFFFFFFF81000000


def test_garbage_lines_are_warnings() -> None:
    text = (b"OSRELEASE=6.1\n"
            b"garbage without equals\n"
            b"\xff\xfe\xfd=bad utf8\n"
            b"SIZE(page)=sixty-four\n"
            b"=novalue\n"
            b"PAGESIZE=4096\n")
    vi = VmcoreInfo.parse(text, base_offset=10)
    assert vi.osrelease == "6.1" and vi.page_size == 4096
    assert vi.size("page") is None and vi.get("SIZE(page)") == "sixty-four"
    offsets = sorted(w.offset for w in vi.warnings)
    assert offsets == [10 + text.index(b"garbage"), 10 + text.index(b"\xff"),
                       10 + text.index(b"SIZE"), 10 + text.index(b"=novalue")]


def test_nul_padded_tail_and_crlf() -> None:
    vi = VmcoreInfo.parse(b"OSRELEASE=5.10.0\r\nPAGESIZE=4096\n" + b"\0" * 300)
    assert vi.osrelease == "5.10.0" and vi.page_size == 4096 and vi.warnings == ()
    vi = VmcoreInfo.parse(b"PAGESIZE=4096\n\0\0junk")
    assert len(vi.warnings) == 1 and vi.page_size == 4096


def test_duplicate_key_last_wins_with_warning() -> None:
    vi = VmcoreInfo.parse(b"CRASHTIME=1\nCRASHTIME=2\n")
    assert vi.crash_time == 2
    assert len(vi.warnings) == 1


def test_from_note_uses_file_offsets() -> None:
    stream = note_bytes("VMCOREINFO", 0, SAMPLE_VMCOREINFO.encode())
    (note,) = parse_notes(stream, base_offset=0x1000)
    vi = VmcoreInfo.from_note(note, path="core")
    assert vi.base_offset == 0x1000 + 12 + 12
    assert vi.path == "core"
    first = vi.lines[0]
    assert stream[first.offset - 0x1000:].startswith(b"OSRELEASE=")


def test_from_file(tmp_path: Path) -> None:
    p = tmp_path / "vmcoreinfo.txt"
    p.write_bytes(SAMPLE_VMCOREINFO.encode())
    vi = VmcoreInfo.from_file(p)
    assert vi.symbol("vmemmap_base") == 0xFFFFFFFF82A2A100
    big = tmp_path / "big"
    big.write_bytes(b"A=1\n" * 300000)
    with pytest.raises(CorruptError) as ei:
        VmcoreInfo.from_file(big)
    assert ei.value.path == str(big)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(data: bytes) -> None:
    vi = VmcoreInfo.parse(data, base_offset=7)
    for w in vi.warnings:
        assert 7 <= w.offset <= 7 + len(data)
    for line in vi.lines:
        assert "=" not in line.key


# -- real dumps: against drgn (libkdumpfile) and crash ---------------------------------------------

@pytest.mark.parametrize(("fx", "key", "path"),
                         fixture_params(("vmcore", "qemu_elf", "md_zlib", "md_flat")))
def test_real_vmcoreinfo_matches_drgn_and_crash(fx: Any, key: str, path: Path) -> None:
    with open_dump(path) as mem:
        note = find_vmcoreinfo(mem.notes)
        raw = mem.vmcoreinfo
    if note is None and raw is None:
        assert key == "qemu_elf", "kexec vmcores and makedumpfile outputs carry VMCOREINFO"
        pytest.skip(f"{path.name}: QEMU dumped without the guest's VMCOREINFO")
    if note is not None:
        vi = VmcoreInfo.from_note(note, path=str(path))
    else:
        vi = VmcoreInfo.parse(raw or b"")
    assert vi.warnings == (), vi.warnings
    assert vi.osrelease == fx.release
    assert vi.page_size == 4096
    assert vi.symbol("init_uts_ns") is not None and vi.size("page") is not None
    # the LA57 fixture's guest ran 5-level paging, the others a CPU without LA57
    assert vi.kernel_offset is not None
    assert vi.number("pgtable_l5_enabled") == (1 if fx.manifest.get("paging_levels") == 5 else 0)
    # the lines are the whole text, in order
    text = (bytes(note.desc) if note is not None else raw or b"").split(b"\0", 1)[0].decode()
    assert "".join(f"{ln.key}={ln.value}\n" for ln in vi.lines) == text

    drgn = pytest.importorskip("drgn")
    prog = drgn.Program()
    prog.set_core_dump(str(path))
    theirs = bytes(prog["VMCOREINFO"].value_()).split(b"\0", 1)[0].decode()
    assert theirs == text
    assert prog["UTS_RELEASE"].string_().decode() == vi.osrelease
    assert prog["PAGE_SIZE"].value_() == vi.page_size

    crash = shutil.which("crash")
    if crash is not None and key == "vmcore":
        out = subprocess.run([crash, "--osrelease", str(path)], capture_output=True, text=True,
                             timeout=120, check=False)
        assert out.stdout.strip() == vi.osrelease
