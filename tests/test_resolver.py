"""Resolver: precedence, provenance, conflicts, caching; and on real dumps, dump-only == DWARF."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kdlayout import resolver
from kdlayout.errors import CorruptError
from kdlayout.layout import Fact
from kdlayout.resolver import PRECEDENCE, ResolveContext, ResolveOptions, merge, resolve


def test_merge_prefers_earlier_source_and_reports_conflict() -> None:
    facts = [
        Fact("OFFSET(page.flags)", 0, "dwarf", "vmlinux"),
        Fact("OFFSET(page.flags)", 0, "vmcoreinfo", "note"),
        Fact("SIZE(page)", 64, "btf", "dump"),
        Fact("SIZE(page)", 72, "headers", "tree"),
    ]
    layout = merge(facts)
    flags = layout["OFFSET(page.flags)"]
    assert flags.chosen.source == "vmcoreinfo"
    assert flags.agreeing == ["dwarf"]
    assert flags.conflicts == []
    size = layout["SIZE(page)"]
    assert size.value == 64 and size.chosen.source == "btf"
    assert [c.source for c in size.conflicts] == ["headers"]
    assert len(layout.warnings) == 1 and "SIZE(page)" in layout.warnings[0]


def test_precedence_is_total_over_known_sources() -> None:
    # Every source kind a provider emits must have a rank, or merge would order it arbitrarily.
    assert len(set(PRECEDENCE)) == len(PRECEDENCE)
    assert PRECEDENCE[0] == "vmcoreinfo" and PRECEDENCE[-1] == "derived"


def _provider_ok(ctx: ResolveContext) -> tuple[list[Fact], str]:
    return [Fact("SIZE(page)", 64, "btf", "test")], "test source"


def _provider_broken(ctx: ResolveContext) -> tuple[list[Fact], str]:
    raise CorruptError("lying header", path="x.btf", offset=0x18)


def test_failing_source_falls_back_and_is_reported() -> None:
    result = resolve(None, ResolveOptions(use_cache=False),
                     providers=(("broken", _provider_broken), ("btf", _provider_ok)))
    status = {s.name: s for s in result.sources}
    assert status["broken"].status == "failed"
    assert "x.btf: offset 0x18: lying header" in status["broken"].detail
    assert "falling back" in status["broken"].detail
    assert status["btf"].status == "used" and status["btf"].facts == 1
    assert result.layout.size("page") == 64


VMCOREINFO_TEXT = (
    "OSRELEASE=6.1.0-test\nBUILD-ID=0123456789abcdef0123456789abcdef01234567\nPAGESIZE=4096\n"
    "SYMBOL(mem_section)=ffff888003a3c000\nSIZE(page)=64\nOFFSET(page.flags)=0\n"
    "OFFSET(page._mapcount)=48\nNUMBER(PG_slab)=9\nKERNELOFFSET=1e000000\n"
)


def test_vmcoreinfo_file_resolves_and_caches_on_disk(tmp_path: Path) -> None:
    vi = tmp_path / "vmcoreinfo.txt"
    vi.write_text(VMCOREINFO_TEXT)
    opts = ResolveOptions(vmcoreinfo=str(vi), cache_dir=str(tmp_path / "cache"))
    first = resolve(None, opts)
    lay = first.layout
    assert lay.release == "6.1.0-test"
    assert lay.symbol("mem_section") == 0xFFFF888003A3C000
    assert lay.offset("page", "_mapcount") == 48
    assert lay.number("PG_slab") == 9
    assert lay["SIZE(page)"].chosen.origin.endswith(f"offset {VMCOREINFO_TEXT.index('SIZE(page)'):#x}")
    assert not first.from_cache and first.cache_path is not None
    on_disk = json.loads(Path(first.cache_path).read_text())
    assert on_disk["build_id"] == "0123456789abcdef0123456789abcdef01234567"
    # Same options again in this process: the in-memory cache answers with the same object.
    assert resolve(None, opts) is first
    # A new process (empty memory cache) is served from the disk cache, identically.
    resolver._memory_cache.clear()
    again = resolve(None, ResolveOptions(vmcoreinfo=str(vi), cache_dir=str(tmp_path / "cache")))
    assert again.from_cache
    assert again.layout.to_json() == lay.to_json()


def test_damaged_cache_entry_is_ignored(tmp_path: Path) -> None:
    vi = tmp_path / "vmcoreinfo.txt"
    vi.write_text(VMCOREINFO_TEXT)
    first = resolve(None, ResolveOptions(vmcoreinfo=str(vi), cache_dir=str(tmp_path / "c")))
    assert first.cache_path is not None
    Path(first.cache_path).write_text("{not json")
    resolver._memory_cache.clear()
    again = resolve(None, ResolveOptions(vmcoreinfo=str(vi), cache_dir=str(tmp_path / "c")))
    assert not again.from_cache
    assert again.layout.size("page") == 64


def test_no_build_id_means_no_disk_cache(tmp_path: Path) -> None:
    vi = tmp_path / "vmcoreinfo.txt"
    vi.write_text("OSRELEASE=5.4.0\nSIZE(page)=64\n")
    result = resolve(None, ResolveOptions(vmcoreinfo=str(vi), cache_dir=str(tmp_path / "c")))
    assert result.cache_path is None
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("garbage", [b"", b"\x00\x01\x02", b"SIZE(page)=sixty-four\n"])
def test_garbage_vmcoreinfo_file_gives_no_fact(tmp_path: Path, garbage: bytes) -> None:
    vi = tmp_path / "vmcoreinfo.txt"
    vi.write_bytes(garbage)
    result = resolve(None, ResolveOptions(vmcoreinfo=str(vi), use_cache=False))
    assert "SIZE(page)" not in result.layout


# ---- real dumps -----------------------------------------------------------------------------

_TYPE_PREFIXES = ("SIZE(", "OFFSET(", "BITOFFSET(", "LENGTH(", "NUMBER(")


def _dump_only_layout(core: Path) -> Any:
    from kdlayout.dumpfile import open_dump

    resolver._memory_cache.clear()
    with open_dump(str(core)) as dump:
        return resolve(dump, ResolveOptions(use_cache=False))


@pytest.mark.parametrize("key", ["vmcore", "qemu_elf"])
def test_dump_only_layout_equals_dwarf(fixture: Any, key: str) -> None:
    """Acceptance of the resolver: from the dump alone, every catalogue fact equals DWARF."""
    from drgn_oracle import catalogue_facts, load_program

    core = fixture.path(key)
    vmlinux = fixture.path("vmlinux_dbg")
    if core is None:
        pytest.skip(f"{fixture.name} has no {key} file")
    if vmlinux is None:
        pytest.skip(f"{fixture.name} was built without --dbg: no DWARF vmlinux to compare with")
    truth = catalogue_facts(load_program(vmlinux, core))
    result = _dump_only_layout(core)
    layout = result.layout
    assert layout.release == fixture.release
    wrong = {k: (layout.get_value(k), v) for k, v in truth.items() if layout.get_value(k) != v}
    assert not wrong, f"dump-only layout differs from DWARF (ours, DWARF): {wrong}"
    # Nothing the dump-only sources claimed about the catalogue is unknown to DWARF.
    from kdlayout.catalogue import ENUM_QUERIES, type_fact_keys

    catalogue_keys = set(type_fact_keys())
    invented = [k for k in layout if k in catalogue_keys and k not in truth]
    assert not invented, f"facts DWARF does not have: {invented}"
    assert ENUM_QUERIES and "SIZE(page)" in truth
    assert not layout.conflicts(), layout.warnings


def test_vmcoreinfo_offsets_agree_with_dwarf(fixture: Any) -> None:
    """VMCOREINFO's own OFFSET()/SIZE() exports, checked against DWARF: an independent check that
    the keys mean what the resolver assumes they mean."""
    import drgn

    from drgn_oracle import load_program

    core, vmlinux = fixture.path("vmcore"), fixture.path("vmlinux_dbg")
    if core is None or vmlinux is None:
        pytest.skip(f"{fixture.name}: needs the kdump vmcore and the --dbg vmlinux")
    prog = load_program(vmlinux, core)
    layout = _dump_only_layout(core).layout
    checked = 0
    for key in layout:
        res = layout[key]
        if res.chosen.source != "vmcoreinfo" or not key.startswith("OFFSET("):
            continue
        type_name, _, member = key[7:-1].partition(".")
        try:
            tp = prog.type(f"struct {type_name}")
        except LookupError:
            continue
        assert drgn.offsetof(tp, member) == res.value, key
        checked += 1
    assert checked >= 20


#: Peak RSS allowed for a cold resolve, imports included: under the 80 MB (76 MiB) that a whole
#: ``kdlayout dump`` may take in a kdump capture kernel, where the layout cache is always cold.
COLD_RESOLVE_PEAK_KIB = 76 << 10
#: What a cold resolve may leave resident for the scan and write that follow (modules it imports,
#: the layout): the decoded kallsyms and BTF, freed heap and mapped dump pages must not stay.
COLD_RESOLVE_LEFT_KIB = 16 << 10

_RSS_CHILD = r"""
import json, sys
from kdlayout.dumpfile import open_dump
from kdlayout.resolver import ResolveOptions, resolve

def status():
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f)
                if k in ("VmHWM", "VmRSS")}

with open_dump(sys.argv[1]) as dump:
    before = status()
    resolve(dump, ResolveOptions(use_cache=False))
    after = status()
print(json.dumps({"before": before, "after": after}))
"""


def test_cold_resolve_peak_rss(fixture: Any) -> None:
    """A cold resolve of the kdump vmcore, in a fresh process, peaks under
    :data:`COLD_RESOLVE_PEAK_KIB` and leaves at most :data:`COLD_RESOLVE_LEFT_KIB` more resident
    than before it (docs/resolver.md, "Memory of a cold resolve")."""
    core = fixture.path("vmcore")
    if core is None:
        pytest.skip(f"{fixture.name} has no kdump vmcore")
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(core)], check=True,
                         capture_output=True, text=True)
    got = json.loads(out.stdout)
    peak, left = got["after"]["VmHWM"], got["after"]["VmRSS"] - got["before"]["VmRSS"]
    assert peak < COLD_RESOLVE_PEAK_KIB, f"cold resolve peak {peak} KiB"
    assert left < COLD_RESOLVE_LEFT_KIB, f"cold resolve left {left} KiB resident"
