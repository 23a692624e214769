"""``kdlayout info``: output on good input, one-line errors with exit 2 on bad input."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kdlayout.cli import main
from kdlayout.commands.info import collect, print_text
from kdlayout.dumpfile import open_dump
from realdumps import fixture_params, qemu_firmware_dumps, readelf_loads, readelf_note_count
from synth import Seg, build_core, default_core

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kdlayout.cli", *args], capture_output=True,
                          text=True, timeout=60, env=ENV, check=False)


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_json_on_synthetic_core(tmp_path: Path) -> None:
    p = _write(tmp_path, "core", default_core(xnum=True).data)
    res = _run("info", "--json", str(p))
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["format"] == "elf-qemu" and d["arch"] == "x86_64"
    assert d["release"] == "6.1.0-synthetic-amd64" and d["release_source"] == "vmcoreinfo"
    assert d["build_id"] == "0123456789abcdef0123456789abcdef01234567"
    assert d["crash_time"] == {"epoch": 1700000000, "iso": "2023-11-14T22:13:20Z"}
    assert d["nr_cpus"] == 2 and d["nr_cpus_source"] == "prstatus"
    assert d["page_size"] == 4096
    assert d["memory"]["count"] == 2
    assert d["memory"]["total_bytes"] == 0x8000 and d["memory"]["total_pages"] == 8
    assert d["memory"]["ranges"][1] == {"start": 0x10000, "end": 0x12000, "size": 0x2000}
    assert d["notes"] == {"count": 3, "types": {"NT_PRSTATUS": 2, "VMCOREINFO": 1}}
    vi = d["vmcoreinfo"]
    assert vi["keys"] == 18 and vi["kernel_offset"] == 0x1E000000
    assert vi["symbols"]["init_uts_ns"] == 0xFFFFFFFF82C13440
    assert d["cpus"] == [{"pid": 1, "rip": 0xFFFFFFFF81000000, "rsp": 0xFFFFC90000003F00},
                         {"pid": 2, "rip": 0xFFFFFFFF81000000, "rsp": 0xFFFFC90000003F00}]
    assert set(d) == {"path", "format", "arch", "release", "release_source", "build_id",
                      "crash_time", "page_size", "nr_cpus", "nr_cpus_source", "cpus", "dump_level",
                      "incomplete", "memory", "notes", "vmcoreinfo", "extra"}


def test_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _write(tmp_path, "core", default_core().data)
    assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert "format:      elf-kexec" in out
    assert "6.1.0-synthetic-amd64" in out
    assert "2023-11-14T22:13:20Z" in out
    assert "memory: 2 range(s), 32768 bytes" in out
    assert "0x10000" in out and "0x12000" in out
    assert "KERNELOFFSET=0x1e000000" in out


def test_text_range_limit(tmp_path: Path) -> None:
    p = _write(tmp_path, "core", default_core().data)
    with open_dump(p) as mem:
        d = collect(mem)
    d["memory"]["ranges"] = d["memory"]["ranges"] * 40
    d["memory"]["count"] = 80
    buf = io.StringIO()
    print_text(d, buf)
    assert "... 48 more (--all-ranges)" in buf.getvalue()
    buf = io.StringIO()
    print_text(d, buf, all_ranges=True)
    assert "more" not in buf.getvalue()


def _bad_inputs() -> list[tuple[str, bytes]]:
    good = default_core().data
    xnum = default_core(xnum=True).data
    beyond = bytearray(good)
    struct.pack_into("<Q", beyond, 64 + 56 * 2 + 8, len(good))  # PT_LOAD #2 p_offset at EOF
    no_shdr = bytearray(xnum)
    struct.pack_into("<Q", no_shdr, 0x28, 0)
    return [
        ("empty", b""),
        ("random", bytes(range(256)) * 3),
        ("truncated-ehdr", good[:40]),
        ("truncated-phdr", good[:64 + 56 + 20]),
        ("truncated-notes", good[:64 + 5 * 56 + 100]),
        ("load-beyond-eof", bytes(beyond)),
        ("xnum-no-shdr", bytes(no_shdr)),
        ("flattened-garbage", b"makedumpfile\0\0\0\0" + b"\xff" * 64),
        ("kdump-garbage", b"KDUMP   " + b"\xff" * 64),
    ]


@pytest.mark.parametrize(("name", "data"), _bad_inputs(), ids=[n for n, _ in _bad_inputs()])
def test_bad_input_one_line_exit_2(tmp_path: Path, name: str, data: bytes) -> None:
    p = _write(tmp_path, name, data)
    res = _run("info", str(p))
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert lines[0].startswith(f"kdlayout: {p}")
    if name.startswith(("empty", "random", "truncated", "load", "xnum")):
        assert "offset 0x" in lines[0]
    assert res.stdout == ""


def test_missing_file_exit_2(tmp_path: Path) -> None:
    res = _run("info", str(tmp_path / "nope"))
    assert res.returncode == 2
    assert len(res.stderr.splitlines()) == 1 and "Traceback" not in res.stderr


@pytest.mark.parametrize(("fx", "key", "path"), fixture_params(("vmcore", "qemu_elf")))
def test_real_info(fx: Any, key: str, path: Path) -> None:
    res = _run("info", "--json", str(path))
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["format"] == ("elf-kexec" if key == "vmcore" else "elf-qemu")
    if key == "vmcore" or d["vmcoreinfo"] is not None:
        assert d["release"] == fx.release
        assert d["build_id"] and len(d["build_id"]) >= 40
    assert d["nr_cpus"] == readelf_note_count(path, "NT_PRSTATUS")
    # stored bytes = union of [p_paddr, p_paddr + p_filesz) of readelf's PT_LOAD rows
    spans = sorted((paddr, paddr + filesz) for _o, _v, paddr, filesz, _m in readelf_loads(path)
                   if filesz and paddr != 0xFFFFFFFFFFFFFFFF)
    total, cur_lo, cur_hi = 0, -1, -1
    for lo, hi in spans:
        if lo > cur_hi:
            total += max(0, cur_hi - cur_lo)
            cur_lo, cur_hi = lo, hi
        else:
            cur_hi = max(cur_hi, hi)
    total += max(0, cur_hi - cur_lo)
    assert d["memory"]["total_bytes"] == total
    text = _run("info", str(path))
    assert text.returncode == 0 and fx.release in text.stdout


def test_info_on_qemu_dump(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = qemu_firmware_dumps(tmp_path_factory.getbasetemp() / "qemu")["elf"]
    res = _run("info", "--json", str(path))
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["format"] == "elf-qemu"
    assert d["nr_cpus"] == readelf_note_count(path, "NT_PRSTATUS") == 2
    assert d["vmcoreinfo"] is None and d["release"] is None
    assert d["memory"]["ranges"][0] == {"start": 0, "end": 64 << 20, "size": 64 << 20}
    assert d["notes"]["types"] == {"NT_PRSTATUS": 2, "QEMU_CPUSTATE": 2}


def test_closed_pipe_is_quiet(tmp_path: Path) -> None:
    # 3000 separate ranges: far more JSON than a pipe buffers, and the reader stops after 100 bytes
    segs = [Seg(i * 0x2000, b"\xaa" * 16) for i in range(3000)]
    p = _write(tmp_path, "many", build_core(segs).data)
    proc = subprocess.Popen([sys.executable, "-m", "kdlayout.cli", "info", "--json", str(p)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    assert proc.stdout is not None and proc.stderr is not None
    head = proc.stdout.read(100)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0
    assert head.startswith(b"{")
    assert err == ""
