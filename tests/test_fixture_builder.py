"""Tests for the fixture builder (tools/) and, when built, sanity of the real fixture matrix.

Unit tests use small synthetic Packages texts; Debian version order is checked
against ``dpkg --compare-versions``.  Real-fixture tests compare what
independent tools (readelf, crash --osrelease) read from the dumps with the
release the builder derived from the Debian package name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import FILE_KEYS, NOT_BUILT, Fixture, load_fixtures

TOOLS = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS))

import build_fixtures  # noqa: E402
import fixture_debian as fd  # noqa: E402

# --------------------------------------------------------------------------
# Debian version order


VERSIONS = [
    "1.0", "1.0-1", "1.0~rc1", "1.0~rc1-1", "1:0.9", "0:1.0", "1.0a", "1.0+b1", "1.0.1", "1.00",
    "6.1.192-2", "6.1.176-1", "6.12.117-1~deb12u1", "6.12.117-1", "6.12.118-1", "7.2.13-1",
    "5.10.262-1", "5.10.223-1", "2:1.2~~", "2:1.2~", "2:1.2", "1.2-0.1", "1.2-a", "1.2-~", "10", "9",
]


def _dpkg(a: str, op: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg is not installed (needed as the reference)")
def test_version_order_matches_dpkg() -> None:
    # Sort with our comparison; dpkg must agree on every adjacent pair (a total order, so
    # adjacent agreement implies agreement everywhere).
    import functools
    import itertools

    order = sorted(VERSIONS, key=functools.cmp_to_key(fd.version_compare))
    for a, b in itertools.pairwise(order):
        if fd.version_compare(a, b) == 0:
            assert _dpkg(a, "eq", b), (a, b)
        else:
            assert _dpkg(a, "lt", b), (a, b)
    assert fd.version_compare("6.1.192-2", "6.1.176-1") == 1
    assert fd.version_compare("1.0~rc1", "1.0") == -1


# --------------------------------------------------------------------------
# Packages index parsing and kernel choice


def _stanza(name: str, version: str, source: str | None = None, depends: str = "", size: int = 100) -> str:
    lines = [f"Package: {name}"]
    if source:
        lines.append(f"Source: {source}")
    lines += [f"Version: {version}", "Architecture: amd64"]
    if depends:
        lines.append(f"Depends: {depends}")
    lines += [
        "Description: test package",
        " with a continuation line",
        f"Filename: pool/main/l/x/{name}_{version}_amd64.deb",
        f"Size: {size}",
        f"SHA256: {'ab' * 32}",
    ]
    return "\n".join(lines) + "\n"


OLD_STYLE = "\n".join([
    _stanza("linux-image-6.1.0-50-amd64-unsigned", "6.1.176-1", "linux"),
    _stanza("linux-image-6.1.0-50-amd64-dbg", "6.1.176-1", "linux"),
    _stanza("linux-image-6.1.0-56-amd64-unsigned", "6.1.192-2", "linux"),
    _stanza("linux-image-6.1.0-56-amd64-dbg", "6.1.192-2", "linux"),
    # newer ABI but no -dbg package: must not be chosen
    _stanza("linux-image-6.1.0-57-amd64-unsigned", "6.1.199-1", "linux"),
    # backport from another source package (bookworm-security's linux-6.12): ignored
    _stanza("linux-image-6.12.117+deb12-amd64-unsigned", "6.12.117-1~deb12u1", "linux-6.12"),
    _stanza("linux-image-6.12.117+deb12-amd64-dbg", "6.12.117-1~deb12u1", "linux-6.12"),
    # other flavours: ignored
    _stanza("linux-image-6.1.0-58-cloud-amd64-unsigned", "6.1.200-1", "linux"),
    _stanza("linux-image-6.1.0-58-cloud-amd64-dbg", "6.1.200-1", "linux"),
])

NEW_STYLE = "\n".join([
    _stanza("linux-image-7.2.13+deb14-amd64", "7.2.13-1", "linux-signed-amd64 (7.2.13+1)",
            "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, "
            "linux-base-7.2.13+deb14-amd64 (= 7.2.13-1), linux-binary-7.2.13+deb14-amd64 (= 7.2.13-1), "
            "linux-modules-7.2.13+deb14-amd64 (= 7.2.13-1)"),
    _stanza("linux-binary-7.2.13+deb14-amd64", "7.2.13-1", "linux-signed-amd64 (7.2.13+1)",
            "linux-base-7.2.13+deb14-amd64 (= 7.2.13-1)"),
    _stanza("linux-modules-7.2.13+deb14-amd64", "7.2.13-1", "linux", "kmod, linux-base-7.2.13+deb14-amd64 (= 7.2.13-1)"),
    _stanza("linux-base-7.2.13+deb14-amd64", "7.2.13-1", "linux"),
    _stanza("linux-image-7.2.13+deb14-amd64-dbg", "7.2.13-1", "linux", "linux-base-7.2.13+deb14-amd64 (= 7.2.13-1)"),
    _stanza("dracut", "1.0-1"),
    _stanza("kmod", "34-1"),
])


def test_parse_packages_fields() -> None:
    recs = {r.name: r for r in fd.parse_packages(NEW_STYLE, "http://m", "sid")}
    assert len(recs) == 7
    img = recs["linux-image-7.2.13+deb14-amd64"]
    assert img.source == "linux-signed-amd64"
    assert img.version == "7.2.13-1"
    assert img.size == 100
    assert img.sha256 == "ab" * 32
    assert img.filename == "pool/main/l/x/linux-image-7.2.13+deb14-amd64_7.2.13-1_amd64.deb"
    # first alternative of each entry, version constraints dropped
    assert img.depends == ("dracut", "linux-base-7.2.13+deb14-amd64", "linux-binary-7.2.13+deb14-amd64",
                           "linux-modules-7.2.13+deb14-amd64")
    assert recs["kmod"].source == "kmod"  # no Source field: the package itself
    assert (img.mirror, img.suite) == ("http://m", "sid")


def test_parse_packages_name_filter() -> None:
    names = [r.name for r in fd.parse_packages(NEW_STYLE, names=re.compile(r"linux-"))]
    assert len(names) == 5 and all(n.startswith("linux-") for n in names)


def test_parse_packages_skips_malformed() -> None:
    text = "Package: a\nVersion: 1\n\nPackage: b\nVersion: 1\nFilename: x\nSize: notanumber\nSHA256: 00\n\n" + _stanza("c", "2")
    assert [r.name for r in fd.parse_packages(text)] == ["c"]


def test_choose_kernel_old_style() -> None:
    idx = fd.PackageIndex()
    idx.add(fd.parse_packages(OLD_STYLE, suite="bookworm"))
    k = fd.choose_kernel(idx, "bookworm")
    assert k.release == "6.1.0-56-amd64"
    assert k.version == "6.1.192-2"
    assert k.root_package == "linux-image-6.1.0-56-amd64-unsigned"
    assert [p.name for p in k.packages] == ["linux-image-6.1.0-56-amd64-unsigned"]
    assert k.dbg is not None and k.dbg.name == "linux-image-6.1.0-56-amd64-dbg"


def test_choose_kernel_new_style_follows_depends() -> None:
    idx = fd.PackageIndex()
    idx.add(fd.parse_packages(NEW_STYLE, suite="sid"))
    k = fd.choose_kernel(idx, "sid")
    assert k.release == "7.2.13+deb14-amd64"
    assert k.root_package == "linux-image-7.2.13+deb14-amd64"
    assert sorted(p.name for p in k.packages) == [
        "linux-base-7.2.13+deb14-amd64", "linux-binary-7.2.13+deb14-amd64",
        "linux-image-7.2.13+deb14-amd64", "linux-modules-7.2.13+deb14-amd64"]


def test_index_union_keeps_newest() -> None:
    idx = fd.PackageIndex()
    idx.add(fd.parse_packages(_stanza("p", "1.0-1"), suite="trixie"))
    idx.add(fd.parse_packages(_stanza("p", "1.0-2"), suite="trixie-security"))
    idx.add(fd.parse_packages(_stanza("p", "1.0-1~deb13u1"), suite="trixie-updates"))
    rec = idx.get("p")
    assert rec is not None and (rec.version, rec.suite) == ("1.0-2", "trixie-security")


def test_choose_kernel_without_dbg_fails() -> None:
    idx = fd.PackageIndex()
    idx.add(fd.parse_packages(_stanza("linux-image-6.1.0-57-amd64-unsigned", "6.1.199-1", "linux")))
    with pytest.raises(fd.ArchiveError, match="matching -dbg"):
        fd.choose_kernel(idx, "bookworm")


def test_inrelease_sha256_lookup() -> None:
    signed = (b"Origin: Debian\nMD5Sum:\n 0123 10 main/binary-amd64/Packages.xz\nSHA256:\n"
              b" " + b"cd" * 32 + b"  4242 main/binary-amd64/Packages.xz\n"
              b" " + b"ef" * 32 + b" 17 main/binary-amd64/Packages\n")
    assert fd._inrelease_sha256(signed, "main/binary-amd64/Packages.xz") == "cd" * 32
    assert fd._inrelease_sha256(signed, "main/binary-i386/Packages.xz") is None


def test_fixture_name_and_workload_parsing() -> None:
    assert build_fixtures.fixture_name("bookworm", "bookworm", 1024) == "bookworm"
    assert build_fixtures.fixture_name("trixie", "bookworm", 1024) == "trixie-cap-bookworm"
    assert build_fixtures.fixture_name("sid", "sid", 16384) == "sid-16384m"
    jobs = {j.name: j for j in build_fixtures.variant_jobs(1024)}
    assert jobs["trixie-la57"].cpu == "max,la57=on" and jobs["trixie-la57"].paging_levels == 5
    assert jobs["trixie-cap-bookworm"].cpu == build_fixtures.DEFAULT_CPU == "max,la57=off"
    # a bigger guest of a same-suite variant must not take the plain suite's name
    assert {j.name for j in build_fixtures.variant_jobs(4096)} == {
        "trixie-cap-bookworm-4096m", "trixie-la57-4096m"}
    lines = [
        'garbage KDL-INFO {"kind":"anon","pid":5,"pfns":[1,2]}',
        "[   12.3] kernel line",
        'KDL-INFO {"kind":"hwpoison","pfns":[7]}',
        'KDL-INFO {"kind":"hwpoison","pfns":[8]}',
        'KDL-INFO {"kind":"broken", "pfns":[',
    ]
    w = build_fixtures.parse_workload(lines)
    assert w["anon"] == {"pid": 5, "pfns": [1, 2]}
    assert w["hwpoison"] == [{"pfns": [7]}, {"pfns": [8]}]
    assert "broken" not in w


def test_vmcore_paging_levels(tmp_path: Path) -> None:
    core = tmp_path / "vmcore"
    core.write_bytes(b"\x7fELF" + b"\0" * 60 + b"OSRELEASE=6.12\nNUMBER(pgtable_l5_enabled)=1\nKERNELOFFSET=0\n")
    assert build_fixtures.vmcore_paging_levels(core) == 5
    core.write_bytes(b"\x7fELF NUMBER(pgtable_l5_enabled)=0\n")
    assert build_fixtures.vmcore_paging_levels(core) == 4
    core.write_bytes(b"\x7fELF OSRELEASE=5.10\n")
    assert build_fixtures.vmcore_paging_levels(core) is None


def test_load_fixtures_reads_manifests(tmp_path: Path) -> None:
    d = tmp_path / "fixtures" / "x"
    d.mkdir(parents=True)
    (d / "vmcore").write_bytes(b"\x7fELF")
    # incomplete fixture (no manifest) must be invisible
    (tmp_path / "fixtures" / "half").mkdir()
    (d / "manifest.json").write_text(json.dumps({
        "name": "x", "suite": "bookworm", "release": "6.1.0-56-amd64", "capture_release": "6.1.0-56-amd64",
        "files": {"vmcore": "vmcore", "qemu_elf": None, "md_zlib": "missing.kdump"}, "vmlinuz": "vmlinuz",
    }))
    fx = load_fixtures(tmp_path)
    assert [f.name for f in fx] == ["x"]
    assert fx[0].path("vmcore") == d / "vmcore"
    assert fx[0].path("qemu_elf") is None
    assert fx[0].path("md_zlib") is None  # listed but not on disk
    assert fx[0].path("vmlinuz") is None


# --------------------------------------------------------------------------
# Real fixtures


def _readelf_vmcoreinfo(path: Path) -> dict[str, str]:
    """VMCOREINFO key=value pairs as decoded from readelf -n's hex dump of the note."""
    out = subprocess.run(["readelf", "-W", "-n", str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, "LC_ALL": "C"}, timeout=300).stdout
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.split()[:1] == ["VMCOREINFO"]:
            # with -W the hex dump is on the same line, otherwise on the next one
            for follow in lines[i:i + 3]:
                if "description data:" in follow:
                    hexdata = follow.split("description data:", 1)[1].split()
                    text = bytes(int(h, 16) for h in hexdata).decode("ascii", "replace")
                    return dict(kv.split("=", 1) for kv in text.splitlines() if "=" in kv)
    return {}


needs_readelf = pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) not installed")


@needs_readelf
def test_vmcore_is_elf_with_matching_vmcoreinfo(fixture: Fixture) -> None:
    vmcore = fixture.path("vmcore")
    assert vmcore is not None, "every fixture must have the kdump vmcore"
    with open(vmcore, "rb") as f:
        assert f.read(4) == b"\x7fELF"
    info = _readelf_vmcoreinfo(vmcore)
    assert info.get("OSRELEASE") == fixture.release
    assert info.get("PAGESIZE") == "4096"


@needs_readelf
def test_vmcore_size_is_end_of_last_segment(fixture: Fixture) -> None:
    vmcore = fixture.path("vmcore")
    assert vmcore is not None
    out = subprocess.run(["readelf", "-W", "-l", str(vmcore)], capture_output=True, text=True, check=True,
                         env={**os.environ, "LC_ALL": "C"}).stdout
    ends = [int(p[1], 16) + int(p[4], 16) for p in (ln.split() for ln in out.splitlines()) if p[:1] == ["LOAD"]]
    assert ends, "no PT_LOAD in vmcore"
    assert vmcore.stat().st_size == max(ends)
    # sparse: the free memory the capture kernel copied as zeros did not take disk space
    assert vmcore.stat().st_blocks * 512 < vmcore.stat().st_size


@needs_readelf
def test_qemu_elf_has_vmcoreinfo(fixture: Fixture) -> None:
    p = fixture.path("qemu_elf")
    if p is None:
        pytest.skip(f"{fixture.name}: QEMU ELF dump not built")
    info = _readelf_vmcoreinfo(p)
    assert info.get("OSRELEASE") == fixture.release


@pytest.mark.skipif(shutil.which("crash") is None, reason="crash is not installed")
@pytest.mark.parametrize("key", ["vmcore", "md_zlib", "md_lzo", "md_zstd"])
def test_crash_reads_osrelease(fixture: Fixture, key: str) -> None:
    p = fixture.path(key)
    if p is None:
        pytest.skip(f"{fixture.name}: {key} not built")
    out = subprocess.run(["crash", "--osrelease", str(p)], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == fixture.release, out.stderr[-500:]


def test_derived_file_signatures(fixture: Fixture) -> None:
    kd = [k for k in ("md_zlib", "md_lzo", "md_snappy", "md_zstd") if fixture.path(k) is not None]
    for key in kd:
        p = fixture.path(key)
        assert p is not None
        head = p.read_bytes()[:4096]
        assert head[:8] == b"KDUMP   ", key
        # struct new_utsname follows signature[8] and header_version (int)
        release = head[12 + 65 * 2:12 + 65 * 3].split(b"\0", 1)[0].decode()
        assert release == fixture.release, key
    for key in ("md_flat", "qemu_kdump"):
        p = fixture.path(key)
        if p is not None:
            assert p.read_bytes()[:16].rstrip(b"\0") == b"makedumpfile", key


def test_manifest_consistent(fixture: Fixture) -> None:
    m = fixture.manifest
    for k in ("name", "suite", "release", "capture_release", "package", "version", "guest_mem_mib",
              "builder_version", "workload", "files"):
        assert k in m, k
    assert set(FILE_KEYS) <= set(m["files"])
    for key, rel in m["files"].items():
        if rel:
            assert (fixture.dir / rel).exists(), key
    assert fixture.path("config") is not None
    config = fixture.path("config")
    assert config is not None and "CONFIG_DEBUG_INFO_BTF=y" in config.read_text()
    if fixture.name.count("-cap-"):
        assert fixture.capture_release != fixture.release
    console = fixture.path("console_log")
    assert console is not None
    text = console.read_text(errors="replace")
    assert "KDL-READY" in text and "KDL-VMCORE-DONE" in text
    assert re.search(r"KDL-STAGE init kernel=" + re.escape(fixture.capture_release), text)


def test_not_built_reason_is_stable() -> None:
    assert NOT_BUILT == "fixture matrix not built: run python tools/build_fixtures.py"


def _pt_loads(path: Path) -> list[tuple[int, int, int]]:
    """(file offset, physical address, file size) of each PT_LOAD, as readelf -l reports them."""
    out = subprocess.run(["readelf", "-W", "-l", str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, "LC_ALL": "C"}).stdout
    return [(int(p[1], 16), int(p[3], 16), int(p[4], 16))
            for p in (ln.split() for ln in out.splitlines()) if p[:1] == ["LOAD"]]


def _read_phys(path: Path, loads: list[tuple[int, int, int]], paddr: int, size: int) -> bytes | None:
    for off, start, filesz in loads:
        if start <= paddr and paddr + size <= start + filesz:
            with open(path, "rb") as f:
                f.seek(off + paddr - start)
                return f.read(size)
    return None


# (workload kind, fill seed, bytes per reported pfn): the content workload.c wrote.
PATTERNS = [("anon", 0x5A, 4096), ("thp", 0x33, 2 << 20), ("hugetlb", 0x77, 2 << 20)]


@needs_readelf
@pytest.mark.parametrize("key", ["vmcore", "qemu_elf"])
def test_workload_pages_hold_their_pattern(fixture: Fixture, key: str) -> None:
    """Pages the guest filled with a known pattern read back from the dump at their reported PFNs."""
    path = fixture.path(key)
    if path is None:
        pytest.skip(f"{fixture.name}: {key} not built")
    loads = _pt_loads(path)
    checked = 0
    for kind, seed, stride in PATTERNS:
        rec = fixture.workload.get(kind)
        if not isinstance(rec, dict):
            continue
        pages = rec["bytes"] // 4096
        n = rec["bytes"] // stride
        step = n // 8 if n > 8 else 1
        for k, pfn in enumerate(rec["pfns"]):
            if not pfn:
                continue
            idx = k * step * (stride // 4096)  # index of this 4 KiB page inside the region
            assert idx < pages
            data = _read_phys(path, loads, pfn * 4096, 4096)
            assert data is not None, f"{kind} pfn {pfn:#x} not in any PT_LOAD"
            assert int.from_bytes(data[:8], "little") == 0x4B444C0000000000 | idx, (kind, k, pfn)
            assert data[8:] == bytes([(seed ^ idx) & 0xFF]) * 4088, (kind, k, pfn)
            checked += 1
    zero = fixture.workload.get("anon_zero")
    if isinstance(zero, dict):
        for pfn in zero["pfns"]:
            if pfn:
                data = _read_phys(path, loads, pfn * 4096, 4096)
                assert data == bytes(4096), ("anon_zero", pfn)
                checked += 1
    assert checked >= 8


@needs_readelf
def test_vmlinux_dbg_matches_dump_build_id(fixture: Fixture) -> None:
    """The -dbg vmlinux is the crashed kernel's: its GNU build ID equals VMCOREINFO's BUILD-ID."""
    dbg = fixture.path("vmlinux_dbg")
    if dbg is None:
        pytest.skip(f"{fixture.name}: built without --dbg (no vmlinux_dbg)")
    vmcore = fixture.path("vmcore")
    assert vmcore is not None
    build_id = _readelf_vmcoreinfo(vmcore).get("BUILD-ID")
    if build_id is None:
        pytest.skip(f"{fixture.name}: this kernel's VMCOREINFO has no BUILD-ID")
    out = subprocess.run(["readelf", "-W", "-n", str(dbg)], capture_output=True, text=True, check=True,
                         env={**os.environ, "LC_ALL": "C"}).stdout
    m = re.search(r"Build ID:\s*([0-9a-f]+)", out)
    assert m is not None
    assert m.group(1) == build_id
    sections = subprocess.run(["readelf", "-W", "-S", str(dbg)], capture_output=True, text=True, check=True,
                              env={**os.environ, "LC_ALL": "C"}).stdout
    assert ".debug_info" in sections


def test_peer_makedumpfile_runs() -> None:
    """The cached trixie makedumpfile (tools/peers.py) runs on this host and reports its version."""
    import peers
    from fixtures import cache_dir

    tool = peers.cached_peer("makedumpfile", "makedumpfile", "trixie", cache_dir())
    if tool is None:
        pytest.skip("peer makedumpfile not unpacked yet (tools/build_fixtures.py fetches it)")
    out = subprocess.run([*tool.command, "-v"], capture_output=True, text=True, timeout=60)
    assert re.search(r"makedumpfile: version 1\.7\.\d+", out.stdout + out.stderr)
    assert tool.version.split(":")[-1].startswith("1.7.")


def test_download_verifies_sha256(tmp_path: Path) -> None:
    import hashlib

    src = tmp_path / "src.bin"
    src.write_bytes(b"kdlayout" * 1000)
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = tmp_path / "out" / "a.bin"
    assert fd.download(src.as_uri(), dest, good, src.stat().st_size) == dest
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(fd.ArchiveError, match="SHA256"):
        fd.download(src.as_uri(), tmp_path / "out" / "b.bin", "00" * 32, retries=1)
    assert not (tmp_path / "out" / "b.bin").exists()
    assert not list((tmp_path / "out").glob("b.bin.part*"))
    # a cached file that no longer matches is fetched again
    dest.write_bytes(b"x" * src.stat().st_size)
    fd.download(src.as_uri(), dest, good, src.stat().st_size)
    assert dest.read_bytes() == src.read_bytes()


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")
def test_stream_extract_first_follows_to_regular_file(tmp_path: Path) -> None:
    import hashlib

    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: linux-image-9.9.9-amd64-dbg\nVersion: 1\nArchitecture: amd64\n"
        "Maintainer: t <t@example.org>\nDescription: t\n")
    real = root / "usr/lib/debug/lib/modules/9.9.9-amd64/vmlinux"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"\x7fELF" + b"\1" * 5000)
    (root / "usr/lib/debug/boot").mkdir(parents=True)
    (root / "usr/lib/debug/boot/vmlinux-9.9.9-amd64").symlink_to("../lib/modules/9.9.9-amd64/vmlinux")
    debfile = tmp_path / "repo" / "x.deb"
    debfile.parent.mkdir()
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(debfile)], check=True,
                   capture_output=True)
    data = debfile.read_bytes()
    rec = fd.PackageRecord("linux-image-9.9.9-amd64-dbg", "1", "linux", "x.deb", hashlib.sha256(data).hexdigest(),
                           len(data), (), (tmp_path / "repo").as_uri(), "test")
    dst = tmp_path / "vmlinux-dbg"
    work = tmp_path / "work"
    work.mkdir()
    kept = fd.stream_extract_first(
        rec, ["./usr/lib/debug/boot/vmlinux-9.9.9-amd64", "./usr/lib/debug/lib/modules/9.9.9-amd64/vmlinux"],
        dst, work)
    assert kept == "./usr/lib/debug/lib/modules/9.9.9-amd64/vmlinux"
    assert dst.read_bytes() == real.read_bytes()
    assert list(work.iterdir()) == []  # the downloaded .deb was deleted


def test_modname_and_completeness(tmp_path: Path) -> None:
    assert build_fixtures._modname("kernel/arch/x86/crypto/crc32c-intel.ko.xz") == "crc32c_intel"
    assert build_fixtures._modname("kernel/fs/ext4/ext4.ko.zst") == "ext4"
    assert build_fixtures._modname("kernel/drivers/block/brd.ko") == "brd"
    d = tmp_path / "fx"
    d.mkdir()
    assert not build_fixtures._is_complete(d)
    (d / "manifest.json").write_text(json.dumps({"builder_version": build_fixtures.BUILDER_VERSION - 1}))
    assert not build_fixtures._is_complete(d)  # an older builder's fixture is rebuilt
    (d / "manifest.json").write_text(json.dumps({"builder_version": build_fixtures.BUILDER_VERSION}))
    assert build_fixtures._is_complete(d)
    (d / "manifest.json").write_text("{truncated")
    assert not build_fixtures._is_complete(d)


@pytest.mark.skipif(shutil.which("gpgv") is None or not fd.KEYRING.exists(), reason="gpgv or keyring missing")
def test_inrelease_forgery_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KDLAYOUT_NO_GPGV", raising=False)
    fake = tmp_path / "InRelease"
    fake.write_text("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: Debian\n"
                    "-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n")
    with pytest.raises(fd.ArchiveError, match="gpgv failed"):
        fd._verify_inrelease(fake)
