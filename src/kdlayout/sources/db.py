"""The layout database as a layout source: resolved layouts of known kernel builds, as JSON.

The database is a directory (``layouts/`` in the repository) holding one file per kernel build,
``<release>/<build-id>.json``, in the format documented in ``docs/layout-db.md`` and described by
``layouts/schema-v1.json``. An entry is found by the dump's build id (exact) or, failing that, by
its release (a fallback that is warned about: two builds of one release can differ). Every fact
of the entry becomes a :class:`~kdlayout.layout.Fact` with source ``"db"`` whose origin names the
entry file and the source that originally resolved it.

Only facts that belong to the *build* are stored: runtime addresses (``SYMBOL()``, with KASLR
applied), per-boot values (``KERNELOFFSET``, ``CRASHTIME``, ``NUMBER(phys_base)``, 5-level paging)
and the resolver's derived facts (re-derived from the stored ones on every resolve) are left out.

File access happens only in :func:`read_entry`, :func:`write_entry` and :func:`find_entry`; the
parsing and validation in :func:`parse_entry` work on decoded JSON.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .. import __version__
from ..errors import CorruptError, MissingDataError, UnsupportedError
from ..layout import Fact, FactValue, Layout

SCHEMA_NAME = "kdlayout-layout-db"
SCHEMA_VERSION = 1

#: Fact keys that describe one boot, not the build; never stored.
BOOT_SPECIFIC_KEYS: frozenset[str] = frozenset({
    "CRASHTIME", "KERNELOFFSET", "NUMBER(phys_base)", "NUMBER(pgtable_l5_enabled)",
    "NUMBER(sme_mask)", "NUMBER(MAX_PHYSMEM_BITS)",
    # Randomised with KASLR (x86_64 exports VMALLOC_START since 6.x), or placed at boot (arm64).
    "NUMBER(VMALLOC_START)", "NUMBER(VMEMMAP_START)", "NUMBER(kimage_voffset)",
    "NUMBER(PHYS_OFFSET)",
})
#: Key prefixes of per-boot facts (runtime addresses).
BOOT_SPECIFIC_PREFIXES: tuple[str, ...] = ("SYMBOL(",)
#: Sources whose facts are not stored (recomputed on every resolve).
NOT_STORED_SOURCES: frozenset[str] = frozenset({"derived", "db"})

_KEY = re.compile(r"^(?:(?:SIZE|OFFSET|BITOFFSET|LENGTH|NUMBER|CONFIG|SYMBOL)\([^()\s]+\)"
                  r"|[A-Za-z_][A-Za-z0-9_.-]*)$")
_RELEASE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]*$")
_BUILD_ID = re.compile(r"^[0-9a-f]{8,128}$")
_TOP_FIELDS = {"schema", "schema_version", "release", "build_id", "arch", "generator", "created",
               "facts", "sources", "warnings"}
_FACT_FIELDS = {"value", "source", "origin", "agreeing"}
NO_BUILD_ID = "no-build-id"


class DbFact(NamedTuple):
    """One stored fact with the provenance it had when the entry was generated."""

    key: str
    value: FactValue
    source: str
    origin: str
    agreeing: tuple[str, ...] = ()


@dataclass(frozen=True)
class DbEntry:
    """One validated database entry."""

    path: str
    release: str
    build_id: str | None
    arch: str
    generator: str
    generator_version: str
    created: str
    facts: dict[str, DbFact] = field(default_factory=dict)
    sources: tuple[tuple[str, str, str], ...] = ()
    warnings: tuple[str, ...] = ()


def is_stored(fact: Fact) -> bool:
    """Whether a resolved fact belongs in the database (build-invariant, not derived)."""
    if fact.source in NOT_STORED_SOURCES:
        return False
    return fact.key not in BOOT_SPECIFIC_KEYS and not fact.key.startswith(BOOT_SPECIFIC_PREFIXES)


def default_db_dir() -> Path:
    """``$KDLAYOUT_DB``, else ``layouts/`` of the source checkout kdlayout runs from, else ./layouts."""
    env = os.environ.get("KDLAYOUT_DB")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3] / "layouts"
    if (repo / f"schema-v{SCHEMA_VERSION}.json").is_file():
        return repo
    return Path("layouts")


# ---- generating ------------------------------------------------------------------------------

def entry_document(layout: Layout, *, arch: str = "x86_64",
                   sources: Iterable[tuple[str, str, str]] = (),
                   created: _dt.datetime | None = None) -> dict[str, Any]:
    """The JSON document of an entry for ``layout`` (a resolved layout of one kernel build).

    ``sources`` are (name, status, detail) of the resolve that produced it, kept for the record.
    Raises :class:`MissingDataError` when the layout does not know its release.
    """
    release = layout.release
    if not release:
        raise MissingDataError("cannot make a layout database entry: the kernel release is unknown")
    if not _RELEASE.match(release):
        raise UnsupportedError(f"kernel release {release!r} cannot name a layout database entry")
    build_id = layout.build_id.lower() if layout.build_id else None
    if build_id is not None and not _BUILD_ID.match(build_id):
        raise UnsupportedError(f"build id {build_id!r} is not hex")
    facts: dict[str, Any] = {}
    for key in sorted(layout):
        res = layout[key]
        if not is_stored(res.chosen):
            continue
        item: dict[str, Any] = {"value": res.value, "source": res.chosen.source,
                                "origin": res.chosen.origin}
        if res.agreeing:
            item["agreeing"] = sorted(set(res.agreeing))
        facts[key] = item
    when = (created or _dt.datetime.now(_dt.UTC)).astimezone(_dt.UTC)
    return {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "release": release,
        "build_id": build_id,
        "arch": arch,
        "generator": {"name": "kdlayout", "version": __version__},
        "created": when.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "sources": [{"name": n, "status": s, "detail": d} for n, s, d in sources],
        # Only conflicts about stored facts concern the build.
        "warnings": [w for w in layout.warnings if w.partition(":")[0] in facts],
        "facts": facts,
    }


def entry_path(db_dir: str | os.PathLike[str], release: str, build_id: str | None) -> Path:
    """Where the entry of (release, build id) lives in ``db_dir``."""
    return Path(db_dir) / release / f"{build_id or NO_BUILD_ID}.json"


def write_entry(layout: Layout, path: str | os.PathLike[str], *, arch: str = "x86_64",
                sources: Iterable[tuple[str, str, str]] = ()) -> Path:
    """Write the entry of ``layout``; ``path`` is a database directory or an explicit .json file.

    The file is replaced atomically; returns its path.
    """
    doc = entry_document(layout, arch=arch, sources=sources)
    target = Path(path)
    if target.suffix != ".json":
        target = entry_path(target, doc["release"], doc["build_id"])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    with tmp.open("w") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, target)
    return target


# ---- reading and validating ------------------------------------------------------------------

def _bad(path: str, where: str, message: str) -> CorruptError:
    return CorruptError(f"{where}: {message}", path=path)


def _string(obj: Mapping[str, Any], name: str, path: str, where: str, *,
            nullable: bool = False) -> str | None:
    value = obj.get(name)
    if value is None and nullable and name in obj:
        return None
    if not isinstance(value, str):
        raise _bad(path, f"{where}.{name}", f"expected a string, found {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _unknown(obj: Mapping[str, Any], allowed: set[str], path: str, where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise _bad(path, where, f"unknown field {extra[0]!r} (schema version {SCHEMA_VERSION})")


def parse_entry(data: object, *, path: str) -> DbEntry:
    """Validate decoded JSON as a database entry; :class:`CorruptError` names file and JSON path."""
    if not isinstance(data, dict):
        raise _bad(path, "$", f"expected an object, found {_json_type(data)}")
    if data.get("schema") != SCHEMA_NAME:
        raise _bad(path, "$.schema", f"expected {SCHEMA_NAME!r}, found {data.get('schema')!r}")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _bad(path, "$.schema_version", f"expected an integer, found {_json_type(version)}")
    if version != SCHEMA_VERSION:
        raise UnsupportedError(f"$.schema_version: version {version} is not supported (this "
                               f"kdlayout reads version {SCHEMA_VERSION})", path=path)
    _unknown(data, _TOP_FIELDS, path, "$")
    release = _string(data, "release", path, "$")
    assert release is not None
    if not _RELEASE.match(release):
        raise _bad(path, "$.release", f"not a kernel release: {release!r}")
    build_id = _string(data, "build_id", path, "$", nullable=True)
    if build_id is not None and not _BUILD_ID.match(build_id):
        raise _bad(path, "$.build_id", f"not a lower-case hex build id: {build_id!r}")
    arch = _string(data, "arch", path, "$")
    assert arch is not None
    gen = data.get("generator")
    if not isinstance(gen, dict):
        raise _bad(path, "$.generator", f"expected an object, found {_json_type(gen)}")
    _unknown(gen, {"name", "version"}, path, "$.generator")
    gen_name = _string(gen, "name", path, "$.generator")
    gen_version = _string(gen, "version", path, "$.generator")
    created = _string(data, "created", path, "$")
    assert created is not None and gen_name is not None and gen_version is not None
    try:
        _dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(path, "$.created", f"not an ISO 8601 date and time: {created!r}") from None

    sources: list[tuple[str, str, str]] = []
    raw_sources = data.get("sources", [])
    if not isinstance(raw_sources, list):
        raise _bad(path, "$.sources", f"expected an array, found {_json_type(raw_sources)}")
    for i, s in enumerate(raw_sources):
        where = f"$.sources[{i}]"
        if not isinstance(s, dict):
            raise _bad(path, where, f"expected an object, found {_json_type(s)}")
        _unknown(s, {"name", "status", "detail"}, path, where)
        name, status, detail = (_string(s, k, path, where) for k in ("name", "status", "detail"))
        assert name is not None and status is not None and detail is not None
        sources.append((name, status, detail))
    raw_warnings = data.get("warnings", [])
    if not isinstance(raw_warnings, list) or not all(isinstance(w, str) for w in raw_warnings):
        raise _bad(path, "$.warnings", "expected an array of strings")

    raw_facts = data.get("facts")
    if not isinstance(raw_facts, dict):
        raise _bad(path, "$.facts", f"expected an object, found {_json_type(raw_facts)}")
    facts: dict[str, DbFact] = {}
    for key, item in raw_facts.items():
        where = f"$.facts[{json.dumps(key)}]"
        if not _KEY.match(key):
            raise _bad(path, where, "not a fact key (SIZE(t), OFFSET(t.m), NUMBER(x), ...)")
        if not isinstance(item, dict):
            raise _bad(path, where, f"expected an object, found {_json_type(item)}")
        _unknown(item, _FACT_FIELDS, path, where)
        if "value" not in item:
            raise _bad(path, f"{where}.value", "missing")
        value = item["value"]
        if not isinstance(value, int | str):  # bool is an int
            raise _bad(path, f"{where}.value",
                       f"expected an integer, string or boolean, found {_json_type(value)}")
        source = _string(item, "source", path, where)
        origin = _string(item, "origin", path, where)
        assert source is not None and origin is not None
        if not source:
            raise _bad(path, f"{where}.source", "empty")
        agreeing = item.get("agreeing", [])
        if not isinstance(agreeing, list) or not all(isinstance(a, str) for a in agreeing):
            raise _bad(path, f"{where}.agreeing", "expected an array of strings")
        facts[key] = DbFact(key, value, source, origin, tuple(agreeing))
    return DbEntry(path, release, build_id, arch, gen_name, gen_version, created, facts,
                   tuple(sources), tuple(raw_warnings))


#: Entries are a few tens of KiB; anything far larger is not an entry.
MAX_ENTRY_BYTES = 16 << 20


def read_entry(path: str | os.PathLike[str]) -> DbEntry:
    """Read and validate one entry file."""
    p = str(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_ENTRY_BYTES + 1)
    except OSError as exc:
        raise MissingDataError(f"cannot read layout database entry: {exc.strerror or exc}",
                               path=p) from None
    if len(raw) > MAX_ENTRY_BYTES:
        raise CorruptError(f"larger than {MAX_ENTRY_BYTES} bytes: not a layout database entry",
                           path=p, offset=MAX_ENTRY_BYTES)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CorruptError(f"not UTF-8 text: {exc.reason}", path=p, offset=exc.start) from None
    except json.JSONDecodeError as exc:
        raise CorruptError(f"line {exc.lineno} column {exc.colno}: not JSON: {exc.msg}",
                           path=p) from None
    except (ValueError, RecursionError) as exc:  # e.g. integers too long, nesting too deep
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorruptError(f"not usable JSON: {msg}", path=p) from None
    return parse_entry(data, path=p)


def list_entries(db_dir: str | os.PathLike[str]) -> list[Path]:
    """Every entry file of the database (``<release>/<id>.json``), sorted."""
    root = Path(db_dir)
    return sorted(p for p in root.glob("*/*.json") if not p.name.startswith("."))


def db_identity(db_dir: str | None) -> list[object]:
    """What identifies a database's contents for outside caches (the resolver's): every entry's
    name, size and modification time. Never raises."""
    if not db_dir:
        return [None]
    out: list[object] = [os.path.abspath(db_dir)]
    try:
        for p in list_entries(db_dir):
            st = p.stat()
            out.append([str(p.relative_to(db_dir)), st.st_size, st.st_mtime_ns])
    except OSError:
        out.append(None)
    return out


class Match(NamedTuple):
    """The entry chosen for a kernel and how it was chosen ("build-id" or "release")."""

    entry: DbEntry
    how: str
    warning: str | None


def find_entry(db_dir: str | os.PathLike[str], *, build_id: str | None,
               release: str | None) -> Match:
    """The entry for ``build_id`` (exact), else for ``release`` (warned); MissingDataError if none."""
    root = Path(db_dir)
    if not root.is_dir():
        raise MissingDataError("no such layout database directory", path=str(root))
    bid = build_id.lower() if build_id else None
    if bid and not _BUILD_ID.match(bid):
        bid = None  # not hex: cannot name an entry (and must not reach a glob pattern)
    if bid:
        for p in root.glob(f"*/{bid}.json"):
            entry = read_entry(p)
            if entry.build_id != bid:
                raise CorruptError(f"$.build_id: {entry.build_id} does not match the file name",
                                   path=str(p))
            warning = None
            if release and entry.release != release:
                warning = (f"layout database entry {p} has the dump's build id but release "
                           f"{entry.release}, the dump says {release}")
            return Match(entry, "build-id", warning)
    if release and _RELEASE.match(release):
        candidates = [read_entry(p) for p in sorted((root / release).glob("*.json"))
                      if not p.name.startswith(".")]
        candidates = [e for e in candidates if e.release == release]
        if candidates:
            entry = max(candidates, key=lambda e: _dt.datetime.fromisoformat(
                e.created.replace("Z", "+00:00")).astimezone(_dt.UTC))
            why = (f"no entry for build id {bid}" if bid else "the dump's build id is unknown")
            return Match(entry, "release", (
                f"layout database: {why}; using {entry.path} (build id {entry.build_id}) by "
                f"release {release} only — builds of one release can differ"))
    wanted = " or ".join(x for x in (f"build id {bid}" if bid else "",
                                     f"release {release}" if release else "") if x)
    raise MissingDataError(f"no layout database entry for {wanted or 'an unidentified kernel'}",
                           path=str(root))


class DbSource:
    """The facts of the database entry matching one kernel, as source ``"db"``."""

    kind = "db"

    def __init__(self, db_dir: str | os.PathLike[str], *, build_id: str | None,
                 release: str | None) -> None:
        if not build_id and not release:
            raise MissingDataError("cannot pick a layout database entry: the kernel's build id "
                                   "and release are both unknown", path=str(db_dir))
        match = find_entry(db_dir, build_id=build_id, release=release)
        self.entry = match.entry
        self.match = match.how
        self.warnings: list[str] = [match.warning] if match.warning else []

    def describe(self) -> str:
        """The entry file and how it was matched, for the resolver's report."""
        how = "by build id" if self.match == "build-id" else "by release only"
        return f"layout database entry {self.entry.path} ({how})"

    def facts(self) -> list[Fact]:
        """Every stored fact, source ``"db"``, origin naming the entry and the original source."""
        return [Fact(f.key, f.value, self.kind, f"{self.entry.path} [{f.source}: {f.origin}]")
                for f in self.entry.facts.values()]
