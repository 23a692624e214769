"""kdump-compressed reader.

Synthetic images (tests/diskdump_synth.py) drive the parser and every error path; real files from
the fixture matrix are checked page by page against drgn (libkdumpfile) and the source ELF vmcore
in tests/test_diskdump_real section below.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import diskdump_synth as synth
import kdump_oracles as oracles
from kdlayout import codecs
from kdlayout.diskdump import (
    PAGE_DESC_SIZE,
    BytesSource,
    DiskDump,
    Rank,
    bit_runs,
)
from kdlayout.errors import CorruptError, KdlayoutError, NotInDumpError, UnsupportedError

PS = synth.BLOCK


def _pages() -> dict[int, bytes]:
    pages = {p: synth.pattern_page(p) for p in (0, 1, 2, 3, 10, 11, 12, 40, 63)}
    pages[5] = bytes(PS)
    pages[41] = bytes(PS)
    return pages


def _open(data: bytes | bytearray, path: str = "synth.kdump") -> DiskDump:
    return DiskDump(BytesSource(bytes(data), path))


def _read_all(d: DiskDump, pages: dict[int, bytes]) -> None:
    for pfn in pages:
        d.read_page(pfn)


def _located(exc: KdlayoutError, path: str = "synth.kdump") -> None:
    text = str(exc)
    assert text.startswith(f"{path}: offset 0x"), text
    assert "\n" not in text
    assert exc.path == path and exc.offset is not None


# ---- happy paths


@pytest.mark.parametrize("method", [synth.FLAG_ZLIB, synth.FLAG_LZO, synth.FLAG_SNAPPY,
                                    synth.FLAG_ZSTD])
def test_reads_every_page(method: int) -> None:
    try:
        codecs.require(method)
    except UnsupportedError as exc:
        pytest.skip(f"codec package missing here: {exc}")
    pages = _pages()
    img = synth.build(pages, method=method, raw_pfns=[3])
    d = _open(img.data)
    for pfn, data in pages.items():
        assert d.read_page(pfn) == data
    assert d.info.format == "diskdump"
    assert d.info.extra["compression"] == method


def test_header_fields() -> None:
    img = synth.build(_pages(), release="6.12.9-amd64", nr_cpus=3, dump_level=17)
    d = _open(img.data)
    assert d.header.signature == b"KDUMP   "
    assert d.header.header_version == 6
    assert d.release == "6.12.9-amd64" == d.info.release
    assert d.header.utsname.machine == "x86_64" == d.info.arch
    assert d.nr_cpus == 3 == d.info.nr_cpus
    assert d.dump_level == 17 == d.info.dump_level
    assert d.phys_base == 0x1000000
    assert d.header.block_size == PS
    assert d.max_mapnr == 64
    assert d.num_dumpable == len(_pages())
    assert d.vmcoreinfo == img.vmcoreinfo
    assert not d.info.incomplete


def test_notes_are_parsed() -> None:
    img = synth.build(_pages(), nr_cpus=2)
    d = _open(img.data)
    names = [(n.name, n.type) for n in d.notes]
    assert names == [("CORE", 1), ("CORE", 1), ("VMCOREINFO", 0)]
    assert bytes(d.notes[2].desc) == img.vmcoreinfo
    assert d.note_offset == PS + 104


def test_ranges_and_bitmaps() -> None:
    pages = _pages()
    d = _open(synth.build(pages).data)
    got = [(r.start // PS, r.size // PS) for r in d.ranges()]
    assert got == [(0, 4), (5, 1), (10, 3), (40, 2), (63, 1)]
    pfns = np.arange(64)
    assert set(pfns[d.is_dumped(pfns)].tolist()) == set(pages)
    assert d.is_in_memory(pfns).all()
    assert d.desc_index(np.array([0, 4, 5, 63, 64, -1])).tolist() == [0, -1, 4, 10, -1, -1]
    assert d.dumped_pfns().tolist() == sorted(pages)
    assert d.dumped_pfns(3, 11).tolist() == [3, 5, 10]
    assert d.contains(10 * PS, 3 * PS) and not d.contains(10 * PS, 4 * PS)


def test_zero_pages_share_one_descriptor_and_read_as_zeros() -> None:
    img = synth.build(_pages())
    d = _open(img.data)
    k = d.desc_index(np.array([5, 41]))
    desc = d.descriptors(int(k[0]), 1)[0], d.descriptors(int(k[1]), 1)[0]
    assert desc[0]["offset"] == desc[1]["offset"] == img.zero_offset == img.data_offset
    assert desc[0]["size"] == PS and desc[0]["flags"] == 0
    assert d.read_page(5) == bytes(PS) == d.read_page(41)


def test_read_across_pages_and_excluded() -> None:
    pages = _pages()
    d = _open(synth.build(pages).data)
    assert d.read(10 * PS + 4000, 300) == pages[10][4000:] + pages[11][:204]
    assert d.read(0, 4 * PS) == b"".join(pages[p] for p in range(4))
    for paddr, size in ((4 * PS, 1), (3 * PS + 10, PS), (64 * PS, 8), (62 * PS, 2 * PS)):
        with pytest.raises(NotInDumpError) as ei:
            d.read(paddr, size)
        assert ei.value.paddr == paddr
    assert d.view(PS, 16).tolist() == list(pages[1][:16])


def test_big_endian_header_is_detected() -> None:
    # Only the header word order is checked here: a big-endian version field is accepted.
    img = synth.build(_pages())
    data = bytearray(img.data)
    struct.pack_into(">i", data, 8, 6)
    with pytest.raises(KdlayoutError):      # the rest is still little-endian, so it is corrupt
        _open(data)


def test_split_range_limits_dumpable() -> None:
    pages = {p: synth.pattern_page(p) for p in range(8, 16)}
    img = synth.build(pages)
    data = bytearray(img.data)
    struct.pack_into("<i", data, PS + synth.SUB_FIELD["split"], 1)
    struct.pack_into("<QQ", data, PS + 80, 8, 16)      # start_pfn_64, end_pfn_64
    d = _open(data)
    assert d.split_range == (8, 16)
    assert d.read_page(9) == pages[9]


# ---- error paths


def test_header_version_7_is_unsupported() -> None:
    data = bytearray(synth.build(_pages()).data)
    struct.pack_into("<i", data, 8, 7)
    with pytest.raises(UnsupportedError, match="version 7") as ei:
        _open(data)
    _located(ei.value)
    assert ei.value.offset == 8


def test_old_diskdump_signature_is_unsupported() -> None:
    data = bytearray(synth.build(_pages()).data)
    data[:8] = b"DISKDUMP"
    with pytest.raises(UnsupportedError, match="DISKDUMP"):
        _open(data)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("header_version", 0, "header_version"),
    ("block_size", 4095, "block_size"),
    ("block_size", 0, "block_size"),
    ("sub_hdr_size", 0, "sub_hdr_size"),
    ("sub_hdr_size", 1 << 30, "sub_hdr_size"),
    ("bitmap_blocks", 0, "bitmap_blocks"),
    ("bitmap_blocks", 0x7FFFFFFF, "bitmaps"),            # lying: far past the end of the file
    ("nr_cpus", -1, "nr_cpus"),
    ("nr_cpus", 1 << 20, "nr_cpus"),
])
def test_lying_header_fields(field: str, value: int, match: str) -> None:
    data = bytearray(synth.build(_pages()).data)
    struct.pack_into("<i" if value < 0 or field != "bitmap_blocks" else "<I", data,
                     synth.HEADER_FIELD[field], value)
    with pytest.raises(CorruptError, match=match) as ei:
        _open(data)
    _located(ei.value)


def test_bitmap_too_small_for_max_mapnr() -> None:
    data = bytearray(synth.build(_pages()).data)
    struct.pack_into("<Q", data, PS + synth.SUB_FIELD["max_mapnr_64"], 1 << 40)
    with pytest.raises(CorruptError, match="cannot hold max_mapnr") as ei:
        _open(data)
    _located(ei.value)


def test_vmcoreinfo_area_beyond_eof() -> None:
    data = bytearray(synth.build(_pages()).data)
    struct.pack_into("<q", data, PS + synth.SUB_FIELD["offset_vmcoreinfo"], 1 << 40)
    with pytest.raises(CorruptError, match="vmcoreinfo") as ei:
        _open(data)
    assert ei.value.offset == PS + synth.SUB_FIELD["offset_vmcoreinfo"]


def _boundaries(img: synth.Image) -> list[int]:
    first_data = img.data_offset + PS            # after the shared zero page
    return sorted({0, 7, 8, 100, 463, 464, PS - 1, PS, PS + 50, PS + 103, img.bitmap_offset,
                   img.bitmap_offset + 1, img.desc_offset - 1, img.desc_offset,
                   img.desc_offset + 10, img.desc_offset + PAGE_DESC_SIZE, img.data_offset - 1,
                   img.data_offset, img.data_offset + 100, first_data, first_data + 5,
                   len(img.data) - 1})


def test_truncated_at_every_boundary() -> None:
    pages = _pages()
    img = synth.build(pages)
    t0 = time.monotonic()
    for cut in _boundaries(img):
        with pytest.raises(CorruptError) as ei:
            d = _open(img.data[:cut])
            _read_all(d, pages)
        _located(ei.value)
        assert ei.value.offset is not None and ei.value.offset <= max(cut, img.desc_offset), cut
    assert time.monotonic() - t0 < 5


def test_short_descriptor_table() -> None:
    img = synth.build(_pages())
    with pytest.raises(CorruptError, match="descriptor table") as ei:
        _open(img.data[:img.desc_offset + 5 * PAGE_DESC_SIZE])
    assert ei.value.offset == img.desc_offset


def test_descriptor_beyond_eof() -> None:
    pages = _pages()
    img = synth.build(pages)
    data = bytearray(img.data)
    struct.pack_into("<q", data, img.desc_of[11], len(data) - 10)
    d = _open(data)
    assert d.read_page(10) == pages[10]
    with pytest.raises(CorruptError, match="pfn 0xb") as ei:
        d.read_page(11)
    _located(ei.value)
    assert ei.value.offset == img.desc_of[11]


@pytest.mark.parametrize(("field_off", "fmt", "value", "match"), [
    (8, "<I", 5000, "exceeds block_size"),          # compressed size > block
    (8, "<I", 0, "outside"),                        # size 0
    (0, "<q", -4096, "outside"),                    # negative offset
    (0, "<q", 0, "outside"),                        # offset into the headers
    (12, "<I", 0x3, "more than one"),               # two methods
    (12, "<I", 0x40, "unknown compression"),
])
def test_bad_descriptor_fields(field_off: int, fmt: str, value: int, match: str) -> None:
    img = synth.build(_pages())
    data = bytearray(img.data) + bytes(2 * PS)      # room so only the field itself is wrong
    struct.pack_into(fmt, data, img.desc_of[1] + field_off, value)
    d = _open(data)
    with pytest.raises(KdlayoutError, match=match) as ei:
        d.read_page(1)
    assert isinstance(ei.value, CorruptError | UnsupportedError)
    assert ei.value.offset == img.desc_of[1]


def test_raw_page_with_wrong_size() -> None:
    img = synth.build(_pages(), raw_pfns=[2])
    data = bytearray(img.data)
    struct.pack_into("<I", data, img.desc_of[2] + 8, 4000)
    with pytest.raises(CorruptError, match="raw page") as ei:
        _open(data).read_page(2)
    assert ei.value.offset == img.desc_of[2]


def test_bad_compressed_data() -> None:
    img = synth.build(_pages())
    data = bytearray(img.data)
    off, size, _flags, _pf = synth.DESC.unpack_from(data, img.desc_of[10])
    data[off:off + size] = b"\xa5" * size
    d = _open(data)
    with pytest.raises(CorruptError, match="zlib") as ei:
        d.read_page(10)
    _located(ei.value)
    assert ei.value.offset == img.desc_of[10]
    assert d.read_page(11) == _pages()[11]


def test_incomplete_dump() -> None:
    pages = _pages()
    img = synth.build(pages, incomplete=True)
    # cut inside the data of pfn 11: pages up to 10 were written, the rest were not
    off11, _s, _f, _p = synth.DESC.unpack_from(img.data, img.desc_of[11])
    d = _open(img.data[:off11 + 3])
    assert d.info.incomplete
    assert d.read_page(10) == pages[10]
    for pfn in (11, 12, 40, 63):
        with pytest.raises(NotInDumpError, match="incomplete"):
            d.read_page(pfn)
    assert d.read_page(41) == bytes(PS)          # zero page written before everything
    got = {r.start // PS + i for r in d.ranges() for i in range(r.size // PS)}
    assert got == {0, 1, 2, 3, 5, 10, 41}


def test_incomplete_dump_short_descriptor_table() -> None:
    pages = _pages()
    img = synth.build(pages, incomplete=True)
    d = _open(img.data[:img.desc_offset + 2 * PAGE_DESC_SIZE + 7])
    assert d.info.incomplete
    assert len(d.ranges()) == 0          # no page's data was written
    with pytest.raises(NotInDumpError, match="incomplete"):
        d.read_page(0)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_images_fail_cleanly(data: st.DataObject) -> None:
    """Random byte corruption anywhere never escapes as anything but a kdlayout error."""
    pages = _pages()
    img = synth.build(pages)
    buf = bytearray(img.data)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, min(len(buf) - 1, img.data_offset + 64)))
        buf[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.sampled_from([len(buf), len(buf) // 2, img.desc_offset + 30]))
    try:
        d = _open(buf[:cut])
        for pfn in pages:
            with contextlib.suppress(NotInDumpError):
                d.read_page(pfn)
    except KdlayoutError as exc:
        assert exc.path == "synth.kdump"


# ---- numpy helpers against a naive model


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.data())
def test_rank_and_runs_match_naive(raw: bytes, data: st.DataObject) -> None:
    bitmap = np.frombuffer(raw, dtype=np.uint8)
    bits = np.unpackbits(bitmap, bitorder="little")
    nbits = data.draw(st.integers(0, bits.size))
    r = Rank(bitmap)
    pos = np.array(data.draw(st.lists(st.integers(0, bits.size - 1), min_size=1)), np.int64)
    naive = np.concatenate([[0], np.cumsum(bits)])
    assert r.rank(pos).tolist() == naive[pos].tolist()
    assert r.test(pos).tolist() == bits[pos].astype(bool).tolist()
    starts, ends = bit_runs(bitmap, nbits)
    want = []
    i = 0
    while i < nbits:
        if bits[i]:
            j = i
            while j < nbits and bits[j]:
                j += 1
            want.append((i, j))
            i = j
        else:
            i += 1
    assert list(zip(starts.tolist(), ends.tolist(), strict=True)) == want


def test_open_by_path(tmp_path: Path) -> None:
    pages = _pages()
    p = tmp_path / "x.kdump"
    p.write_bytes(synth.build(pages).data)
    with DiskDump.open(p) as d:
        assert d.read_page(40) == pages[40]
        assert d.info.path == str(p)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(CorruptError, match="truncated"):
        DiskDump.open(empty)


# ---- real files of the fixture matrix (makedumpfile -c/-l/-p/-z -d 31 of a kdump vmcore)


@pytest.mark.parametrize("real", oracles.real_params(oracles.KDUMP_KEYS))
def test_fixture_pages_match_drgn_and_vmcore(real: oracles.RealFile | None) -> None:
    assert real is not None
    drgn_read = oracles.drgn_reader(real.path)
    assert drgn_read is not None
    elf = oracles.ElfPages(real.elf) if real.elf is not None else None
    try:
        with DiskDump.open(real.path) as d:
            assert d.info.format == "diskdump"
            assert d.header.signature == b"KDUMP   "
            vmci = d.vmcoreinfo
            assert vmci is not None
            assert f"OSRELEASE={d.release}\n".encode() in vmci
            assert d.release == real.release == d.info.release
            assert d.dump_level == 31
            assert d.writer == "makedumpfile"
            assert any(n.name == "VMCOREINFO" for n in d.notes)
            pfns = oracles.sample_dumped_pfns(d, 200)
            assert len(pfns) == 200
            t0 = time.monotonic()
            pages = [d.read_page(pfn) for pfn in pfns]
            elapsed = time.monotonic() - t0
            for pfn, page in zip(pfns, pages, strict=True):
                assert page == drgn_read(pfn * PS, PS), f"pfn {pfn:#x} differs from drgn"
                if elf is not None:
                    assert page == elf.read(pfn * PS, PS), f"pfn {pfn:#x} differs from vmcore"
            # pages makedumpfile excluded: absent for us and for drgn
            if elf is not None:
                excluded = oracles.sample_excluded_pfns(d, elf, 100)
                assert excluded, "-d 31 of a real vmcore excludes some pages"
                for pfn in excluded:
                    with pytest.raises(NotInDumpError):
                        d.read_page(pfn)
                    assert drgn_read(pfn * PS, PS) is None
            # zero pages: descriptors pointing at the shared zero page
            desc = d.descriptors(0, min(d.num_dumpable, 200_000))
            zero_k = np.flatnonzero((desc["offset"] == d.desc_end) & (desc["flags"] == 0))
            dumped = d.dumped_pfns()
            for k in zero_k[:20].tolist():
                pfn = int(dumped[k])
                assert d.read_page(pfn) == bytes(PS) == drgn_read(pfn * PS, PS)
                if elf is not None:
                    assert elf.read(pfn * PS, PS) == bytes(PS)
            print(f"{real.fixture}/{real.key}: 200 random pages in {elapsed:.3f}s, "
                  f"{d.num_dumpable} dumped, {len(zero_k)} zero in the first 200k descriptors")
    finally:
        if elf is not None:
            elf.close()


@pytest.mark.parametrize("real", oracles.real_params(("md_zlib",)))
def test_fixture_ranges_match_drgn(real: oracles.RealFile | None) -> None:
    """The runs of the 2nd bitmap agree with what drgn can and cannot read at their edges."""
    assert real is not None
    drgn_read = oracles.drgn_reader(real.path)
    assert drgn_read is not None
    with DiskDump.open(real.path) as d:
        ranges = d.ranges()
        assert ranges and all(a.end < b.start for a, b in itertools.pairwise(ranges))
        assert sum(r.size for r in ranges) == d.num_dumpable * PS
        for r in ranges[:: max(1, len(ranges) // 50)]:
            assert drgn_read(r.start, 8) is not None
            assert drgn_read(r.end - 8, 8) is not None
            assert drgn_read(r.end, 8) is None


@pytest.mark.parametrize("real", oracles.real_params(("md_lzo",)))
def test_fixture_truncated_copy(real: oracles.RealFile | None, tmp_path: Path) -> None:
    """A real file cut short is corrupt; flagged incomplete, its written pages still read."""
    assert real is not None
    data = real.path.read_bytes()
    with DiskDump.open(real.path) as full:
        cut = full.desc_end + (len(data) - full.desc_end) // 2
        pfns = oracles.sample_dumped_pfns(full, 100)
        want = {pfn: full.read_page(pfn) for pfn in pfns}
    short = tmp_path / "short.kdump"
    short.write_bytes(data[:cut])
    with pytest.raises(CorruptError), DiskDump.open(short) as d:
        for pfn in pfns:
            d.read_page(pfn)
    flagged = bytearray(data[:cut])
    status = struct.unpack_from("<I", flagged, 424)[0]
    struct.pack_into("<I", flagged, 424, status | codecs.DUMP_DH_COMPRESSED_INCOMPLETE)
    inc = tmp_path / "incomplete.kdump"
    inc.write_bytes(flagged)
    with DiskDump.open(inc) as d:
        assert d.info.incomplete
        ok = missing = 0
        for pfn in pfns:
            try:
                assert d.read_page(pfn) == want[pfn]
                ok += 1
            except NotInDumpError:
                missing += 1
        assert ok and missing
        assert sum(r.size for r in d.ranges()) < sum(r.size for r in full.ranges())


def test_many_cpus_is_not_corrupt() -> None:
    # makedumpfile never fills tasks[]: a 1024-CPU machine's header is still one block
    data = bytearray(synth.build(_pages()).data)
    struct.pack_into("<i", data, synth.HEADER_FIELD["nr_cpus"], 1024)
    d = _open(data)
    assert d.nr_cpus == 1024
    assert len(d.header.tasks) == (PS - 464) // 8
    assert d.read_page(1) == _pages()[1]


def test_release_falls_back_to_vmcoreinfo() -> None:
    # QEMU's kdump writer leaves utsname empty but carries VMCOREINFO
    img = synth.build(_pages(), release="", vmcoreinfo=b"OSRELEASE=6.1.0-56-amd64\nPAGESIZE=4096\n")
    d = _open(img.data)
    assert d.release == ""
    assert d.info.release == "6.1.0-56-amd64"


@pytest.mark.parametrize("real", oracles.real_params(("md_lzo",)))
def test_fixture_split_files(real: oracles.RealFile | None, tmp_path: Path) -> None:
    """makedumpfile --split of the fixture vmcore: each part holds its pfn range only, the parts
    together hold exactly what the unsplit file holds, and every page equals drgn's."""
    assert real is not None
    if real.elf is None:
        pytest.skip(f"{real.fixture} has no ELF vmcore to split")
    parts = [tmp_path / f"part{i}" for i in range(3)]
    oracles.run_makedumpfile(["--split", "--splitblock-size", "16", "-l", "-d", "31",
                              str(real.elf), *map(str, parts)])
    with DiskDump.open(real.path) as whole:
        want = whole.dumped_pfns()
    got = []
    for part in parts:
        drgn_read = oracles.drgn_reader(part)
        assert drgn_read is not None
        with DiskDump.open(part) as d:
            assert d.split_range is not None
            start, end = d.split_range
            pfns = d.dumped_pfns()
            assert ((pfns >= start) & (pfns < end)).all()
            got.append(pfns)
            for pfn in oracles.sample_dumped_pfns(d, 50):
                assert d.read_page(pfn) == drgn_read(pfn * PS, PS)
            outside = [p for p in want.tolist()[::97] if not start <= p < end][:10]
            for pfn in outside:
                with pytest.raises(NotInDumpError):
                    d.read_page(pfn)
    assert np.array_equal(np.concatenate(got), want)


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6])
def test_older_header_versions(version: int) -> None:
    pages = _pages()
    img = synth.build(pages, header_version=version)
    data = bytearray(img.data)
    if version < 6:
        # a v1-5 writer has no max_mapnr_64: a value there must be ignored
        struct.pack_into("<Q", data, PS + synth.SUB_FIELD["max_mapnr_64"], 1 << 40)
    d = _open(data)
    assert d.header.header_version == version
    assert d.max_mapnr == 64
    assert (d.vmcoreinfo is not None) == (version >= 3)
    assert (len(d.notes) > 0) == (version >= 4)
    assert (d.sub_header.max_mapnr_64 is None) == (version < 6)
    assert d.read_page(40) == pages[40]


def test_read_pages_and_view_in_bulk() -> None:
    pages = _pages()
    d = _open(synth.build(pages, raw_pfns=[2]).data)
    pfns = np.array([10, 0, 5, 41, 2, 10, 63])
    arr = d.read_pages(pfns)
    assert arr.shape == (7, PS)
    for row, pfn in zip(arr, pfns.tolist(), strict=True):
        assert row.tobytes() == pages[pfn]
    with pytest.raises(NotInDumpError) as ei:
        d.read_pages(np.array([0, 4]))
    assert ei.value.paddr == 4 * PS
    v = d.view(PS + 100, 2 * PS)
    assert not v.flags.writeable
    assert v.tobytes() == (pages[1] + pages[2] + pages[3])[100:100 + 2 * PS]
    with pytest.raises(NotInDumpError):
        d.view(2 * PS, 3 * PS)                # pfn 4 is not dumped
    assert d.read(40 * PS, 2 * PS) == pages[40] + bytes(PS)


@pytest.mark.parametrize("real", oracles.real_params(("md_zlib",)))
def test_fixture_bulk_view_matches_drgn(real: oracles.RealFile | None) -> None:
    assert real is not None
    drgn_read = oracles.drgn_reader(real.path)
    assert drgn_read is not None
    with DiskDump.open(real.path) as d:
        biggest = max(d.ranges(), key=lambda r: r.size)
        size = min(biggest.size, 8 << 20)
        t0 = time.monotonic()
        v = d.view(biggest.start, size)
        elapsed = time.monotonic() - t0
        assert v.tobytes() == drgn_read(biggest.start, size)
        print(f"{real.fixture}: view of {size >> 20} MiB in {elapsed:.3f}s")


@pytest.mark.parametrize("real", oracles.real_params(("md_lzo",)))
def test_fixture_makedumpfile_out_of_space(real: oracles.RealFile | None, tmp_path: Path) -> None:
    """makedumpfile writing onto a full filesystem leaves a file flagged incomplete: the pages
    it wrote read like the source vmcore, the others are NotInDumpError."""
    assert real is not None
    if real.elf is None:
        pytest.skip(f"{real.fixture} has no ELF vmcore")
    mnt = tmp_path / "small"
    mnt.mkdir()
    limit = real.path.stat().st_size // 2
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={limit}", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {r.stderr.strip()}")
    elf = oracles.ElfPages(real.elf)
    try:
        out = mnt / "incomplete.kdump"
        with pytest.raises(subprocess.CalledProcessError):
            oracles.run_makedumpfile(["-l", "-d", "31", str(real.elf), str(out)])
        with DiskDump.open(out) as d, DiskDump.open(real.path) as full:
            assert d.info.incomplete and not full.info.incomplete
            assert d.num_dumpable == full.num_dumpable
            held = sum(r.size for r in d.ranges())
            assert 0 < held < sum(r.size for r in full.ranges())
            ok = missing = 0
            for pfn in oracles.sample_dumped_pfns(full, 300):
                try:
                    page = d.read_page(pfn)
                except NotInDumpError as exc:
                    assert "incomplete" in str(exc)
                    assert not d.contains(pfn * PS, PS)
                    missing += 1
                    continue
                assert d.contains(pfn * PS, PS)
                assert page == elf.read(pfn * PS, PS)
                ok += 1
            assert ok > 0 and missing > 0
    finally:
        elf.close()
        subprocess.run(["umount", str(mnt)], check=False)
