"""kdlayout.sources.dwarf against independent tools.

Ground truth: drgn 0.3.0 reading the same file (its own C DWARF indexer; loaded here through an
extra module, because without a core dump ``load_debug_info([vmlinux])`` ignores the file), and
gcc, which compiles a small kernel-like C file into real DWARF 2 (strict, location expressions),
3, 4 (``DW_AT_bit_offset`` bitfields), 5 (``DW_AT_data_bit_offset``, ``line_strp``) and
zlib-compressed forms (``SHF_COMPRESSED`` and legacy ``.zdebug``). A few layouts are also checked
by hand against the C rules. Error paths use objcopy (``--strip-debug``), truncated copies and
byte flips.

Real kernels: every fixture's ``vmlinux_dbg`` (tools/build_fixtures.py --dbg) and, for local
runs, any paths in ``$KDLAYOUT_TEST_VMLINUX`` (``os.pathsep``-separated).
"""

from __future__ import annotations

import mmap
import os
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from kdlayout.catalogue import ENUM_QUERIES, TYPE_QUERIES
from kdlayout.errors import CorruptError, KdlayoutError, MissingDataError, UnsupportedError
from kdlayout.sources.base import MemberLocation, type_facts
from kdlayout.sources.dwarf import (
    DrgnTypeSource,
    DwarfTypeSource,
    drgn_available,
    load_drgn_program,
    read_elf_sections,
)

# ---- a kernel-like C file compiled by gcc --------------------------------------------------

C_SOURCE = r"""
typedef struct { long counter; } atomic64_t;
typedef atomic64_t atomic_long_t;
struct list_head { struct list_head *next, *prev; };
typedef struct { unsigned long f; } memdesc_flags_t;
struct page {
	memdesc_flags_t flags;
	union {
		struct {
			union { struct list_head lru;
				struct { void *__filler; unsigned int mlock_count; }; };
			void *mapping;
			unsigned long index;
		};
		struct { unsigned long compound_head; };
	};
	union { unsigned int page_type; int _mapcount; };
	atomic64_t _refcount;
	unsigned int a : 3, b : 5, c : 13;
	unsigned char d : 1;
	const volatile int arr[4][2];
	struct list_head lists[3];
	char name[];
};
enum pageflags { PG_locked, PG_slab = 7, PG_big = 0x7fffffff, __NR_PAGEFLAGS = 31 };
enum signed_enum { NEG = -2, POS = 5 };
enum big_enum { BIG = 0xffffffffffffULL };
struct page the_page;
atomic_long_t counter;
enum pageflags pf; enum signed_enum se; enum big_enum be;
struct incomplete;  struct incomplete *ip;
struct zero { int n; int z[0]; } zero_var;
"""

# (gcc flags) per variant; every variant must give identical answers.
VARIANTS: dict[str, tuple[str, ...]] = {
    "dwarf2-strict": ("-gdwarf-2", "-gstrict-dwarf"),
    "dwarf3": ("-gdwarf-3",),
    "dwarf4": ("-gdwarf-4",),
    "dwarf5": ("-gdwarf-5",),
    "dwarf5-zlib": ("-gdwarf-5", "-gz=zlib"),
    "dwarf4-zlib-gnu": ("-gdwarf-4", "-gz=zlib-gnu"),
    # clang writes DWARF 5 names as DW_FORM_strx* through .debug_str_offsets, and .debug_addr
    "clang-dwarf5": ("clang", "-gdwarf-5"),
    "clang-dwarf5-pubnames": ("clang", "-gdwarf-5", "-gpubnames"),
    "clang-dwarf4": ("clang", "-gdwarf-4"),
}


def _clang() -> str | None:
    for name in ("clang", *(f"clang-{v}" for v in range(30, 10, -1))):
        exe = shutil.which(name)
        if exe is not None:
            return exe
    return None


def _compiler(flags: tuple[str, ...]) -> tuple[str | None, tuple[str, ...]]:
    if flags and flags[0] == "clang":
        return _clang(), flags[1:]
    return shutil.which("gcc"), flags

MEMBER_QUERIES: tuple[tuple[str, str], ...] = (
    ("page", "flags"), ("page", "flags.f"), ("page", "lru"), ("page", "lru.prev"),
    ("page", "mlock_count"), ("page", "mapping"), ("page", "index"), ("page", "compound_head"),
    ("page", "page_type"), ("page", "_mapcount"), ("page", "_refcount"),
    ("page", "_refcount.counter"), ("page", "a"), ("page", "b"), ("page", "c"), ("page", "d"),
    ("page", "arr"), ("page", "lists"), ("page", "name"), ("page", "nonexistent"),
    ("page", "flags.nonexistent"), ("page", "index.x"), ("zero", "z"), ("zero", "n"),
    ("atomic_long_t", "counter"), ("memdesc_flags_t", "f"), ("list_head", "prev"),
    ("page", "lists[1].prev"), ("page", "arr[2][1]"), ("page", "arr[2]"), ("page", "a[1]"),
    ("page", "lists[x]"),
)
SIZE_QUERIES = ("page", "list_head", "atomic_long_t", "memdesc_flags_t", "zero", "incomplete",
                "atomic64_t", "no_such_type", "pageflags")
ENUMS = ("pageflags", "signed_enum", "big_enum", "no_such_enum")

# Hand-checked against the C layout rules (x86-64): offsets in bits.
EXPECTED_MEMBERS = {
    ("page", "compound_head"): MemberLocation(64, 8),
    ("page", "mapping"): MemberLocation(192, 8),
    ("page", "mlock_count"): MemberLocation(128, 4),
    ("page", "page_type"): MemberLocation(320, 4),
    ("page", "_refcount.counter"): MemberLocation(384, 8),
    ("page", "a"): MemberLocation(448, 4, 3),
    ("page", "c"): MemberLocation(456, 4, 13),
    ("page", "d"): MemberLocation(469, 1, 1),
    ("page", "arr"): MemberLocation(480, 32, 0, 4),
    ("page", "lists"): MemberLocation(768, 48, 0, 3),
    ("page", "flags.f"): MemberLocation(0, 8),
    ("page", "nonexistent"): None,
    ("page", "lists[1].prev"): MemberLocation(960, 8),
    ("page", "arr[2][1]"): MemberLocation(640, 4),
    ("page", "arr[2]"): MemberLocation(608, 8, 0, 2),
    ("page", "a[1]"): None,                              # not an array
    ("zero", "z"): MemberLocation(32, 0, 0, 0),
}


def _gcc() -> str:
    exe = shutil.which("gcc")
    if exe is None:
        pytest.skip("gcc is not installed (needed to make real DWARF)")
    return exe


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The C file built as a shared object once per DWARF variant gcc supports."""
    _gcc()
    d = tmp_path_factory.mktemp("dwarf-c")
    src = d / "t.c"
    src.write_text(C_SOURCE)
    out: dict[str, Path] = {}
    for name, spec in VARIANTS.items():
        cc, flags = _compiler(spec)
        if cc is None:
            continue
        so = d / f"{name}.so"
        r = subprocess.run([cc, "-g", *flags, "-O0", "-shared", "-fPIC", "-nostdlib", "-o",
                            str(so), str(src)], capture_output=True, text=True, timeout=120)
        if r.returncode == 0:
            out[name] = so
    if "dwarf5" not in out:
        pytest.skip("gcc could not build the DWARF 5 variant")
    return out


def _answers(src: Any) -> dict[str, object]:
    ans: dict[str, object] = {}
    for t in SIZE_QUERIES:
        ans[f"size {t}"] = src.type_size(t)
    for t, p in MEMBER_QUERIES:
        ans[f"member {t}.{p}"] = src.member(t, p)
    for e in ENUMS:
        ans[f"enum {e}"] = src.enumerators(e)
    return ans


# ---- drgn as the oracle (written against drgn's API; shares nothing with kdlayout) ------------

def _drgn_find(prog: Any, name: str) -> Any | None:
    import drgn

    for spelling in (f"struct {name}", f"union {name}"):
        try:
            return prog.type(spelling)
        except LookupError:
            pass
    try:
        t = prog.type(name)
    except (LookupError, SyntaxError):
        return None
    real = t
    while real.kind == drgn.TypeKind.TYPEDEF:
        real = real.type
    return t if real.kind in (drgn.TypeKind.STRUCT, drgn.TypeKind.UNION) else None


def _drgn_member(prog: Any, type_name: str, path: str) -> MemberLocation | None:
    import drgn

    t = _drgn_find(prog, type_name)
    if t is None:
        return None
    bits = 0
    member: Any = None
    mtype: Any = None
    for comp in path.split("."):
        name, _, rest = comp.partition("[")
        try:
            indices = [int(x) for x in rest.rstrip("]").split("][")] if rest else []
        except ValueError:
            return None
        while t.kind == drgn.TypeKind.TYPEDEF:
            t = t.type
        if t.kind not in (drgn.TypeKind.STRUCT, drgn.TypeKind.UNION):
            return None
        try:
            member = t.member(name)      # drgn searches anonymous members itself
        except LookupError:
            return None
        bits += member.bit_offset
        mtype = member.type
        for i in indices:                # drgn nests multi-dimensional arrays
            while mtype.kind == drgn.TypeKind.TYPEDEF:
                mtype = mtype.type
            if mtype.kind != drgn.TypeKind.ARRAY:
                return None
            mtype = mtype.type
            bits += 8 * i * drgn.sizeof(mtype)
        t = mtype
    try:
        size = drgn.sizeof(mtype)
    except TypeError:                    # incomplete array (flexible member)
        size = 0
    width = (member.bit_field_size or 0) if not indices else 0
    if width == 8 * size and bits % 8 == 0:
        width = 0
    real = mtype
    while real.kind == drgn.TypeKind.TYPEDEF:
        real = real.type
    length = real.length if real.kind == drgn.TypeKind.ARRAY else None
    return MemberLocation(bits, size, width, length)


def _drgn_enum(prog: Any, name: str) -> dict[str, int] | None:
    try:
        t = prog.type(f"enum {name}")
    except LookupError:
        return None
    return {e.name: e.value for e in t.enumerators or ()}


class _DrgnOracle:
    def __init__(self, path: Path) -> None:
        self.prog = load_drgn_program(str(path))

    def type_size(self, name: str) -> int | None:
        import drgn

        t = _drgn_find(self.prog, name)
        return None if t is None else int(drgn.sizeof(t))

    def member(self, t: str, p: str) -> MemberLocation | None:
        return _drgn_member(self.prog, t, p)

    def enumerators(self, e: str) -> dict[str, int] | None:
        return _drgn_enum(self.prog, e)


def _drgn_catalogue(path: Path) -> dict[str, int]:
    """The facts :func:`type_facts` would produce, computed from drgn."""
    import drgn

    prog = load_drgn_program(str(path))
    facts: dict[str, int] = {}
    for q in TYPE_QUERIES:
        t = _drgn_find(prog, q.type_name)
        if t is None:
            continue
        facts[f"SIZE({q.type_name})"] = drgn.sizeof(t)
        for p in q.members:
            loc = _drgn_member(prog, q.type_name, p)
            if loc is None:
                continue
            if loc.bit_size or loc.bit_offset % 8:
                facts[f"BITOFFSET({q.type_name}.{p})"] = loc.bit_offset
            else:
                facts[f"OFFSET({q.type_name}.{p})"] = loc.bit_offset // 8
            if p in q.arrays and loc.array_length is not None:
                facts[f"LENGTH({q.type_name}.{p})"] = loc.array_length
    for e in ENUM_QUERIES:
        for k, v in (_drgn_enum(prog, e) or {}).items():
            facts[f"NUMBER({k})"] = v
    return facts


needs_drgn = pytest.mark.skipif(not drgn_available(), reason="drgn is not installed")


# ---- gcc-built DWARF ------------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gcc_dwarf_matches_hand_layout(compiled: dict[str, Path], variant: str) -> None:
    if variant not in compiled:
        pytest.skip(f"no compiler builds {variant} ({' '.join(VARIANTS[variant])})")
    src = DwarfTypeSource(compiled[variant])
    for (t, p), want in EXPECTED_MEMBERS.items():
        assert src.member(t, p) == want, (variant, t, p)
    assert src.type_size("page") == 144
    assert src.type_size("atomic_long_t") == 8          # typedef of a typedef of a struct
    assert src.type_size("incomplete") is None           # declared, never defined
    assert src.type_size("no_such_type") is None
    assert src.enumerators("pageflags") == {"PG_locked": 0, "PG_slab": 7, "PG_big": 0x7FFFFFFF,
                                            "__NR_PAGEFLAGS": 31}
    assert src.enumerators("signed_enum") == {"NEG": -2, "POS": 5}
    assert src.enumerators("big_enum") == {"BIG": 0xFFFFFFFFFFFF}
    assert src.enumerators("no_such_enum") is None
    var = src.variable("the_page")
    assert var is not None and var.byte_size == 144 and var.address is not None


@needs_drgn
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gcc_dwarf_equals_drgn(compiled: dict[str, Path], variant: str) -> None:
    if variant not in compiled:
        pytest.skip(f"no compiler builds {variant} ({' '.join(VARIANTS[variant])})")
    mine = _answers(DwarfTypeSource(compiled[variant]))
    theirs = _answers(_DrgnOracle(compiled[variant]))
    assert mine == theirs
    assert _answers(DrgnTypeSource(compiled[variant])) == theirs


_PAHOLE_MEMBER = re.compile(
    r"^\s*(?P<decl>.*?)\b(?P<name>[A-Za-z_]\w*)(?::(?P<bits>\d+))?(?:\[[^\]]*\])*;"
    r"\s*/\*\s*(?P<off>\d+)(?::\s*(?P<bit>\d+))?\s+(?P<size>\d+)\s*\*/")


# Not clang's output: pahole 1.24 prints clang's nested anonymous unions twice, the second time
# with offsets relative to the union (drgn checks the clang variants instead).
@pytest.mark.parametrize("variant", ["dwarf2-strict", "dwarf3", "dwarf4", "dwarf5"])
def test_gcc_dwarf_equals_pahole(compiled: dict[str, Path], variant: str) -> None:
    """pahole (dwarves) prints absolute offsets, through anonymous members, and bitfields as
    ``byte: bit size``; every member it lists must be where this source puts it."""
    pahole = shutil.which("pahole")
    if pahole is None:
        pytest.skip("pahole (dwarves) is not installed")
    if variant not in compiled:
        pytest.skip(f"no compiler builds {variant}")
    out = subprocess.run([pahole, "-C", "page", str(compiled[variant])], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    src = DwarfTypeSource(compiled[variant])
    seen = 0
    for line in out.splitlines():
        m = _PAHOLE_MEMBER.match(line)
        if m is None:
            continue
        loc = src.member("page", m["name"])
        assert loc is not None, line
        assert loc.bit_offset == 8 * int(m["off"]) + int(m["bit"] or 0), line
        assert loc.byte_size == int(m["size"]), line
        assert loc.bit_size == int(m["bits"] or 0), line
        seen += 1
    assert seen >= 14
    size = re.search(r"/\* size: (\d+),", out)
    assert size is not None and src.type_size("page") == int(size[1])


def test_from_buffer_equals_file(compiled: dict[str, Path]) -> None:
    path = compiled["dwarf5"]
    data = path.read_bytes()
    a = _answers(DwarfTypeSource(path))
    b = _answers(DwarfTypeSource.from_buffer(data, path=str(path)))
    c = _answers(DwarfTypeSource.from_buffer(memoryview(bytearray(data)), path=str(path)))
    assert a == b == c
    assert a["member page.compound_head"] == MemberLocation(64, 8)


def test_describe_and_stats(compiled: dict[str, Path]) -> None:
    with DwarfTypeSource(compiled["dwarf5"]) as src:
        assert src.type_size("page") == 144
        assert "DWARF 5" in src.describe() and str(compiled["dwarf5"]) in src.describe()
        assert src.stats.units_total >= 1
        assert src.stats.units_indexed      # found through the string-search fallback
        facts = type_facts(src)
    keys = {f.key for f in facts}
    assert "OFFSET(page.compound_head)" in keys and "NUMBER(PG_slab)" in keys
    assert "OFFSET(page.compound_info)" not in keys
    assert all(f.source == "dwarf" for f in facts)
    # the origin names the DWARF version even when type_facts asks describe() first
    fresh = type_facts(DwarfTypeSource(compiled["dwarf5"]))
    assert fresh and all("(DWARF 5)" in f.origin for f in fresh)


# ---- how units are picked: a kernel-like source tree ----------------------------------------

PAGE_ALLOC_C = """
struct list_head { struct list_head *next, *prev; };
struct page { unsigned long flags;
	union { struct list_head lru; struct { unsigned long compound_head; }; }; };
struct other_thing;
struct other_thing *optr;
enum zone_type { ZONE_DMA, ZONE_NORMAL, __MAX_NR_ZONES };
struct page pg; enum zone_type zt;
"""
OTHER_C = """
struct other_thing { int a; long b; };
struct other_thing ot;
struct only_here { char c[3]; int x; } oh;
"""
FILLER_C = "struct filler_%d { int v[%d]; } filler_%d;\n"


@pytest.fixture(scope="module")
def tree_objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``lib/a*.c ... mm/page_alloc.c ... lib/other.c`` linked into one object, plain and LTO."""
    gcc = _gcc()
    d = tmp_path_factory.mktemp("dwarf-tree")
    (d / "mm").mkdir()
    (d / "lib").mkdir()
    (d / "mm" / "page_alloc.c").write_text(PAGE_ALLOC_C)
    (d / "lib" / "other.c").write_text(OTHER_C)
    fillers = []
    for i in range(20):
        f = d / "lib" / f"a{i:02d}.c"
        f.write_text(FILLER_C % (i, i + 1, i))
        fillers.append(f"lib/a{i:02d}.c")
    out: dict[str, Path] = {}
    builds = [("plain", gcc, ["-O0"]), ("lto", gcc, ["-O2", "-flto"])]
    clang = _clang()
    if clang is not None:
        builds.append(("clang", clang, ["-O0", "-gdwarf-5"]))
        builds.append(("clang-names", clang, ["-O0", "-gdwarf-5", "-gpubnames"]))
    for name, cc, flags in builds:
        so = d / f"{name}.so"
        r = subprocess.run([cc, "-g", *flags, "-shared", "-fPIC", "-nostdlib", "-o", str(so),
                            *fillers, "mm/page_alloc.c", "lib/other.c"], cwd=d,
                           capture_output=True, text=True, timeout=300)
        if r.returncode == 0:
            out[name] = so
    if "plain" not in out:
        pytest.skip("gcc could not link the multi-file object")
    return out


def test_priority_unit_is_found_without_naming_every_unit(tree_objects: dict[str, Path]) -> None:
    src = DwarfTypeSource(tree_objects["plain"])
    assert src.member("page", "compound_head") == MemberLocation(64, 8)
    assert src.enumerators("zone_type") == {"ZONE_DMA": 0, "ZONE_NORMAL": 1, "__MAX_NR_ZONES": 2}
    assert src.stats.units_total == 22
    assert src.stats.units_indexed == ["mm/page_alloc.c"]
    assert src.stats.units_named <= 2          # only the candidates, not all 22
    # a long name found nowhere: absent without a search
    assert src.type_size("definitely_not_a_kernel_type") is None
    assert src.stats.fallback_searches == 0
    # a declaration in page_alloc.c completed from another unit, through the fallback
    assert src.type_size("other_thing") == 16
    assert src.type_size("only_here") == 8
    assert src.member("only_here", "x") == MemberLocation(32, 4)
    assert src.stats.units_indexed == ["mm/page_alloc.c", "lib/other.c"]
    assert src.stats.fallback_searches == 1


def test_fallback_budget(tree_objects: dict[str, Path]) -> None:
    src = DwarfTypeSource(tree_objects["plain"], fallback_max_units=0)
    assert src.type_size("page") == 24
    assert src.type_size("only_here") is None   # would need a unit beyond the budget
    assert src.warnings and "only_here" in src.warnings[0]


def test_strx_names_priority_and_fallback(tree_objects: dict[str, Path]) -> None:
    """clang's DW_FORM_strx names: units are named one by one, the answers are the same."""
    if "clang" not in tree_objects:
        pytest.skip("clang is not installed")
    src = DwarfTypeSource(tree_objects["clang"])
    assert src.member("page", "compound_head") == MemberLocation(64, 8)
    assert src.stats.units_indexed == ["mm/page_alloc.c"]
    assert src.type_size("only_here") == 8
    assert src.type_size("definitely_not_a_kernel_type") is None


def test_total_fallback_budget(tree_objects: dict[str, Path],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    import kdlayout.sources.dwarf as dwarf_mod

    monkeypatch.setattr(dwarf_mod, "FALLBACK_TOTAL_SECONDS", -1.0)
    src = DwarfTypeSource(tree_objects["plain"])
    assert src.type_size("page") == 24                # the priority unit needs no search
    assert src.type_size("only_here") is None
    assert src.stats.fallback_searches == 0
    assert any("skipped" in w for w in src.warnings)


def test_debug_names_is_used(tree_objects: dict[str, Path], tmp_path: Path) -> None:
    """With clang -gpubnames the .debug_names table leads straight to the DIEs: no unit is
    named or indexed; a corrupt table is a one-line CorruptError."""
    if "clang-names" not in tree_objects:
        pytest.skip("clang is not installed")
    path = tree_objects["clang-names"]
    src = DwarfTypeSource(path)
    assert src.member("page", "compound_head") == MemberLocation(64, 8)
    assert src.type_size("only_here") == 8
    assert src.type_size("other_thing") == 16
    assert src.enumerators("zone_type") == {"ZONE_DMA": 0, "ZONE_NORMAL": 1, "__MAX_NR_ZONES": 2}
    assert src.stats.names_hits >= 4
    assert src.stats.units_named == 0 and src.stats.units_indexed == []
    names_off, _ = _section_offsets(path)[".debug_names"]
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, names_off + 4, 7)          # version 7
    bad = tmp_path / "names.so"
    bad.write_bytes(data)
    with pytest.raises(CorruptError) as ei:
        DwarfTypeSource(bad).type_size("page")
    assert ".debug_names" in _one_line(ei.value, bad)


@needs_drgn
@pytest.mark.parametrize("kind", ["plain", "lto", "clang", "clang-names"])
def test_tree_equals_drgn(tree_objects: dict[str, Path], kind: str) -> None:
    if kind not in tree_objects:
        pytest.skip(f"no compiler could build the {kind} object")
    oracle = _DrgnOracle(tree_objects[kind])
    src = DwarfTypeSource(tree_objects[kind])
    for t in ("page", "list_head", "other_thing", "only_here", "filler_3", "filler_19"):
        assert src.type_size(t) == oracle.type_size(t), t
    for t, p in (("page", "compound_head"), ("page", "lru.prev"), ("only_here", "x"),
                 ("filler_7", "v"), ("other_thing", "b")):
        assert src.member(t, p) == oracle.member(t, p), (t, p)
    assert src.enumerators("zone_type") == oracle.enumerators("zone_type")


# ---- error paths ----------------------------------------------------------------------------

def _one_line(exc: BaseException, path: Path) -> str:
    msg = str(exc)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


def test_not_elf(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_bytes(b"this is not an ELF file\n" * 10)
    with pytest.raises(CorruptError) as ei:
        DwarfTypeSource(p)
    assert "offset 0x0" in _one_line(ei.value, p)
    assert ei.value.offset == 0


def test_empty_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "empty"
    p.write_bytes(b"")
    with pytest.raises(CorruptError):
        DwarfTypeSource(p)
    with pytest.raises(MissingDataError) as ei:
        DwarfTypeSource(tmp_path / "absent")
    _one_line(ei.value, tmp_path / "absent")


def test_no_debug_info(compiled: dict[str, Path], tmp_path: Path) -> None:
    objcopy = shutil.which("objcopy")
    if objcopy is None:
        pytest.skip("objcopy (binutils) is not installed")
    out = tmp_path / "stripped.so"
    subprocess.run([objcopy, "--strip-debug", str(compiled["dwarf5"]), str(out)], check=True,
                   timeout=60)
    with pytest.raises(MissingDataError) as ei:
        DwarfTypeSource(out)
    assert ".debug_info" in _one_line(ei.value, out)


def test_elf32_and_big_endian_unsupported(compiled: dict[str, Path], tmp_path: Path) -> None:
    data = bytearray(compiled["dwarf5"].read_bytes())
    for idx, value in ((4, 1), (5, 2)):
        bad = bytearray(data)
        bad[idx] = value
        p = tmp_path / f"bad{idx}.so"
        p.write_bytes(bad)
        with pytest.raises(UnsupportedError) as ei:
            DwarfTypeSource(p)
        assert ei.value.offset == idx
        _one_line(ei.value, p)


def test_relocatable_object_is_unsupported(tmp_path: Path) -> None:
    """A .o (like a .ko) has DWARF whose string offsets are still in .rela.debug_info."""
    gcc = _gcc()
    src = tmp_path / "m.c"
    src.write_text(C_SOURCE)
    obj = tmp_path / "m.o"
    subprocess.run([gcc, "-g", "-c", "-o", str(obj), str(src)], check=True, timeout=120)
    with pytest.raises(UnsupportedError) as ei:
        DwarfTypeSource(obj)
    assert "relocat" in _one_line(ei.value, obj) and ei.value.offset == 0x10


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated_file(compiled: dict[str, Path], tmp_path: Path, fraction: float) -> None:
    data = compiled["dwarf5"].read_bytes()
    p = tmp_path / "cut.so"
    p.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(CorruptError) as ei:
        DwarfTypeSource(p)
    msg = _one_line(ei.value, p)
    assert "truncated" in msg and ei.value.offset is not None


def _section_offsets(path: Path) -> dict[str, tuple[int, int]]:
    data = path.read_bytes()
    return {n: (s.offset, s.size) for n, s in read_elf_sections(data, str(path)).items()}


def test_unit_length_past_section_end(compiled: dict[str, Path], tmp_path: Path) -> None:
    path = compiled["dwarf5"]
    info_off, info_size = _section_offsets(path)[".debug_info"]
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, info_off, info_size + 100)     # first unit claims too much
    p = tmp_path / "long-unit.so"
    p.write_bytes(data)
    src = DwarfTypeSource(p)
    with pytest.raises(CorruptError) as ei:
        src.type_size("page")
    msg = _one_line(ei.value, p)
    assert ".debug_info+0x0" in msg and ei.value.offset == info_off


def test_truncated_debug_info_section(compiled: dict[str, Path], tmp_path: Path) -> None:
    """Shrink sh_size of .debug_info so that its unit runs past the section's end."""
    path = compiled["dwarf5"]
    data = bytearray(path.read_bytes())
    secs = read_elf_sections(bytes(data), str(path))
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    names = list(secs)
    # find the header whose offset matches .debug_info and halve its size
    info = secs[".debug_info"]
    for i in range(shnum):
        off, size = struct.unpack_from("<QQ", data, shoff + i * shentsize + 0x18)
        if off == info.offset and size == info.size:
            struct.pack_into("<Q", data, shoff + i * shentsize + 0x20, size // 2)
    assert names
    p = tmp_path / "half.so"
    p.write_bytes(data)
    with pytest.raises(CorruptError) as ei:
        DwarfTypeSource(p).member("page", "compound_head")
    assert "truncated" in _one_line(ei.value, p)


def test_typedef_cycle_is_corrupt_not_a_hang(compiled: dict[str, Path], tmp_path: Path) -> None:
    """Point ``typedef atomic_long_t``'s DW_AT_type at itself (offsets located with readelf)."""
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) is not installed")
    path = compiled["dwarf5"]
    dump = subprocess.run([readelf, "--debug-dump=info", str(path)], capture_output=True,
                          text=True, timeout=60, check=True).stdout
    assert dump.count("Compilation Unit @ offset") == 1 and "Compilation Unit @ offset 0" in dump
    m = re.search(r"<1><([0-9a-f]+)>: Abbrev Number: \d+ \(DW_TAG_typedef\)\n"
                  r"\s+<[0-9a-f]+>\s+DW_AT_name\s+:.*: atomic_long_t\n"
                  r"(?:.*\n)*?\s+<([0-9a-f]+)>\s+DW_AT_type\s+: <0x[0-9a-f]+>", dump)
    assert m is not None
    die, attr = int(m[1], 16), int(m[2], 16)
    info_off, _ = _section_offsets(path)[".debug_info"]
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, info_off + attr, die)      # DW_FORM_ref4, unit-relative
    p = tmp_path / "cycle.so"
    p.write_bytes(data)
    src = DwarfTypeSource(p)
    t0 = time.monotonic()
    with pytest.raises(CorruptError) as ei:
        src.type_size("atomic_long_t")
    assert time.monotonic() - t0 < 5.0
    assert "cycle" in _one_line(ei.value, p)
    assert src.type_size("list_head") == 16                  # the rest still answers


def _all_queries(src: DwarfTypeSource) -> None:
    _answers(src)
    type_facts(src)


def _flip_cases(path: Path, sections: tuple[str, ...]) -> list[tuple[int, int]]:
    secs = _section_offsets(path)
    cases: list[tuple[int, int]] = []
    for name in sections:
        off, size = secs[name]
        step = max(1, size // 150)
        for n, i in enumerate(range(0, size, step)):
            cases.append((off + i, (0x00, 0xFF, 0x80)[n % 3]))
    return cases


FLIPS = {
    "dwarf5": (".debug_info", ".debug_abbrev"),
    "clang-dwarf5-pubnames": (".debug_names", ".debug_str_offsets", ".debug_info"),
}


@pytest.mark.parametrize("variant", list(FLIPS))
def test_byte_flips_never_traceback_or_hang(compiled: dict[str, Path], variant: str) -> None:
    """Corrupt one byte at a time in the DWARF sections: every outcome is an answer or a
    KdlayoutError with a one-line message, in bounded time."""
    if variant not in compiled:
        pytest.skip(f"no compiler builds {variant}")
    path = compiled[variant]
    data = path.read_bytes()
    errors = 0
    worst = 0.0
    for off, value in _flip_cases(path, FLIPS[variant]):
        bad = bytearray(data)
        if bad[off] == value:
            continue
        bad[off] = value
        t0 = time.monotonic()
        try:
            src = DwarfTypeSource.from_buffer(bytes(bad), path="flipped.so",
                                              fallback_max_seconds=2.0)
            _all_queries(src)
        except KdlayoutError as e:
            errors += 1
            assert "\n" not in str(e) and "flipped.so" in str(e)
        worst = max(worst, time.monotonic() - t0)
    assert errors > 0          # some flips must be detected
    assert worst < 10.0


def test_drgn_source_errors(tmp_path: Path) -> None:
    if not drgn_available():
        pytest.skip("drgn is not installed")
    with pytest.raises(MissingDataError):
        DrgnTypeSource(tmp_path / "absent")


# ---- real Debian kernels --------------------------------------------------------------------

def _real_vmlinuxes() -> list[Any]:
    params: list[Any] = []
    try:
        from fixtures import load_fixtures

        for fx in load_fixtures():
            p = fx.path("vmlinux_dbg")
            if p is not None:
                params.append(pytest.param(Path(p), id=f"{fx.name}", marks=pytest.mark.fixtures))
    except Exception:  # the fixture helper is optional here
        pass
    for item in os.environ.get("KDLAYOUT_TEST_VMLINUX", "").split(os.pathsep):
        if item and Path(item).is_file():
            label = Path(item).parent.name if Path(item).name == "vmlinux" else Path(item).name
            params.append(pytest.param(Path(item), id=f"local-{label}"))
    # variants share their kernel's vmlinux as hard links (trixie, trixie-cap-bookworm,
    # trixie-la57): one file, tested once
    seen: set[tuple[int, int]] = set()
    unique = []
    for prm in params:
        st = prm.values[0].resolve().stat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            unique.append(prm)
    if not unique:
        return [pytest.param(None, id="no-vmlinux", marks=pytest.mark.skip(
            reason="no -dbg vmlinux: build fixtures with tools/build_fixtures.py --dbg or set "
                   "$KDLAYOUT_TEST_VMLINUX"))]
    return unique


REAL = _real_vmlinuxes()


@pytest.fixture(scope="module")
def real_facts() -> dict[Path, tuple[dict[str, object], float]]:
    return {}


def _mine(path: Path, cache: dict[Path, tuple[dict[str, object], float]]
          ) -> tuple[dict[str, object], float]:
    if path not in cache:
        t0 = time.monotonic()
        facts = {f.key: f.value for f in type_facts(DwarfTypeSource(path))}
        cache[path] = (facts, time.monotonic() - t0)
    return cache[path]


@needs_drgn
@pytest.mark.parametrize("vmlinux", REAL)
def test_real_vmlinux_equals_drgn(vmlinux: Path,
                                  real_facts: dict[Path, tuple[dict[str, object], float]]
                                  ) -> None:
    mine, _ = _mine(vmlinux, real_facts)
    theirs = _drgn_catalogue(vmlinux)
    assert set(mine) == set(theirs), (sorted(set(mine) ^ set(theirs)))
    assert mine == theirs
    # the catalogue's core must be there on every kernel we support
    for key in ("SIZE(page)", "OFFSET(page.flags)", "OFFSET(zone.free_area)",
                "LENGTH(zone.free_area)", "NUMBER(PG_head)", "OFFSET(list_head.prev)"):
        assert key in mine
    # compound_head became compound_info in 7.1; one of them is always there
    assert ("OFFSET(page.compound_head)" in mine) != ("OFFSET(page.compound_info)" in mine)


@pytest.mark.parametrize("vmlinux", REAL)
def test_real_vmlinux_is_fast(vmlinux: Path,
                              real_facts: dict[Path, tuple[dict[str, object], float]]) -> None:
    _, seconds = _mine(vmlinux, real_facts)
    assert seconds < 60.0, f"answering the catalogue took {seconds:.1f}s"


@needs_drgn
@pytest.mark.parametrize("vmlinux", REAL)
def test_real_drgn_source_equals_dwarf_source(vmlinux: Path,
                                              real_facts: dict[Path, tuple[dict[str, object],
                                                                           float]]) -> None:
    mine, _ = _mine(vmlinux, real_facts)
    via_drgn = {f.key: f.value for f in type_facts(DrgnTypeSource(vmlinux))}
    assert via_drgn == mine


@pytest.mark.parametrize("vmlinux", REAL)
def test_real_vmlinux_truncated(vmlinux: Path, tmp_path: Path) -> None:
    """The first 16 MiB of a real vmlinux: a one-line error about the truncation, at once."""
    cut = tmp_path / "vmlinux-cut"
    with open(vmlinux, "rb") as f:
        cut.write_bytes(f.read(16 << 20))
    t0 = time.monotonic()
    with pytest.raises(CorruptError) as ei:
        DwarfTypeSource(cut)
    assert time.monotonic() - t0 < 5.0
    assert "truncated" in _one_line(ei.value, cut)


@pytest.mark.parametrize("vmlinux", REAL)
def test_real_vmlinux_debug_info_cut_short(vmlinux: Path) -> None:
    """A vmlinux whose .debug_info ends early (sh_size shrunk to 1 MiB, patched in a private
    copy-on-write mapping): the first question raises a one-line CorruptError naming
    .debug_info and the file offset, after reading a few unit headers only."""
    with open(vmlinux, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    try:
        info = read_elf_sections(m, str(vmlinux))[".debug_info"]
        shoff, = struct.unpack_from("<Q", m, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", m, 0x3A)
        for i in range(shnum):
            at = shoff + i * shentsize + 0x18
            off, size = struct.unpack_from("<QQ", m, at)
            if off == info.offset and size == info.size:
                struct.pack_into("<Q", m, at + 8, 1 << 20)
        t0 = time.monotonic()
        src: DwarfTypeSource | None = None
        with pytest.raises(CorruptError) as ei:
            # a compressed .debug_info fails already when it is decompressed, at construction
            src = DwarfTypeSource.from_buffer(m, path="vmlinux-short")
            src.type_size("page")
        assert time.monotonic() - t0 < 10.0
        if src is not None:
            src.close()
        msg = str(ei.value)
        assert "\n" not in msg and "vmlinux-short" in msg and ".debug_info" in msg
        assert ei.value.offset is not None and info.offset <= ei.value.offset < info.offset + (
            1 << 20)
    finally:
        m.close()


@needs_drgn
@pytest.mark.parametrize("vmlinux", REAL)
def test_real_variables_equal_drgn(vmlinux: Path) -> None:
    """Global variables the later stages look up: link-time address and size, as drgn has them
    (``contig_page_data`` exists only without NUMA: both must agree that it is absent)."""
    import drgn

    prog = load_drgn_program(str(vmlinux))
    src = DwarfTypeSource(vmlinux)
    for name in ("init_uts_ns", "prb", "printk_rb_static", "mem_section", "contig_page_data"):
        mine = src.variable(name)
        try:
            obj = prog.object(name)
        except LookupError:
            assert mine is None, name
            continue
        assert mine is not None, name
        assert (mine.address, mine.byte_size) == (obj.address_, drgn.sizeof(obj.type_)), name
