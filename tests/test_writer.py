"""Tests of the kdump-compressed writer (src/kdlayout/writer.py, diskdump_write.py) and
``kdlayout dump``.

Ground truth: the source vmcore read by kdlayout's ELF reader, and independent readers of our
output: drgn (libkdumpfile), makedumpfile 1.7.2 (--dump-dmesg, refiltering, -R) and crash.
Dumps of the real fixtures are written once per (fixture, codec, level) and shared by the tests.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures import Fixture
from kdlayout import codecs
from kdlayout.diskdump import DiskDump, parse_header
from kdlayout.diskdump_write import FlatSink, make_header, pack_header
from kdlayout.dumpfile import open_dump
from kdlayout.errors import KdlayoutError, NotInDumpError
from kdlayout.flattened import open_flattened, reassemble
from kdlayout.physmem import PhysicalMemory
from kdlayout.resolver import ResolveOptions, resolve
from kdlayout.writer import (
    CODEC_FLAGS,
    PageBitmaps,
    WriteOptions,
    level0_bitmaps,
    scan_bitmaps,
    write_dump_file,
    write_kdump,
)
from synth import Seg, build_core, page_pattern

PS = 4096
MAKEDUMPFILE = "/usr/bin/makedumpfile"
CRASH = shutil.which("crash")
SAMPLE = 300
FIXED_TIME = 1_700_000_000.0


def _have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Helpers


def _bitmaps(dump: PhysicalMemory, level: int) -> PageBitmaps:
    if level & ~1 == 0:
        return level0_bitmaps(dump, level)
    return scan_bitmaps(dump, resolve(dump, ResolveOptions()).layout, level)


_CACHE: dict[tuple[str, str, int], Path] = {}


@pytest.fixture(scope="module")
def outdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("writer")


def _written(fx: Fixture, codec: str, level: int, outdir: Path) -> Path:
    """Our dump of the fixture's vmcore (written once per module)."""
    key = (fx.name, codec, level)
    if key not in _CACHE:
        src = fx.path("vmcore")
        if src is None:
            pytest.skip(f"{fx.name}: no vmcore")
        if codec != "zlib" and not _have({"lzo": "lzo", "zstd": "zstandard",
                                          "snappy": "snappy"}[codec]):
            pytest.skip(f"python module for {codec} missing")
        out = outdir / f"{fx.name}-{codec}-d{level}.kdump"
        with open_dump(src) as dump:
            write_dump_file(dump, _bitmaps(dump, level), str(out),
                            WriteOptions(compression=CODEC_FLAGS[codec], timestamp=FIXED_TIME))
        _CACHE[key] = out
    return _CACHE[key]


def _sample(valid: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(valid)
    return np.sort(rng.choice(idx, size=min(n, idx.size), replace=False))


def _is_zero_desc(out: DiskDump, pfns: np.ndarray) -> np.ndarray:
    k = out.desc_index(pfns)
    d = out._gather_descriptors(k)
    res: np.ndarray = (d["offset"] == out.desc_end) & (d["flags"] == 0)
    return res


# --------------------------------------------------------------------------------------------
# Round trip on every fixture


ROUND_TRIPS = [("zlib", 0), ("zlib", 1), ("zlib", 31), ("lzo", 31), ("zstd", 31), ("lzo", 1)]


@pytest.mark.parametrize(("codec", "level"), ROUND_TRIPS, ids=[f"{c}-d{lv}" for c, lv in
                                                                ROUND_TRIPS])
def test_round_trip(fixture: Fixture, codec: str, level: int, outdir: Path) -> None:
    path = _written(fixture, codec, level, outdir)
    st = path.stat()
    assert st.st_mode & 0o777 == 0o600
    assert not [p for p in outdir.iterdir() if p.name.endswith(".part")]
    src_path = fixture.path("vmcore")
    assert src_path is not None
    with open_dump(src_path) as src, open_dump(path) as out:
        assert isinstance(out, DiskDump)
        h = out.header
        assert h.utsname.release == fixture.release and h.utsname.machine == "x86_64"
        assert h.status == CODEC_FLAGS[codec] and not out.incomplete
        assert out.sub_header.dump_level == level
        assert out.vmcoreinfo == src.vmcoreinfo
        assert [(n.name, n.type, bytes(n.desc)) for n in out.notes] == \
               [(n.name, n.type, bytes(n.desc)) for n in src.notes]
        assert h.nr_cpus == sum(1 for n in src.notes if n.type == 1)
        pfns = np.arange(out.max_mapnr, dtype=np.int64)
        valid, dumped = out.is_in_memory(pfns), out.is_dumped(pfns)
        assert not (dumped & ~valid).any()
        # the 1st bitmap: pfns with RAM in the source
        for r in src.ranges():
            assert valid[r.start // PS:-(-r.end // PS)].all()
        sample = np.union1d(_sample(valid, SAMPLE, seed=level * 7 + len(codec)),
                            _sample(dumped, 100, seed=level))
        zero_desc = _is_zero_desc(out, sample[dumped[sample]])
        assert zero_desc.any() or level & 1 == 0
        for pfn in sample[dumped[sample]].tolist():
            want = src.read(pfn * PS, PS) if src.contains(pfn * PS, PS) else None
            got = out.read(pfn * PS, PS)
            if want is not None:
                assert got == want, f"pfn {pfn:#x}"
        zero_pfns = sample[dumped[sample]][zero_desc]
        for pfn in zero_pfns.tolist():
            assert out.read(pfn * PS, PS) == bytes(PS)
        excluded = sample[~dumped[sample]]
        if level == 0:
            assert excluded.size == 0
        elif level == 31:
            assert excluded.size > 0
        for pfn in excluded[:40].tolist():
            with pytest.raises(NotInDumpError):
                out.read(pfn * PS, PS)


def test_level31_matches_makedumpfile(fixture: Fixture, outdir: Path) -> None:
    """makedumpfile's own -d 31 output keeps the same pfns (5.10 and 6.1, where the scanner and
    makedumpfile 1.7.2 agree; frames only partly in the dump are kept by us, see
    docs/scanner.md)."""
    if not fixture.release.startswith(("5.10.", "6.1.")):
        pytest.skip("makedumpfile 1.7.2 disagrees with the scanner on newer kernels "
                    "(docs/scanner.md)")
    md = fixture.path("md_zlib")
    if md is None:
        pytest.skip("no makedumpfile output in the fixture")
    path = _written(fixture, "zlib", 31, outdir)
    with open_dump(md) as theirs, open_dump(path) as ours:
        assert isinstance(theirs, DiskDump) and isinstance(ours, DiskDump)
        n = min(theirs.max_mapnr, ours.max_mapnr)
        pfns = np.arange(n, dtype=np.int64)
        a, b = ours.is_dumped(pfns), theirs.is_dumped(pfns)
        diff = np.flatnonzero(a != b)
        assert diff.size <= 1, [hex(p) for p in diff[:10]]
        assert not b[diff].any()            # only pages we keep and they do not
        assert ours.is_dumped(np.arange(n, ours.max_mapnr, dtype=np.int64)).sum() == 0


def test_refilter_our_own_output(fixture: Fixture, outdir: Path, tmp_path: Path) -> None:
    """A kdump-compressed input (our -d 0) refiltered at -d 31 keeps what the direct -d 31 of
    the vmcore keeps, with the same page contents."""
    if fixture.name != "bullseye":
        pytest.skip("one fixture is enough for refiltering")
    level0 = _written(fixture, "zlib", 0, outdir)
    direct = _written(fixture, "zlib", 31, outdir)
    out = tmp_path / "refiltered.kdump"
    with open_dump(level0) as d:
        write_dump_file(d, _bitmaps(d, 31), str(out), WriteOptions())
    with open_dump(out) as a, open_dump(direct) as b:
        assert isinstance(a, DiskDump) and isinstance(b, DiskDump)
        pfns = np.arange(min(a.max_mapnr, b.max_mapnr), dtype=np.int64)
        assert (a.is_dumped(pfns) == b.is_dumped(pfns)).all()
        for pfn in _sample(a.is_dumped(pfns), 50, seed=11).tolist():
            assert a.read_page(pfn) == b.read_page(pfn)


# --------------------------------------------------------------------------------------------
# Independent readers


def test_drgn_reads_our_dump(fixture: Fixture, outdir: Path) -> None:
    drgn = pytest.importorskip("drgn")
    path = _written(fixture, "zlib", 31, outdir)
    src_path = fixture.path("vmcore")
    assert src_path is not None
    prog = drgn.Program()
    prog.set_core_dump(str(path))
    with open_dump(src_path) as src, open_dump(path) as out:
        assert isinstance(out, DiskDump)
        pfns = np.arange(out.max_mapnr, dtype=np.int64)
        dumped = out.is_dumped(pfns)
        for pfn in _sample(dumped, 40, seed=5).tolist():
            if src.contains(pfn * PS, PS):
                assert prog.read(pfn * PS, PS, True) == src.read(pfn * PS, PS)
    vmlinux = fixture.path("vmlinux_dbg")
    if vmlinux is None:
        pytest.skip("no -dbg vmlinux in the fixture")
    prog.load_debug_info([str(vmlinux)])
    assert prog["init_uts_ns"].name.release.string_().decode() == fixture.release


@pytest.mark.parametrize("codec", ["lzo", "zstd", "snappy"])
def test_drgn_reads_other_codecs(fixture: Fixture, codec: str, outdir: Path) -> None:
    """libkdumpfile decodes our LZO, zstd and snappy pages (one fixture suffices)."""
    if fixture.name != "bookworm":
        pytest.skip("one fixture is enough for the codecs")
    drgn = pytest.importorskip("drgn")
    path = _written(fixture, codec, 31, outdir)
    src_path = fixture.path("vmcore")
    assert src_path is not None
    prog = drgn.Program()
    prog.set_core_dump(str(path))
    with open_dump(src_path) as src, open_dump(path) as out:
        assert isinstance(out, DiskDump)
        dumped = out.is_dumped(np.arange(out.max_mapnr, dtype=np.int64))
        for pfn in _sample(dumped, 30, seed=6).tolist():
            if src.contains(pfn * PS, PS):
                assert prog.read(pfn * PS, PS, True) == src.read(pfn * PS, PS)


def _makedumpfile_ok(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MAKEDUMPFILE, *args], capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not os.access(MAKEDUMPFILE, os.X_OK), reason="makedumpfile not installed")
def test_makedumpfile_dump_dmesg(fixture: Fixture, outdir: Path, tmp_path: Path) -> None:
    path = _written(fixture, "zlib", 31, outdir)
    md = fixture.path("md_zlib")
    if md is not None:
        ref = _makedumpfile_ok(["--dump-dmesg", str(md), str(tmp_path / "theirs.txt")])
        if ref.returncode != 0:
            pytest.skip(f"makedumpfile 1.7.2 cannot read this kernel's log even from its own "
                        f"dump: {ref.stdout.strip().splitlines()[-1:]}")
    r = _makedumpfile_ok(["--dump-dmesg", str(path), str(tmp_path / "dmesg.txt")])
    assert r.returncode == 0, r.stdout + r.stderr
    text = (tmp_path / "dmesg.txt").read_text(errors="replace")
    assert f"Linux version {fixture.release}" in text
    if md is not None:
        assert text == (tmp_path / "theirs.txt").read_text(errors="replace")


@pytest.mark.skipif(not os.access(MAKEDUMPFILE, os.X_OK), reason="makedumpfile not installed")
def test_makedumpfile_refilters_level0(fixture: Fixture, outdir: Path, tmp_path: Path) -> None:
    path = _written(fixture, "zlib", 0, outdir)
    out = tmp_path / "refiltered.kdump"
    r = _makedumpfile_ok(["-c", "-d", "31", str(path), str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    src_path = fixture.path("vmcore")
    assert src_path is not None
    with open_dump(out) as re_, open_dump(src_path) as src:
        assert isinstance(re_, DiskDump)
        assert re_.sub_header.dump_level == 31
        pfns = np.arange(re_.max_mapnr, dtype=np.int64)
        dumped = re_.is_dumped(pfns)
        assert 0 < dumped.sum() < re_.is_in_memory(pfns).sum()
        for pfn in _sample(dumped, 30, seed=9).tolist():
            if src.contains(pfn * PS, PS):
                assert re_.read(pfn * PS, PS) == src.read(pfn * PS, PS)


@pytest.mark.skipif(CRASH is None, reason="crash not installed")
def test_crash_sys_and_log(fixture: Fixture, outdir: Path) -> None:
    if not fixture.release.startswith(("5.10.", "6.1.")):
        pytest.skip("crash 8.0.2 supports the 5.10 and 6.1 kernels only")
    vmlinux = fixture.path("vmlinux_dbg")
    if vmlinux is None:
        pytest.skip("no -dbg vmlinux in the fixture")
    path = _written(fixture, "zlib", 31, outdir)
    assert CRASH is not None
    r = subprocess.run([CRASH, "-s", str(vmlinux), str(path)], input="sys\nlog\nq\n",
                       capture_output=True, text=True, timeout=600)
    both = r.stdout + r.stderr
    assert "page excluded" not in both
    assert f"RELEASE: {fixture.release}" in both
    assert f"Linux version {fixture.release}" in both


# --------------------------------------------------------------------------------------------
# Flattened output


def test_flattened_equals_direct(fixture: Fixture, outdir: Path, tmp_path: Path) -> None:
    if fixture.name != "bookworm":
        pytest.skip("one fixture is enough for the stream format")
    src_path = fixture.path("vmcore")
    assert src_path is not None
    direct = _written(fixture, "zlib", 31, outdir)
    flat = tmp_path / "out.flat"
    with open_dump(src_path) as dump, open(flat, "wb") as f:
        res = write_kdump(dump, _bitmaps(dump, 31), FlatSink(f),
                          WriteOptions(compression=codecs.DUMP_DH_COMPRESSED_ZLIB,
                                       timestamp=FIXED_TIME))
    assert not res.incomplete
    want = direct.read_bytes()
    ours = tmp_path / "ours.kdump"
    reassemble(flat, ours)
    assert ours.read_bytes() == want
    with open_flattened(flat) as fd:
        assert fd.read_page(int(fd.dumped_pfns()[100])) is not None
    if os.access(MAKEDUMPFILE, os.X_OK):
        theirs = tmp_path / "theirs.kdump"
        with open(flat, "rb") as fin:
            r = subprocess.run([MAKEDUMPFILE, "-R", str(theirs)], stdin=fin,
                               capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        assert theirs.read_bytes() == want


# --------------------------------------------------------------------------------------------
# Synthetic cores: fast checks of the format details and safety


def _synth(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, 2 * PS, dtype=np.uint8).tobytes()   # incompressible
    core = build_core([
        Seg(0x0000, page_pattern(100, 3) + bytes(2 * PS) + noise),     # pfns 0-6, 3-4 zero
        Seg(0x10000, page_pattern(16, 2) + b"\x55" * 0x800),           # pfn 18 partial
    ])
    p = tmp_path / "synth.core"
    p.write_bytes(core.data)
    return p


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("codec", ["none", "zlib", "lzo", "snappy", "zstd"])
def test_synthetic_round_trip(tmp_path: Path, codec: str, level: int) -> None:
    if codec in ("lzo", "snappy", "zstd") and not _have(
            {"lzo": "lzo", "snappy": "snappy", "zstd": "zstandard"}[codec]):
        pytest.skip(f"python module for {codec} missing")
    src_path = _synth(tmp_path)
    out = tmp_path / "out.kdump"
    with open_dump(src_path) as src:
        res = write_dump_file(src, level0_bitmaps(src, level), str(out),
                              WriteOptions(compression=CODEC_FLAGS[codec], chunk_pages=8))
        assert res.pages_dumped == res.pages_written == 10
        assert res.zero_pages == 2
        assert res.raw_pages == (8 if codec == "none" else 2)   # noise does not compress
        with open_dump(out) as dd:
            assert isinstance(dd, DiskDump)
            for pfn in [0, 1, 2, 5, 6, 16, 17]:
                assert dd.read_page(pfn) == src.read(pfn * PS, PS)
            for pfn in (3, 4):
                assert dd.read_page(pfn) == bytes(PS)
            assert (_is_zero_desc(dd, np.array([3, 4])).all())
            # the partial frame: stored bytes, then zeros
            assert dd.read_page(18) == b"\x55" * 0x800 + bytes(0x800)
            with pytest.raises(NotInDumpError):
                dd.read_page(8)
            d = dd.descriptors(0, 10)
            raw = d[(d["flags"] == 0) & (d["offset"] != dd.desc_end)]
            assert (raw["size"] == PS).all()


def test_header_pack_round_trip() -> None:
    from kdlayout.diskdump import Utsname
    h = make_header(utsname=Utsname("Linux", "n", "6.1.0", "#1", "x86_64", "d"),
                    timestamp=12.5, status=1, block_size=4096, sub_hdr_size=2,
                    bitmap_blocks=4, max_mapnr=1000, nr_cpus=3)
    back = parse_header(pack_header(h).ljust(4096, b"\0"), "x")
    assert back == h


def test_refuses_output_equal_to_input(tmp_path: Path) -> None:
    src = _synth(tmp_path)
    (tmp_path / "link").symlink_to(src)
    os.link(src, tmp_path / "hard")
    before = src.read_bytes()
    with open_dump(src) as d:
        for target in (src, tmp_path / "link", tmp_path / "hard"):
            with pytest.raises(KdlayoutError, match="input"):
                write_dump_file(d, level0_bitmaps(d), str(target), WriteOptions())
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard", "link", "synth.core"]


def test_existing_output_needs_force(tmp_path: Path) -> None:
    src = _synth(tmp_path)
    out = tmp_path / "out.kdump"
    out.write_bytes(b"keep me")
    r = _cli("-c", "--message-level", "0", str(src), str(out))
    assert r.returncode != 0 and b"exists" in r.stderr
    assert out.read_bytes() == b"keep me"
    r = _cli("-f", "-c", "--message-level", "0", str(src), str(out))
    assert r.returncode == 0, r.stderr
    with open_dump(out) as dd, open_dump(src) as s:
        assert dd.read(PS, PS) == s.read(PS, PS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.kdump", "synth.core"]


def test_failure_leaves_no_file(tmp_path: Path) -> None:
    src = _synth(tmp_path)
    out = tmp_path / "out.kdump"

    def boom(done: int, total: int) -> None:
        raise RuntimeError("stop")

    with open_dump(src) as d, pytest.raises(RuntimeError):
        write_dump_file(d, level0_bitmaps(d), str(out), WriteOptions(chunk_pages=8),
                        progress=boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth.core"]


def _cli(*args: str, stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "kdlayout.cli", "dump", *args],
                          stdout=stdout, stderr=subprocess.PIPE, timeout=900)


def test_cli_refusals(tmp_path: Path) -> None:
    src = _synth(tmp_path)
    r = _cli("-E", "-c", str(src), str(tmp_path / "o"))
    assert r.returncode != 0 and b"-E" in r.stderr
    r = _cli("-F", str(src), str(tmp_path / "o"))
    assert r.returncode != 0 and b"stdout" in r.stderr
    r = _cli("-c", str(src), str(src))
    assert r.returncode != 0 and b"input" in r.stderr
    assert not (tmp_path / "o").exists()


def test_cli_flattened_stdout(tmp_path: Path) -> None:
    src = _synth(tmp_path)
    with open(tmp_path / "o.flat", "wb") as f:
        r = _cli("-F", "-c", "--message-level", "0", str(src), stdout=f)
    assert r.returncode == 0, r.stderr
    with open_flattened(tmp_path / "o.flat") as fd, open_dump(src) as s:
        assert fd.read_page(17) == s.read(17 * PS, PS)


# --------------------------------------------------------------------------------------------
# ELF output (-E)


def test_elf_output_synthetic(tmp_path: Path) -> None:
    src = _synth(tmp_path)
    out = tmp_path / "o.elf"
    with open_dump(src) as s:
        res = write_dump_file(s, level0_bitmaps(s, 1), str(out), WriteOptions(), elf=True)
        assert res.zero_pages == 2
        with open_dump(out) as e:
            assert e.info.format.startswith("elf")
            assert [(n.name, n.type) for n in e.notes] == [(n.name, n.type) for n in s.notes]
            for pfn in [0, 1, 2, 5, 6, 16, 17]:
                assert e.read(pfn * PS, PS) == s.read(pfn * PS, PS)
            segs = e.segments            # type: ignore[attr-defined]
            # pfns 3-4 are zero: not stored, the p_memsz tail of the segment of pfns 0-2
            assert any(g.p_paddr == 0 and g.p_filesz == 3 * PS and g.p_memsz == 5 * PS
                       for g in segs)
            assert sum(g.p_filesz for g in segs) == 7 * PS + 0x800     # pfns 0-2, 5-6, 16-17, half 18
            with pytest.raises(NotInDumpError):
                e.read(8 * PS, PS)


def test_elf_output_readers(fixture: Fixture, tmp_path: Path) -> None:
    if fixture.name not in ("bookworm", "bullseye"):
        pytest.skip("ELF output checked on the 5.10 and 6.1 fixtures (crash supports them)")
    src_path, vmlinux = fixture.path("vmcore"), fixture.path("vmlinux_dbg")
    assert src_path is not None
    out = tmp_path / "o.elf"
    r = _cli("-E", "-d", "31", "--message-level", "0", str(src_path), str(out))
    assert r.returncode == 0, r.stderr
    with open_dump(src_path) as s, open_dump(out) as e:
        assert e.vmcoreinfo == s.vmcoreinfo
        kept = [g for g in e.segments if g.p_filesz]       # type: ignore[attr-defined]
        rng = np.random.default_rng(4)
        for g in rng.choice(len(kept), size=min(40, len(kept)), replace=False).tolist():
            seg = kept[g]
            paddr = seg.p_paddr + seg.p_filesz // PS // 2 * PS
            if s.contains(paddr, PS) and seg.p_filesz >= PS:
                assert e.read(paddr, PS) == s.read(paddr, PS)
        assert e.total_bytes() < s.total_bytes()
    if os.access(MAKEDUMPFILE, os.X_OK):
        m = _makedumpfile_ok(["--dump-dmesg", str(out), str(tmp_path / "dmesg.txt")])
        assert m.returncode == 0, m.stdout + m.stderr
        assert f"Linux version {fixture.release}" in (tmp_path / "dmesg.txt").read_text(
            errors="replace")
    if vmlinux is not None:
        drgn = pytest.importorskip("drgn")
        prog = drgn.Program()
        prog.set_core_dump(str(out))
        prog.load_debug_info([str(vmlinux)])
        assert prog["init_uts_ns"].name.release.string_().decode() == fixture.release
        if CRASH is not None:
            c = subprocess.run([CRASH, "-s", str(vmlinux), str(out)], input="sys\nlog\nq\n",
                               capture_output=True, text=True, timeout=600)
            assert "read error" not in c.stdout + c.stderr
            assert f"RELEASE: {fixture.release}" in c.stdout


# --------------------------------------------------------------------------------------------
# Out of space


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Any:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_enospc_leaves_incomplete_readable_dump(small_tmpfs: Path) -> None:
    from fixtures import load_fixtures
    fx = {f.name: f for f in load_fixtures()}.get("bookworm")
    src_path = fx.path("vmcore") if fx else None
    if src_path is None:
        pytest.skip("needs the bookworm fixture (more than 8 MiB of kept pages)")
    out = small_tmpfs / "out.kdump"
    r = _cli("-c", "-d", "31", "--message-level", "0", str(src_path), str(out))
    assert r.returncode != 0
    msg = r.stderr.decode()
    assert "incomplete" in msg and "pages saved" in msg
    assert out.exists() and out.stat().st_mode & 0o777 == 0o600
    assert not [p for p in small_tmpfs.iterdir() if p.name.endswith(".part")]
    with open_dump(out) as dd, open_dump(src_path) as src:
        assert isinstance(dd, DiskDump)
        assert dd.incomplete and dd.header.status & codecs.DUMP_DH_COMPRESSED_INCOMPLETE
        saved = int(msg.split(" of ")[0].rsplit(" ", 1)[-1])
        held = sum(r.size for r in dd.ranges()) // PS
        assert 0 < saved == held < dd.num_dumpable
        runs = dd.ranges()
        for rr in [runs[0], runs[len(runs) // 2], runs[-1]]:
            for paddr in (rr.start, rr.end - PS):
                if src.contains(paddr, PS):
                    assert dd.read(paddr, PS) == src.read(paddr, PS)
        last = runs[-1].end // PS
        later = np.flatnonzero(dd.is_dumped(np.arange(last, dd.max_mapnr, dtype=np.int64)))
        assert later.size > 0
        with pytest.raises(NotInDumpError):
            dd.read_page(int(later[-1]) + last)
    vmlinux = fx.path("vmlinux_dbg") if fx else None
    if CRASH is not None and vmlinux is not None:
        c = subprocess.run([CRASH, "-s", str(vmlinux), str(out)], input="q\n",
                           capture_output=True, text=True, timeout=600)
        assert "This dumpfile is incomplete" in c.stdout + c.stderr


# --------------------------------------------------------------------------------------------
# Page compressors (kdlayout.compress): the C libraries through ctypes and the Python packages


def _real_pages(n: int) -> np.ndarray:
    """Up to ``n`` non-zero pages of a real fixture (else synthetic ones), as a (n, PS) array."""
    from fixtures import load_fixtures
    fx = {f.name: f for f in load_fixtures()}.get("bookworm")
    src = fx.path("vmcore") if fx else None
    rng = np.random.default_rng(12)
    if src is None:
        return rng.integers(0, 4, (n, PS), dtype=np.uint8) * rng.integers(0, 2, (n, 1),
                                                                          dtype=np.uint8)
    with open_dump(src) as d:
        ranges = [r for r in d.ranges() if r.size >= 64 * PS]
        out = []
        for r in ranges:
            v = d.view(r.start, r.size // PS * PS).reshape(-1, PS)
            keep = v[v.any(axis=1)]
            out.append(np.array(keep[rng.permutation(len(keep))[:n // len(ranges) + 1]]))
        return np.concatenate(out)[:n]


@pytest.mark.parametrize("codec", ["lzo", "snappy", "zstd", "zlib", "none"])
def test_compressors_round_trip(codec: str) -> None:
    """Every backend's pages decode (with the reader's decompressors) to the input, across
    several runs per chunk and with pages left out; LZO from liblzo2 is byte-identical to
    python-lzo's LZO1X-1."""
    from kdlayout.compress import compressor_factory
    flag = CODEC_FLAGS[codec]
    pages = _real_pages(600)
    noise = np.random.default_rng(1).integers(0, 256, (3, PS), dtype=np.uint8)
    pages = np.concatenate([pages, noise])              # incompressible: stored raw
    parts = [pages[:200], pages[200:201], pages[201:]]
    todo = np.flatnonzero(np.arange(len(pages)) % 5 != 3)
    outs = []
    for native in (True, False):
        try:
            comp = compressor_factory(flag, native=native)()
        except KdlayoutError as exc:
            pytest.skip(f"{codec}: {exc}")
        c = comp.compress(parts, todo)
        assert (c.sizes[np.setdiff1d(np.arange(len(pages)), todo)] == 0).all()
        off = 0
        for i in todo.tolist():
            size = int(c.sizes[i])
            blob = bytes(c.data[off:off + size])
            off += size
            assert codecs.decompress(int(c.flags[i]), blob, PS) == pages[i].tobytes(), \
                (comp.backend, i)
        assert off == len(c.data)
        assert (c.flags[-3:] == 0).all() and (c.sizes[-3:] == PS).all()
        if codec != "none":
            assert (c.flags[todo[:-3]] == flag).any()
        outs.append((comp.backend, bytes(c.data)))
    if codec == "lzo" and "ctypes" in outs[0][0] and outs[1][0] == "python-lzo":
        assert outs[0][1] == outs[1][1]
    if codec == "zlib" and "ctypes" in outs[0][0]:
        assert outs[0][1] == outs[1][1]          # libz's compress2 = the stdlib's stream


@pytest.mark.parametrize("codec", ["lzo", "snappy", "zstd", "zlib"])
def test_compressor_reuses_the_buffer_given(codec: str) -> None:
    """A native backend writes into the ``out`` buffer it is given (the writer's pool) and
    gives the same bytes as into a fresh one; a buffer too small is not used."""
    from kdlayout.compress import compressor_factory
    comp = compressor_factory(CODEC_FLAGS[codec])()
    if "ctypes" not in comp.backend:
        pytest.skip(f"{codec}: no C library here")
    pages = _real_pages(64)
    todo = np.arange(0, len(pages), 2)
    fresh = comp.compress([pages], todo)
    out = np.full(len(pages) * PS + (1 << 16), 0xAA, dtype=np.uint8)
    again = comp.compress([pages], todo, out)
    assert again.buf is out and bytes(again.data) == bytes(fresh.data)
    assert (again.sizes == fresh.sizes).all() and (again.flags == fresh.flags).all()
    small = np.empty(PS, dtype=np.uint8)
    assert comp.compress([pages], todo, small).buf is not small


def test_output_buffers_stay_few(tmp_path: Path) -> None:
    """The writer's output buffers are recycled: chunks of very different sizes (all-zero,
    partly zero, full) never make the pool grow beyond the chunks in flight."""
    from kdlayout.compress import compressor_factory
    from kdlayout.writer import _chunks, _ChunkWork
    src = _synth(tmp_path)
    with open_dump(src) as d:
        work = _ChunkWork(d, compressor_factory(codecs.DUMP_DH_COMPRESSED_ZLIB), 8)
        for _ in range(20):
            for chunk in _chunks([(3, 5), (0, 7), (16, 19), (3, 4)], 8):
                c = work(chunk)
                work.give_back(c)
                assert len(work.free) <= 1


def test_threads_give_the_same_file(tmp_path: Path) -> None:
    """The inline path (one worker), worker threads and worker processes write byte-identical
    images."""
    src = _synth(tmp_path)
    images = []
    for threads, processes in ((1, True), (2, True), (3, True), (2, False), (3, False)):
        out = tmp_path / f"t{threads}{processes}.kdump"
        with open_dump(src) as d:
            write_dump_file(d, level0_bitmaps(d, 1), str(out),
                            WriteOptions(compression=codecs.DUMP_DH_COMPRESSED_LZO
                                         if _have("lzo") else codecs.DUMP_DH_COMPRESSED_ZLIB,
                                         threads=threads, processes=processes, chunk_pages=8,
                                         timestamp=FIXED_TIME))
        images.append(out.read_bytes())
    assert all(image == images[0] for image in images[1:])


def test_no_fork_beside_other_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With another thread alive in the caller (a library user's own), worker processes are not
    forked (a lock that thread holds would stay locked in the child): threads write the same
    file instead. Without one, two workers are forked."""
    import threading
    src = _synth(tmp_path)
    forks: list[int] = []
    real_fork = os.fork

    def counting_fork() -> int:
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", counting_fork)
    opts = WriteOptions(compression=codecs.DUMP_DH_COMPRESSED_ZLIB, threads=2, processes=True,
                        chunk_pages=8, timestamp=FIXED_TIME)
    images = []
    for other in (False, True):
        stop = threading.Event()
        waiter = threading.Thread(target=stop.wait) if other else None
        if waiter is not None:
            waiter.start()
        try:
            assert threading.active_count() == (2 if other else 1)
            out = tmp_path / f"o{other}.kdump"
            with open_dump(src) as d:
                write_dump_file(d, level0_bitmaps(d, 1), str(out), opts)
            images.append(out.read_bytes())
        finally:
            stop.set()
            if waiter is not None:
                waiter.join()
        if not other:
            assert len(forks) == 2
            forks.clear()
    assert forks == [] and images[0] == images[1]


def test_worker_process_error_is_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read failing in a worker process comes back as a one-line error naming its cause; no
    file is left and no worker outlives the call."""
    from kdlayout.elfcore import ElfCore
    from kdlayout.errors import CorruptError
    src = _synth(tmp_path)
    real = ElfCore.read_into

    def failing(self: ElfCore, paddr: int, out: np.ndarray) -> None:
        if paddr <= 16 * PS < paddr + out.nbytes:
            raise CorruptError("short read: 0 of 4096 bytes", path=str(src), offset=paddr)
        real(self, paddr, out)

    monkeypatch.setattr(ElfCore, "read_into", failing)
    out = tmp_path / "o.kdump"
    with open_dump(src) as d, pytest.raises(KdlayoutError, match="short read"):
        write_dump_file(d, level0_bitmaps(d, 1), str(out),
                        WriteOptions(threads=2, processes=True, chunk_pages=8))
    assert not list(tmp_path.glob("*.kdump*")) and not list(tmp_path.glob(".o.kdump*"))
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


# --------------------------------------------------------------------------------------------
# makedumpfile options


def test_check_params_writes_nothing(tmp_path: Path) -> None:
    src = _synth(tmp_path)
    out = tmp_path / "o.kdump"
    r = _cli("--check-params", "-l", "-d", "31", str(src), str(out))
    assert r.returncode == 0, r.stderr
    assert b"valid" in r.stderr and not out.exists()
    # the input is not even opened
    r = _cli("--check-params", "-c", str(tmp_path / "absent"), str(out))
    assert r.returncode == 0, r.stderr
    for bad in (["-d", "32"], ["--cyclic-buffer", "0"], ["-b", "-1"],
                ["--work-dir", str(tmp_path / "nodir")], ["--splitblock-size", "0"],
                ["--non-cyclic", "--cyclic-buffer", "8"], ["--num-threads", "-1"]):
        r = _cli("--check-params", *bad, str(src), str(out))
        assert r.returncode == 2, (bad, r.stderr)
        assert r.stderr.count(b"\n") == 1 and r.stderr.startswith(b"kdlayout: "), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth.core"]


def test_makedumpfile_tuning_options_are_no_ops(tmp_path: Path) -> None:
    """-b, --cyclic-buffer, --non-cyclic, --splitblock-size, --work-dir, --num-threads 0 and -D
    are accepted and change nothing in the output."""
    src = _synth(tmp_path)
    plain, tuned = tmp_path / "plain.kdump", tmp_path / "tuned.kdump"
    r = _cli("-c", "-d", "1", "--message-level", "0", str(src), str(plain))
    assert r.returncode == 0, r.stderr
    r = _cli("-c", "-d", "1", "--message-level", "0", "-b", "4", "--cyclic-buffer", "1024",
             "--splitblock-size", "1024", "--work-dir", str(tmp_path), "--num-threads", "0",
             "-D", str(src), str(tuned))
    assert r.returncode == 0, r.stderr
    assert b"workers" in r.stderr                     # -D: the debug line
    r = _cli("-c", "-d", "1", "--message-level", "0", "--non-cyclic", str(src),
             str(tmp_path / "nc.kdump"))
    assert r.returncode == 0, r.stderr
    with open_dump(plain) as a, open_dump(tuned) as b, open_dump(tmp_path / "nc.kdump") as c:
        assert isinstance(a, DiskDump) and isinstance(b, DiskDump) and isinstance(c, DiskDump)
        assert (a.dumped_pfns() == b.dumped_pfns()).all()
        assert (a.dumped_pfns() == c.dumped_pfns()).all()
        for pfn in a.dumped_pfns().tolist():
            assert a.read_page(pfn) == b.read_page(pfn) == c.read_page(pfn)


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    """--dry-run builds the image but creates no file (nor a temporary one), in every output
    form; its report equals a real run's; the refusals of a real run and makedumpfile's
    (--dump-dmesg) stay."""
    src = _synth(tmp_path)
    real = tmp_path / "real.kdump"
    r = _cli("-c", "-d", "1", "--message-level", "16", str(src), str(real))
    assert r.returncode == 0, r.stderr
    want = r.stderr.decode()
    assert f"Write bytes     : {real.stat().st_size}\n" in want
    listing = sorted(p.name for p in tmp_path.iterdir())
    r = _cli("--dry-run", "-c", "-d", "1", "--message-level", "16", str(src),
             str(tmp_path / "dry.kdump"))
    assert r.returncode == 0, r.stderr
    assert r.stderr.decode() == want
    dry = str(tmp_path / "dry.kdump")
    for args in (["-E", str(src), dry], ["--split", "-l", str(src), dry, str(tmp_path / "dry2")],
                 ["-F", "-c", str(src)]):
        r = _cli("--dry-run", "-d", "1", *args)
        assert r.returncode == 0, (args, r.stderr)
        assert r.stdout == b"" and b"--dry-run: nothing written" in r.stderr, args
    for args, msg in ((["--dump-dmesg"], b"--dump-dmesg"), (["-f"], b"input")):
        target = str(src) if "-f" in args else str(tmp_path / "d.txt")
        r = _cli("--dry-run", *args, str(src), target)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
    r = _cli("--dry-run", "-d", "1", str(src), str(real))          # exists, no -f
    assert r.returncode == 2 and b"exists" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == listing


def test_show_stats_prints_the_report(tmp_path: Path) -> None:
    """--show-stats adds the report (message bit 16) to any message level."""
    src = _synth(tmp_path)
    r = _cli("--show-stats", "--message-level", "0", "-d", "1", str(src),
             str(tmp_path / "a.kdump"))
    assert r.returncode == 0, r.stderr
    text = r.stderr.decode()
    assert "Original pages  : 0x000000000000000a" in text
    assert "Pages filled with zero    : 0x0000000000000002" in text
    assert "saved to" not in text                             # bit 2 still off
    r = _cli("--message-level", "0", "-d", "1", str(src), str(tmp_path / "b.kdump"))
    assert r.returncode == 0 and r.stderr == b""


def test_report_counts_without_a_byte_per_pfn() -> None:
    """count_bits (the report's page count) equals the bit count, over slice edges, and the
    report allocates no array as large as one byte per pfn."""
    import tracemalloc

    from kdlayout.commands import dump as dump_cmd
    rng = np.random.default_rng(5)
    for n in (0, 1, 7, 8, 9, 1000, (1 << 23) + 13):
        bits = rng.random(n) < 0.4
        packed = np.packbits(bits, bitorder="little")
        assert dump_cmd.count_bits(packed) == int(bits.sum())
    n = 1 << 27                                       # 512 GiB of 4 KiB pages
    valid = np.full(n // 8, 0xFF, dtype=np.uint8)
    bm = PageBitmaps(n, valid, valid, 31, {"free": 5})
    from kdlayout.writer import WriteResult
    tracemalloc.start()
    try:
        dump_cmd.count_bits(valid)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n // 16, peak                       # a byte per pfn would be n
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        dump_cmd.print_report(bm, WriteResult(pages_dumped=n - 5, zero_pages=3))
    assert f"Original pages  : 0x{n:016x}" in buf.getvalue()
    assert f"  Excluded pages            : 0x{8:016x}" in buf.getvalue()


# --------------------------------------------------------------------------------------------
# --split


def test_split_ranges_balanced() -> None:
    from kdlayout.writer import SPLIT_ALIGN, count_dumpable, split_ranges
    rng = np.random.default_rng(8)
    for trial in range(120):
        n = int(rng.integers(1, 100_000))
        bits = rng.random(n) < rng.random() ** 2
        if trial % 6 == 0:                       # nearly empty: fewer pages than files
            bits[:] = False
            bits[rng.integers(0, n, size=int(rng.integers(0, 4)))] = True
        packed = np.packbits(bits, bitorder="little")
        bm = PageBitmaps(n, packed, packed, 31, {})
        k = int(rng.integers(2, 9))
        ranges = split_ranges(bm, k)
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] and a[0] <= a[1] for a, b in itertools.pairwise(ranges))
        assert all(a % SPLIT_ALIGN == 0 for a, _ in ranges)
        counts = [int(bits[a:b].sum()) for a, b in ranges]
        assert sum(counts) == int(bits.sum())
        assert max(counts) - min(counts) < 2 * SPLIT_ALIGN
        assert [count_dumpable(bm, a, b) for a, b in ranges] == counts
        if bits.sum() >= 1000 * k:               # balanced, not just bounded
            assert max(counts) - min(counts) <= max(counts) // 10


def test_split_cli_synthetic(tmp_path: Path) -> None:
    src = _synth(tmp_path)
    outs = [tmp_path / f"part{i}" for i in range(3)]
    r = _cli("--split", "-z" if _have("zstandard") else "-c", "-d", "1", "--message-level", "0",
             str(src), *map(str, outs))
    assert r.returncode == 0, r.stderr
    got: dict[int, bytes] = {}
    with open_dump(src) as s:
        for o in outs:
            assert o.stat().st_mode & 0o777 == 0o600
            with open_dump(o) as d:
                assert isinstance(d, DiskDump) and d.split_range is not None
                lo, hi = d.split_range
                for pfn in d.dumped_pfns().tolist():
                    assert lo <= pfn < hi and pfn not in got
                    got[pfn] = d.read_page(pfn)
        assert sorted(got) == [0, 1, 2, 3, 4, 5, 6, 16, 17, 18]
        for pfn, data in got.items():
            want = s.read(pfn * PS, PS) if s.contains(pfn * PS, PS) else \
                b"\x55" * 0x800 + bytes(0x800)
            assert data == want, pfn
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    # refusals, nothing created
    for args in (["--split", str(src), str(tmp_path / "x1")],
                 [str(src), str(tmp_path / "x1"), str(tmp_path / "x2")],
                 ["--split", "-F", str(src), str(tmp_path / "x1"), str(tmp_path / "x2")],
                 ["--split", "-E", str(src), str(tmp_path / "x1"), str(tmp_path / "x2")],
                 ["--split", str(src), str(tmp_path / "x1"), str(tmp_path / "x1")],
                 ["--split", str(src), str(tmp_path / "x1"), str(src)],
                 ["--split", str(src), str(tmp_path / "x1"), str(outs[0])]):
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stderr)
    assert not list(tmp_path.glob("x*"))


def test_split_failure_leaves_no_file(tmp_path: Path) -> None:
    from kdlayout.writer import write_split_files
    src = _synth(tmp_path)
    calls = []

    def boom(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) > 1:                       # in the second file
            raise RuntimeError("stop")

    with open_dump(src) as d, pytest.raises(RuntimeError):
        write_split_files(d, level0_bitmaps(d), [str(tmp_path / "a"), str(tmp_path / "b")],
                          WriteOptions(chunk_pages=8), progress=boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth.core"]


_SPLIT_FIXTURES = ("bookworm", "bullseye")


def test_split_round_trip(fixture: Fixture, outdir: Path, tmp_path: Path) -> None:
    """A 3-file LZO -d 31 split set: each file holds its range only, together exactly the pages
    of the single-file dump, equal to the source; makedumpfile --reassemble accepts the set and
    its output reads equal; crash opens the set; drgn opens one file of it (it reads one file,
    not a set: pages of the other files are excluded there)."""
    if fixture.name not in _SPLIT_FIXTURES:
        pytest.skip(f"split sets are checked on {', '.join(_SPLIT_FIXTURES)}")
    from kdlayout.writer import SPLIT_ALIGN, write_split_files
    if not _have("lzo"):
        pytest.skip("python module for lzo missing")
    single = _written(fixture, "lzo", 31, outdir)
    src_path = fixture.path("vmcore")
    assert src_path is not None
    parts = [tmp_path / f"split{i}.kdump" for i in range(3)]
    with open_dump(src_path) as dump:
        bm = _bitmaps(dump, 31)
        res = write_split_files(dump, bm, [str(p) for p in parts],
                                WriteOptions(compression=codecs.DUMP_DH_COMPRESSED_LZO))
    assert all(not r.incomplete for r in res)
    heads = {p.read_bytes()[:PS] for p in parts}
    assert len(heads) == 1                                  # one disk_dump_header for all
    with open_dump(single) as one, open_dump(src_path) as src:
        assert isinstance(one, DiskDump)
        want = one.dumped_pfns()
        got = []
        prev_end = 0
        for p in parts:
            with open_dump(p) as d:
                assert isinstance(d, DiskDump) and d.sub_header.split == 1
                assert d.split_range is not None and d.split_range[0] == prev_end
                prev_end = d.split_range[1]
                pfns = d.dumped_pfns()
                got.append(pfns)
                assert d.max_mapnr == one.max_mapnr
                assert (d.is_in_memory(want) == one.is_in_memory(want)).all()   # whole bitmap
                sample = np.union1d(pfns[:3], pfns[-3:])
                sample = np.union1d(sample, _sample(np.isin(np.arange(d.max_mapnr), pfns),
                                                    60, seed=3))
                for pfn in sample.tolist():
                    if src.contains(pfn * PS, PS):
                        assert d.read_page(pfn) == src.read(pfn * PS, PS), (p.name, pfn)
        assert prev_end == one.max_mapnr
        sizes = [len(g) for g in got]
        assert max(sizes) - min(sizes) < 2 * SPLIT_ALIGN
        assert (np.concatenate(got) == want).all()
        if os.access(MAKEDUMPFILE, os.X_OK):
            re_path = tmp_path / "reassembled.kdump"
            r = _makedumpfile_ok(["--reassemble", *map(str, parts), str(re_path)])
            assert r.returncode == 0, r.stdout + r.stderr
            with open_dump(re_path) as re_:
                assert isinstance(re_, DiskDump)
                assert (re_.dumped_pfns() == want).all()
                for pfn in _sample(re_.is_dumped(np.arange(re_.max_mapnr)), 100,
                                   seed=4).tolist():
                    if src.contains(pfn * PS, PS):
                        assert re_.read_page(pfn) == src.read(pfn * PS, PS)
    vmlinux = fixture.path("vmlinux_dbg")
    if CRASH is not None and vmlinux is not None:
        c = subprocess.run([CRASH, "-s", str(vmlinux), *map(str, parts)], input="sys\nlog\nq\n",
                           capture_output=True, text=True, timeout=600)
        both = c.stdout + c.stderr
        assert f"RELEASE: {fixture.release}" in both, both[-2000:]
        assert "page excluded" not in both
    try:
        import drgn
    except ImportError:
        return
    prog = drgn.Program()
    prog.set_core_dump(str(parts[1]))
    with open_dump(parts[1]) as d, open_dump(parts[0]) as d0:
        pfn = int(d.dumped_pfns()[10])
        assert prog.read(pfn * PS, PS, True) == d.read_page(pfn)
        with pytest.raises(drgn.FaultError):
            prog.read(int(d0.dumped_pfns()[10]) * PS, PS, True)


# --------------------------------------------------------------------------------------------
# --reassemble


def test_reassemble_equals_single_file(fixture: Fixture, outdir: Path, tmp_path: Path) -> None:
    """kdlayout dump --reassemble of our 3-file LZO -d 31 set (given out of order) is
    byte-identical to the single-file dump (same header time), mode 0600, read by makedumpfile
    --dump-dmesg and crash; on makedumpfile's own --split set it writes exactly what makedumpfile
    --reassemble writes."""
    if fixture.name not in _SPLIT_FIXTURES:
        pytest.skip(f"split sets are checked on {', '.join(_SPLIT_FIXTURES)}")
    from kdlayout.writer import write_split_files
    if not _have("lzo"):
        pytest.skip("python module for lzo missing")
    single = _written(fixture, "lzo", 31, outdir)
    src_path = fixture.path("vmcore")
    assert src_path is not None
    parts = [tmp_path / f"split{i}.kdump" for i in range(3)]
    with open_dump(src_path) as dump:
        write_split_files(dump, _bitmaps(dump, 31), [str(p) for p in parts],
                          WriteOptions(compression=codecs.DUMP_DH_COMPRESSED_LZO,
                                       timestamp=FIXED_TIME))
    out = tmp_path / "joined.kdump"
    r = _cli("--reassemble", "--message-level", "0", str(parts[2]), str(parts[0]),
             str(parts[1]), str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == single.read_bytes()
    assert out.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name, *(p.name for p in parts)])
    if os.access(MAKEDUMPFILE, os.X_OK):
        r2 = _makedumpfile_ok(["--dump-dmesg", str(out), str(tmp_path / "dmesg.txt")])
        assert r2.returncode == 0, r2.stdout + r2.stderr
        assert f"Linux version {fixture.release}" in (tmp_path / "dmesg.txt").read_text()
        md_parts = [tmp_path / f"md{i}" for i in range(3)]
        r2 = _makedumpfile_ok(["--split", "-l", "-d", "31", str(src_path), *map(str, md_parts)])
        assert r2.returncode == 0, r2.stdout + r2.stderr
        r2 = _makedumpfile_ok(["--reassemble", *map(str, md_parts), str(tmp_path / "md.kdump")])
        assert r2.returncode == 0, r2.stdout + r2.stderr
        r = _cli("--reassemble", "--message-level", "0", *map(str, md_parts[::-1]),
                 str(tmp_path / "ours.kdump"))
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "ours.kdump").read_bytes() == (tmp_path / "md.kdump").read_bytes()
    vmlinux = fixture.path("vmlinux_dbg")
    if CRASH is not None and vmlinux is not None and fixture.release.startswith(("5.10.", "6.1.")):
        c = subprocess.run([CRASH, "-s", str(vmlinux), str(out)], input="sys\nlog\nq\n",
                           capture_output=True, text=True, timeout=600)
        both = c.stdout + c.stderr
        assert f"RELEASE: {fixture.release}" in both, both[-2000:]
        assert f"Linux version {fixture.release}" in both


def _synth_split(tmp_path: Path, n: int = 2) -> tuple[Path, list[Path]]:
    from kdlayout.writer import write_split_files
    src = _synth(tmp_path)
    parts = [tmp_path / f"part{i}" for i in range(n)]
    with open_dump(src) as d:
        write_split_files(d, level0_bitmaps(d, 1), [str(p) for p in parts],
                          WriteOptions(chunk_pages=8, timestamp=FIXED_TIME))
    return src, parts


def test_reassemble_synthetic_and_refusals(tmp_path: Path) -> None:
    """A synthetic set joined equals the single-file dump; bad sets and command lines are
    refused with one line, exit 2 and no file left (not even a temporary one)."""
    src, parts = _synth_split(tmp_path)
    single = tmp_path / "single.kdump"
    with open_dump(src) as d:
        write_dump_file(d, level0_bitmaps(d, 1), str(single),
                        WriteOptions(chunk_pages=8, timestamp=FIXED_TIME))
    out = tmp_path / "joined.kdump"
    r = _cli("--reassemble", "--show-stats", "--message-level", "0", *map(str, parts), str(out))
    assert r.returncode == 0, r.stderr
    assert b"Zero pages sharing one page : 2" in r.stderr
    assert out.read_bytes() == single.read_bytes()
    other = tmp_path / "other"
    other.mkdir()
    _, other_parts = _synth_split(other, 3)
    listing = sorted(p.name for p in tmp_path.iterdir())
    for args, msg in (
            ([*map(str, parts), str(out)], b"exists"),                      # no -f
            ([*map(str, parts), str(parts[0])], b"input"),
            ([str(parts[0]), str(tmp_path / "x")], b"pfns"),                # a file missing
            ([str(parts[0]), str(parts[0]), str(tmp_path / "x")], b"twice"),
            ([str(parts[0]), str(other_parts[1]), str(tmp_path / "x")], b"pfns"),
            ([str(single), str(parts[1]), str(tmp_path / "x")], b"split"),  # not a split file
            ([str(src), str(parts[1]), str(tmp_path / "x")], b"synth.core"),
            (["--dry-run", *map(str, parts), str(tmp_path / "x")], b"--dry-run"),
            (["-c", *map(str, parts), str(tmp_path / "x")], b"-c"),
            (["-d", "31", *map(str, parts), str(tmp_path / "x")], b"-d"),
            ([str(parts[0])], b"needs")):
        r = _cli("--reassemble", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.count(b"\n") == 1 and msg in r.stderr, (args, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == listing
    r = _cli("--reassemble", "-f", "--message-level", "0", *map(str, parts), str(out))
    assert r.returncode == 0, r.stderr


def test_reassemble_incomplete_set(tmp_path: Path) -> None:
    """An input flagged incomplete (descriptors never filled) gives an output carrying the
    flag, those descriptors empty, the other pages read back; exit 2."""
    src, parts = _synth_split(tmp_path)
    with open_dump(parts[1]) as d:
        assert isinstance(d, DiskDump)
        last = int(d.dumped_pfns()[-1])
        desc_at = d.desc_offset + (d.num_dumpable - 1) * 24
    raw = bytearray(parts[1].read_bytes())
    status = int.from_bytes(raw[424:428], "little") | codecs.DUMP_DH_COMPRESSED_INCOMPLETE
    raw[424:428] = status.to_bytes(4, "little")
    raw[desc_at:desc_at + 24] = bytes(24)
    parts[1].write_bytes(raw)
    out = tmp_path / "joined.kdump"
    r = _cli("--reassemble", "--message-level", "0", *map(str, parts), str(out))
    assert r.returncode == 2 and b"incomplete" in r.stderr, r.stderr
    with open_dump(out) as j, open_dump(src) as s:
        assert isinstance(j, DiskDump) and j.incomplete
        k = int(j.desc_index(np.array([last]))[0])
        assert j.descriptors(k, 1)["size"][0] == 0
        for pfn in j.dumped_pfns().tolist():
            if pfn != last and s.contains(pfn * PS, PS):
                assert j.read_page(pfn) == s.read(pfn * PS, PS)


def test_split_enospc(small_tmpfs: Path) -> None:
    """A split set that fills the device: exit 2, files written before it complete, the file
    being written kept with the incomplete flag, later files there without pages (flagged),
    pages saved read back equal to the source."""
    from fixtures import load_fixtures
    fx = {f.name: f for f in load_fixtures()}.get("bookworm")
    src_path = fx.path("vmcore") if fx else None
    if src_path is None:
        pytest.skip("needs the bookworm fixture (more than 8 MiB of kept pages)")
    outs = [small_tmpfs / f"s{i}" for i in range(2)]
    r = _cli("--split", "-c", "-d", "31", "--message-level", "0", str(src_path),
             *map(str, outs))
    assert r.returncode == 2
    msg = r.stderr.decode()
    assert "incomplete split dump" in msg and "pages saved" in msg, msg
    assert not [p for p in small_tmpfs.iterdir() if p.name.endswith(".part")]
    assert outs[0].exists()
    with open_dump(src_path) as src:
        saved = 0
        flagged = False
        for o in outs:
            assert o.exists() and o.stat().st_mode & 0o777 == 0o600
            with open_dump(o) as d:
                assert isinstance(d, DiskDump)
                assert d.incomplete or not flagged          # after the full one: all flagged
                flagged = flagged or d.incomplete
                held = d.ranges()
                saved += sum(rr.size for rr in held) // PS
                for rr in held[:: max(1, len(held) // 10)]:
                    if src.contains(rr.start, PS):
                        assert d.read(rr.start, PS) == src.read(rr.start, PS)
        assert flagged
        assert 0 < saved == int(msg.split(" of ")[0].rsplit(" ", 1)[-1])


# --------------------------------------------------------------------------------------------
# Memory


def _sparse_core(path: Path, size: int, every: int = 64) -> None:
    """An ELF core of ``size`` bytes of RAM at 0 in one PT_LOAD; every ``every``-th page holds
    data, the others are file holes (zeros)."""
    from synth import EHDR, PHDR, PT_LOAD, PT_NOTE, SAMPLE_VMCOREINFO, note_bytes, prstatus_desc
    notes = (note_bytes("CORE", 1, prstatus_desc(1))
             + note_bytes("VMCOREINFO", 0, SAMPLE_VMCOREINFO.encode()))
    data_off = -(-(64 + 2 * 56 + len(notes)) // PS) * PS
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    head = (EHDR.pack(ident, 4, 62, 1, 0, 64, 0, 0, 64, 56, 2, 0, 0, 0)
            + PHDR.pack(PT_NOTE, 0, 64 + 2 * 56, 0, 0, len(notes), len(notes), 0)
            + PHDR.pack(PT_LOAD, 7, data_off, 0, 0, size, size, 0) + notes)
    page = page_pattern(7)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(data_off + size)
        for pfn in range(0, size // PS, every):
            f.seek(data_off + pfn * PS)
            f.write(page)


def _peak_rss_kib(proc: subprocess.Popen[bytes]) -> int:
    """The child's ``VmHWM`` polled until it exits (left unreaped). Not ``wait4``'s
    ``ru_maxrss``: Linux folds in the RSS of the memory the child had before ``exec``, with
    ``vfork`` this test process's own peak."""
    peak = 0
    while True:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return peak
        time.sleep(0.002)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")
def test_peak_rss_flat_in_ram_size(tmp_path: Path) -> None:
    """Peak RSS of ``kdlayout dump -d 1`` stays under 80 MiB and grows by less than 8 MiB from
    256 MiB to 2 GiB of RAM (every page read, zero pages shared, 1/64 of them with data)."""
    codec = "-l" if _have("lzo") else "-c"
    peaks = []
    for size in (256 << 20, 2 << 30):
        core, out = tmp_path / "sparse.core", tmp_path / "sparse.kdump"
        _sparse_core(core, size)
        with open(tmp_path / "err", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "kdlayout.cli", "dump", codec, "-d",
                                     "1", "--message-level", "0", str(core), str(out)],
                                    stderr=err)
            peaks.append(_peak_rss_kib(proc) / 1024)
            assert proc.wait() == 0, (tmp_path / "err").read_text()
        with open_dump(out) as d:
            assert isinstance(d, DiskDump)
            assert d.num_dumpable == size // PS
            assert d.read_page(64) == page_pattern(7) and d.read_page(65) == bytes(PS)
        core.unlink()
        out.unlink()
    assert max(peaks) < 80, peaks
    assert peaks[1] - peaks[0] < 8, peaks
