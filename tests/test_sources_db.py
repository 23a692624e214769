"""Layout database: entry round trip, validation errors, build-id vs release lookup, resolver and
CLI use; on real fixtures, a DB-only resolve reproduces the dump's struct page facts."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from kdlayout import resolver
from kdlayout.cli import main
from kdlayout.errors import CorruptError, KdlayoutError, MissingDataError, UnsupportedError
from kdlayout.layout import Fact, Layout
from kdlayout.resolver import ResolveContext, ResolveOptions, merge, resolve
from kdlayout.sources import db
from kdlayout.vmcoreinfo import VmcoreInfo

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "layouts" / "schema-v1.json"
BID_A = "0123456789abcdef0123456789abcdef01234567"
BID_B = "fedcba9876543210fedcba9876543210fedcba98"


def sample_layout(release: str = "6.1.0-test", build_id: str | None = BID_A,
                  page_size: int = 64) -> Layout:
    facts = [
        Fact("SIZE(page)", page_size, "vmcoreinfo", "vmcore VMCOREINFO offset 0x10"),
        Fact("SIZE(page)", page_size, "btf", "vmcore: BTF"),
        Fact("OFFSET(page.flags)", 0, "vmcoreinfo", "vmcore VMCOREINFO offset 0x20"),
        Fact("OFFSET(page.compound_head)", 8, "btf", "vmcore: BTF"),
        Fact("BITOFFSET(zone.spanned_pages)", 67, "headers", "headers tree"),
        Fact("NUMBER(PG_slab)", 9, "btf", "vmcore: BTF enum pageflags"),
        Fact("NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)", -129, "vmcoreinfo", "vmcore line 7"),
        Fact("CONFIG(CONFIG_SPARSEMEM_VMEMMAP)", "y", "vmcoreinfo", "vmcore line 8"),
        Fact("OSRELEASE", release, "vmcoreinfo", "vmcore line 1"),
        Fact("page_type_in_mapcount", True, "derived", "semantics"),
        Fact("SYMBOL(mem_section)", 0xFFFF888003A3C000, "vmcoreinfo", "vmcore line 9"),
        Fact("KERNELOFFSET", 0x1E000000, "vmcoreinfo", "vmcore line 10"),
        Fact("CRASHTIME", 1700000000, "vmcoreinfo", "vmcore line 11"),
        Fact("NUMBER(phys_base)", 0x1000000, "vmcoreinfo", "vmcore line 12"),
        Fact("NUMBER(VMALLOC_START)", 0xFFFFD30280000000, "vmcoreinfo", "vmcore line 13"),
    ]
    layout = merge(facts)
    layout.release = release
    layout.build_id = build_id
    return layout


STORED = {"SIZE(page)", "OFFSET(page.flags)", "OFFSET(page.compound_head)",
          "BITOFFSET(zone.spanned_pages)", "NUMBER(PG_slab)", "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)",
          "CONFIG(CONFIG_SPARSEMEM_VMEMMAP)", "OSRELEASE"}


# ---- round trip ------------------------------------------------------------------------------

def test_round_trip(tmp_path: Path) -> None:
    layout = sample_layout()
    path = db.write_entry(layout, tmp_path, sources=[("btf", "used", "vmcore: BTF")])
    assert path == tmp_path / "6.1.0-test" / f"{BID_A}.json"
    src = db.DbSource(tmp_path, build_id=BID_A, release="6.1.0-test")
    assert src.match == "build-id" and src.warnings == []
    facts = {f.key: f for f in src.facts()}
    assert set(facts) == STORED
    for key, fact in facts.items():
        assert fact.value == layout.get_value(key) and type(fact.value) is type(layout.get_value(key))
        assert fact.source == "db"
        assert str(path) in fact.origin and layout[key].chosen.source in fact.origin
    entry = src.entry
    assert entry.facts["SIZE(page)"].agreeing == ("btf",)
    assert entry.sources == (("btf", "used", "vmcore: BTF"),)
    assert (entry.release, entry.build_id, entry.arch) == ("6.1.0-test", BID_A, "x86_64")
    # Writing the same layout again gives the same facts (files differ only in "created").
    again = db.read_entry(db.write_entry(layout, tmp_path / "explicit.json"))
    assert again.facts == entry.facts


def test_entry_validates_against_json_schema(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    doc = json.loads(db.write_entry(sample_layout(), tmp_path).read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
    doc["build_id"] = None
    jsonschema.Draft202012Validator(schema).validate(doc)


def test_layout_without_release_cannot_be_stored(tmp_path: Path) -> None:
    layout = sample_layout()
    layout.release = None
    with pytest.raises(MissingDataError, match="release"):
        db.write_entry(layout, tmp_path)
    layout.release = "../../etc"
    with pytest.raises(UnsupportedError):
        db.write_entry(layout, tmp_path)


# ---- validation ------------------------------------------------------------------------------

def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target = doc
    for p in path[:-1]:
        target = target[p]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value


_DELETE = object()

# (mutation path, new value, expected JSON path in the message)
BAD_ENTRIES = [
    (("schema",), "something-else", "$.schema"),
    (("release",), 61, "$.release"),
    (("release",), "../x", "$.release"),
    (("build_id",), "XYZ", "$.build_id"),
    (("arch",), None, "$.arch"),
    (("created",), "yesterday", "$.created"),
    (("generator",), "kdlayout", "$.generator"),
    (("generator", "version"), 1, "$.generator.version"),
    (("facts",), [], "$.facts"),
    (("facts",), _DELETE, "$.facts"),
    (("facts", "SIZE(page)", "value"), None, '$.facts["SIZE(page)"].value'),
    (("facts", "SIZE(page)", "value"), 6.4, '$.facts["SIZE(page)"].value'),
    (("facts", "SIZE(page)", "value"), _DELETE, '$.facts["SIZE(page)"].value'),
    (("facts", "SIZE(page)", "source"), 3, '$.facts["SIZE(page)"].source'),
    (("facts", "SIZE(page)", "agreeing"), "btf", '$.facts["SIZE(page)"].agreeing'),
    (("facts", "SIZE(page)", "colour"), "red", '$.facts["SIZE(page)"]'),
    (("facts", "SIZE(page"), {"value": 1, "source": "x", "origin": ""}, '$.facts["SIZE(page"]'),
    (("facts", "SIZE(page)"), 64, '$.facts["SIZE(page)"]'),
    (("sources",), [{"name": "x"}], "$.sources[0].status"),
    (("extra",), 1, "unknown field 'extra'"),
]


@pytest.mark.parametrize(("where", "value", "json_path"), BAD_ENTRIES,
                         ids=[b[2] + ("-del" if b[1] is _DELETE else "") for b in BAD_ENTRIES])
def test_schema_errors_name_file_and_json_path(tmp_path: Path, where: tuple[Any, ...], value: Any,
                                               json_path: str) -> None:
    good = json.loads(db.write_entry(sample_layout(), tmp_path).read_text())
    doc = copy.deepcopy(good)
    _set(doc, where, value)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(CorruptError) as err:
        db.read_entry(bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad}: ") and json_path in msg and "\n" not in msg
    # The JSON Schema rejects the same document (the two descriptions agree).
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed")
    checker = jsonschema.FormatChecker()
    if json_path == "$.created" and checker.conforms("yesterday", "date-time"):
        return  # this jsonschema cannot check date-time formats (needs rfc3339-validator)
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()),
                                                format_checker=checker)
    assert not validator.is_valid(doc)


def test_newer_schema_version_is_unsupported(tmp_path: Path) -> None:
    doc = json.loads(db.write_entry(sample_layout(), tmp_path).read_text())
    doc["schema_version"] = 2
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UnsupportedError, match=r"schema_version.*version 2"):
        db.read_entry(path)


@pytest.mark.parametrize("text", ['{"schema": ', "[1, 2]", "\xff\xfe"])
def test_not_json(tmp_path: Path, text: str) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(CorruptError) as err:
        db.read_entry(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000,
                                  '{"schema_version": ' + "9" * 5000 + "}"])
def test_hostile_json_is_one_line_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(CorruptError) as err:
        db.read_entry(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_unreadable_entry_is_reported(tmp_path: Path) -> None:
    (tmp_path / "6.1.0-test" / f"{BID_A}.json").mkdir(parents=True)  # a directory, not a file
    with pytest.raises(MissingDataError, match="cannot read"):
        db.DbSource(tmp_path, build_id=BID_A, release=None)


# ---- lookup ----------------------------------------------------------------------------------

def _entry_with_created(tmp_path: Path, build_id: str, created: str, page_size: int) -> None:
    path = db.write_entry(sample_layout(build_id=build_id, page_size=page_size), tmp_path)
    doc = json.loads(path.read_text())
    doc["created"] = created
    path.write_text(json.dumps(doc))


def test_build_id_exact_then_release_fallback(tmp_path: Path) -> None:
    _entry_with_created(tmp_path, BID_A, "2026-01-01T00:00:00Z", 64)
    _entry_with_created(tmp_path, BID_B, "2026-02-01T00:00:00Z", 80)
    a = db.DbSource(tmp_path, build_id=BID_A, release="6.1.0-test")
    assert a.match == "build-id" and a.entry.build_id == BID_A and not a.warnings
    assert {f.key: f.value for f in a.facts()}["SIZE(page)"] == 64
    # Upper-case build ids (as some tools print them) match too.
    assert db.DbSource(tmp_path, build_id=BID_B.upper(), release=None).entry.build_id == BID_B
    # Unknown build, known release: the newest entry of the release, with a warning.
    other = "00" * 20
    fb = db.DbSource(tmp_path, build_id=other, release="6.1.0-test")
    assert fb.match == "release" and fb.entry.build_id == BID_B
    assert len(fb.warnings) == 1 and other in fb.warnings[0] and "release" in fb.warnings[0]
    assert db.DbSource(tmp_path, build_id=None, release="6.1.0-test").match == "release"
    with pytest.raises(MissingDataError, match=r"6\.2\.0-other"):
        db.DbSource(tmp_path, build_id=other, release="6.2.0-other")
    with pytest.raises(MissingDataError, match="unknown"):
        db.DbSource(tmp_path, build_id=None, release=None)
    with pytest.raises(MissingDataError, match="no such"):
        db.DbSource(tmp_path / "absent", build_id=BID_A, release=None)


def test_hostile_build_id_and_release_never_reach_the_file_system(tmp_path: Path) -> None:
    db.write_entry(sample_layout(), tmp_path / "db")
    (tmp_path / "6.1.0-test").mkdir()
    for bid in ("*", "../*", "[0-9]*"):
        src = db.DbSource(tmp_path / "db", build_id=bid, release="6.1.0-test")
        assert src.match == "release"          # never a glob match on "*"
    with pytest.raises(MissingDataError):
        db.DbSource(tmp_path / "db", build_id="*", release="../6.1.0-test")


def test_release_fallback_compares_times_not_strings(tmp_path: Path) -> None:
    # 23:00Z written with an offset vs 23:30Z: the second is newer though it sorts first as text.
    _entry_with_created(tmp_path, BID_A, "2026-03-01T00:00:00+01:00", 64)
    _entry_with_created(tmp_path, BID_B, "2026-02-28T23:30:00Z", 80)
    assert db.DbSource(tmp_path, build_id=None, release="6.1.0-test").entry.build_id == BID_B


def test_build_id_match_with_other_release_warns(tmp_path: Path) -> None:
    db.write_entry(sample_layout(), tmp_path)
    src = db.DbSource(tmp_path, build_id=BID_A, release="6.1.0-renamed")
    assert src.match == "build-id" and "6.1.0-renamed" in src.warnings[0]


def test_file_name_must_match_build_id(tmp_path: Path) -> None:
    path = db.write_entry(sample_layout(), tmp_path)
    path.rename(path.with_name(f"{BID_B}.json"))
    with pytest.raises(CorruptError, match=r"build_id.*file name"):
        db.DbSource(tmp_path, build_id=BID_B, release=None)


# ---- resolver and CLI ------------------------------------------------------------------------

def _ident_vmcoreinfo(tmp_path: Path, release: str, build_id: str) -> Path:
    vi = tmp_path / "ident.vmcoreinfo"
    vi.write_text(f"OSRELEASE={release}\nBUILD-ID={build_id}\n")
    return vi


def test_resolver_uses_db_and_warns_on_release_fallback(tmp_path: Path) -> None:
    dbdir = tmp_path / "db"
    db.write_entry(sample_layout(), dbdir)
    vi = _ident_vmcoreinfo(tmp_path, "6.1.0-test", BID_A)
    result = resolve(None, ResolveOptions(vmcoreinfo=str(vi), db=str(dbdir), use_cache=False))
    status = {s.name: s for s in result.sources}
    assert status["db"].status == "used" and status["db"].facts == len(STORED)
    assert result.layout["NUMBER(PG_slab)"].chosen.source == "db"
    assert result.layout.number("PG_slab") == 9
    assert not any("layout database" in w for w in result.layout.warnings)

    resolver._memory_cache.clear()
    vi2 = _ident_vmcoreinfo(tmp_path, "6.1.0-test", BID_B)
    result = resolve(None, ResolveOptions(vmcoreinfo=str(vi2), db=str(dbdir), use_cache=False))
    assert result.layout.number("PG_slab") == 9
    assert any("by release" in w and BID_B in w for w in result.layout.warnings)
    assert "warning" in {s.name: s for s in result.sources}["db"].detail


def test_resolver_reports_bad_db_file_as_failed_source(tmp_path: Path) -> None:
    path = db.write_entry(sample_layout(), tmp_path)
    path.write_text("{}")
    vi = _ident_vmcoreinfo(tmp_path, "6.1.0-test", BID_A)
    result = resolve(None, ResolveOptions(vmcoreinfo=str(vi), db=str(tmp_path), use_cache=False))
    status = {s.name: s for s in result.sources}["db"]
    assert status.status == "failed" and str(path) in status.detail and "$.schema" in status.detail


def test_cli_db_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db.write_entry(sample_layout(), tmp_path)
    assert main(["db", "check", "--db", str(tmp_path)]) == 0
    assert "1 entries, 0 bad" in capsys.readouterr().out
    (tmp_path / "6.1.0-test" / f"{BID_B}.json").write_text('{"schema": 1}')
    assert main(["db", "check", "--db", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "2 entries, 1 bad" in out and f"BAD  {tmp_path}" in out


def test_repository_database_is_valid() -> None:
    entries = db.list_entries(REPO / "layouts")
    for path in entries:
        entry = db.read_entry(path)
        assert path == db.entry_path(REPO / "layouts", entry.release, entry.build_id)
        assert not any(k.startswith("SYMBOL(") for k in entry.facts)


# ---- real fixtures ---------------------------------------------------------------------------

PAGE_PREFIXES = ("SIZE(page)", "OFFSET(page.", "BITOFFSET(page.", "NUMBER(PG_", "NUMBER(PGTY_",
                 "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)", "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)",
                 "SIZE(folio)", "OFFSET(folio.")


def _dump_path(fixture: Any) -> Path:
    for key in ("vmcore", "md_zlib", "qemu_elf"):
        p = fixture.path(key)
        if p is not None:
            return Path(p)
    pytest.skip(f"{fixture.name} has no dump file")


def _resolve_dump(core: Path) -> Layout:
    """The dump's layout from VMCOREINFO and the BTF in the dump (kallsyms left out: it is not
    needed for type facts and is slow on some kernels)."""
    from kdlayout.dumpfile import open_dump

    providers = tuple(p for p in resolver.PROVIDERS if p[0] in ("vmcoreinfo", "btf"))
    resolver._memory_cache.clear()
    with open_dump(str(core)) as dump:
        return resolve(dump, ResolveOptions(use_cache=False), providers=providers).layout


def test_db_only_resolve_reproduces_struct_page(fixture: Any, tmp_path: Path) -> None:
    core = _dump_path(fixture)
    dbdir = tmp_path / "db"
    full = _resolve_dump(core)
    page = {k: full.get_value(k) for k in full if k.startswith(PAGE_PREFIXES)}
    assert {"SIZE(page)", "OFFSET(page.flags)", "OFFSET(page._refcount)"} <= set(page)
    assert full.build_id and full.release
    path = db.write_entry(full, dbdir)
    assert path == db.entry_path(dbdir, full.release, full.build_id)

    # 1. A context that knows only who the kernel is (no dump, no VMCOREINFO layout).
    ctx = ResolveContext(None, ResolveOptions(db=str(dbdir), use_cache=False))
    ctx.extra["build_id"] = full.build_id
    got = resolver._provide_db(ctx)
    assert got is not None
    only_db = {f.key: f.value for f in got[0]}
    assert {k: only_db.get(k) for k in page} == page
    assert all(f.source == "db" for f in got[0])

    # 2. Through the resolver, with VMCOREINFO stripped to OSRELEASE and BUILD-ID.
    vi = _ident_vmcoreinfo(tmp_path, full.release, full.build_id)
    info = VmcoreInfo.from_file(vi)
    assert info.build_id == full.build_id and not info.offsets
    resolver._memory_cache.clear()
    result = resolve(None, ResolveOptions(vmcoreinfo=str(vi), db=str(dbdir), use_cache=False))
    lay = result.layout
    assert {k: lay.get_value(k) for k in page} == page
    assert all(lay[k].chosen.source == "db" for k in page)
    assert not any(k.startswith("SYMBOL(") for k in lay)

    # 3. And they are the kernel's: DWARF of the -dbg vmlinux (drgn) says the same.
    vmlinux = fixture.path("vmlinux_dbg")
    if vmlinux is not None and fixture.path("vmcore") is not None:
        pytest.importorskip("drgn")
        from drgn_oracle import catalogue_facts, load_program

        dwarf = catalogue_facts(load_program(vmlinux, fixture.path("vmcore")))
        shared = [k for k in page if k in dwarf]
        assert len(shared) >= 10
        assert {k: lay.get_value(k) for k in shared} == {k: dwarf[k] for k in shared}


def test_cli_db_add_on_a_real_dump(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fixtures import get_fixture

    fx = get_fixture("bookworm")
    if fx is None:
        pytest.skip("fixture bookworm not built: run python tools/build_fixtures.py")
    core = _dump_path(fx)
    assert main(["db", "add", str(core), "--db", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    written = db.list_entries(tmp_path)
    assert len(written) == 1 and str(written[0]) in out
    entry = db.read_entry(written[0])
    assert entry.release == fx.release and entry.facts["SIZE(page)"].value == 64
    assert {s[0] for s in entry.sources} >= {"vmcoreinfo", "btf"}
    assert main(["db", "check", "--db", str(tmp_path)]) == 0


def test_broken_db_never_tracebacks_in_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    vi = _ident_vmcoreinfo(tmp_path, "6.1.0-test", BID_A)
    (tmp_path / "db" / "6.1.0-test").mkdir(parents=True)
    (tmp_path / "db" / "6.1.0-test" / f"{BID_A}.json").write_text("not json at all")
    # resolve --db on a broken entry: the source fails with the one-line error, no traceback.
    from kdlayout.commands.resolve import print_report

    result = resolve(None, ResolveOptions(vmcoreinfo=str(vi), db=str(tmp_path / "db"),
                                          use_cache=False))
    status = {s.name: s for s in result.sources}["db"]
    assert status.status == "failed" and "line 1 column 1: not JSON" in status.detail
    print_report(result, __import__("sys").stdout)
    assert "Traceback" not in capsys.readouterr().out
    with pytest.raises(KdlayoutError):
        db.read_entry(tmp_path / "db" / "6.1.0-test" / f"{BID_A}.json")


def test_second_boot_of_a_build_agrees_with_its_entry(tmp_path: Path) -> None:
    """Two fixtures of one kernel build (different boots, KASLR offsets): the entry written
    from one is confirmed fact by fact by the other's own VMCOREINFO and BTF — nothing per-boot
    leaked into the entry."""
    from fixtures import load_fixtures

    by_release: dict[str, list[Any]] = {}
    for fx in load_fixtures():
        by_release.setdefault(fx.release, []).append(fx)
    pairs = [fxs[:2] for fxs in by_release.values() if len(fxs) >= 2]
    if not pairs:
        pytest.skip("no two fixtures of one kernel build (e.g. trixie and trixie-cap-bookworm)")
    first, second = pairs[0]
    one = _resolve_dump(_dump_path(first))
    entry = db.read_entry(db.write_entry(one, tmp_path))
    two = _resolve_dump(_dump_path(second))
    if two.build_id != one.build_id:
        pytest.skip(f"{first.name} and {second.name} are different builds")
    compared = [k for k in entry.facts if k in two]
    assert len(compared) >= 150
    assert {k: entry.facts[k].value for k in compared} == {k: two.get_value(k) for k in compared}


def test_resolver_disk_cache_sees_a_changed_entry(tmp_path: Path) -> None:
    dbdir = tmp_path / "db"
    db.write_entry(sample_layout(page_size=64), dbdir)
    vi = _ident_vmcoreinfo(tmp_path, "6.1.0-test", BID_A)
    opts = {"vmcoreinfo": str(vi), "db": str(dbdir), "cache_dir": str(tmp_path / "cache")}
    resolver._memory_cache.clear()
    first = resolve(None, ResolveOptions(**opts))  # type: ignore[arg-type]
    assert first.layout.size("page") == 64 and first.cache_path is not None
    resolver._memory_cache.clear()
    assert resolve(None, ResolveOptions(**opts)).from_cache  # type: ignore[arg-type]
    # Rewriting the entry deep inside the directory leaves the directory's own mtime alone.
    db.write_entry(sample_layout(page_size=80), dbdir)
    resolver._memory_cache.clear()
    again = resolve(None, ResolveOptions(**opts))  # type: ignore[arg-type]
    assert not again.from_cache and again.layout.size("page") == 80


def test_db_keeps_every_derived_fact(fixture: Any, tmp_path: Path) -> None:
    """Adding the build's own DB entry to a resolve of its dump changes no derived fact."""
    from kdlayout.dumpfile import open_dump

    core = _dump_path(fixture)
    db.write_entry(_resolve_dump(core), tmp_path)
    providers = tuple(p for p in resolver.PROVIDERS
                      if p[0] in ("vmcoreinfo", "kallsyms", "btf", "db"))
    derived = []
    for dbdir in (None, str(tmp_path)):
        resolver._memory_cache.clear()
        with open_dump(str(core)) as dump:
            result = resolve(dump, ResolveOptions(db=dbdir, use_cache=False), providers=providers)
        lay = result.layout
        derived.append({k: lay[k].value for k in lay if lay[k].chosen.source == "derived"})
        assert not [w for w in lay.warnings if "db says" in w]
    assert derived[0] and derived[0] == derived[1]
