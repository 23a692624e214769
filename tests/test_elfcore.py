"""ELF core reader: synthetic cores for parsing and every error path; real dumps against readelf
and drgn."""

from __future__ import annotations

import itertools
import os
import random
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdlayout.elfcore import ElfCore
from kdlayout.errors import CorruptError, KdlayoutError, NotInDumpError, UnsupportedError
from kdlayout.physmem import MemoryRange
from kdlayout.vmcoreinfo import VmcoreInfo
from realdumps import (
    SEABIOS,
    fixture_params,
    qemu_firmware_dumps,
    readelf_loads,
    readelf_note_count,
)
from synth import EHDR, PHDR, Seg, build_core, default_core, note_bytes, page_pattern

PAGE = 4096


def _open_file(tmp_path: Path, data: bytes, name: str = "core") -> ElfCore:
    p = tmp_path / name
    p.write_bytes(data)
    return ElfCore.open(p)


# -- parsing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("xnum", [False, True], ids=["kexec", "pn_xnum"])
def test_parse_default_core(tmp_path: Path, xnum: bool) -> None:
    lay = default_core(xnum)
    with _open_file(tmp_path, lay.data) as core:
        assert isinstance(core, ElfCore)
        assert core.info.format == ("elf-qemu" if xnum else "elf-kexec")
        assert core.info.arch == "x86_64"
        assert core.info.nr_cpus == 2
        assert core.header.e_phnum == 5 and core.header.pn_xnum == xnum
        assert list(core.ranges()) == [MemoryRange(0, 0x6000), MemoryRange(0x10000, 0x2000)]
        assert core.absent_ranges() == [MemoryRange(0x12000, 0x2000)]
        assert [n.type_name for n in core.notes] == ["NT_PRSTATUS", "NT_PRSTATUS", "VMCOREINFO"]
        assert [n.offset for n in core.notes] == lay.note_offsets
        vi = core.vmcoreinfo
        assert vi is not None and vi.startswith(b"OSRELEASE=6.1.0-synthetic-amd64\n")
        note = core.vmcoreinfo_note
        assert note is not None
        assert VmcoreInfo.from_note(note).where("OSRELEASE") == note.desc_offset
        segs = core.segments
        assert [s.p_paddr for s in segs] == [0, 0x4000, 0x10000, 0x1000]
        assert [s.phdr_offset for s in segs] == lay.phdr_offsets[1:]
        assert segs[2].p_memsz == 0x4000 and segs[2].p_filesz == 0x2000
        assert core.vaddr_to_paddr(0xFFFFFFFF81000123) == 0x1123
        assert core.vaddr_to_paddr(0xFFFFFFFF82000000) is None


def test_reads_and_views() -> None:
    core = ElfCore.from_buffer(default_core().data)
    # every stored page holds its pfn
    for pfn in (0, 1, 3, 4, 5, 16, 17):
        page = core.read(pfn * PAGE, PAGE)
        assert np.all(np.frombuffer(page, "<u8") == pfn)
        v = core.view(pfn * PAGE, PAGE)
        assert not v.flags.owndata and not v.flags.writeable
        assert bytes(v) == page
    # across segments 0 and 1 (adjacent, coalesced)
    assert core.read(0x3FF8, 16) == struct.pack("<QQ", 3, 4)
    assert core.read(0x1234, 0) == b""
    for paddr, size, missing in [(0x6000, 8, 0x6000), (0x5FF8, 16, 0x6000),
                                 (0x12000, 8, 0x12000), (0x11FF8, 16, 0x12000),
                                 (0x100000, 1, 0x100000), (0xFFF0, 32, 0xFFF0)]:
        with pytest.raises(NotInDumpError) as ei:
            core.read(paddr, size)
        assert ei.value.paddr == missing
        with pytest.raises(NotInDumpError):
            core.view(paddr, size)
    assert core.contains(0x5000, 0x1000) and not core.contains(0x5000, 0x1001)


def test_read_into_from_a_file_equals_read(tmp_path: Path) -> None:
    # pread from the file (one segment) and the copying fallback (spanning, or not in the dump)
    lay = build_core([Seg(0x3000, page_pattern(3)), Seg(0x1000, page_pattern(1, 2)),
                      Seg(0x10000, page_pattern(16, 18))])
    path = tmp_path / "core"
    path.write_bytes(lay.data)
    with ElfCore.open(path) as core:
        for paddr, size in [(0x1000, PAGE), (0x1008, 3 * PAGE - 16), (0x2FF8, 16),
                            (0x10000, 2 * PAGE), (0x11FF0, 16)]:
            out = np.full(size, 0xAA, dtype=np.uint8)
            core.read_into(paddr, out)
            assert out.tobytes() == core.read(paddr, size)
        with pytest.raises(NotInDumpError):
            core.read_into(0x4000, np.zeros(16, dtype=np.uint8))


def test_read_spanning_non_contiguous_file_offsets() -> None:
    # physically adjacent, but the second segment's bytes come first in the file
    lay = build_core([Seg(0x3000, page_pattern(3)), Seg(0x1000, page_pattern(1, 2))])
    core = ElfCore.from_buffer(lay.data)
    assert list(core.ranges()) == [MemoryRange(0x1000, 0x3000)]
    assert core.read(0x2FF8, 16) == struct.pack("<QQ", 2, 3)
    v = core.view(0x2FF8, 16)
    assert bytes(v) == struct.pack("<QQ", 2, 3)
    assert bytes(core.view(0x3000, 8)) == struct.pack("<Q", 3)


def test_overlapping_segments_prefer_longer() -> None:
    # kexec: kernel-text PT_LOAD first, inside a RAM PT_LOAD holding the same bytes
    lay = build_core([Seg(0x2000, page_pattern(2), vaddr=0xFFFFFFFF81000000),
                      Seg(0x0, page_pattern(0, 4))])
    core = ElfCore.from_buffer(lay.data)
    assert list(core.ranges()) == [MemoryRange(0, 0x4000)]
    assert core.read(0x1FF8, 16) == struct.pack("<QQ", 1, 2)
    assert not core.view(0x1000, 0x3000).flags.owndata  # one piece: zero-copy


def test_close_with_live_view(tmp_path: Path) -> None:
    core = _open_file(tmp_path, default_core().data)
    v = core.view(0, PAGE)
    core.close()  # must not raise although a view is alive
    assert int(v[0]) == 0


def test_open_does_not_touch_pages(tmp_path: Path) -> None:
    # a sparse file: 64 GiB of "RAM" in 4096 segments; open and ranges() stay cheap
    nseg, seg_size = 4096, 16 << 20
    lay = build_core([], notes=[("CORE", 1, b"\0" * 336)])
    phoff = 64
    data_off = 1 << 20
    hdr = bytearray(lay.data[:64])
    struct.pack_into("<H", hdr, 0x38, nseg + 1)
    table = bytearray(PHDR.pack(4, 0, data_off - 512, 0, 0, len(note_bytes("CORE", 1, b"\0" * 336)),
                                0, 0))
    for i in range(nseg):
        table += PHDR.pack(1, 7, data_off + i * seg_size, 0, i * seg_size * 2, seg_size,
                           seg_size, 0)
    p = tmp_path / "sparse"
    with p.open("wb") as f:
        f.write(hdr)
        f.seek(phoff)
        f.write(table)
        f.seek(data_off - 512)
        f.write(note_bytes("CORE", 1, b"\0" * 336))
        f.truncate(data_off + nseg * seg_size)
    t0 = time.perf_counter()
    with ElfCore.open(p) as core:
        ranges = core.ranges()
        elapsed = time.perf_counter() - t0
        assert len(ranges) == nseg
        assert ranges[-1] == MemoryRange((nseg - 1) * seg_size * 2, seg_size)
        assert core.total_bytes() == nseg * seg_size
        assert core.read((nseg - 1) * seg_size * 2, 8) == b"\0" * 8
        with pytest.raises(NotInDumpError):
            core.read(seg_size, 8)
    assert elapsed < 2.0, f"opening a 64 GiB sparse core took {elapsed:.2f}s"


# -- bad input ------------------------------------------------------------------------------------

def _expect_corrupt(data: bytes, path: str = "bad.core") -> CorruptError:
    with pytest.raises(CorruptError) as ei:
        ElfCore.from_buffer(data, path=path)
    exc = ei.value
    assert exc.path == path
    assert exc.offset is not None
    assert "\n" not in str(exc)
    return exc


def test_empty_and_random(tmp_path: Path) -> None:
    assert _expect_corrupt(b"").offset == 0
    p = tmp_path / "empty"
    p.write_bytes(b"")
    with pytest.raises(CorruptError) as ei:
        ElfCore.open(p)
    assert ei.value.path == str(p) and ei.value.offset == 0
    rnd = random.Random(1)
    for _ in range(50):
        blob = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 300)))
        assert _expect_corrupt(blob).offset == 0


@pytest.mark.parametrize("xnum", [False, True], ids=["kexec", "pn_xnum"])
def test_truncated_at_every_header_boundary(xnum: bool) -> None:
    lay = default_core(xnum)
    data = lay.data
    table_end = lay.phoff + len(lay.phdr_offsets) * 56
    note_phdr = lay.phdr_offsets[0]
    cuts = list(range(0, lay.note_offset + lay.note_size + 64))
    cuts += [o + d for o in lay.seg_offsets for d in (0, 1, PAGE - 1, PAGE)]
    cuts.append(len(data) - 1)
    for cut in sorted(set(cuts)):
        if cut >= len(data):
            continue
        exc = _expect_corrupt(data[:cut])
        if cut < 64:
            assert exc.offset == 0, cut
        elif xnum and cut < lay.phoff:
            assert exc.offset == lay.shoff, cut
        elif cut < table_end:
            assert exc.offset == lay.phoff + (cut - lay.phoff) // 56 * 56, cut
        elif cut < lay.note_offset + lay.note_size:
            assert exc.offset == note_phdr, cut
        else:
            # the first PT_LOAD whose bytes are cut off
            first = next(i for i, o in enumerate(lay.seg_offsets)
                         if o + len(default_seg_data(i)) > cut)
            assert exc.offset == lay.phdr_offsets[1 + first], cut
    ElfCore.from_buffer(data)  # and the whole file is fine


def default_seg_data(i: int) -> bytes:
    return [page_pattern(0, 4), page_pattern(4, 2), page_pattern(16, 2), page_pattern(1, 1)][i]


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def _phdr_field(lay: Any, index: int, field_offset: int) -> int:
    return int(lay.phdr_offsets[index]) + field_offset


def test_pt_load_beyond_eof() -> None:
    lay = default_core()
    bad = _patch(lay.data, _phdr_field(lay, 2, 8), "<Q", len(lay.data) - 100)  # p_offset
    exc = _expect_corrupt(bad)
    assert exc.offset == lay.phdr_offsets[2]
    assert "PT_LOAD program header 2" in str(exc)
    bad = _patch(lay.data, _phdr_field(lay, 3, 32), "<Q", 1 << 62)  # p_filesz
    assert _expect_corrupt(bad).offset == lay.phdr_offsets[3]
    bad = _patch(lay.data, _phdr_field(lay, 1, 8), "<Q", 0xFFFFFFFFFFFFFFF0)
    assert _expect_corrupt(bad).offset == lay.phdr_offsets[1]
    # the last segment ends exactly at EOF: one byte more is beyond it
    last = len(lay.seg_offsets)
    size = len(lay.data) - lay.seg_offsets[-1]
    bad = _patch(_patch(lay.data, _phdr_field(lay, last, 32), "<Q", size + 1),
                 _phdr_field(lay, last, 40), "<Q", size + 1)
    assert _expect_corrupt(bad).offset == lay.phdr_offsets[last]
    ok = _patch(_patch(lay.data, _phdr_field(lay, last, 32), "<Q", size),
                _phdr_field(lay, last, 40), "<Q", size)
    ElfCore.from_buffer(ok)


def test_filesz_above_memsz_and_paddr_overflow() -> None:
    lay = default_core()
    bad = _patch(lay.data, _phdr_field(lay, 1, 40), "<Q", 0x10)  # p_memsz < p_filesz
    assert "p_filesz > p_memsz" in str(_expect_corrupt(bad))
    bad = _patch(lay.data, _phdr_field(lay, 2, 24), "<Q", 0x7FFFFFFFFFFFF000)  # p_paddr
    assert _expect_corrupt(bad).offset == lay.phdr_offsets[2]


def test_note_sizes_overflowing_segment() -> None:
    lay = default_core()
    second = lay.note_offsets[1]
    bad = _patch(lay.data, second + 4, "<I", 0x100000)  # n_descsz of the second note
    exc = _expect_corrupt(bad)
    assert exc.offset == second
    bad = _patch(lay.data, second, "<I", 0xFFFFFFF0)  # n_namesz
    assert _expect_corrupt(bad).offset == second
    # PT_NOTE p_filesz shortened into the middle of the first note
    bad = _patch(lay.data, _phdr_field(lay, 0, 32), "<Q", 100)
    assert _expect_corrupt(bad).offset == lay.note_offsets[0]


def test_header_fields() -> None:
    data = default_core().data
    assert _expect_corrupt(_patch(data, 0x36, "<H", 32)).offset == 0x36  # e_phentsize
    assert _expect_corrupt(_patch(data, 0x38, "<H", 0)).offset == 0x38  # e_phnum
    assert _expect_corrupt(_patch(data, 0x20, "<Q", 0)).offset == 0x20  # e_phoff
    exc = _expect_corrupt(_patch(data, 0x20, "<Q", 1 << 40))
    assert exc.offset == 1 << 40
    assert _expect_corrupt(_patch(data, 4, "<B", 7)).offset == 4  # EI_CLASS
    assert _expect_corrupt(_patch(data, 5, "<B", 0)).offset == 5  # EI_DATA
    for off, fmt, value, where in [(4, "<B", 1, 4), (5, "<B", 2, 5), (0x12, "<H", 183, 0x12),
                                   (0x10, "<H", 2, 0x10)]:
        with pytest.raises(UnsupportedError) as ei:
            ElfCore.from_buffer(_patch(data, off, fmt, value), path="u")
        assert ei.value.offset == where and ei.value.path == "u"


def test_pn_xnum_errors() -> None:
    lay = default_core(xnum=True)
    exc = _expect_corrupt(_patch(lay.data, 0x28, "<Q", 0))  # e_shoff = 0
    assert exc.offset == 0x28 and "PN_XNUM" in str(exc)
    exc = _expect_corrupt(_patch(lay.data, 0x28, "<Q", len(lay.data) - 10))
    assert exc.offset == len(lay.data) - 10
    exc = _expect_corrupt(_patch(lay.data, lay.shoff + 44, "<I", 0))  # sh_info = 0
    assert exc.offset == lay.shoff + 44
    exc = _expect_corrupt(_patch(lay.data, lay.shoff + 44, "<I", 1 << 30))  # huge count
    assert exc.offset is not None and exc.offset >= lay.phoff
    assert _expect_corrupt(_patch(lay.data, 0x3A, "<H", 40)).offset == 0x3A  # e_shentsize
    assert len(lay.data) > EHDR.size


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_mutations_are_errors_or_valid(data: st.DataObject) -> None:
    lay = default_core(data.draw(st.booleans()))
    buf = bytearray(lay.data)
    header_end = lay.note_offset + lay.note_size
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, header_end - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(buf))))
    blob = bytes(buf if cut is None else buf[:cut])
    t0 = time.perf_counter()
    try:
        core = ElfCore.from_buffer(blob, path="m")
    except KdlayoutError as exc:
        assert exc.path == "m" and "\n" not in str(exc)
        return
    finally:
        assert time.perf_counter() - t0 < 1.0
    for r in core.ranges()[:8]:
        try:
            core.read(r.start, min(r.size, 64))
            core.view(max(r.end - 64, r.start), min(r.size, 64))
        except NotInDumpError:
            pytest.fail("a listed range is not readable")
    _ = list(core.notes)


# -- real dumps ------------------------------------------------------------------------------------

ELF_KEYS = ("vmcore", "qemu_elf")


@pytest.mark.parametrize(("fx", "key", "path"), fixture_params(ELF_KEYS))
def test_real_headers_match_readelf(fx: Any, key: str, path: Path) -> None:
    with ElfCore.open(path) as core:
        assert core.info.format == ("elf-kexec" if key == "vmcore" else "elf-qemu")
        ours = [(s.p_offset, s.p_vaddr, s.p_paddr, s.p_filesz, s.p_memsz) for s in core.segments]
        assert ours == readelf_loads(path)
        nprs = sum(1 for n in core.notes if n.type_name == "NT_PRSTATUS")
        assert nprs == readelf_note_count(path, "NT_PRSTATUS")
        assert nprs >= 1
        raw = core.vmcoreinfo
        if key == "vmcore":
            assert raw is not None, "a kexec vmcore always carries VMCOREINFO"
        if raw is not None:
            vi = VmcoreInfo.parse(raw)
            assert vi.osrelease == fx.release
            assert vi.page_size == 4096


def _drgn_program(path: Path) -> Any:
    drgn = pytest.importorskip("drgn")
    prog = drgn.Program()
    try:
        prog.set_core_dump(str(path))
    except Exception as exc:  # e.g. a QEMU dump without VMCOREINFO
        pytest.skip(f"drgn cannot open {path.name} as a kernel core: {exc}")
    return prog


@pytest.mark.parametrize(("fx", "key", "path"), fixture_params(ELF_KEYS))
def test_real_pages_match_drgn(fx: Any, key: str, path: Path) -> None:
    drgn = pytest.importorskip("drgn")
    prog = _drgn_program(path)
    rnd = random.Random(f"{fx.name}-{key}")
    with ElfCore.open(path) as core:
        ranges = core.ranges()
        pfns = np.concatenate([np.arange(r.start // PAGE, r.end // PAGE) for r in ranges])
        sample = rnd.sample(list(pfns), min(200, len(pfns)))
        for pfn in sample:
            paddr = int(pfn) * PAGE
            assert core.read(paddr, PAGE) == prog.read(paddr, PAGE, True), hex(paddr)
            assert bytes(core.view(paddr, PAGE)) == prog.read(paddr, PAGE, True)
        # holes between stored ranges: we raise, drgn faults
        tails = core.absent_ranges()
        holes = [MemoryRange(a.end, b.start - a.end) for a, b in itertools.pairwise(ranges)]
        for hole in holes:
            for paddr in {hole.start, hole.end - 8}:
                if any(paddr in t for t in tails):
                    continue  # p_filesz < p_memsz tail: drgn zero-fills these
                with pytest.raises(NotInDumpError):
                    core.read(paddr, 8)
                with pytest.raises(drgn.FaultError):
                    prog.read(paddr, 8, True)
        end = ranges[-1].end
        with pytest.raises(NotInDumpError):
            core.read(end, 8)
        with pytest.raises(drgn.FaultError):
            prog.read(end, 8, True)
        for t in tails[:20]:
            with pytest.raises(NotInDumpError):
                core.read(t.start, 8)
            assert prog.read(t.start, 8, True) == b"\0" * 8


# -- /proc/kcore -----------------------------------------------------------------------------------

def test_proc_kcore_smoke() -> None:
    kcore = Path("/proc/kcore")
    if not kcore.exists():
        pytest.skip("/proc/kcore does not exist on this host (kernel built without CONFIG_PROC_KCORE"
                    " or hidden by the container)")
    if not os.access(kcore, os.R_OK):
        pytest.skip("/proc/kcore is not readable (needs root and no lockdown)")
    try:
        core = ElfCore.open(kcore)
    except PermissionError as exc:
        pytest.skip(f"/proc/kcore cannot be opened: {exc}")
    with core:
        assert core.header.e_phnum >= 1
        assert len(core.segments) >= 1
        raw = core.vmcoreinfo
        if raw is not None:
            vi = VmcoreInfo.parse(raw)
            assert vi.osrelease == os.uname().release
            assert vi.page_size == os.sysconf("SC_PAGE_SIZE")


# -- a dump QEMU makes here ------------------------------------------------------------------------

def test_qemu_firmware_dump(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = qemu_firmware_dumps(tmp_path_factory.getbasetemp() / "qemu")["elf"]
    with ElfCore.open(path) as core:
        assert core.info.format == "elf-qemu"
        assert core.info.arch in ("i386", "x86_64")
        ours = [(s.p_offset, s.p_vaddr, s.p_paddr, s.p_filesz, s.p_memsz) for s in core.segments]
        assert ours == readelf_loads(path)
        assert core.info.nr_cpus == readelf_note_count(path, "NT_PRSTATUS") == 2
        assert sum(1 for n in core.notes if n.name == "QEMU") == 2
        ranges = core.ranges()
        assert ranges[0] == MemoryRange(0, 64 << 20)
        # SeaBIOS is mapped read-only just below 4 GiB; its bytes are the firmware file's
        if SEABIOS.exists():
            rom = SEABIOS.read_bytes()
            assert core.read((1 << 32) - len(rom), len(rom)) == rom
        with pytest.raises(NotInDumpError):
            core.read(64 << 20, 8)
        v = core.view(0, 64 << 20)
        assert not v.flags.owndata and v.size == 64 << 20


def test_pread_fallback_when_mmap_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmap

    def no_mmap(*_args: object, **_kwargs: object) -> None:
        raise OSError("mmap not supported")

    p = tmp_path / "core"
    p.write_bytes(default_core().data)
    monkeypatch.setattr(mmap, "mmap", no_mmap)
    with ElfCore.open(p) as core:
        assert [n.type_name for n in core.notes] == ["NT_PRSTATUS", "NT_PRSTATUS", "VMCOREINFO"]
        assert core.read(0x3FF8, 16) == struct.pack("<QQ", 3, 4)
        v = core.view(0x10000, PAGE)
        assert np.all(v.view("<u8") == 16)
        with pytest.raises(NotInDumpError):
            core.read(0x12000, 1)


def test_too_many_program_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    import kdlayout.elfcore as elfcore_mod

    monkeypatch.setattr(elfcore_mod, "MAX_PHDRS", 4)
    with pytest.raises(UnsupportedError) as ei:
        ElfCore.from_buffer(default_core().data, path="many")
    assert ei.value.offset == 0x38 and ei.value.path == "many"


def test_contains_matches_reads() -> None:
    core = ElfCore.from_buffer(default_core().data)
    for paddr in range(0, 0x15000, 0x800):
        for size in (1, 0x800, 0x1800):
            try:
                core.read(paddr, size)
                readable = True
            except NotInDumpError:
                readable = False
            assert core.contains(paddr, size) == readable, (hex(paddr), size)
