"""Page codecs: round trips against the reference compressors, bounded failure on bad data."""

from __future__ import annotations

import os
import sys
import time
import zlib

import pytest

from kdlayout import codecs
from kdlayout.errors import CorruptError, UnsupportedError

PAGE = 4096


def _page(seed: int) -> bytes:
    rnd = os.urandom(64)
    return (rnd + bytes(192)) * (PAGE // 256) if seed % 2 else os.urandom(PAGE)


def _compressor(flag: int):  # type: ignore[no-untyped-def]
    if flag == codecs.DUMP_DH_COMPRESSED_ZLIB:
        return zlib.compress
    if flag == codecs.DUMP_DH_COMPRESSED_LZO:
        lzo = pytest.importorskip("lzo", reason="python-lzo not installed")
        return lambda b: lzo.compress(b, 1, False)      # raw LZO1X, as makedumpfile -l writes
    if flag == codecs.DUMP_DH_COMPRESSED_SNAPPY:
        snappy = pytest.importorskip("snappy", reason="python-snappy not installed")
        return snappy.compress                          # raw snappy block, as makedumpfile -p
    zstandard = pytest.importorskip("zstandard", reason="zstandard not installed")
    return zstandard.ZstdCompressor().compress          # one frame, as makedumpfile -z


ALL = [codecs.DUMP_DH_COMPRESSED_ZLIB, codecs.DUMP_DH_COMPRESSED_LZO,
       codecs.DUMP_DH_COMPRESSED_SNAPPY, codecs.DUMP_DH_COMPRESSED_ZSTD]


@pytest.mark.parametrize("flag", ALL)
@pytest.mark.parametrize("seed", [0, 1])
def test_round_trip(flag: int, seed: int) -> None:
    page = _page(seed)
    comp = _compressor(flag)(page)
    assert codecs.decompress(flag, comp, PAGE) == page


@pytest.mark.parametrize("flag", ALL)
def test_wrong_length_is_corrupt(flag: int) -> None:
    page = _page(1)
    comp = _compressor(flag)(page[:2048])
    with pytest.raises(CorruptError):
        codecs.decompress(flag, comp, PAGE)


@pytest.mark.parametrize("flag", ALL)
def test_garbage_and_truncation_are_corrupt(flag: int) -> None:
    page = _page(1)
    comp = _compressor(flag)(page)
    for bad in (comp[: len(comp) // 2], b"\xff" * 64, b""):
        with pytest.raises(CorruptError):
            codecs.decompress(flag, bad, PAGE)


def test_zlib_bomb_is_bounded() -> None:
    bomb = zlib.compress(bytes(16 << 20), 9)        # 16 MiB of zeros in ~16 KiB
    t0 = time.monotonic()
    with pytest.raises(CorruptError, match="more than 4096"):
        codecs.decompress(codecs.DUMP_DH_COMPRESSED_ZLIB, bomb, PAGE)
    assert time.monotonic() - t0 < 1.0


def test_zlib_trailing_page_exact() -> None:
    # A stream whose end marker sits after exactly one page must still be accepted.
    page = bytes(PAGE)
    assert codecs.decompress(codecs.DUMP_DH_COMPRESSED_ZLIB, zlib.compress(page), PAGE) == page


def test_snappy_lying_length_rejected_before_decompressing() -> None:
    pytest.importorskip("snappy", reason="python-snappy not installed")
    # varint 0x7fffffff then junk: would ask for 2 GiB
    data = b"\xff\xff\xff\xff\x07" + b"\x00" * 16
    with pytest.raises(CorruptError, match="declares"):
        codecs.decompress(codecs.DUMP_DH_COMPRESSED_SNAPPY, data, PAGE)


def test_zstd_lying_content_size_rejected() -> None:
    zstandard = pytest.importorskip("zstandard", reason="zstandard not installed")
    data = zstandard.ZstdCompressor().compress(bytes(3 * PAGE))
    with pytest.raises(CorruptError, match="declares"):
        codecs.decompress(codecs.DUMP_DH_COMPRESSED_ZSTD, data, PAGE)


def test_raw_page() -> None:
    page = _page(0)
    assert codecs.decompress(0, page, PAGE) == page
    with pytest.raises(CorruptError):
        codecs.decompress(0, page[:100], PAGE)


def test_flags() -> None:
    assert codecs.codec_for_flags(0) is None
    codec = codecs.codec_for_flags(codecs.DUMP_DH_COMPRESSED_ZSTD)
    assert codec is not None and codec.name == "zstd"
    with pytest.raises(CorruptError, match="more than one"):
        codecs.codec_for_flags(codecs.DUMP_DH_COMPRESSED_ZLIB | codecs.DUMP_DH_COMPRESSED_LZO)
    with pytest.raises(UnsupportedError, match="unknown"):
        codecs.codec_for_flags(0x40)


@pytest.mark.parametrize(("flag", "module", "package"), [
    (codecs.DUMP_DH_COMPRESSED_LZO, "lzo", "python-lzo"),
    (codecs.DUMP_DH_COMPRESSED_SNAPPY, "snappy", "python-snappy"),
    (codecs.DUMP_DH_COMPRESSED_ZSTD, "zstandard", "zstandard"),
])
def test_missing_package_names_pip_package(monkeypatch: pytest.MonkeyPatch, flag: int,
                                           module: str, package: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)      # makes "import module" fail
    monkeypatch.setattr(codecs, "_modules", {})
    with pytest.raises(UnsupportedError, match=f"pip install {package}"):
        codecs.decompress(flag, b"\x00" * 16, PAGE)
    with pytest.raises(UnsupportedError):
        codecs.require(flag)
