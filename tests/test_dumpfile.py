"""Format detection by magic and the open_dump dispatcher."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from kdlayout.dumpfile import detect_format, open_dump
from kdlayout.elfcore import ElfCore
from kdlayout.errors import CorruptError, KdlayoutError, UnsupportedError
from realdumps import SEABIOS, fixture_params, qemu_firmware_dumps
from synth import default_core


@pytest.mark.parametrize(("head", "kind"), [
    (b"\x7fELF\x02\x01\x01" + b"\0" * 9, "elf"),
    (b"KDUMP   \x06\0\0\0" + b"\0" * 4, "diskdump"),
    (b"DISKDUMP" + b"\0" * 8, "diskdump"),
    (b"makedumpfile\0\0\0\0", "flattened"),
])
def test_detect(head: bytes, kind: str) -> None:
    assert detect_format(head, path="x") == kind


@pytest.mark.parametrize("head", [
    b"makedumpfileXYZW",  # signature field not NUL padded
    b"makedumpfile",      # file shorter than the 16-byte field
    b"KDUMP  ",           # 7 bytes
    b"\x7fEL",
    b"root:x:0:0:root:/root:/bin/bash",
    b"\0" * 16,
])
def test_detect_rejects(head: bytes) -> None:
    with pytest.raises(CorruptError) as ei:
        detect_format(head, path="x")
    assert ei.value.offset == 0 and ei.value.path == "x"
    assert "not a crash dump" in str(ei.value)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty"
    p.write_bytes(b"")
    with pytest.raises(CorruptError) as ei:
        open_dump(p)
    assert ei.value.offset == 0 and ei.value.path == str(p)
    assert "empty" in str(ei.value)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError):
        open_dump(tmp_path)


def test_open_elf(tmp_path: Path) -> None:
    p = tmp_path / "core"
    p.write_bytes(default_core().data)
    with open_dump(p) as mem:
        assert isinstance(mem, ElfCore)
        assert mem.info.path == str(p)
        assert mem.total_bytes() == 0x8000


@pytest.mark.parametrize(("head", "module"), [(b"KDUMP   ", "diskdump"),
                                              (b"makedumpfile\0\0\0\0", "flattened")])
def test_missing_reader_is_unsupported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       head: bytes, module: str) -> None:
    p = tmp_path / "dump"
    p.write_bytes(head + b"\0" * 4096)
    real_import = importlib.import_module

    def fake_import(name: str, package: str | None = None) -> Any:
        if name == f"kdlayout.{module}":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(UnsupportedError) as ei:
        open_dump(p)
    assert ei.value.path == str(p) and ei.value.offset == 0


@pytest.mark.parametrize("head", [b"KDUMP   ", b"makedumpfile\0\0\0\0"])
def test_dispatch_to_other_readers(tmp_path: Path, head: bytes) -> None:
    # A signature followed by nothing valid: whichever reader gets it must refuse it cleanly
    # (CorruptError from the reader, or UnsupportedError when the reader is not available).
    p = tmp_path / "dump"
    p.write_bytes(head + b"\0" * 100)
    with pytest.raises(KdlayoutError) as ei:
        open_dump(p)
    assert "not a crash dump" not in str(ei.value)
    assert str(p) in str(ei.value)


EXPECTED_KIND = {"vmcore": "elf", "qemu_elf": "elf", "qemu_kdump": "flattened",
                 "md_zlib": "diskdump", "md_lzo": "diskdump", "md_snappy": "diskdump",
                 "md_zstd": "diskdump", "md_flat": "flattened"}


@pytest.mark.parametrize(("fx", "key", "path"), fixture_params(tuple(EXPECTED_KIND)))
def test_real_detection(fx: Any, key: str, path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(16)
    assert detect_format(head, path=str(path)) == EXPECTED_KIND[key]


def test_qemu_outputs_detected(tmp_path_factory: pytest.TempPathFactory) -> None:
    dumps = qemu_firmware_dumps(tmp_path_factory.getbasetemp() / "qemu")
    with dumps["elf"].open("rb") as f:
        assert detect_format(f.read(16), path="q") == "elf"
    # QEMU writes kdump-* formats in makedumpfile's flattened layout
    with dumps["kdump_zlib"].open("rb") as f:
        assert detect_format(f.read(16), path="q") == "flattened"
    with open_dump(dumps["elf"]) as mem:
        assert isinstance(mem, ElfCore) and mem.info.format == "elf-qemu"


def test_qemu_elf_and_kdump_agree_on_firmware(tmp_path_factory: pytest.TempPathFactory) -> None:
    # The same guest dumped twice by QEMU: the ELF (our reader) and the kdump-zlib file (the
    # flattened reader, via open_dump) must both hold SeaBIOS just below 4 GiB.
    if not SEABIOS.exists():
        pytest.skip(f"{SEABIOS} is not installed (package seabios)")
    dumps = qemu_firmware_dumps(tmp_path_factory.getbasetemp() / "qemu")
    rom = SEABIOS.read_bytes()
    for key in ("elf", "kdump_zlib"):
        with open_dump(dumps[key]) as mem:
            assert mem.read((1 << 32) - len(rom), len(rom)) == rom, key
