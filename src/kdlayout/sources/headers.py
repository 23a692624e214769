"""Kernel headers as a layout source: a ``linux-headers`` tree compiled with libclang.

For kernels that ship neither BTF nor debuginfo, the headers package of the same build still holds
everything that decides a struct layout: the source headers and the build's configuration
(``include/generated/autoconf.h``). This module compiles a small generated translation unit that
includes the memory-management headers with the flags Kbuild uses for x86_64, and reads record
sizes, member offsets and enumerators from libclang's AST.

A Debian headers tree comes in two directories: ``linux-headers-<abi>-amd64`` (the *object* tree:
``.config``, generated headers) and ``linux-headers-<abi>-common`` (the *source* tree), linked by
an ``include .../Makefile`` line in the object tree's Makefile. An upstream out-of-tree build links
them with a ``source`` symlink; an in-tree build is both at once. All three are recognised, and a
link that points to ``/usr/src/...`` is also looked up next to the tree (for trees unpacked
somewhere else).

Only the types the catalogue asks for (and the types of their members, transitively) are extracted
into a small JSON-ready model; that model is cached in memory and on disk, keyed by the tree's
path and the modification times of the files that decide it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import cachetools

from ..catalogue import ENUM_QUERIES, ENUMERATOR_QUERIES, TYPE_QUERIES
from ..errors import CorruptError, KdlayoutError, MissingDataError, UnsupportedError
from ..layout import Fact
from .base import MemberLocation, type_facts

#: Bump when the extracted model's shape or meaning changes (invalidates the disk cache).
MODEL_VERSION = 2

#: Headers the generated translation unit includes, in this order, when the tree has them.
TU_HEADERS: tuple[str, ...] = (
    "linux/kconfig.h", "linux/types.h", "linux/list.h", "linux/atomic.h", "linux/mm_types.h",
    "linux/mmzone.h", "linux/page-flags.h", "linux/mm.h", "linux/utsname.h", "linux/printk.h",
)
#: Source-tree-only headers (not shipped by headers packages) included when present.
TU_PRIVATE_HEADERS: tuple[str, ...] = ("kernel/printk/printk_ringbuffer.h",)

_TU_NAME = "kdlayout_headers_tu.c"

#: Integer constants evaluated in the compiled unit, as ``NUMBER(name)`` facts, when they are
#: constant expressions there (macros BTF and DWARF cannot see; enumerators also work). Values are
#: taken as ``(long)(name)``, as VMCOREINFO's ``NUMBER()`` prints them. Names that are undefined
#: or not constant (``MAX_PHYSMEM_BITS`` with 5-level paging) are simply absent.
HEADER_NUMBERS: tuple[str, ...] = (
    "PAGE_SHIFT", "SECTION_SIZE_BITS", "MAX_PHYSMEM_BITS", "KERNEL_IMAGE_SIZE", "MAX_NUMNODES",
    "NR_SECTION_ROOTS", "SECTIONS_PER_ROOT", "PAGES_PER_SECTION",
    "MAX_ORDER", "MAX_PAGE_ORDER", "NR_PAGE_ORDERS", "NR_FREE_PAGES", "PG_head_mask",
    # Page types kept in page_type/_mapcount (macros before v6.10, enumerators after).
    # PAGE_TYPE_BASE is deliberately not probed: kdlayout.semantics reads NUMBER(PAGE_TYPE_BASE)
    # as "the v6.10/v6.11 enum pagetype", where every PG_<type> is a mask, and rejects the
    # v4.18-v6.9 headers in which it is a macro and PG_slab a page-flag bit.
    "PAGE_MAPCOUNT_RESERVE", "PG_buddy", "PG_offline", "PG_table", "PG_guard",
    "PG_kmemcg", "PG_balloon", "PG_hugetlb", "PG_slab", "PG_zsmalloc", "PG_unaccepted",
    "PAGE_BUDDY_MAPCOUNT_VALUE", "PAGE_OFFLINE_MAPCOUNT_VALUE", "PAGE_SLAB_MAPCOUNT_VALUE",
    "PAGE_HUGETLB_MAPCOUNT_VALUE", "PAGE_UNACCEPTED_MAPCOUNT_VALUE",
)


def probe_names() -> tuple[str, ...]:
    """Every name probed as a constant: :data:`HEADER_NUMBERS` and the catalogue's enumerators
    of anonymous enums (``ENUMERATOR_QUERIES``)."""
    return tuple(dict.fromkeys((*HEADER_NUMBERS, *ENUMERATOR_QUERIES)))


# Everything the compiler reports after this marker concerns the probes, not the headers.
_PROBE_MARKER = "kdlayout-probes-follow"
_PROBE_PREFIX = "__kdlayout_probe_"


class HeadersTree(NamedTuple):
    """The two halves of a headers tree: ``obj`` (configured) and ``src`` (source headers)."""

    obj: Path
    src: Path
    release: str | None


class FieldRec(NamedTuple):
    """One member of a record in the extracted model."""

    name: str | None        # None for an anonymous struct/union member
    bit_offset: int         # relative to the containing record
    byte_size: int
    bit_width: int          # 0 unless a bitfield
    array_length: int | None
    record: str | None      # key of the member's record type (through typedefs and arrays)


@dataclass
class HeadersModel:
    """What was extracted from one tree: records, the names that reach them, enums."""

    release: str | None
    records: dict[str, tuple[int, list[FieldRec]]]    # key -> (size, fields)
    names: dict[str, str]                             # struct/union tag or typedef -> key
    enums: dict[str, dict[str, int]]
    numbers: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The model as JSON-ready data (for the disk cache and the compiler process)."""
        return {"version": MODEL_VERSION, "release": self.release,
                "records": {k: [size, [list(f) for f in fields]]
                            for k, (size, fields) in self.records.items()},
                "names": self.names, "enums": self.enums, "numbers": self.numbers}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HeadersModel:
        """Inverse of :meth:`to_json`; ValueError/KeyError/TypeError on anything else."""
        if data.get("version") != MODEL_VERSION:
            raise ValueError("model version")
        records = {k: (int(size), [FieldRec(*f) for f in fields])
                   for k, (size, fields) in data["records"].items()}
        return cls(data.get("release"), records, dict(data["names"]),
                   {k: dict(v) for k, v in data["enums"].items()},
                   {k: int(v) for k, v in data["numbers"].items()})


# ---- finding the tree ------------------------------------------------------------------------

def _rebase(link: Path, tree: Path) -> Path | None:
    """``link`` if it exists, else the directory of the same name next to ``tree``."""
    if link.is_dir():
        return link
    sibling = tree.parent / link.name
    return sibling if sibling.is_dir() else None


def find_tree(path: str | os.PathLike[str]) -> HeadersTree:
    """Locate the object and source halves of the headers tree at ``path``.

    Raises :class:`CorruptError` naming the directory when it is not a configured headers tree.
    """
    obj = Path(path)
    if not obj.is_dir():
        raise MissingDataError("no such headers directory", path=str(obj))
    if not (obj / "include" / "generated" / "autoconf.h").is_file():
        hint = ""
        if obj.name.endswith("-common"):
            hint = f"; pass the configured half, e.g. {obj.name.removesuffix('-common')}-amd64"
        raise CorruptError("not a configured linux-headers tree (no include/generated/autoconf.h)"
                           + hint, path=str(obj))
    src: Path | None = None
    if (obj / "include" / "linux" / "mm_types.h").is_file():
        src = obj
    elif (obj / "source").exists() or (obj / "source").is_symlink():
        src = _rebase((obj / "source").resolve(), obj)  # relative links are relative to obj
    if src is None and (obj / "Makefile").is_file():
        text = (obj / "Makefile").read_text("utf-8", "replace")
        for m in re.finditer(r"^\s*include\s+(\S+)/Makefile\s*$", text, re.M):
            src = _rebase(obj / m.group(1), obj)  # an absolute path replaces obj
            if src is not None:
                break
    if src is None or not (src / "include" / "linux" / "mm_types.h").is_file():
        raise CorruptError("cannot find the source half of the headers tree (no source symlink "
                           "or Makefile include leading to include/linux/mm_types.h)",
                           path=str(obj))
    release = None
    uts = obj / "include" / "generated" / "utsrelease.h"
    if uts.is_file():
        rm = re.search(r'UTS_RELEASE\s+"([^"]*)"', uts.read_text("utf-8", "replace"))
        release = rm.group(1) if rm else None
    return HeadersTree(obj, src, release)


def _config(tree: HeadersTree) -> dict[str, str]:
    config: dict[str, str] = {}
    path = tree.obj / ".config"
    if not path.is_file():
        return config
    for line in path.read_text("utf-8", "replace").splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            config[key] = value
    return config


def clang_resource_include() -> str | None:
    """A clang builtin-header directory (for old kernels that add ``-isystem`` of it)."""
    found = sorted(glob.glob("/usr/lib/llvm-*/lib/clang/*/include/stddef.h"),
                   key=lambda p: [int(n) for n in re.findall(r"\d+", p)])
    return os.path.dirname(found[-1]) if found else None


def compile_args(tree: HeadersTree) -> list[str]:
    """The clang arguments Kbuild would use for a file of this tree on x86_64.

    Taken from the tree's own top-level Makefile where it varies between kernels (C standard,
    ``-funsigned-char``, ``-fms-extensions``, ``-isystem`` of the compiler's include directory).
    """
    config = _config(tree)
    if config and config.get("CONFIG_X86_64") != "y":
        raise UnsupportedError("headers source supports x86_64 trees only (CONFIG_X86_64 is not "
                               "set in .config)", path=str(tree.obj / ".config"))
    s, o = tree.src, tree.obj
    makefile = (s / "Makefile").read_text("utf-8", "replace") if (s / "Makefile").is_file() else ""
    m = re.search(r"-std=(gnu\w+)", makefile)
    args = ["-x", "c", "-target", "x86_64-linux-gnu", "-nostdinc"]
    if "print-file-name=include" in makefile:
        builtin = clang_resource_include()
        if builtin:
            args += ["-isystem", builtin]
    args += [
        f"-I{s}/arch/x86/include", f"-I{o}/arch/x86/include/generated",
        f"-I{s}/include", f"-I{o}/include",
        f"-I{s}/arch/x86/include/uapi", f"-I{o}/arch/x86/include/generated/uapi",
        f"-I{s}/include/uapi", f"-I{o}/include/generated/uapi",
    ]
    for inc in ("include/linux/compiler-version.h", "include/linux/kconfig.h",
                "include/linux/compiler_types.h"):
        if (s / inc).is_file():
            args += ["-include", str(s / inc)]
    args += ["-D__KERNEL__", f"-std={m.group(1) if m else 'gnu11'}", "-fshort-wchar",
             "-fno-common", "-fno-PIE", "-fno-strict-aliasing", "-m64", "-mno-sse", "-mno-mmx",
             "-mno-sse2", "-mno-3dnow", "-mno-avx", "-mno-80387", "-mcmodel=kernel",
             "-mno-red-zone", '-DKBUILD_MODNAME="kdlayout"', '-DKBUILD_BASENAME="kdlayout"',
             "-ferror-limit=0", "-Wno-everything", "-W#warnings"]
    if "-funsigned-char" in makefile:
        args.append("-funsigned-char")
    # Tagged structs included anonymously (7.x): Kbuild adds $(CONFIG_CC_MS_EXTENSIONS), which
    # names gcc's -fms-extensions or clang's -fms-anonymous-structs; -fms-extensions serves both.
    ms = config.get("CONFIG_CC_MS_EXTENSIONS", "").strip('"')
    if "-fms-extensions" in makefile or ms.startswith("-fms-"):
        args.append("-fms-extensions")
    return args


def translation_unit_source(tree: HeadersTree) -> str:
    """The generated C file: includes of every header the catalogue's types live in."""
    lines = ["/* generated by kdlayout.sources.headers */"]
    for h in TU_HEADERS:
        if (tree.src / "include" / h).is_file():
            lines.append(f"#include <{h}>")
    for h in TU_PRIVATE_HEADERS:
        if (tree.src / h).is_file():
            lines.append(f'#include "{tree.src / h}"')
    lines.append(f'#warning "{_PROBE_MARKER}"')
    enumerators_only = set(ENUMERATOR_QUERIES)
    for name in probe_names():
        probe = f"enum {{ {_PROBE_PREFIX}{name} = (long)({name}) }};"
        if name in enumerators_only:
            # An enumerator query means the enumerator: a macro of the same name in another
            # generation (5.x's SECTION_MAP_LAST_BIT is a mask) is not it.
            lines += [f"#ifndef {name}", probe, "#endif"]
        else:
            lines.append(probe)
    return "\n".join(lines) + "\n"


# ---- extraction ------------------------------------------------------------------------------

def _load_clang() -> Any:
    try:
        import clang.cindex as ci
    except ImportError as exc:
        raise UnsupportedError(f"libclang Python bindings are not installed ({exc}); "
                               "pip install libclang") from exc
    return ci


def _parse(tree: HeadersTree) -> Any:
    """Compile the generated unit; raise CorruptError at the first error diagnostic."""
    ci = _load_clang()
    try:
        index = ci.Index.create()
        tu = index.parse(_TU_NAME, args=compile_args(tree),
                         unsaved_files=[(_TU_NAME, translation_unit_source(tree))],
                         options=ci.TranslationUnit.PARSE_SKIP_FUNCTION_BODIES)
    except ci.LibclangError as exc:
        raise UnsupportedError(f"libclang cannot be loaded: {exc}", path=str(tree.obj)) from exc
    except ci.TranslationUnitLoadError as exc:
        raise CorruptError(f"libclang could not parse the headers ({exc})",
                           path=str(tree.obj)) from exc
    for diag in tu.diagnostics:
        if _PROBE_MARKER in diag.spelling:
            break  # the rest is about probes of names this kernel lacks
        if diag.severity >= ci.Diagnostic.Error:
            loc = diag.location
            where = str(loc.file) if loc.file is not None else str(tree.obj)
            line = " ".join(diag.spelling.split())
            raise CorruptError(f"line {loc.line}: headers do not compile with libclang: {line}",
                               path=where)
    return tu


class _Extractor:
    """Walks one translation unit into a :class:`HeadersModel`."""

    def __init__(self, ci: Any, tu: Any) -> None:
        self.ci = ci
        self.tu = tu
        self.tags: dict[str, Any] = {}       # struct/union tag -> definition cursor
        self.typedefs: dict[str, Any] = {}   # typedef name -> cursor
        self.enums: dict[str, Any] = {}      # enum tag -> definition cursor
        self.records: dict[str, tuple[int, list[FieldRec]]] = {}
        self.numbers: dict[str, int] = {}    # probed constants
        self._index(tu.cursor)

    def _index(self, cursor: Any) -> None:
        kinds = self.ci.CursorKind
        for c in cursor.get_children():
            kind = c.kind
            if kind in (kinds.STRUCT_DECL, kinds.UNION_DECL):
                if c.is_definition():
                    if c.spelling and not c.is_anonymous() and "(" not in c.spelling:
                        self.tags.setdefault(c.spelling, c)
                    self._index(c)  # nested named definitions are file-scope in C
            elif kind == kinds.TYPEDEF_DECL:
                self.typedefs.setdefault(c.spelling, c)
            elif kind == kinds.ENUM_DECL and c.is_definition():
                if c.spelling and "(" not in c.spelling:
                    self.enums.setdefault(c.spelling, c)
                for e in c.get_children():
                    # A probe whose expression did not compile keeps no initializer (and value 0).
                    if e.spelling.startswith(_PROBE_PREFIX) and any(True for _ in e.get_children()):
                        self.numbers[e.spelling.removeprefix(_PROBE_PREFIX)] = int(e.enum_value)

    def _record_of(self, ctype: Any) -> tuple[Any, int | None]:
        """(record declaration or None, array length) of a member type."""
        tk = self.ci.TypeKind
        t = ctype.get_canonical()
        length: int | None = None
        if t.kind == tk.CONSTANTARRAY:
            length = t.get_array_size()
            while t.kind == tk.CONSTANTARRAY:
                t = t.get_array_element_type().get_canonical()
        elif t.kind == tk.INCOMPLETEARRAY:
            length = 0
            t = t.get_array_element_type().get_canonical()
        if t.kind == tk.RECORD:
            decl = t.get_declaration()
            if decl.kind != self.ci.CursorKind.NO_DECL_FOUND:
                return decl.get_definition() or decl, length
        return None, length

    @staticmethod
    def _key(decl: Any) -> str:
        # USRs of sibling anonymous records coincide, so the definition's location is added.
        loc = decl.location
        return f"{decl.get_usr()}@{loc.file}:{loc.line}:{loc.column}"

    def record(self, decl: Any) -> str:
        """Extract ``decl`` (and every record type its members have) into ``self.records``."""
        key = self._key(decl)
        if key in self.records:
            return key
        size = decl.type.get_size()
        fields: list[FieldRec] = []
        self.records[key] = (size, fields)  # placed first: self-referencing types terminate
        for f in decl.type.get_fields():
            target, length = self._record_of(f.type)
            anonymous = target is not None and target.is_anonymous()
            sub = self.record(target) if target is not None and target.is_definition() else None
            width = f.get_bitfield_width() if f.is_bitfield() else 0
            fsize = f.type.get_size()
            fields.append(FieldRec(None if anonymous else f.spelling, f.get_field_offsetof(),
                                   max(fsize, 0), width, length, sub))
        return key

    def model(self, release: str | None, wanted_types: Iterable[str],
              wanted_enums: Iterable[str]) -> HeadersModel:
        names: dict[str, str] = {}
        for name in wanted_types:
            decl = self.tags.get(name)
            if decl is None and name in self.typedefs:
                target, _ = self._record_of(self.typedefs[name].underlying_typedef_type)
                decl = target if target is not None and target.is_definition() else None
            if decl is not None:
                names[name] = self.record(decl)
        enums: dict[str, dict[str, int]] = {}
        for name in wanted_enums:
            cur = self.enums.get(name)
            if cur is not None:
                enums[name] = {c.spelling: int(c.enum_value) for c in cur.get_children()
                               if c.kind == self.ci.CursorKind.ENUM_CONSTANT_DECL}
        return HeadersModel(release, self.records, names, enums, dict(self.numbers))


def extract_here(tree: HeadersTree, wanted_types: Iterable[str], wanted_enums: Iterable[str]
                 ) -> HeadersModel:
    """Compile ``tree`` in this process and extract the named types and enums (uncached)."""
    tu = _parse(tree)
    return _Extractor(_load_clang(), tu).model(tree.release, wanted_types, wanted_enums)


def parse_timeout() -> float:
    """Seconds one headers compile may take (``$KDLAYOUT_HEADERS_TIMEOUT``, default 300)."""
    try:
        return float(os.environ.get("KDLAYOUT_HEADERS_TIMEOUT", "300"))
    except ValueError:
        return 300.0


# What the isolated compiler process runs (replaceable in tests).
_CHILD_CODE = "from kdlayout.sources.headers import child_main; child_main()"
_ERRORS: dict[str, type[KdlayoutError]] = {
    "CorruptError": CorruptError, "MissingDataError": MissingDataError,
    "UnsupportedError": UnsupportedError,
}


def extract(tree: HeadersTree, wanted_types: Iterable[str], wanted_enums: Iterable[str]
            ) -> HeadersModel:
    """Compile ``tree`` and extract the named types and enums (uncached).

    libclang runs in a child process, so that a tree that crashes it or takes forever costs an
    :class:`UnsupportedError` (after :func:`parse_timeout` seconds), not the whole program.
    """
    request = json.dumps({"obj": str(tree.obj), "src": str(tree.src), "release": tree.release,
                          "types": list(wanted_types), "enums": list(wanted_enums)})
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    timeout = parse_timeout()
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD_CODE], input=request,
                              capture_output=True, text=True, timeout=timeout, env=env,
                              check=False)
    except subprocess.TimeoutExpired:
        raise UnsupportedError(f"libclang did not finish compiling the headers within "
                               f"{timeout:g} s ($KDLAYOUT_HEADERS_TIMEOUT)",
                               path=str(tree.obj)) from None
    if proc.returncode < 0:
        raise UnsupportedError(f"libclang crashed (signal {-proc.returncode}) compiling the "
                               "headers", path=str(tree.obj))
    try:
        reply = json.loads(proc.stdout)
        if not isinstance(reply, dict):
            raise ValueError("not an object")
    except ValueError:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UnsupportedError(f"the headers compiler process failed (status {proc.returncode}): "
                               f"{last}", path=str(tree.obj)) from None
    error = reply.get("error")
    if isinstance(error, dict):
        cls = _ERRORS.get(str(error.get("class")), UnsupportedError)
        offset = error.get("offset")
        raise cls(str(error.get("message")), path=error.get("path"),
                  offset=offset if isinstance(offset, int) else None)
    return HeadersModel.from_json(reply["model"])


def child_main() -> None:
    """Entry point of the compiler process: a JSON request on stdin, a JSON reply on stdout."""
    req = json.loads(sys.stdin.read())
    tree = HeadersTree(Path(req["obj"]), Path(req["src"]), req["release"])
    try:
        model = extract_here(tree, req["types"], req["enums"])
        reply: dict[str, Any] = {"model": model.to_json()}
    except KdlayoutError as exc:
        reply = {"error": {"class": type(exc).__name__, "message": exc.message,
                           "path": exc.path, "offset": exc.offset}}
    except Exception as exc:  # anything libclang's bindings raise: reported, one line
        first = (str(exc).splitlines() or [""])[0]
        reply = {"error": {"class": "UnsupportedError", "path": str(tree.obj),
                           "message": f"libclang failed: {type(exc).__name__}: {first}"}}
    sys.stdout.write(json.dumps(reply))


# ---- caching ---------------------------------------------------------------------------------

_model_cache: cachetools.LRUCache[str, HeadersModel] = cachetools.LRUCache(maxsize=8)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def cache_key(tree: HeadersTree, wanted_types: Sequence[str], wanted_enums: Sequence[str]) -> str:
    """Explicit cache key: tree paths, mtimes of the files that decide layouts, the questions."""
    ident = [
        MODEL_VERSION, str(tree.obj.resolve()), str(tree.src.resolve()),
        [_mtime(p) for p in (tree.obj / ".config", tree.obj / "include/generated/autoconf.h",
                             tree.src / "Makefile", tree.src / "include/linux/mm_types.h",
                             tree.src / "include/linux/mmzone.h",
                             tree.src / "include/linux/page-flags.h")],
        list(wanted_types), list(wanted_enums), list(probe_names()),
    ]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:24]


def tree_identity(path: str | None) -> list[object]:
    """What identifies a headers tree's layouts for outside caches (the resolver's): the
    modification times of the files that decide them. Never raises."""
    if not path:
        return [None]
    try:
        tree = find_tree(path)
    except (KdlayoutError, OSError):
        return [path, None]
    return [str(tree.obj.resolve()), cache_key(tree, (), ())]


def _disk_dir() -> Path:
    root = os.environ.get("KDLAYOUT_CACHE") or os.path.join(Path.home(), ".cache", "kdlayout")
    return Path(root) / "headers-models"


def load_model(tree: HeadersTree, wanted_types: Sequence[str], wanted_enums: Sequence[str],
               *, use_disk: bool = True) -> HeadersModel:
    """The model of ``tree``: from memory, from the disk cache, or freshly compiled."""
    key = cache_key(tree, wanted_types, wanted_enums)
    hit = _model_cache.get(key)
    if hit is not None:
        return hit
    path = _disk_dir() / f"{key}.json"
    if use_disk:
        try:
            model = HeadersModel.from_json(json.loads(path.read_text()))
            _model_cache[key] = model
            return model
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent or damaged: recompile and rewrite
    model = extract(tree, wanted_types, wanted_enums)
    _model_cache[key] = model
    if use_disk:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(model.to_json()))
            os.replace(tmp, path)
        except OSError:
            pass  # the cache is an optimisation only
    return model


# ---- the TypeSource --------------------------------------------------------------------------

def _catalogue_types() -> list[str]:
    return [q.type_name for q in TYPE_QUERIES]


class HeadersTypeSource:
    """Answers :class:`~kdlayout.sources.base.TypeSource` questions from a headers tree."""

    kind = "headers"

    def __init__(self, path: str | os.PathLike[str], *, types: Sequence[str] | None = None,
                 enums: Sequence[str] | None = None, use_disk_cache: bool = True) -> None:
        wanted_types = list(types) if types is not None else _catalogue_types()
        wanted_enums = list(enums) if enums is not None else list(ENUM_QUERIES)
        try:
            self.tree = find_tree(path)
            self.model = load_model(self.tree, wanted_types, wanted_enums,
                                    use_disk=use_disk_cache)
        except KdlayoutError:
            raise
        except OSError as exc:
            raise CorruptError(f"cannot read the headers tree: {exc.strerror or exc}",
                               path=str(exc.filename or path)) from exc

    @property
    def release(self) -> str | None:
        """``UTS_RELEASE`` of the tree (include/generated/utsrelease.h), if it has one."""
        return self.model.release

    def describe(self) -> str:
        """``headers <tree> (<release>)``, the origin of every fact of this source."""
        rel = f" ({self.model.release})" if self.model.release else ""
        return f"headers {self.tree.obj}{rel}"

    def type_size(self, type_name: str) -> int | None:
        """``sizeof`` the struct, union or typedef ``type_name``; None if the tree lacks it."""
        key = self.model.names.get(type_name)
        return None if key is None else self.model.records[key][0]

    def _find(self, key: str, name: str, base: int) -> tuple[int, FieldRec] | None:
        for f in self.model.records[key][1]:
            if f.name == name:
                return base + f.bit_offset, f
            if f.name is None and f.record is not None:
                hit = self._find(f.record, name, base + f.bit_offset)
                if hit is not None:
                    return hit
        return None

    def member(self, type_name: str, path: str) -> MemberLocation | None:
        """Location of ``path`` in ``type_name``; None when this kernel has no such member."""
        key = self.model.names.get(type_name)
        if key is None:
            return None
        offset = 0
        found: FieldRec | None = None
        for part in path.split("."):
            if found is not None:
                if found.record is None or found.array_length is not None:
                    return None
                key = found.record
            hit = self._find(key, part, offset)
            if hit is None:
                return None
            offset, found = hit
        assert found is not None
        return MemberLocation(offset, found.byte_size, found.bit_width, found.array_length)

    def enumerators(self, enum_name: str) -> dict[str, int] | None:
        """Every enumerator of ``enum enum_name``; None when the tree has no such enum."""
        values = self.model.enums.get(enum_name)
        return None if values is None else dict(values)

    def enumerator(self, name: str) -> int | None:
        """Value of the enumerator (or integer constant) ``name``, named enum or not; None if the
        tree has none (answers the catalogue's ``ENUMERATOR_QUERIES``)."""
        return self.model.numbers.get(name)

    def numbers(self) -> dict[str, int]:
        """The :data:`HEADER_NUMBERS` that are integer constant expressions in this tree."""
        return dict(self.model.numbers)


def headers_facts(src: HeadersTypeSource) -> list[Fact]:
    """The catalogue's type and enum facts of ``src`` plus its probed constants (``NUMBER()``).

    A constant that is also an enumerator the enum queries already answered is not repeated.
    """
    facts = type_facts(src)
    seen = {f.key for f in facts}
    origin = src.describe()
    for name, value in sorted(src.numbers().items()):
        key = f"NUMBER({name})"
        if key not in seen:
            facts.append(Fact(key, value, src.kind, f"{origin} constant {name}"))
    return facts
