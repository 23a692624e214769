"""Flattened-format reader and reassembler.

Synthetic streams drive the record index and its error paths; the overlap resolution is checked
against a naive model (apply every record in order to a bytearray) and against makedumpfile -R.
Real files: a QEMU dump-guest-memory kdump-zlib written on the spot from a firmware-only guest
(compared with QEMU's own ELF dump of the same stopped guest), and the fixture matrix's flattened
files (compared with makedumpfile -R + drgn and with the source ELF vmcore).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import diskdump_synth as synth
import kdump_oracles as oracles
from kdlayout.diskdump import BytesSource, DiskDump
from kdlayout.errors import CorruptError, NotInDumpError, UnsupportedError
from kdlayout.flattened import (
    FLAT_HEADER_SIZE,
    FlatSource,
    index_flattened,
    open_flattened,
    reassemble,
    resolve_segments,
)

PS = synth.BLOCK


def _pages() -> dict[int, bytes]:
    pages = {p: synth.pattern_page(p) for p in (0, 1, 2, 7, 8, 30, 31, 63)}
    pages[9] = bytes(PS)
    return pages


def _write(tmp_path: Path, data: bytes, name: str = "x.flat") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _naive(records: list[tuple[int, bytes]]) -> bytes:
    """The image the records describe: each written in order over the previous ones."""
    size = max((o + len(d) for o, d in records), default=0)
    out = bytearray(size)
    for o, d in records:
        out[o:o + len(d)] = d
    return bytes(out)


# ---- synthetic: reading


def test_open_flattened_reads_pages(tmp_path: Path) -> None:
    pages = _pages()
    img = synth.build(pages)
    path = _write(tmp_path, synth.flatten(img.data))
    with open_flattened(path) as d:
        assert d.info.format == "flattened"
        assert d.info.path == str(path)
        for pfn, data in pages.items():
            assert d.read_page(pfn) == data
        assert d.vmcoreinfo == img.vmcoreinfo
        with pytest.raises(NotInDumpError):
            d.read_page(3)
        plain = DiskDump(BytesSource(bytes(img.data)))
        assert d.ranges() == plain.ranges()


def test_rewritten_header_last_writer_wins(tmp_path: Path) -> None:
    pages = _pages()
    img = synth.build(pages, release="6.1.0-first")
    final = synth.build(pages, release="6.1.0-final")
    # first write a header with another release, then the final one over it (like makedumpfile
    # rewriting the header and sub header at the end)
    chunks = [(o, min(1000, len(img.data) - o)) for o in range(0, len(img.data), 1000)]
    stream = synth.flatten(img.data, chunks,
                           rewrites=[(0, bytes(final.data[:600])), (PS, bytes(final.data[PS:PS + 104]))])
    path = _write(tmp_path, stream)
    with open_flattened(path) as d:
        assert d.release == "6.1.0-final"
        assert d.read_page(30) == pages[30]
    out = tmp_path / "re.kdump"
    assert reassemble(path, out) == len(final.data)
    assert out.read_bytes() == bytes(final.data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(1, 120)), min_size=1, max_size=40))
def test_resolution_matches_naive_model(recs: list[tuple[int, int]]) -> None:
    records = [(o, bytes([(i * 37 + k) % 251 + 1 for k in range(n)]))
               for i, (o, n) in enumerate(recs)]
    want = _naive(records)
    offs = np.array([o for o, _ in records], np.int64)
    sizes = np.array([len(d) for _, d in records], np.int64)
    stream = bytearray(synth.flat_header())
    pos = []
    for o, d in records:
        stream += struct.pack(">qq", o, len(d))
        pos.append(len(stream))
        stream += d
    s, e, p = resolve_segments(offs, sizes, np.array(pos, np.int64))
    assert (s[1:] >= e[:-1]).all()                     # sorted, non-overlapping
    got = bytearray(int(e.max()))
    for a, b, fp in zip(s.tolist(), e.tolist(), p.tolist(), strict=True):
        got[a:b] = stream[fp:fp + (b - a)]
    assert bytes(got) == want


def test_random_records_read_and_reassemble(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    records = []
    for i in range(300):
        o = int(rng.integers(0, 200_000))
        n = int(rng.integers(1, 5000))
        records.append((o, bytes([i % 255 + 1]) * n))
    want = _naive(records)
    stream = bytearray(synth.flat_header())
    for o, d in records:
        stream += synth.flat_record(o, d)
    stream += synth.FLAT_END
    path = _write(tmp_path, bytes(stream))
    with FlatSource(path) as src:
        assert src.size == len(want)
        for off, n in [(0, len(want)), (12345, 6789), (len(want) - 10, 100), (len(want), 5)]:
            assert src.read_at(off, n) == want[off:off + n]
        for off in rng.integers(0, len(want), 50).tolist():
            loc = src.locate(off)
            if loc is not None:
                assert stream[loc] == want[off]
    out = tmp_path / "out"
    reassemble(path, out)
    assert out.read_bytes() == want
    if Path(oracles.MAKEDUMPFILE).exists():
        ref = tmp_path / "ref"
        oracles.makedumpfile_reassemble(path, ref)
        assert ref.read_bytes() == want


def test_holes_read_as_zeros(tmp_path: Path) -> None:
    stream = synth.flat_header() + synth.flat_record(10, b"abc") + synth.flat_record(
        8000, b"xyz") + synth.FLAT_END
    path = _write(tmp_path, stream)
    with FlatSource(path) as src:
        assert src.size == 8003
        assert src.read_at(0, 16) == bytes(10) + b"abc" + bytes(3)
        assert src.locate(5) is None
        assert src.locate(11) == FLAT_HEADER_SIZE + 16 + 1


# ---- synthetic: errors


def _corrupt_case(tmp_path: Path, stream: bytes, exc: type[Exception], match: str,
                  offset: int) -> None:
    path = _write(tmp_path, stream)
    t0 = time.monotonic()
    with pytest.raises(exc, match=match) as ei:
        open_flattened(path)
    assert time.monotonic() - t0 < 2
    text = str(ei.value)
    assert text.startswith(f"{path}: offset {offset:#x}: "), text
    assert "\n" not in text
    # reassemble() refuses it too, and leaves nothing behind
    with pytest.raises(exc):
        reassemble(path, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]     # no temp file left behind


def _good_records() -> bytes:
    img = synth.build(_pages())
    return synth.flatten(img.data)[:-16]       # without the end marker


def test_missing_end_marker(tmp_path: Path) -> None:
    body = _good_records()
    _corrupt_case(tmp_path, body, CorruptError, "without an end marker", len(body))
    _corrupt_case(tmp_path, body + b"\xff" * 7, CorruptError, "without an end marker", len(body))


def test_truncated_record(tmp_path: Path) -> None:
    body = _good_records()
    # cut 100 bytes into the data of a 3000-byte record
    second = index_flattened_positions(body + synth.FLAT_END)[1]
    _corrupt_case(tmp_path, body[:second + 16 + 100], CorruptError, "truncated", second)


def index_flattened_positions(stream: bytes) -> list[int]:
    """Record header positions, walked independently of the code under test."""
    pos, out = FLAT_HEADER_SIZE, []
    while True:
        off, size = struct.unpack_from(">qq", stream, pos)
        if off == -1:
            return out
        out.append(pos)
        pos += 16 + size


@pytest.mark.parametrize(("off", "size", "match"), [
    (0, -5, "bad flattened record"),
    (-8, 16, "bad flattened record"),
    (0, 0, "bad flattened record"),
    (1 << 60, 16, "beyond any sane"),
    (0, 1 << 62, "beyond any sane"),
    (0, 1 << 40, "truncated"),
])
def test_bad_record_header(tmp_path: Path, off: int, size: int, match: str) -> None:
    body = _good_records()
    pos = len(body)
    stream = body + struct.pack(">qq", off, size) + bytes(16) + synth.FLAT_END
    _corrupt_case(tmp_path, stream, CorruptError, match, pos)


def test_bad_flat_header(tmp_path: Path) -> None:
    body = _good_records()[FLAT_HEADER_SIZE:] + synth.FLAT_END
    _corrupt_case(tmp_path, synth.flat_header()[:100], CorruptError, "header truncated", 100)
    _corrupt_case(tmp_path, synth.flat_header(b"makedumpfilX") + body, CorruptError,
                  "signature", 0)
    _corrupt_case(tmp_path, synth.flat_header(ftype=2) + body, UnsupportedError, "type 2", 16)


def test_diskdump_errors_name_flattened_offsets(tmp_path: Path) -> None:
    img = synth.build(_pages())
    data = bytearray(img.data)
    struct.pack_into("<i", data, 8, 7)                       # header_version 7
    stream = synth.flatten(data)
    path = _write(tmp_path, stream)
    with pytest.raises(UnsupportedError) as ei:
        open_flattened(path)
    assert ei.value.offset == FLAT_HEADER_SIZE + 16 + 8      # inside the first record's data
    # a bad descriptor: its error names where the descriptor sits in the flattened file
    data = bytearray(img.data)
    struct.pack_into("<q", data, img.desc_of[30], len(data) + PS)
    stream = synth.flatten(data)
    path = _write(tmp_path, stream, "y.flat")
    with open_flattened(path) as d, pytest.raises(CorruptError) as ei2:
        d.read_page(30)
    loc = ei2.value.offset
    assert loc is not None
    assert stream[loc:loc + 8] == struct.pack("<q", len(data) + PS)


def test_reassemble_refuses_source(tmp_path: Path) -> None:
    path = _write(tmp_path, synth.flatten(synth.build(_pages()).data))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="is the source"):
        reassemble(path, path)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(ValueError, match="is the source"):
        reassemble(path, link)
    hard = tmp_path / "hard"
    os.link(path, hard)
    with pytest.raises(ValueError, match="is the source"):
        reassemble(path, hard)
    assert path.read_bytes() == before


# ---- real: a firmware-only QEMU guest dumped by QEMU itself


@pytest.fixture(scope="module")
def qemu_bare(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """QEMU dump-guest-memory ELF and kdump-zlib (flattened) of the same stopped guest."""
    exe = shutil.which("qemu-system-x86_64")
    if exe is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    d = tmp_path_factory.mktemp("qemu")
    sock_path = d / "qmp.sock"
    proc = subprocess.Popen([exe, "-accel", "tcg", "-m", "64", "-display", "none", "-nodefaults",
                             "-no-reboot", "-qmp", f"unix:{sock_path},server,nowait"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if sock_path.exists():
                break
            time.sleep(0.05)
        time.sleep(1.0)                      # let the firmware write some memory
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(120)
        s.connect(str(sock_path))
        f = s.makefile("rw")

        def cmd(name: str, **args: object) -> dict[str, object]:
            f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
            f.flush()
            while True:
                r: dict[str, object] = json.loads(f.readline())
                if "return" in r or "error" in r:
                    return r

        f.readline()
        cmd("qmp_capabilities")
        cmd("stop")
        for fmt, name in (("elf", "bare.elf"), ("kdump-zlib", "bare.flat")):
            r = cmd("dump-guest-memory", paging=False, protocol=f"file:{d / name}", format=fmt)
            if "error" in r:
                pytest.skip(f"QEMU cannot write a {fmt} dump here: {r['error']}")
        cmd("quit")
        s.close()
    finally:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return d / "bare.elf", d / "bare.flat"


def test_qemu_flattened_equals_qemu_elf(qemu_bare: tuple[Path, Path]) -> None:
    elf_path, flat_path = qemu_bare
    elf = oracles.ElfPages(elf_path)
    try:
        with open_flattened(flat_path) as d:
            assert d.info.format == "flattened"
            assert d.header.header_version >= 1
            n = 0
            for r in d.ranges():
                for pa in range(r.start, r.end, PS):
                    assert d.read(pa, PS) == elf.read(pa, PS), hex(pa)
                    n += 1
            assert n > 1000
            # every page QEMU left out of the kdump file is one the ELF dump holds as zeros
            # (QEMU's kdump drops nothing else with dump_level 1)
            for pfn in oracles.sample_excluded_pfns(d, elf, 100):
                with pytest.raises(NotInDumpError):
                    d.read_page(pfn)
    finally:
        elf.close()


def test_qemu_reassemble_identical_to_makedumpfile(qemu_bare: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    _elf, flat = qemu_bare
    ref = tmp_path / "ref.kdump"
    oracles.makedumpfile_reassemble(flat, ref)
    ours = tmp_path / "ours.kdump"
    reassemble(flat, ours)
    assert ours.read_bytes() == ref.read_bytes()
    with DiskDump.open(ours) as plain, open_flattened(flat) as d:
        assert plain.ranges() == d.ranges()
        for pfn in oracles.sample_dumped_pfns(d, 200):
            assert plain.read_page(pfn) == d.read_page(pfn)


# ---- real: fixture matrix


@pytest.mark.parametrize("real", oracles.real_params(oracles.FLAT_KEYS))
def test_fixture_flattened(real: oracles.RealFile | None, tmp_path: Path) -> None:
    assert real is not None
    ref = tmp_path / "ref.kdump"
    oracles.makedumpfile_reassemble(real.path, ref)
    ours = tmp_path / "ours.kdump"
    t0 = time.monotonic()
    reassemble(real.path, ours)
    elapsed = time.monotonic() - t0
    assert ours.stat().st_size == ref.stat().st_size
    assert _same_file(ours, ref), "reassemble() differs from makedumpfile -R"
    # libkdumpfile cannot open QEMU's kdump files; for those the reference is QEMU's ELF dump
    drgn_read = oracles.drgn_reader(ref, required=real.key != "qemu_kdump")
    elf = oracles.ElfPages(real.elf) if real.elf is not None else None
    try:
        with open_flattened(real.path) as d, DiskDump.open(ref) as plain:
            assert d.info.format == "flattened"
            assert d.info.release == real.release
            assert d.writer == ("qemu" if real.key == "qemu_kdump" else "makedumpfile")
            assert plain.ranges() == d.ranges()
            assert d.vmcoreinfo == plain.vmcoreinfo and d.vmcoreinfo
            pfns = oracles.sample_dumped_pfns(d, 200)
            assert len(pfns) == 200
            same_as_elf = 0
            for pfn in pfns:
                page = d.read_page(pfn)
                assert page == plain.read_page(pfn)
                if drgn_read is not None:
                    assert page == drgn_read(pfn * PS, PS), f"pfn {pfn:#x} differs from drgn"
                if elf is not None:
                    same_as_elf += page == elf.read(pfn * PS, PS)
            if elf is not None:
                if real.key == "md_flat":
                    assert same_as_elf == len(pfns)      # derived from this very vmcore
                else:
                    # QEMU's ELF and kdump dumps are taken one after the other of a running
                    # guest: most, not all, pages are unchanged between them
                    assert same_as_elf >= 0.8 * len(pfns)
                for pfn in oracles.sample_excluded_pfns(d, elf, 50):
                    with pytest.raises(NotInDumpError):
                        d.read_page(pfn)
                    if drgn_read is not None:
                        assert drgn_read(pfn * PS, PS) is None
    finally:
        if elf is not None:
            elf.close()
    print(f"{real.fixture}/{real.key}: reassembled {ref.stat().st_size} bytes in {elapsed:.2f}s")


def _same_file(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def test_index_is_header_only(tmp_path: Path) -> None:
    """Indexing touches record headers only: a big data record costs nothing to skip."""
    big = 64 << 20
    path = tmp_path / "big.flat"
    with open(path, "wb") as f:
        f.write(synth.flat_header())
        f.write(struct.pack(">qq", 0, big))
        f.truncate(FLAT_HEADER_SIZE + 16 + big)
        f.seek(0, os.SEEK_END)
        f.write(synth.FLAT_END)
    t0 = time.monotonic()
    ix = index_flattened(path)
    assert time.monotonic() - t0 < 0.5
    assert ix.nr_records == 1 and ix.image_size == big


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mutated_streams_fail_cleanly(tmp_path_factory: pytest.TempPathFactory,
                                      data: st.DataObject) -> None:
    """Corrupting record headers anywhere gives a kdlayout error (or a readable dump), quickly."""
    img = synth.build(_pages())
    stream = bytearray(synth.flatten(img.data))
    heads = [*index_flattened_positions(bytes(stream)), len(stream) - 16]
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.sampled_from(heads)) + data.draw(st.integers(0, 15))
        stream[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.sampled_from([len(stream), len(stream) - 5, heads[2] + 20]))
    path = tmp_path_factory.mktemp("mut") / "m.flat"
    path.write_bytes(bytes(stream[:cut]))
    t0 = time.monotonic()
    try:
        with open_flattened(path) as d:
            for pfn in _pages():
                with contextlib.suppress(NotInDumpError):
                    d.read_page(pfn)
    except (CorruptError, UnsupportedError) as exc:
        assert exc.path == str(path) and exc.offset is not None
    assert time.monotonic() - t0 < 2


def test_truncated_at_every_record_boundary(tmp_path: Path) -> None:
    stream = synth.flatten(synth.build(_pages()).data)
    heads = index_flattened_positions(stream)
    path = tmp_path / "t.flat"
    t0 = time.monotonic()
    for h in [*heads, len(stream) - 16]:
        for cut in (h, h + 8, h + 16, h + 17):
            if cut >= len(stream):
                continue
            path.write_bytes(stream[:cut])
            with pytest.raises(CorruptError) as ei:
                open_flattened(path)
            # either the record at h is cut short, or the stream ends where a header should be
            assert ei.value.offset == h, (h, cut, str(ei.value))
            assert str(ei.value).startswith(f"{path}: offset {h:#x}: ")
    for cut in (0, 1, 100, FLAT_HEADER_SIZE - 1):
        path.write_bytes(stream[:cut])
        with pytest.raises(CorruptError):
            open_flattened(path)
    assert time.monotonic() - t0 < 10


def test_cli_reassemble(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kdlayout.cli import main
    img = synth.build(_pages())
    flat = _write(tmp_path, synth.flatten(img.data))
    out = tmp_path / "out.kdump"
    assert main(["reassemble", str(flat), str(out)]) == 0
    assert out.read_bytes() == bytes(img.data)
    assert main(["reassemble", str(flat), str(flat)]) == 2
    bad = _write(tmp_path, synth.flatten(img.data)[:-16], "bad.flat")
    assert main(["reassemble", str(bad), str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "is the source" in err[0] and "end marker" in err[1]
    assert not (tmp_path / "o2").exists()


def test_many_overlapping_records_bounded(tmp_path: Path) -> None:
    """20000 records that all overlap their neighbours: resolved right, in bounded time."""
    rng = np.random.default_rng(3)
    records = [(int(o), bytes([i % 251 + 1]) * int(n)) for i, (o, n) in
               enumerate(zip(rng.integers(0, 100_000, 20000), rng.integers(1, 3000, 20000),
                             strict=True))]
    records.append((0, b"\xee" * 50))                      # a late rewrite of the start
    stream = bytearray(synth.flat_header())
    for o, d in records:
        stream += synth.flat_record(o, d)
    stream += synth.FLAT_END
    path = _write(tmp_path, bytes(stream))
    t0 = time.monotonic()
    with FlatSource(path) as src:
        elapsed = time.monotonic() - t0
        assert src.read_at(0, src.size) == _naive(records)
    assert elapsed < 10
