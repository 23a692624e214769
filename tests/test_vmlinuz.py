"""kdlayout.vmlinuz: bzImage payloads, every kernel compression, the ELF section reader.

Ground truth: pyelftools for ELF section tables; the compressors' own command-line tools (gzip, xz,
lzma, bzip2, zstd, lz4 -l: the kernel build's formats) for payloads; the uncompressed size the
kernel build appends to every payload; Debian's real vmlinuz images when the fixture cache has
them. Synthetic bytes (a bare setup header) only for parser and error-path tests.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Callable
from functools import cache
from io import BytesIO
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from btfbuild import sample
from kdlayout.btf import Btf, btf_from_image
from kdlayout.errors import CorruptError, KdlayoutError, MissingDataError, UnsupportedError
from kdlayout.vmlinuz import (
    decompress,
    detect_compression,
    elf_section,
    elf_sections,
    extract_vmlinux,
    is_bzimage,
    parse_setup_header,
)

CACHE = Path(os.environ.get("KDLAYOUT_CACHE", Path.home() / ".cache" / "kdlayout"))
DEBIAN = sorted((CACHE / "kernels").glob("*/vmlinuz"))
OBJCOPY = shutil.which("objcopy")


@cache
def real_elf_with_btf() -> bytes:
    """A real ELF (objcopy of /bin/true) carrying a small real-shaped .BTF section."""
    if OBJCOPY is None:
        pytest.skip("objcopy (binutils) not installed")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        btf = Path(d) / "x.btf"
        btf.write_bytes(sample()[0].build())
        out = Path(d) / "vmlinux"
        subprocess.run([OBJCOPY, "--add-section", f".BTF={btf}", "--set-section-flags",
                        ".BTF=alloc,readonly", shutil.which("true") or "/bin/true", str(out)],
                       check=True, capture_output=True)
        return out.read_bytes()


def bzimage(payload: bytes, *, setup_sects: int = 4, version: int = 0x20F,
            payload_offset: int = 0x3C0) -> bytes:
    """A minimal x86 boot image: setup sectors with the header fields, then the payload."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<II", setup, 0x248, payload_offset, len(payload))
    return bytes(setup) + bytes(payload_offset) + payload + bytes(64)


def size_append(data: bytes, raw: bytes) -> bytes:
    """The kernel build appends the uncompressed size (u32 LE) to every payload."""
    return data + struct.pack("<I", len(raw))


TOOLS: dict[str, list[str]] = {
    "gzip": ["gzip", "-n", "-9", "-c"],
    "xz": ["xz", "--check=crc32", "-c"],
    "lzma": ["lzma", "-9", "-c"],
    "bzip2": ["bzip2", "-9", "-c"],
    "zstd": ["zstd", "-19", "-c", "-q"],
    "lz4": ["lz4", "-l", "-9", "-c", "-q"],
}


def compress_with_tool(name: str, raw: bytes) -> bytes:
    cmd = TOOLS[name]
    if shutil.which(cmd[0]) is None:
        pytest.skip(f"the {cmd[0]} command is not installed")
    return subprocess.run(cmd, input=raw, check=True, capture_output=True).stdout


# --------------------------------------------------------------------------------------------
# ELF sections against pyelftools
# --------------------------------------------------------------------------------------------


def _elf_files() -> list[Path]:
    import sys

    cands = [Path(sys.executable).resolve(), Path("/bin/ls"), Path("/usr/bin/objcopy")]
    return [p for p in cands if p.exists() and p.read_bytes()[:4] == b"\x7fELF"]


@pytest.mark.parametrize("path", _elf_files(), ids=lambda p: p.name)
def test_elf_sections_match_pyelftools(path: Path) -> None:
    data = path.read_bytes()
    ours = elf_sections(data, source=str(path))
    theirs = list(ELFFile(BytesIO(data)).iter_sections())
    assert len(ours) == len(theirs) > 5
    for a, b in zip(ours, theirs, strict=True):
        assert (a.name, a.sh_offset, a.sh_size, a.sh_addr, a.sh_flags) == (
            b.name, b["sh_offset"], b["sh_size"], b["sh_addr"], b["sh_flags"])
        assert (a.sh_type == 8) == (b["sh_type"] == "SHT_NOBITS")


@pytest.mark.parametrize("path", _elf_files(), ids=lambda p: p.name)
def test_elf_section_contents_match_pyelftools(path: Path) -> None:
    data = path.read_bytes()
    elf = ELFFile(BytesIO(data))
    checked = 0
    for sec in elf.iter_sections():
        if sec.name and sec["sh_type"] not in ("SHT_NOBITS", "SHT_NULL"):
            off, body = elf_section(data, sec.name, source=str(path))
            assert off == sec["sh_offset"]
            assert bytes(body) == sec.data()
            checked += 1
    assert checked > 5
    with pytest.raises(MissingDataError):
        elf_section(data, ".no_such_section", source=str(path))


def test_elf_btf_section_from_objcopy() -> None:
    elf = real_elf_with_btf()
    _off, body = elf_section(elf, ".BTF", source="true+BTF")
    assert bytes(body) == sample()[0].build()
    btf = btf_from_image(elf, source="true+BTF")
    assert btf.find("page")


def _elf_hdr_fields(data: bytes) -> tuple[int, int, int, int]:
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    return shoff, shentsize, shnum, shstrndx


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d[:0x30], None),
    (lambda d: d[:0x28] + struct.pack("<Q", len(d) + 10) + d[0x30:], 0x20),
    (lambda d: d[:0x3C] + struct.pack("<H", 0xFFF0) + d[0x3E:], None),
    (lambda d: d[:0x3A] + struct.pack("<H", 8) + d[0x3C:], 0x2E),
    (lambda d: d[:0x3E] + struct.pack("<H", 0xFFF0) + d[0x40:], 0x3E),
    (lambda d: b"\x7fELF\x09" + d[5:], 4),
])
def test_elf_lies_are_corrupt(mutate: Callable[[bytes], bytes], where: int | None) -> None:
    data = mutate(real_elf_with_btf())
    with pytest.raises(CorruptError) as ei:
        elf_sections(data, source="liar.elf")
    assert ei.value.path == "liar.elf" and ei.value.offset is not None
    if where is not None:
        assert ei.value.offset == where


def test_elf_section_offset_past_end_is_corrupt() -> None:
    data = bytearray(real_elf_with_btf())
    shoff, shentsize, _shnum, _ = _elf_hdr_fields(bytes(data))
    # Make section 1 claim a huge size.
    struct.pack_into("<Q", data, shoff + shentsize + 0x20, 1 << 40)
    with pytest.raises(CorruptError) as ei:
        elf_sections(bytes(data), source="big.elf")
    assert ei.value.offset == shoff + shentsize


# --------------------------------------------------------------------------------------------
# bzImage payloads with the real compressors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", sorted(TOOLS))
def test_bzimage_every_codec(codec: str) -> None:
    if codec == "lz4":
        pytest.importorskip("lz4.block", reason="the lz4 Python package is not installed")
    raw = real_elf_with_btf() + os.urandom(3000)  # x86 appends relocations after the ELF
    payload = size_append(compress_with_tool(codec, raw), raw)
    img = bzimage(payload)
    assert is_bzimage(img)
    hdr = parse_setup_header(img, source="img")
    assert img[hdr.payload_start:hdr.payload_start + hdr.payload_length] == payload
    assert detect_compression(payload) == codec
    assert extract_vmlinux(img, source="img") == raw
    btf = btf_from_image(img, source="img")
    assert btf.member_offset("page", "b").bit_size == 5
    # The same stream without a setup header (a bare compressed vmlinux) is found by scanning.
    assert extract_vmlinux(b"junk" * 100 + payload, source="bare") == raw


def test_setup_sects_zero_means_four() -> None:
    raw = real_elf_with_btf()
    img = bzimage(size_append(gzip.compress(raw), raw), setup_sects=4)
    img0 = bytearray(img)
    img0[0x1F1] = 0
    hdr = parse_setup_header(bytes(img0), source="img0")
    assert hdr.pm_start == 5 * 512
    assert extract_vmlinux(bytes(img0), source="img0") == raw


def test_lzo_is_unsupported() -> None:
    img = bzimage(b"\x89LZO\x00\r\n\x1a\n" + bytes(100))
    with pytest.raises(UnsupportedError) as ei:
        extract_vmlinux(img, source="lzo.img")
    assert ei.value.path == "lzo.img" and ei.value.offset is not None


def test_unknown_compression_is_unsupported() -> None:
    img = bzimage(b"\x00\x01\x02\x03" + bytes(100))
    with pytest.raises(UnsupportedError) as ei:
        extract_vmlinux(img, source="what.img")
    assert ei.value.offset == parse_setup_header(img, source="x").payload_start


@pytest.mark.parametrize("field, value, cls, offset", [
    (0x206, struct.pack("<H", 0x206), UnsupportedError, 0x206),
    (0x248, struct.pack("<I", 0x7FFFFFFF), CorruptError, 0x248),
    (0x24C, struct.pack("<I", 0x7FFFFFFF), CorruptError, 0x248),
    (0x24C, struct.pack("<I", 0), CorruptError, 0x248),
    (0x1FE, b"\x00\x00", CorruptError, 0x1FE),
])
def test_lying_setup_header(field: int, value: bytes, cls: type[KdlayoutError],
                            offset: int) -> None:
    raw = real_elf_with_btf()
    img = bytearray(bzimage(size_append(gzip.compress(raw), raw)))
    img[field:field + len(value)] = value
    with pytest.raises(cls) as ei:
        extract_vmlinux(bytes(img), source="liar.img")
    assert ei.value.offset == offset and ei.value.path == "liar.img"


@pytest.mark.parametrize("codec", ["gzip", "xz", "bzip2", "zstd", "lzma"])
def test_damaged_stream_is_corrupt_in_bounded_time(codec: str) -> None:
    raw = real_elf_with_btf()
    comp = compress_with_tool(codec, raw)
    for cut in (len(comp) // 3, len(comp) - 8):
        t0 = time.perf_counter()
        img = bzimage(comp[:cut])
        with pytest.raises(KdlayoutError) as ei:
            extract_vmlinux(img, source="cut.img")
        assert isinstance(ei.value, CorruptError | MissingDataError)
        assert time.perf_counter() - t0 < 2
    flipped = bytearray(comp)
    flipped[len(flipped) // 2] ^= 0xFF
    try:
        out = extract_vmlinux(bzimage(bytes(flipped)), source="flip.img")
    except KdlayoutError as e:
        assert e.path == "flip.img"
    else:
        # Only a format without a checksum may "succeed", with other bytes.
        assert codec == "lzma" and out != raw


def test_decompression_is_bounded() -> None:
    bomb = gzip.compress(bytes(50 << 20))  # 50 MiB of zeros in ~50 KiB
    with pytest.raises(CorruptError) as ei:
        decompress(bomb, source="bomb", limit=1 << 20)
    assert "exceeds" in str(ei.value)
    with pytest.raises(CorruptError):
        extract_vmlinux(bzimage(bomb), source="bomb.img", limit=1 << 20)


def test_not_an_image() -> None:
    with pytest.raises(MissingDataError) as ei:
        extract_vmlinux(os.urandom(4096).replace(b"\x1f\x8b", b"xx"), source="noise")
    assert ei.value.path == "noise"
    with pytest.raises(CorruptError):
        parse_setup_header(b"\0" * 100, source="short")


# --------------------------------------------------------------------------------------------
# Debian kernels
# --------------------------------------------------------------------------------------------


@pytest.mark.fixtures
@pytest.mark.skipif(not DEBIAN, reason=f"no Debian kernels under {CACHE}/kernels "
                    "(built by tools/build_fixtures.py)")
@pytest.mark.parametrize("vmlinuz", DEBIAN, ids=[p.parent.name for p in DEBIAN])
def test_debian_vmlinuz(vmlinuz: Path) -> None:
    data = vmlinuz.read_bytes()
    hdr = parse_setup_header(data, source=str(vmlinuz))
    payload = data[hdr.payload_start:hdr.payload_start + hdr.payload_length]
    assert detect_compression(payload) in ("xz", "zstd", "gzip", "lz4", "lzma", "bzip2")
    elf = extract_vmlinux(data, source=str(vmlinuz))
    # The build appended the uncompressed size (vmlinux.bin plus relocations).
    assert len(elf) == struct.unpack_from("<I", payload, len(payload) - 4)[0]
    theirs = ELFFile(BytesIO(elf))
    ours = elf_sections(elf, source=str(vmlinuz))
    assert [s.name for s in ours] == [s.name for s in theirs.iter_sections()]
    btf_sec = theirs.get_section_by_name(".BTF")
    assert btf_sec is not None
    off, body = elf_section(elf, ".BTF", source=str(vmlinuz))
    assert off == btf_sec["sh_offset"] and bytes(body) == btf_sec.data()
    btf = Btf.parse(body, source=str(vmlinuz))
    assert btf.nr_types > 50_000
    assert btf.find("page")


# --------------------------------------------------------------------------------------------
# ELF classes and byte orders made by objcopy; random mutation of images
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(OBJCOPY is None, reason="objcopy (binutils) not installed")
@pytest.mark.parametrize("target", ["elf32-i386", "elf32-big", "elf64-big", "elf64-x86-64"])
def test_elf_classes_and_byte_orders(target: str, tmp_path: Path) -> None:
    """objcopy wraps a BTF blob (of the ELF's byte order) as .BTF in ELF32/64, LE/BE."""
    assert OBJCOPY is not None
    big = target.endswith("-big")
    blob = sample()[0].build(big_endian=big)
    src = tmp_path / "x.btf"
    src.write_bytes(blob)
    out = tmp_path / "x.o"
    subprocess.run([OBJCOPY, "-I", "binary", "-O", target, "--rename-section", ".data=.BTF",
                    str(src), str(out)], check=True, capture_output=True)
    data = out.read_bytes()
    ours = elf_sections(data, source=target)
    theirs = list(ELFFile(BytesIO(data)).iter_sections())
    assert [(s.name, s.sh_offset, s.sh_size) for s in ours] == [
        (s.name, s["sh_offset"], s["sh_size"]) for s in theirs]
    assert bytes(elf_section(data, ".BTF", source=target)[1]) == blob
    btf = btf_from_image(data, source=target)
    assert btf.header.big_endian == big
    assert btf.member_offset("page", "c").bit_offset == 288


def _image_corpus() -> bytes:
    raw = sample()[0].build()
    payload = size_append(gzip.compress(raw), raw)
    return bzimage(payload, setup_sects=1, payload_offset=0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_image_corpus()) - 1), st.integers(0, 255)),
                min_size=1, max_size=6),
       st.integers(0, len(_image_corpus())))
def test_mutated_bzimage_fails_cleanly(pokes: list[tuple[int, int]], cut: int) -> None:
    img = bytearray(_image_corpus())
    for i, v in pokes:
        img[i] = v
    t0 = time.perf_counter()
    try:
        out = extract_vmlinux(bytes(img[:cut]), source="mutant.img")
        assert isinstance(out, bytes)
    except KdlayoutError as e:
        assert e.path == "mutant.img" and "\n" not in str(e)
    assert time.perf_counter() - t0 < 2


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_elf_fails_cleanly(data: st.DataObject) -> None:
    elf = bytearray(real_elf_with_btf())
    # Poke the ELF header and the section header table, where the lengths and offsets live.
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    region = st.one_of(st.integers(0, 0x3F), st.integers(shoff, len(elf) - 1))
    for _ in range(data.draw(st.integers(1, 6))):
        elf[data.draw(region)] = data.draw(st.integers(0, 255))
    t0 = time.perf_counter()
    try:
        elf_section(bytes(elf), ".BTF", source="mutant.elf")
    except KdlayoutError as e:
        assert e.path == "mutant.elf"
    assert time.perf_counter() - t0 < 2


def test_lzma_header_is_checked_before_decoding() -> None:
    raw = real_elf_with_btf()
    good = compress_with_tool("lzma", raw)
    assert decompress(good, source="ok") == raw
    for patch in (b"\x5d\x00\x00\x00\x00", b"\x5d\xff\xff\xff\xff", b"\xe1\x00\x00\x80\x00"):
        bad = patch + good[5:]
        with pytest.raises(KdlayoutError) as ei:
            decompress(bad, source="bad.lzma", offset=0x40)
        assert ei.value.offset == 0x40
    # A lying size field larger than the output limit.
    lying = good[:5] + struct.pack("<Q", 1 << 40) + good[13:]
    with pytest.raises(CorruptError):
        decompress(lying, source="big.lzma", limit=1 << 30)
