"""kdlayout.sources.kallsyms_source: kallsyms found in and decoded from real dumps.

Ground truth, all independent of kdlayout's decoder:

* the ``-dbg`` vmlinux's ELF symbol table shifted by VMCOREINFO ``KERNELOFFSET`` (fixtures built
  with ``--dbg``);
* every VMCOREINFO ``SYMBOL()`` (written by the crashed kernel itself);
* drgn's own kallsyms reader (``load_vmlinux_kallsyms``, 6.0+ dumps);
* VMCOREINFO's table addresses for the kernel-image scan (run on 6.0+ dumps too);
* on a live host, ``/proc/kallsyms`` against ``/proc/kcore``.

Synthetic images (tests/kallsyms_synth.py) only for error paths.
"""

from __future__ import annotations

import functools
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from fixtures import Fixture
from kallsyms_synth import TEXT, BlobMemory, build_image
from kdlayout.errors import KdlayoutError, MissingDataError, NotInDumpError
from kdlayout.kallsyms import AddressScheme
from kdlayout.kimage import START_KERNEL_MAP, KernelImage
from kdlayout.sources.kallsyms_source import (
    KallsymsResult,
    load_kallsyms,
    scan_locations,
    symbols_from_dump,
    vmcoreinfo_symbols,
)

# VMCOREINFO_SYMBOL_ARRAY(mem_section) prints the pointer's value (the allocated root array) under
# SPARSEMEM_EXTREME, not the variable's address; it is not a symbol address to compare.
POINTER_VALUED = {"mem_section"}
FORMATS = ("vmcore", "md_zlib", "qemu_elf")


def _open(path: Path) -> Any:
    from kdlayout.dumpfile import open_dump

    return open_dump(str(path))


@functools.cache
def _decoded(path: Path) -> KallsymsResult:
    mem = _open(path)
    return symbols_from_dump(mem)


def _paths(fixture: Fixture) -> list[tuple[str, Path]]:
    out = [(k, p) for k in FORMATS if (p := fixture.path(k)) is not None]
    if not out:
        pytest.skip(f"fixture {fixture.name} has none of {FORMATS}")
    return out


def test_every_format_decodes_and_matches_vmcoreinfo(fixture: Fixture) -> None:
    tables = {}
    for key, path in _paths(fixture):
        result = _decoded(path)
        image_vi = KernelImage(_open(path)).vmcoreinfo
        known = vmcoreinfo_symbols(image_vi)
        listed = image_vi is not None and image_vi.get("SYMBOL(kallsyms_names)") is not None
        assert result.provenance.located_by == ("vmcoreinfo" if listed else "scan"), key
        table = result.table
        assert len(table) > 50000
        compared = 0
        for name, addr in known.items():
            if name in POINTER_VALUED or name not in table:
                continue
            assert addr in {s.address for s in table.lookup_all(name)}, (key, name)
            compared += 1
        assert compared >= 4 and "_stext" in result.provenance.checked
        tables[key] = (table.names, table.addresses.tolist(), table.types)
    # The same kernel through the kexec vmcore, makedumpfile and QEMU: identical tables.
    first = next(iter(tables.values()))
    assert all(t == first for t in tables.values())


@functools.cache
def _symtab(path: Path) -> dict[str, set[int]]:
    from vmlinux_memory import elf_symbols

    return elf_symbols(path)


def test_matches_dbg_symtab_plus_kerneloffset(fixture: Fixture) -> None:
    vmlinux = fixture.path("vmlinux_dbg")
    if vmlinux is None:
        pytest.skip(f"fixture {fixture.name} was built without --dbg (no -dbg vmlinux)")
    path = fixture.path("vmcore") or fixture.path("qemu_elf")
    assert path is not None
    result = _decoded(path)
    koff = result.provenance.kernel_offset
    assert koff is not None
    symtab = _symtab(vmlinux)
    wrong = []
    for sym in result.table:
        # Per-cpu symbols (absolute per-cpu offsets below the kernel map) are not relocated.
        shift = koff if sym.address >= START_KERNEL_MAP else 0
        if (sym.address - shift) % (1 << 64) not in symtab.get(sym.name, ()):
            wrong.append(sym)
    assert not wrong, (len(wrong), wrong[:5])
    # And the converse for the core text symbols: every function symbol in the symtab within
    # [_stext, _etext) is in kallsyms at the shifted address.
    lo, hi = min(symtab["_stext"]), min(symtab["_etext"])
    have = {(s.name, s.address) for s in result.table}
    funcs = [(n, a) for n, addrs in symtab.items() for a in addrs
             if lo <= a < hi and not n.startswith((".", "__pfx_", "$"))]
    absent = [(n, a) for n, a in funcs if (n, a + koff) not in have]
    assert len(absent) <= len(funcs) // 100, absent[:10]   # nm-style filters drop a few


def test_scan_finds_the_tables_vmcoreinfo_lists(fixture: Fixture) -> None:
    path = fixture.path("vmcore") or fixture.path("qemu_elf")
    assert path is not None
    with _open(path) as mem:
        image = KernelImage(mem)
        vi = image.vmcoreinfo
        if vi is None or vi.get("SYMBOL(kallsyms_names)") is None:
            pytest.skip(f"{fixture.name}: VMCOREINFO does not list the tables (the scan is the "
                        "only path; covered by the VMCOREINFO SYMBOL test)")
        known = vmcoreinfo_symbols(vi)
        t = time.process_time()
        locs = scan_locations(image, known)
        elapsed = time.process_time() - t
        assert locs is not None
        for field in ("num_syms", "names", "token_table", "token_index"):
            assert getattr(locs, field) == int(vi.get(f"SYMBOL(kallsyms_{field})") or "0",
                                               16), field
        offsets = vi.get("SYMBOL(kallsyms_offsets)")
        if offsets is not None:
            assert int(offsets, 16) in {t.offsets for t in locs.address_tables}
        assert elapsed < 10
        # Decoding from the scan gives the table decoded from the VMCOREINFO locations.
        from kdlayout.sources.kallsyms_source import decode_at

        scanned = decode_at(image, locs, "scan", known)
        assert scanned.table.names == _decoded(path).table.names
        assert scanned.table.addresses.tolist() == _decoded(path).table.addresses.tolist()


def test_agrees_with_drgn_kallsyms(fixture: Fixture) -> None:
    drgn = pytest.importorskip("drgn")
    from drgn.helpers.linux.kallsyms import load_vmlinux_kallsyms

    path = fixture.path("vmcore") or fixture.path("qemu_elf")
    assert path is not None
    ours = _decoded(path)
    if ours.provenance.located_by != "vmcoreinfo":
        pytest.skip(f"{fixture.name}: drgn reads kallsyms only through VMCOREINFO (6.0+)")
    prog = drgn.Program()
    prog.set_core_dump(str(path))
    try:
        index = load_vmlinux_kallsyms(prog)
        theirs = index(prog, None, None, False)
    except Exception as exc:  # drgn's own limits (e.g. an encoding it predates)
        pytest.skip(f"drgn {drgn.__version__} cannot read this kallsyms: {exc}")
    stext = int(KernelImage(_open(path)).vmcoreinfo.get("SYMBOL(_stext)") or "0", 16)  # type: ignore[union-attr]
    if not any(s.name == "_stext" and s.address == stext for s in theirs):
        pytest.skip(f"drgn {drgn.__version__} decodes this kallsyms address scheme "
                    f"({ours.provenance.scheme}) differently from VMCOREINFO SYMBOL(_stext)")
    assert sorted((s.name, s.address) for s in theirs) == sorted(
        (s.name, s.address) for s in ours.table)


def test_schemes_by_fixture_are_plausible(fixture: Fixture) -> None:
    # Not a ground truth (that is the tests above) but documents what each kernel uses.
    path = fixture.path("vmcore") or fixture.path("qemu_elf")
    assert path is not None
    scheme = _decoded(path).provenance.scheme
    assert scheme in (AddressScheme.ABSOLUTE_PERCPU, AddressScheme.BASE_RELATIVE,
                      AddressScheme.PLACE_RELATIVE)


def test_cached_per_dump(fixture: Fixture) -> None:
    path = _paths(fixture)[0][1]
    with _open(path) as mem:
        a = symbols_from_dump(mem)
        t = time.process_time()
        b = symbols_from_dump(mem)
        assert a is b and time.process_time() - t < 0.01
        with _open(path) as other:
            assert symbols_from_dump(other) is not a


# -- live host ---------------------------------------------------------------------------------


def test_live_kcore_matches_proc_kallsyms() -> None:
    if not os.access("/proc/kcore", os.R_OK):
        pytest.skip("/proc/kcore is not readable here (absent or not root), so the live kernel "
                    "cannot be decoded")
    from kdlayout.elfcore import ElfCore

    try:
        mem = ElfCore.open("/proc/kcore")
    except KdlayoutError as exc:
        pytest.skip(f"/proc/kcore does not open as a dump here: {exc}")
    if mem.vmcoreinfo is None:
        pytest.skip("/proc/kcore carries no VMCOREINFO note on this kernel")
    result = symbols_from_dump(mem)
    core: dict[str, set[int]] = {}
    with open("/proc/kallsyms") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 3:        # module symbols have a 4th [module] column
                core.setdefault(parts[2], set()).add(int(parts[0], 16))
    if not any(core.values()) or max(max(v) for v in core.values()) == 0:
        pytest.skip("/proc/kallsyms shows zero addresses (kptr_restrict)")
    wrong = [s for s in result.table if s.address not in core.get(s.name, ())]
    assert not wrong, wrong[:5]
    assert len(result.table) == sum(len(v) for v in core.values())


# -- error paths (synthetic images) --------------------------------------------------------------

SYMS = [("T", "_stext", TEXT), ("T", "start_kernel", TEXT + 0x100),
        ("D", "init_uts_ns", TEXT + 0x2000)] + [
    ("t", f"func_{i}", TEXT + 0x3000 + 16 * i) for i in range(600)]
KNOWN = f"SYMBOL(init_uts_ns)={TEXT + 0x2000:x}\n"


def test_synthetic_image_decodes() -> None:
    mem, addrs = build_image(SYMS, extra_vmcoreinfo=KNOWN)
    result = load_kallsyms(KernelImage(mem))
    assert result.table.names == [n for _, n, _ in SYMS]
    assert result.table.lookup("func_599") == TEXT + 0x3000 + 16 * 599
    assert result.provenance.scheme is AddressScheme.BASE_RELATIVE
    assert result.provenance.locations.names == addrs["kallsyms_names"]


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and "<synthetic>" in msg
    return msg


def test_tables_outside_the_dump() -> None:
    mem, addrs = build_image(SYMS, extra_vmcoreinfo=KNOWN)
    far = TEXT + 0x800000
    vi = mem.vmcoreinfo
    assert vi is not None
    vi = vi.replace(f"SYMBOL(kallsyms_names)={addrs['kallsyms_names']:x}".encode(),
                    f"SYMBOL(kallsyms_names)={far:x}".encode())
    bad = BlobMemory(mem.read(0x1000000, mem.ranges()[0].size), vmcoreinfo=vi)
    with pytest.raises(NotInDumpError) as err:
        load_kallsyms(KernelImage(bad))
    assert f"{far:#x}" in _one_line(err.value)


def test_huge_num_syms() -> None:
    mem, _ = build_image(SYMS, extra_vmcoreinfo=KNOWN, num_syms=0x7FFFFFFF)
    t = time.process_time()
    with pytest.raises(KdlayoutError) as err:
        load_kallsyms(KernelImage(mem))
    assert time.process_time() - t < 1
    assert "kallsyms_num_syms" in _one_line(err.value)


def test_num_syms_larger_than_names() -> None:
    mem, _ = build_image(SYMS, extra_vmcoreinfo=KNOWN, num_syms=len(SYMS) + 5000)
    with pytest.raises(KdlayoutError) as err:
        load_kallsyms(KernelImage(mem))
    _one_line(err.value)


def test_token_index_out_of_range() -> None:
    mem, addrs = build_image(SYMS, extra_vmcoreinfo=KNOWN)
    blob = bytearray(mem.read(0x1000000, mem.ranges()[0].size))
    at = addrs["kallsyms_token_index"] - TEXT + 2 * 100
    blob[at:at + 2] = b"\xff\xff"
    bad = BlobMemory(bytes(blob), vmcoreinfo=mem.vmcoreinfo)
    with pytest.raises(KdlayoutError) as err:
        load_kallsyms(KernelImage(bad))
    assert "kallsyms_token_index[100]" in _one_line(err.value)


def test_missing_stext_cannot_choose_scheme() -> None:
    mem, _ = build_image(SYMS)
    vi = mem.vmcoreinfo
    assert vi is not None
    vi = b"\n".join(line for line in vi.split(b"\n") if not line.startswith(b"SYMBOL(_stext)"))
    bad = BlobMemory(mem.read(0x1000000, mem.ranges()[0].size), vmcoreinfo=vi)
    with pytest.raises(MissingDataError, match="_stext"):
        load_kallsyms(KernelImage(bad))


def test_byte_mutations_fail_cleanly_and_quickly() -> None:
    mem, addrs = build_image(SYMS, extra_vmcoreinfo=KNOWN)
    base = bytearray(mem.read(0x1000000, mem.ranges()[0].size))
    lo = addrs["kallsyms_num_syms"] - TEXT
    hi = addrs["kallsyms_relative_base"] - TEXT + 8
    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(150):
        blob = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            blob[rng.randrange(lo, hi)] = rng.randrange(256)
        bad = BlobMemory(bytes(blob), vmcoreinfo=mem.vmcoreinfo)
        t = time.process_time()
        try:
            load_kallsyms(KernelImage(bad))
            outcomes["ok"] += 1
        except KdlayoutError as exc:
            _one_line(exc)
            outcomes["error"] += 1
        assert time.process_time() - t < 2
    assert outcomes["error"] > 0


def _without_table_symbols(mem: BlobMemory) -> BlobMemory:
    vi = mem.vmcoreinfo
    assert vi is not None
    kept = b"\n".join(line for line in vi.split(b"\n")
                      if not line.startswith(b"SYMBOL(kallsyms_"))
    return BlobMemory(mem.read(0x1000000, mem.ranges()[0].size), vmcoreinfo=kept)


def test_synthetic_scan_without_vmcoreinfo_tables() -> None:
    mem, addrs = build_image(SYMS, extra_vmcoreinfo=KNOWN)
    result = load_kallsyms(KernelImage(_without_table_symbols(mem)))
    prov = result.provenance
    assert prov.located_by == "scan"
    assert prov.locations.names == addrs["kallsyms_names"]
    assert prov.locations.token_index == addrs["kallsyms_token_index"]
    assert prov.address_table == addrs["kallsyms_offsets"]
    assert result.table.names == [n for _, n, _ in SYMS]


def test_scan_mutations_fail_cleanly_and_quickly() -> None:
    mem, addrs = build_image(SYMS, extra_vmcoreinfo=KNOWN)
    clean = _without_table_symbols(mem)
    base = bytearray(clean.read(0x1000000, clean.ranges()[0].size))
    lo = addrs["kallsyms_num_syms"] - TEXT
    hi = addrs["kallsyms_relative_base"] - TEXT + 8
    rng = random.Random(99)
    errors = 0
    for _ in range(60):
        blob = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            blob[rng.randrange(lo, hi)] = rng.randrange(256)
        bad = BlobMemory(bytes(blob), vmcoreinfo=clean.vmcoreinfo)
        t = time.process_time()
        try:
            load_kallsyms(KernelImage(bad))
        except KdlayoutError as exc:
            _one_line(exc)
            errors += 1
        assert time.process_time() - t < 2
    assert errors > 0
