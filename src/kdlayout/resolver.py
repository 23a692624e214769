"""The resolver: every source's facts merged into one :class:`~kdlayout.layout.Layout`.

Sources are tried in a fixed order; each either contributes facts or is recorded as skipped or
failed (with its one-line error), and the next one is tried. For every fact the value offered by
the source earliest in :data:`PRECEDENCE` is chosen; every other offer is kept as a candidate, so
the report shows which sources agree and which conflict, and each conflict adds a warning.

Precedence (first wins), and why:

1. ``vmcoreinfo`` — the crashed kernel's own export for dump tools, computed by its compiler.
2. ``btf`` — BTF read from the dump's kernel image: certainly the crashed kernel's types.
3. ``kallsyms`` — the symbol table decoded from the dump (symbols only).
4. ``dwarf`` — a vmlinux the user supplied, accepted only when its build id matches the dump's.
5. ``btf-file`` — BTF from a file the user supplied (vmlinux, vmlinuz or raw BTF).
6. ``headers`` — kernel headers compiled with libclang.
7. ``db`` — the layout database in ``layouts/``.
8. ``derived`` — values computed from other facts (:mod:`kdlayout.semantics`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cachetools

from . import __version__, catalogue
from .errors import KdlayoutError, MissingDataError
from .layout import Fact, Layout, Resolution
from .physmem import PhysicalMemory, release_mapping
from .vmcoreinfo import VmcoreInfo

PRECEDENCE: tuple[str, ...] = (
    "vmcoreinfo", "btf", "kallsyms", "dwarf", "btf-file", "headers", "db", "derived",
)
_RANK = {name: i for i, name in enumerate(PRECEDENCE)}

#: Bump when the on-disk cache format or the meaning of any fact changes.
CACHE_SCHEMA = 1


@dataclass
class ResolveOptions:
    """Files the user offers besides the dump (all optional)."""

    vmlinux: str | None = None        # ELF vmlinux with DWARF (and maybe .BTF)
    btf: str | None = None            # raw BTF, vmlinux or vmlinuz
    headers: str | None = None        # a linux-headers tree
    db: str | None = None             # a layout database directory
    vmcoreinfo: str | None = None     # VMCOREINFO text file (makedumpfile -i)
    use_cache: bool = True
    cache_dir: str | None = None      # default: $KDLAYOUT_CACHE/layouts


@dataclass
class SourceStatus:
    """What one source did during a resolve, for the report."""

    name: str
    status: str          # "used", "skipped", "failed"
    detail: str
    facts: int = 0
    seconds: float = 0.0


@dataclass
class ResolveResult:
    layout: Layout
    sources: list[SourceStatus] = field(default_factory=list)
    from_cache: bool = False
    cache_path: str | None = None


@dataclass
class ResolveContext:
    """State shared by the source providers during one resolve."""

    dump: PhysicalMemory | None
    options: ResolveOptions
    vmcoreinfo: VmcoreInfo | None = None
    where: str = ""
    # Filled by providers for the ones after them (e.g. kallsyms -> BTF in the dump).
    symbols: dict[str, int] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)


# A provider returns the facts of one source, or None when the source does not apply (skipped);
# it raises KdlayoutError when the source applies but fails.
Provider = Callable[[ResolveContext], "tuple[list[Fact], str] | None"]


def merge(facts: Iterable[Fact]) -> Layout:
    """Merge facts from any sources into a Layout by :data:`PRECEDENCE`."""
    by_key: dict[str, list[Fact]] = {}
    for f in facts:
        by_key.setdefault(f.key, []).append(f)
    layout = Layout()
    for key, cands in by_key.items():
        cands.sort(key=lambda f: _RANK.get(f.source, len(PRECEDENCE)))
        res = Resolution(key, cands[0], cands)
        layout.add(res)
        for c in res.conflicts:
            layout.warnings.append(
                f"{key}: {res.chosen.source} says {_fmt(res.value)} ({res.chosen.origin}) but "
                f"{c.source} says {_fmt(c.value)} ({c.origin})")
    return layout


def _fmt(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 0xFFFF:
        return hex(value)
    return repr(value) if isinstance(value, str) else str(value)


# ---- providers ------------------------------------------------------------------------------

def _provide_vmcoreinfo(ctx: ResolveContext) -> tuple[list[Fact], str] | None:
    from .sources.vmcoreinfo_source import vmcoreinfo_facts

    if ctx.vmcoreinfo is None:
        return None
    where = ctx.options.vmcoreinfo or ctx.where
    return vmcoreinfo_facts(ctx.vmcoreinfo, where=where), f"VMCOREINFO of {where}"


def _provide_kallsyms(ctx: ResolveContext) -> tuple[list[Fact], str] | None:
    if ctx.dump is None:
        return None
    from .kimage import KernelImage, vmcoreinfo_of
    from .sources import kallsyms_source

    # Uncached (not symbols_from_dump): the ~100-200k decoded names are dropped as soon as the
    # few symbols below are taken, instead of living as long as the dump is open (the resolve
    # itself is cached). A cold resolve before a scan or dump then leaves ~10-20 MiB less behind.
    image = KernelImage(ctx.dump, ctx.vmcoreinfo if ctx.vmcoreinfo is not None
                        else vmcoreinfo_of(ctx.dump))
    found = kallsyms_source.load_kallsyms(image)
    # The few names wanted are searched for; no by-name index of ~200k symbols is built.
    first = {name: hits[0] for name, hits in
             found.table.indices_many(catalogue.SYMBOL_QUERIES).items()}
    facts: list[Fact] = []
    for name in sorted(first):
        addr = int(found.table.addresses[first[name]])
        ctx.symbols[name] = addr
        if name in kallsyms_source.VMCOREINFO_VALUE_SYMBOLS:
            fact = _symbol_by_value(ctx, name, addr, found.describe())
            if fact is not None:
                facts.append(fact)
            continue
        facts.append(Fact(f"SYMBOL({name})", addr, "kallsyms", found.describe()))
    return facts, found.describe()


# VMCOREINFO_SYMBOL_ARRAY() exports an array's value, not the address of the variable: for
# SPARSEMEM_EXTREME's ``struct mem_section **mem_section`` that is the pointer stored in it.
# Linux kernel commit a0b1280368d1 ("kdump: write correct address of mem_section into
# vmcoreinfo") (in v4.15).
_DIRECT_MAP = (0xFF00_0000_0000_0000, 0xFFFF_FFFF_8000_0000)


def _symbol_by_value(ctx: ResolveContext, name: str, addr: int, where: str) -> Fact | None:
    """``SYMBOL(name)`` with VMCOREINFO's meaning, from kallsyms' ``&name``.

    Under SPARSEMEM_EXTREME the variable holds a pointer to the section roots, allocated from
    the direct map and 8-byte aligned; under static SPARSEMEM the variable *is* the array, and
    its first word is section 0's ``section_mem_map`` with the PRESENT/HAS_MEM_MAP bits set.
    """
    from .kimage import KernelImage

    assert ctx.dump is not None
    try:
        value = KernelImage(ctx.dump, ctx.vmcoreinfo).read_u64(addr)
    except KdlayoutError:
        return None
    if _DIRECT_MAP[0] <= value < _DIRECT_MAP[1] and value % 8 == 0:
        return Fact(f"SYMBOL({name})", value, "kallsyms",
                    f"*&{name} = *{addr:#x} (a pointer: SPARSEMEM_EXTREME); {where}")
    return Fact(f"SYMBOL({name})", addr, "kallsyms", f"&{name} (the array itself); {where}")


def _provide_dump_btf(ctx: ResolveContext) -> tuple[list[Fact], str] | None:
    if ctx.dump is None:
        return None
    from .sources import btf_in_dump
    from .sources.base import type_facts
    from .sources.btf_source import BtfTypeSource

    btf, where = btf_in_dump.find_btf(ctx.dump, ctx.vmcoreinfo, ctx.symbols)
    ctx.extra["btf"] = btf
    return type_facts(BtfTypeSource(btf, where)), where


def _provide_dwarf(ctx: ResolveContext) -> tuple[list[Fact], str] | None:
    if not ctx.options.vmlinux:
        return None
    from .sources.base import type_facts
    from .sources.dwarf import DwarfTypeSource

    src = DwarfTypeSource(ctx.options.vmlinux)
    return type_facts(src), src.describe()


def _provide_btf_file(ctx: ResolveContext) -> tuple[list[Fact], str] | None:
    if not ctx.options.btf:
        return None
    from .btf import load_btf
    from .sources.base import type_facts
    from .sources.btf_source import BtfTypeSource

    src = BtfTypeSource(load_btf(ctx.options.btf), ctx.options.btf)
    facts = [Fact(f.key, f.value, "btf-file", f.origin) for f in type_facts(src)]
    return facts, ctx.options.btf


def _provide_headers(ctx: ResolveContext) -> tuple[list[Fact], str] | None:
    if not ctx.options.headers:
        return None
    from .sources.headers import HeadersTypeSource, headers_facts

    src = HeadersTypeSource(ctx.options.headers)
    dump_release = ctx.vmcoreinfo.osrelease if ctx.vmcoreinfo is not None else None
    if src.release and dump_release and src.release != dump_release:
        ctx.extra.setdefault("warnings", []).append(  # type: ignore[attr-defined]
            f"headers {ctx.options.headers} are of {src.release}, the dump's kernel is "
            f"{dump_release}")
    return headers_facts(src), src.describe()


def _provide_db(ctx: ResolveContext) -> tuple[list[Fact], str] | None:
    if not ctx.options.db:
        return None
    from .sources.db import DbSource

    info = ctx.vmcoreinfo
    build_id = (info.build_id if info is not None else None) or ctx.extra.get("build_id")
    release = (info.osrelease if info is not None else None) or ctx.extra.get("release")
    src = DbSource(ctx.options.db, build_id=build_id if isinstance(build_id, str) else None,
                   release=release if isinstance(release, str) else None)
    ctx.extra.setdefault("warnings", []).extend(src.warnings)  # type: ignore[attr-defined]
    return src.facts(), "; warning: ".join([src.describe(), *src.warnings])


# Order matters: kallsyms feeds the in-dump BTF lookup.
PROVIDERS: tuple[tuple[str, Provider], ...] = (
    ("vmcoreinfo", _provide_vmcoreinfo),
    ("kallsyms", _provide_kallsyms),
    ("btf", _provide_dump_btf),
    ("dwarf", _provide_dwarf),
    ("btf-file", _provide_btf_file),
    ("headers", _provide_headers),
    ("db", _provide_db),
)


# ---- caching -------------------------------------------------------------------------------

# In memory: one resolve per (dump object, options). Keys hold the dump object itself, so a
# second resolve of the same open dump is free and a different dump never collides.
_memory_cache: cachetools.LRUCache[tuple[object, ...], ResolveResult] = cachetools.LRUCache(
    maxsize=16)


def _default_cache_dir() -> Path:
    root = os.environ.get("KDLAYOUT_CACHE") or os.path.join(Path.home(), ".cache", "kdlayout")
    return Path(root) / "layouts"


def _file_identity(path: str | None) -> list[object]:
    if not path:
        return [None]
    try:
        st = os.stat(path)
    except OSError:
        return [path, None]
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


_code_digest: list[str] = []


def _code_fingerprint() -> str:
    """A digest of kdlayout's own sources: a cached layout never outlives the code that made it,
    even between releases (computed once per process; about a megabyte of text)."""
    if not _code_digest:
        h = hashlib.sha256()
        root = Path(__file__).parent
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
        _code_digest.append(h.hexdigest()[:16])
    return _code_digest[0]


def _source_identities(options: ResolveOptions) -> list[object]:
    """Contents of a headers tree and a database directory (their own mtimes do not change
    when a file deep inside them does)."""
    from .sources.db import db_identity
    from .sources.headers import tree_identity

    return [tree_identity(options.headers), db_identity(options.db)]


def _disk_key(ctx: ResolveContext) -> str | None:
    """Cache key: the kernel's build id plus everything that could change the answer."""
    info = ctx.vmcoreinfo
    build_id = info.build_id if info is not None else None
    if not build_id:
        return None
    h = hashlib.sha256()
    raw = ctx.dump.vmcoreinfo if ctx.dump is not None else None
    ident = [
        CACHE_SCHEMA, __version__, _code_fingerprint(), repr(catalogue.TYPE_QUERIES),
        repr(catalogue.ENUM_QUERIES),
        repr(catalogue.SYMBOL_QUERIES),
        hashlib.sha256(raw).hexdigest() if raw else None,
        _file_identity(ctx.options.vmcoreinfo), _file_identity(ctx.options.vmlinux),
        _file_identity(ctx.options.btf), _file_identity(ctx.options.headers),
        _file_identity(ctx.options.db), *_source_identities(ctx.options),
    ]
    h.update(json.dumps(ident, default=str).encode())
    return f"{build_id}-{h.hexdigest()[:16]}"


def _to_disk(result: ResolveResult) -> dict[str, object]:
    lay = result.layout
    return {
        "schema": CACHE_SCHEMA,
        "release": lay.release,
        "build_id": lay.build_id,
        "warnings": lay.warnings,
        "sources": [vars(s) for s in result.sources],
        "facts": [
            {"key": r.key, "chosen": r.candidates.index(r.chosen),
             "candidates": [[c.value, c.source, c.origin] for c in r.candidates]}
            for r in lay.values()
        ],
    }


def _from_disk(data: dict[str, object]) -> ResolveResult:
    facts = data["facts"]
    assert isinstance(facts, list)
    resolutions = []
    for entry in facts:
        cands = [Fact(entry["key"], v, s, o) for v, s, o in entry["candidates"]]
        resolutions.append(Resolution(entry["key"], cands[entry["chosen"]], cands))
    layout = Layout(resolutions, release=data.get("release"),  # type: ignore[arg-type]
                    build_id=data.get("build_id"))  # type: ignore[arg-type]
    layout.warnings = list(data.get("warnings") or [])  # type: ignore[call-overload]
    sources = [SourceStatus(**s) for s in data.get("sources") or []]  # type: ignore[attr-defined]
    return ResolveResult(layout, sources, from_cache=True)


def _load_cached(path: Path) -> ResolveResult | None:
    try:
        with path.open() as f:
            data = json.load(f)
        if data.get("schema") != CACHE_SCHEMA:
            return None
        result = _from_disk(data)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AssertionError):
        return None  # a damaged cache entry is ignored and rewritten
    result.cache_path = str(path)
    return result


def _store_cached(path: Path, result: ResolveResult) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with tmp.open("w") as f:
            json.dump(_to_disk(result), f)
        os.replace(tmp, path)
        result.cache_path = str(path)
    except OSError:
        pass  # caching is an optimisation; a read-only home must not fail a resolve


# ---- entry point ---------------------------------------------------------------------------

def _load_vmcoreinfo(dump: PhysicalMemory | None, options: ResolveOptions) -> VmcoreInfo | None:
    if options.vmcoreinfo:
        return VmcoreInfo.from_file(options.vmcoreinfo)
    if dump is not None and dump.vmcoreinfo is not None:
        return VmcoreInfo.parse(dump.vmcoreinfo, path=dump.info.path)
    return None


def resolve(dump: PhysicalMemory | None, options: ResolveOptions | None = None,
            *, providers: Sequence[tuple[str, Provider]] = PROVIDERS) -> ResolveResult:
    """Resolve the crashed kernel's layout from ``dump`` and the files in ``options``."""
    options = options or ResolveOptions()
    mem_key = (dump, repr(options), tuple(n for n, _ in providers))
    cached = _memory_cache.get(mem_key)
    if cached is not None:
        return cached

    ctx = ResolveContext(dump, options, where=dump.info.path if dump is not None else "")
    statuses: list[SourceStatus] = []
    try:
        ctx.vmcoreinfo = _load_vmcoreinfo(dump, options)
    except KdlayoutError as exc:
        statuses.append(SourceStatus("vmcoreinfo", "failed", str(exc)))

    disk_path: Path | None = None
    if options.use_cache and providers is PROVIDERS:
        key = _disk_key(ctx)
        if key is not None:
            disk_path = Path(options.cache_dir or _default_cache_dir()) / f"{key}.json"
            hit = _load_cached(disk_path)
            if hit is not None:
                _memory_cache[mem_key] = hit
                return hit

    facts: list[Fact] = []
    for name, provider in providers:
        if any(s.name == name for s in statuses):
            continue
        started = time.perf_counter()
        got: tuple[list[Fact], str] | SourceStatus | None
        try:
            got = provider(ctx)
        except KdlayoutError as exc:
            got = SourceStatus(name, "failed", f"{exc}; falling back to the next source")
        except ImportError as exc:
            got = SourceStatus(name, "skipped", f"not available here: {exc}")
        if got is None:
            got = SourceStatus(name, "skipped", "not offered")
        if isinstance(got, SourceStatus):
            status = got
        else:
            new, detail = got
            facts.extend(new)
            status = SourceStatus(name, "used", detail, len(new))
        status.seconds = round(time.perf_counter() - started, 4)
        statuses.append(status)

    facts.extend(_derived_facts(facts, statuses))
    layout = merge(facts)
    info = ctx.vmcoreinfo
    layout.release = info.osrelease if info is not None else None
    layout.build_id = info.build_id if info is not None else None
    layout.warnings.extend(str(w) for w in ctx.extra.get("warnings") or ())  # type: ignore[attr-defined]
    _check_build_ids(layout, ctx)
    result = ResolveResult(layout, statuses)
    if disk_path is not None:
        _store_cached(disk_path, result)
    _memory_cache[mem_key] = result
    del ctx, facts
    _release_heap()
    if dump is not None:
        # the dump file pages a cold resolve touched (kallsyms, BTF, page tables: ~5-10 MiB of
        # the kernel image) leave the process, as the scanner's windows do
        release_mapping(dump)
    return result


def _release_heap() -> None:
    """Give the C heap's free pages back to the system after a cold resolve.

    Decoding kallsyms and BTF allocates and frees tens of MiB of numpy and Python temporaries;
    glibc keeps most of that freed memory mapped (its mmap threshold rises after the first large
    frees, so later large blocks come from the heap and stay there), where it would add to the
    peak RSS of the scan and write that follow. ``malloc_trim(0)`` (glibc) returns it; elsewhere
    this does nothing.
    """
    if not _malloc_trim:
        try:
            import ctypes

            _malloc_trim.append(ctypes.CDLL(None).malloc_trim)
        except (OSError, AttributeError):
            _malloc_trim.append(None)
    trim = _malloc_trim[0]
    if trim is not None:
        trim(0)


#: glibc's ``malloc_trim`` once looked up (``[None]`` where there is none).
_malloc_trim: list[Callable[[int], int] | None] = []


def _derived_facts(facts: list[Fact], statuses: list[SourceStatus]) -> list[Fact]:
    """Facts computed from the others by :mod:`kdlayout.semantics`.

    Each family of rules is derived on its own, so a kernel whose page types are not understood
    still gets its memory model (and the failure is reported, not hidden).
    """
    from . import semantics as sem

    view = sem.FactView(merge(facts))
    derived: list[Fact] = []
    failures: list[str] = []

    def attempt(name: str, fn: Callable[[], tuple[object, list[Fact]]]) -> object | None:
        try:
            value, new = fn()
        except KdlayoutError as exc:
            failures.append(f"{name}: {exc}")
            return None
        derived.extend(new)
        return value

    page_types = attempt("page types", lambda: sem.derive_page_types(view))
    memory = attempt("memory model", lambda: sem.derive_memory_model(view))
    attempt("mapping bits", lambda: sem.derive_mapping_bits(view))
    if isinstance(page_types, sem.PageTypes):
        pt = page_types
        attempt("slab", lambda: sem.derive_slab(view, pt))
        attempt("compound pages", lambda: sem.derive_compound(view, pt))
        attempt("free pages", lambda: sem.derive_free_pages(view, pt))
    if isinstance(memory, sem.MemoryModelRules):
        mm = memory
        attempt("page flags", lambda: sem.derive_page_flags(view, mm))
    detail = "rules in kdlayout.semantics"
    if failures:
        detail += "; not derived: " + "; ".join(failures)
    statuses.append(SourceStatus("derived", "used" if derived else "failed", detail, len(derived)))
    return derived


def _check_build_ids(layout: Layout, ctx: ResolveContext) -> None:
    dump_id = layout.build_id
    file_id = ctx.extra.get("vmlinux_build_id")
    if dump_id and isinstance(file_id, str) and file_id != dump_id:
        layout.warnings.append(
            f"vmlinux {ctx.options.vmlinux} has build id {file_id}, the dump's kernel {dump_id}")


def require(layout: Layout, keys: Iterable[str]) -> None:
    """Raise :class:`MissingDataError` listing every key of ``keys`` the layout lacks."""
    missing = [k for k in keys if k not in layout]
    if missing:
        raise MissingDataError("layout lacks " + ", ".join(missing))
