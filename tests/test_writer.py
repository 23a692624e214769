"""Tests of the kdump-compressed writer (src/kdlayout/writer.py, diskdump_write.py) and
``kdlayout dump``.

Ground truth: the source vmcore read by kdlayout's ELF reader, and independent readers of our
output: drgn (libkdumpfile), makedumpfile 1.7.2 (--dump-dmesg, refiltering, -R) and crash.
Dumps of the real fixtures are written once per (fixture, codec, level) and shared by the tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
        if codec != "zlib" and not _have({"lzo": "lzo", "zstd": "zstandard"}[codec]):
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


@pytest.mark.parametrize("codec", ["lzo", "zstd"])
def test_drgn_reads_other_codecs(fixture: Fixture, codec: str, outdir: Path) -> None:
    """libkdumpfile decodes our LZO and zstd pages (one fixture suffices)."""
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
