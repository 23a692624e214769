"""kdlayout.kallsyms: the table formats.

Real data: a Debian ``-dbg`` vmlinux (the fixture manifest's ``vmlinux_dbg``, any unpacked
``kernels/*/root/usr/lib/debug/boot/vmlinux-*`` in the cache, or ``$KDLAYOUT_VMLINUX_DBG``) is
loaded as the memory of an unrelocated boot; its kallsyms tables are found by scanning, decoded,
and compared with the ELF symbol table and ``nm`` of the same file (written by the linker, not by
scripts/kallsyms). Synthetic bytes only for error paths and the two-byte length form.
"""

from __future__ import annotations

import functools
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from kallsyms_synth import encode_name, token_strings, token_table
from kdlayout.errors import CorruptError, MissingDataError
from kdlayout.kallsyms import (
    AddressCandidate,
    AddressScheme,
    SymbolTable,
    decode_addresses,
    expand_names,
    parse_token_table,
    select_scheme,
    split_names,
    split_names_detect,
)

SRC = "test-source"


# -- synthetic: token table ------------------------------------------------------------------


def test_token_table_round_trip() -> None:
    tokens = token_strings()
    table, index = token_table(tokens)
    parsed = parse_token_table(table + b"\0\0junk", index, source=SRC)
    assert list(parsed.tokens) == tokens
    assert parsed.table_size == len(table)


def test_token_index_out_of_range_is_one_line_error() -> None:
    table, index = token_table(token_strings())
    bad = bytearray(index)
    bad[2 * 37:2 * 38] = struct.pack("<H", len(table) + 100)
    with pytest.raises(CorruptError) as err:
        parse_token_table(table, bytes(bad), source=SRC, table_addr=0xFFFFFFFF82000000,
                          index_addr=0xFFFFFFFF82001000)
    msg = str(err.value)
    assert "\n" not in msg and SRC in msg and "kallsyms_token_index[37]" in msg
    assert "0xffffffff82000000" in msg


def test_token_index_not_at_token_start() -> None:
    table, index = token_table(token_strings())
    bad = bytearray(index)
    off = struct.unpack_from("<H", index, 2 * 200)[0]
    bad[2 * 200:2 * 201] = struct.pack("<H", off + 1)   # middle of a two-byte token
    with pytest.raises(CorruptError, match="start of a token"):
        parse_token_table(table, bytes(bad), source=SRC)


def test_truncated_token_index() -> None:
    table, index = token_table(token_strings())
    with pytest.raises(CorruptError, match="truncated"):
        parse_token_table(table, index[:100], source=SRC, index_addr=0x1000)


def test_unterminated_token() -> None:
    table, index = token_table(token_strings())
    with pytest.raises(CorruptError, match="not NUL-terminated"):
        parse_token_table(table[:-1], index, source=SRC)


# -- synthetic: names ---------------------------------------------------------------------------


def _names(records: list[tuple[str, str]], big: bool = True) -> bytes:
    return b"".join(encode_name(t, n, big=big) for t, n in records)


def test_names_round_trip_with_big_lengths() -> None:
    records = [("T", "_stext"), ("t", "x" * 200), ("D", "jiffies"), ("r", "y" * 0x3000)]
    data = _names(records)
    tokens = parse_token_table(*token_table(token_strings()), source=SRC)
    layout = split_names(data, len(records), big=True, source=SRC)
    assert layout.saw_high_bit and layout.end == len(data)
    names, types = expand_names(data, layout, tokens, source=SRC)
    assert names == [n for _, n in records]
    assert types == b"TtDr"


@pytest.mark.parametrize("block", [1, 2, 3, 1 << 12])
def test_expansion_in_blocks_matches_whole(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """Names are expanded a block of symbols at a time; block edges (also inside two-byte
    length runs) must not change the result."""
    import kdlayout.kallsyms as ks

    records = [("T", "_stext"), ("t", "x" * 200), ("D", "jiffies"), ("r", "y" * 0x3000),
               ("b", "z"), ("T", "a_b_c"), ("t", "q" * 130)]
    data = _names(records)
    tokens = parse_token_table(*token_table(token_strings()), source=SRC)
    layout = split_names(data, len(records), big=True, source=SRC)
    monkeypatch.setattr(ks, "EXPAND_BLOCK", block)
    names, types = expand_names(data, layout, tokens, source=SRC)
    assert names == [n for _, n in records]
    assert types == b"TtDrbTt"


def test_detect_prefers_markers_when_forms_are_ambiguous() -> None:
    # 300 symbols, one of them "big": both forms may decode, markers decide.
    records = [("t", f"sym{i}") for i in range(300)]
    records[10] = ("t", "z" * 150)
    data = _names(records)
    offsets = [0]
    for t, n in records:
        offsets.append(offsets[-1] + len(encode_name(t, n)))
    markers = np.array(offsets[:-1:256], dtype=np.int64)
    layout = split_names_detect(data + bytes(64), len(records), source=SRC,
                                markers_for=lambda end, count: [markers])
    assert layout.big_lengths and layout.records[256] == offsets[256]


def test_zero_length_symbol() -> None:
    data = _names([("T", "a")]) + b"\x00" + _names([("T", "b")])
    with pytest.raises(CorruptError, match="symbol 1 has length 0"):
        split_names(data, 3, big=True, source=SRC, names_addr=0xFFFFFFFF81000000)


def test_names_running_off_the_table_names_the_address() -> None:
    data = _names([("T", "abc"), ("T", "defgh")])[:-2]
    with pytest.raises(CorruptError) as err:
        split_names(data, 2, big=True, source=SRC, names_addr=0xFFFFFFFF81000000)
    msg = str(err.value)
    assert "runs off" in msg and "0xffffffff81" in msg and "\n" not in msg


def _overrun_reference(buf: bytes, num_syms: int, big: bool) -> tuple[int, int] | None:
    """(symbol, position) where a plain step-by-step walk runs off ``buf``, or None."""
    pos = 0
    for i in range(num_syms):
        if pos >= len(buf):
            return i, pos
        n = buf[pos]
        pos += 1
        if big and n & 0x80:
            if pos >= len(buf):
                return i, pos
            n = (n & 0x7F) | (buf[pos] << 7)
            pos += 1
        pos += n
    return None


@pytest.mark.parametrize("big", [True, False])
def test_overrun_names_the_symbol_a_plain_walk_would(big: bool) -> None:
    """The guarded re-walk after a failed walk reports the same symbol and address as walking
    one record at a time, for tables cut at every length and for random length bytes."""
    rng = np.random.default_rng(5)
    records = [("T", "x" * int(k)) for k in rng.integers(1, 300, 40)]
    whole = _names(records, big=True)
    cases = [whole[:cut] for cut in range(1, len(whole), 7)]
    cases += [bytes(rng.integers(0, 256, int(n), dtype=np.uint8)) for n in rng.integers(2, 600, 60)]
    for data in cases:
        want = _overrun_reference(data, min(40, len(data) // 2), big)
        if want is None:
            continue
        with pytest.raises(CorruptError) as err:
            split_names(data, min(40, len(data) // 2), big=big, source=SRC, names_addr=0x1000)
        if "runs off" not in str(err.value):
            continue  # a zero length is found first by the vectorised checks: also an error
        assert f"symbol {want[0]} runs off" in str(err.value)
        assert err.value.offset == 0x1000 + min(want[1], len(data))


def test_huge_num_syms_is_rejected_quickly() -> None:
    data = _names([("T", "a")] * 10)
    for n in (1 << 30, 1 << 22, 1000):
        t = time.process_time()
        with pytest.raises(CorruptError):
            split_names(data, n, big=True, source=SRC, names_addr=0x1000)
        assert time.process_time() - t < 0.5


def test_lengths_pointing_far_past_the_end_are_bounded() -> None:
    # Every length byte 0xff: the walk leaves the buffer after one step.
    data = b"\xff" * 4096
    t = time.process_time()
    with pytest.raises(CorruptError):
        split_names(data, 2000, big=True, source=SRC)
    assert time.process_time() - t < 0.5


# -- addresses -----------------------------------------------------------------------------------


def test_decode_addresses_by_hand() -> None:
    base = 0xFFFFFFFF81000000
    offs = struct.pack("<3i", 0, 0x1234, -1)
    got = decode_addresses(AddressScheme.BASE_RELATIVE, offs, 3, relative_base=base)
    assert got.tolist() == [base, base + 0x1234, (base + 0xFFFFFFFF) % (1 << 64)]  # wraps like C
    # absolute per-cpu: >= 0 absolute, < 0 -> base - 1 - offset
    offs = struct.pack("<3i", 0x2000, -1, -0x101)
    got = decode_addresses(AddressScheme.ABSOLUTE_PERCPU, offs, 3, relative_base=base)
    assert got.tolist() == [0x2000, base, base + 0x100]
    # place-relative: &offsets[i] + offsets[i]
    at = 0xFFFFFFFF82000000
    offs = struct.pack("<3i", -0x1000000, 0, 0x10)
    got = decode_addresses(AddressScheme.PLACE_RELATIVE, offs, 3, offsets_addr=at)
    assert got.tolist() == [at - 0x1000000, at + 4, at + 8 + 0x10]
    raw = struct.pack("<2Q", base, base + 8)
    got = decode_addresses(AddressScheme.ABSOLUTE, raw, 2)
    assert got.tolist() == [base, base + 8]


def test_select_scheme_uses_known_symbols() -> None:
    names = ["_stext", "init_uts_ns", "jiffies"]
    right = np.array([0xFFFFFFFF81000000, 0xFFFFFFFF82000000, 0xFFFFFFFF82001000],
                     dtype=np.uint64)
    wrong = right + np.uint64(0x1000)
    known = {"_stext": 0xFFFFFFFF81000000, "init_uts_ns": 0xFFFFFFFF82000000,
             "mem_section": 0xFFFF888000000000, "not_in_kallsyms": 1}
    cands = [AddressCandidate(AddressScheme.BASE_RELATIVE, 1, wrong),
             AddressCandidate(AddressScheme.PLACE_RELATIVE, 2, right)]
    chosen, checks = select_scheme(cands, names, known, source=SRC)
    assert chosen.scheme is AddressScheme.PLACE_RELATIVE
    assert {c.scheme: c.matched for c in checks}[AddressScheme.PLACE_RELATIVE] == (
        "_stext", "init_uts_ns")
    with pytest.raises(CorruptError, match="no kallsyms address scheme"):
        select_scheme(cands[:1], names, known, source=SRC)
    with pytest.raises(MissingDataError, match="SYMBOL\\(_stext\\)"):
        select_scheme(cands, names, {"init_uts_ns": 0}, source=SRC)


def test_symbol_table_lookups() -> None:
    addrs = np.array([0x10, 0x20, 0x20, 0x40], dtype=np.uint64)
    tab = SymbolTable(["a", "b", "c", "b"], addrs, b"TtDd")
    assert tab.lookup("b") == 0x20 and tab.lookup("zz") is None
    assert [s.address for s in tab.lookup_all("b")] == [0x20, 0x40]
    assert tab.name_at(0x2F) is not None and tab.name_at(0x2F).name == "b"  # type: ignore[union-attr]
    assert tab.name_at(0x5) is None
    assert tab.name_at(0x40).name == "b"  # type: ignore[union-attr]
    assert [s.name for s in tab.symbols_at(0x20)] == ["b", "c"]
    with pytest.raises(MissingDataError):
        tab.require("zz")


@pytest.mark.parametrize("names", [
    ["a", "b", "c", "b"], ["b", "b"], ["b"], ["x", "ab", "b", "ba", "b"], ["", "b", ""]])
def test_text_backed_table_answers_like_the_list(names: list[str]) -> None:
    """A table built from the joined names (decoded on demand) answers every lookup like one
    built from the list; reading ``names`` gives the list."""
    n = len(names)
    addrs = np.arange(0x10, 0x10 + 0x10 * n, 0x10, dtype=np.uint64)
    types = b"T" * n
    by_list = SymbolTable(list(names), addrs, types)
    by_text = SymbolTable.from_text("\n".join(names).encode("latin-1"), addrs, types)
    assert len(by_text) == n
    for name in {*names, "zz", "a\nb", "\u20ac"}:
        assert by_text.indices(name) == by_list.indices(name) == [
            i for i, x in enumerate(names) if x == name]
        assert by_text.lookup(name) == by_list.lookup(name)
        assert (name in by_text) == (name in by_list)
        assert by_text.lookup_all(name) == by_list.lookup_all(name)
    many = [*names, "zz", "a\nb", "\u20ac"]
    assert by_text.indices_many(many) == by_list.indices_many(many) == {
        x: by_list.indices(x) for x in many if by_list.indices(x)}
    assert [by_text[i] for i in range(n)] == [by_list[i] for i in range(n)]
    assert by_text[-1] == by_list[-1]
    with pytest.raises(IndexError):
        by_text[n]
    assert by_text.name_at(0x10 * n) == by_list.name_at(0x10 * n)
    assert by_text.names == names and list(by_text) == list(by_list)
    assert by_text.indices(names[0]) == by_list.indices(names[0])  # after the names are built
    with pytest.raises(ValueError):
        SymbolTable.from_text(b"a\nb", addrs[:1], b"T")


# -- real: a Debian -dbg vmlinux ---------------------------------------------------------------


def _dbg_vmlinuxes() -> list[Path]:
    found: list[Path] = []
    env = os.environ.get("KDLAYOUT_VMLINUX_DBG")
    if env:
        found.append(Path(env))
    try:
        from fixtures import cache_dir, load_fixtures
        for fx in load_fixtures():
            p = fx.path("vmlinux_dbg")
            if p is not None:
                found.append(p)
        found += sorted(cache_dir().glob("kernels/*/root/usr/lib/debug/boot/vmlinux-*"))
    except ImportError:
        pass
    seen: set[Path] = set()
    out = []
    for p in found:
        if p.is_file() and p.resolve() not in seen:
            seen.add(p.resolve())
            out.append(p)
    return out


DBG = _dbg_vmlinuxes()
NO_DBG = ("no -dbg vmlinux: none in the fixture manifests or $KDLAYOUT_CACHE/kernels, and "
          "$KDLAYOUT_VMLINUX_DBG is unset")


@functools.cache
def _symtab(path: Path) -> dict[str, set[int]]:
    from vmlinux_memory import elf_symbols

    return elf_symbols(path)


@pytest.mark.parametrize("vmlinux", DBG or [pytest.param(None, marks=pytest.mark.skip(
    reason=NO_DBG))], ids=lambda p: f"{p.parent.name}-{p.name}" if p else "none")
def test_dbg_vmlinux_kallsyms_match_symtab_and_nm(vmlinux: Path) -> None:
    from kdlayout.kimage import KernelImage
    from kdlayout.sources.kallsyms_source import load_kallsyms
    from vmlinux_memory import VmlinuxMemory

    symtab = _symtab(vmlinux)
    known = {n: min(symtab[n]) for n in ("_stext", "init_top_pgt", "init_uts_ns")}
    mem = VmlinuxMemory(str(vmlinux))
    try:
        image = KernelImage(mem)
        assert image.phys_base.method == "elf-pt-load"
        result = load_kallsyms(image, known=known)
    finally:
        mem.close()
    table = result.table
    assert result.provenance.located_by == "scan"
    assert len(table) > 50000
    # Every decoded (name, address) is in the linker's symbol table of the same file.
    missing = [s for s in table if s.address not in symtab.get(s.name, ())]
    assert not missing, missing[:5]
    # The scan found the tables where the symbol table says they are.
    locs = result.provenance.locations
    for field, sym in (("names", "kallsyms_names"), ("token_table", "kallsyms_token_table"),
                       ("token_index", "kallsyms_token_index"),
                       ("num_syms", "kallsyms_num_syms")):
        assert getattr(locs, field) in symtab[sym], field
    assert result.provenance.address_table in (symtab.get("kallsyms_offsets", set())
                                               | symtab.get("kallsyms_addresses", set()))
    # Type letters agree with nm for symbols outside the per-cpu area (kallsyms marks those 'A').
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("binutils nm not installed: types not compared")
    out = subprocess.run([nm, str(vmlinux)], check=True, capture_output=True, text=True).stdout
    nm_types: dict[tuple[str, int], set[str]] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            nm_types.setdefault((parts[2], int(parts[0], 16)), set()).add(parts[1])
    kernel = [s for s in table if s.address >= 0xFFFFFFFF80000000]
    bad = [s for s in kernel if s.type not in nm_types.get((s.name, s.address), ())]
    assert len(kernel) > 50000 and not bad, bad[:5]


@pytest.mark.parametrize("vmlinux", DBG or [pytest.param(None, marks=pytest.mark.skip(
    reason=NO_DBG))], ids=lambda p: f"{p.parent.name}-{p.name}" if p else "none")
def test_dbg_vmlinux_decode_is_fast(vmlinux: Path) -> None:
    from kdlayout.kimage import KernelImage
    from vmlinux_memory import VmlinuxMemory

    symtab = _symtab(vmlinux)
    mem = VmlinuxMemory(str(vmlinux))
    try:
        image = KernelImage(mem)
        names_at = min(symtab["kallsyms_names"])
        tt = min(symtab["kallsyms_token_table"])
        ti = min(symtab["kallsyms_token_index"])
        num = struct.unpack("<I", image.read(min(symtab["kallsyms_num_syms"]), 4))[0]
        names = image.read(names_at, tt - names_at)
        tokens = parse_token_table(image.read(tt, ti - tt), image.read(ti, 512), source=SRC)
        t = time.process_time()
        layout = split_names(names, num, big=True, source=SRC)
        decoded, types = expand_names(names, layout, tokens, source=SRC)
        elapsed = time.process_time() - t
    finally:
        mem.close()
    assert len(decoded) == num == len(types)
    assert elapsed < 0.5, f"decoding {num} names took {elapsed:.3f}s of CPU"
