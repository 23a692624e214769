"""kdlayout.btf against independent tools.

Ground truth: Debian's bpftool (``bpftool -j btf dump file F`` for every type, kind, name, size,
member offset, bitfield size, enumerator value), pahole (struct layouts with absolute member
offsets through anonymous structs/unions; it also encodes small real BTF from gcc's DWARF, base and
split), and objcopy (to wrap raw BTF in a real ELF). Synthetic blobs (tests/btfbuild.py) are used
only for parser and error-path tests, and are themselves checked against bpftool where possible.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from btfbuild import BtfBuilder, sample
from kdlayout.btf import (
    Btf,
    BtfKind,
    BtfType,
    btf_from_elf,
    btf_from_image,
    find_btf_blob,
    load_btf,
    parse_header,
)
from kdlayout.errors import CorruptError, KdlayoutError, MissingDataError, UnsupportedError

SYS_VMLINUX = Path("/sys/kernel/btf/vmlinux")
BPFTOOL = shutil.which("bpftool") or ("/usr/sbin/bpftool" if Path("/usr/sbin/bpftool").exists()
                                      else None)
PAHOLE = shutil.which("pahole")
GCC = shutil.which("gcc")
OBJCOPY = shutil.which("objcopy")
CACHE = Path(os.environ.get("KDLAYOUT_CACHE", Path.home() / ".cache" / "kdlayout"))

need_bpftool = pytest.mark.skipif(BPFTOOL is None, reason="bpftool not installed (apt bpftool)")
need_sys_btf = pytest.mark.skipif(not SYS_VMLINUX.exists(),
                                  reason="this kernel exposes no /sys/kernel/btf/vmlinux")
need_pahole = pytest.mark.skipif(PAHOLE is None or GCC is None,
                                 reason="needs gcc and pahole (apt dwarves) to make real BTF")

# --------------------------------------------------------------------------------------------
# Oracles
# --------------------------------------------------------------------------------------------


def bpftool_json(path: Path, base: Path | None = None) -> list[dict[str, Any]]:
    """``bpftool -j [-B BASE] btf dump file PATH`` -> the "types" list."""
    assert BPFTOOL is not None
    cmd = [BPFTOOL, "-j"]
    if base is not None:
        cmd += ["-B", str(base)]
    cmd += ["btf", "dump", "file", str(path)]
    out = subprocess.run(cmd, check=True, capture_output=True, timeout=120).stdout
    types: list[dict[str, Any]] = json.loads(out)["types"]
    return types


_INT_ENC = {"(none)": 0, "SIGNED": 1, "CHAR": 2, "BOOL": 4}
_SIZED = {BtfKind.INT, BtfKind.STRUCT, BtfKind.UNION, BtfKind.ENUM, BtfKind.ENUM64,
          BtfKind.FLOAT, BtfKind.DATASEC}
_LINKAGE = {"static": 0, "global": 1, "extern": 2}


def _theirs(jt: dict[str, Any]) -> tuple[Any, ...]:
    """The fields of one bpftool JSON type, in a fixed shape per kind."""
    kind = jt["kind"]
    head = (kind, jt["name"] or "(anon)", jt.get("size"))
    if kind == "INT":
        return (*head, jt["bits_offset"], jt["nr_bits"], _INT_ENC.get(jt["encoding"], -1))
    if kind == "ARRAY":
        return (*head, jt["type_id"], jt["index_type_id"], jt["nr_elems"])
    if kind in ("STRUCT", "UNION"):
        return (*head, jt["vlen"], tuple((m["name"] or "(anon)", m["type_id"], m["bits_offset"],
                                          m.get("bitfield_size", 0)) for m in jt["members"]))
    if kind in ("ENUM", "ENUM64"):
        # bpftool 7.1's JSON sign-extends an unsigned 32-bit value (its plain and C dumps print
        # 4026531839 where JSON says 18446744073441116159): mask it.
        # test_sys_vmlinux_enumerators_match_bpftool_text checks against the plain dump.
        mask = 0xFFFFFFFF if kind == "ENUM" and jt["encoding"] == "UNSIGNED" else -1
        return (*head, jt["encoding"] == "SIGNED", jt["vlen"],
                tuple((v["name"], v["val"] & mask) for v in jt["values"]))
    if kind == "FWD":
        return (*head, jt["fwd_kind"])
    if kind == "FUNC":
        return (*head, jt["type_id"], _LINKAGE.get(jt["linkage"], -1))
    if kind == "FUNC_PROTO":
        return (*head, jt["ret_type_id"], jt["vlen"],
                tuple((p["name"] or "(anon)", p["type_id"]) for p in jt["params"]))
    if kind == "VAR":
        return (*head, jt["type_id"], _LINKAGE.get(jt["linkage"], -1))
    if kind == "DATASEC":
        return (*head, jt["vlen"], tuple((v["type_id"], v["offset"], v["size"])
                                         for v in jt["vars"]))
    if kind == "DECL_TAG":
        return (*head, jt["type_id"], jt["component_idx"])
    return (*head, jt.get("type_id"))


def _ours(t: BtfType) -> tuple[Any, ...]:
    """The same fields from our record (sizes only where bpftool prints one)."""
    kind = t.kind_name
    head = (kind, t.name or "(anon)", t.size if t.kind in _SIZED else None)
    if kind == "INT":
        assert t.int_info is not None
        return (*head, t.int_info.offset, t.int_info.bits, t.int_info.encoding)
    if kind == "ARRAY":
        assert t.array is not None
        return (*head, t.array.type, t.array.index_type, t.array.nelems)
    if kind in ("STRUCT", "UNION"):
        return (*head, t.vlen, tuple((m.name or "(anon)", m.type, m.bit_offset, m.bitfield_size)
                                     for m in t.members))
    if kind in ("ENUM", "ENUM64"):
        return (*head, t.kind_flag, t.vlen, tuple((e.name, e.val) for e in t.enumerators))
    if kind == "FWD":
        return (*head, "union" if t.fwd_is_union else "struct")
    if kind in ("FUNC", "VAR"):
        return (*head, t.type, t.linkage)
    if kind == "FUNC_PROTO":
        return (*head, t.type, t.vlen, tuple((p.name or "(anon)", p.type) for p in t.params))
    if kind == "DATASEC":
        return (*head, t.vlen, tuple((v.type, v.offset, v.size) for v in t.secinfos))
    if kind == "DECL_TAG":
        return (*head, t.type, t.component_idx)
    return (*head, t.type)


def compare_with_bpftool(btf: Btf, types: list[dict[str, Any]]) -> int:
    """Compare every type bpftool printed with ours, field by field; returns how many fields
    were compared (members, enumerators, parameters and section entries count one each)."""
    bad: list[str] = []
    n = 0
    for jt in types:
        theirs = _theirs(jt)
        ours = _ours(btf.type(jt["id"]))
        n += len(theirs) + (len(theirs[-1]) - 1 if isinstance(theirs[-1], tuple) else 0)
        if ours != theirs and len(bad) < 20:
            bad.append(f"[{jt['id']}] ours {ours!r:.300} bpftool {theirs!r:.300}")
    assert not bad, "\n".join(bad)
    return n


def sizes_from_json(types: list[dict[str, Any]], base: dict[int, int] | None = None,
                    ptr_size: int = 8) -> dict[int, int]:
    """sizeof() of every sized type, folded from bpftool's dump (typedef chains, arrays)."""
    by_id = {t["id"]: t for t in types}
    sizes: dict[int, int] = dict(base or {})

    def size(tid: int) -> int | None:
        chain: list[tuple[int, int]] = []  # (type id, multiplier)
        cur = tid
        while True:
            if cur in sizes:
                result: int | None = sizes[cur]
                break
            t = by_id.get(cur)
            if t is None:
                result = None
                break
            k = t["kind"]
            if "size" in t:
                result = sizes[cur] = t["size"]
                break
            if k == "PTR":
                result = sizes[cur] = ptr_size
                break
            if k == "ARRAY":
                chain.append((cur, t["nr_elems"]))
                cur = t["type_id"]
                continue
            if k in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
                chain.append((cur, 1))
                cur = t["type_id"]
                continue
            result = None
            break
        if result is None:
            return None
        for tid2, mult in reversed(chain):
            result *= mult
            sizes[tid2] = result
        return result

    for t in types:
        size(t["id"])
    return sizes



def json_strip(by_id: dict[int, dict[str, Any]], tid: int) -> dict[str, Any]:
    """bpftool JSON type ``tid`` with typedefs/qualifiers/tags removed."""
    t = by_id[tid]
    while t["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
        t = by_id[t["type_id"]]
    return t


def json_member(by_id: dict[int, dict[str, Any]], t: dict[str, Any], name: str
                ) -> tuple[int, dict[str, Any]] | None:
    """C name lookup in a bpftool JSON struct: (bit offset, member), anonymous members included."""
    for m in t["members"]:
        if m["name"] == name:
            return m["bits_offset"], m
        if m["name"] in ("(anon)", ""):
            inner = json_strip(by_id, m["type_id"])
            if inner["kind"] in ("STRUCT", "UNION"):
                hit = json_member(by_id, inner, name)
                if hit is not None:
                    return m["bits_offset"] + hit[0], hit[1]
    return None


def pahole_layout(btf_file: Path, struct_name: str, base: Path | None = None
                  ) -> dict[str, tuple[int, int, int | None]]:
    """Members of ``struct_name`` as pahole prints them: path -> (bit offset, byte size,
    bitfield bits or None). Members of anonymous structs/unions keep their own names (C scope);
    members of named inline structs get ``outer.inner`` paths."""
    assert PAHOLE is not None
    cmd = [PAHOLE, "-F", "btf", "-C", struct_name]
    if base is not None:
        cmd += ["--btf_base", str(base)]
    out = subprocess.run([*cmd, str(btf_file)], check=True, capture_output=True, text=True,
                         timeout=60).stdout
    return parse_pahole(out)


_MEMBER = re.compile(r"^\s*(?P<decl>[^/]*?);\s*/\*\s*(?P<off>\d+)(?::\s*(?P<bit>\d+))?\s+"
                     r"(?P<size>\d+)\s*\*/")
_CLOSE = re.compile(r"^\s*}\s*(?P<name>[A-Za-z_]\w*)?(?P<dims>(\[\d+\])*)\s*;")


def parse_pahole(text: str) -> dict[str, tuple[int, int, int | None]]:
    stack: list[dict[str, tuple[int, int, int | None]]] = [{}]
    lines = text.splitlines()
    for line in lines[1:]:
        line = re.sub(r"__attribute__\(\(.*\)\)", "", line)
        if re.search(r"\b(struct|union)\s*\{\s*$", line) or re.search(r"\{\s*$", line):
            stack.append({})
            continue
        mc = _CLOSE.match(line)
        if mc:
            if len(stack) == 1:
                break  # end of the outer struct
            inner = stack.pop()
            name = mc.group("name")
            if name and not mc.group("dims"):
                m2 = _MEMBER.match(line.replace("}", "x", 1))
                if m2:
                    stack[-1][name] = (int(m2.group("off")) * 8, int(m2.group("size")), None)
                for k, v in inner.items():
                    stack[-1][f"{name}.{k}"] = v
            elif not name:
                stack[-1].update(inner)
            continue
        m = _MEMBER.match(line)
        if not m:
            continue
        decl = m.group("decl")
        fp = re.search(r"\(\s*\*\s*(\w+)\s*\)", decl)
        if fp:
            name = fp.group(1)
        else:
            bits = re.search(r"(\w+)\s*(\[[^\]]*\])*\s*:\s*(\d+)\s*$", decl)
            plain = re.search(r"(\w+)\s*(\[[^\]]*\])*\s*$", decl)
            name = bits.group(1) if bits else plain.group(1) if plain else ""
        if not name:
            continue
        bitfield = re.search(r":\s*(\d+)\s*$", decl)
        off = int(m.group("off")) * 8 + int(m.group("bit") or 0)
        stack[-1][name] = (off, int(m.group("size")), int(bitfield.group(1)) if bitfield else None)
    return stack[0]


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@cache
def sys_btf() -> Btf:
    return load_btf(SYS_VMLINUX)


@cache
def sys_json() -> list[dict[str, Any]]:
    return bpftool_json(SYS_VMLINUX)


C_BASE = r"""
enum color { RED = -3, GREEN = 7 };
enum big64 { B1 = 1ULL << 40, B2 = 0xffffffff00000000ULL };
enum pageflags { PG_locked, PG_writeback, PG_referenced, __NR_PAGEFLAGS };
typedef enum { PGTY_buddy = 0xf0, PGTY_offline = 0xf1 } pagetype_t;
typedef struct { unsigned long f; } memdesc_flags_t;
struct list_head { struct list_head *next, *prev; };
struct page {
    memdesc_flags_t flags;
    union {
        struct { struct list_head lru; void *mapping; unsigned long index; };
        struct { unsigned long pp_magic; unsigned long dma_addr[2]; };
        struct { unsigned long compound_head; };
    };
    union { int _mapcount; unsigned int page_type; };
    unsigned int a:3, b:5, :0, c:17;
    struct { int x; short y[3]; } named;
    enum color col;
    enum big64 bg;
    const volatile int cv;
    char name[7];
    double d;
    struct page *self;
    void (*callback)(struct page *, int);
    pagetype_t pt;
    enum pageflags pf;
};
struct page g_page;
int counter_var = 3;
int fn(struct page *p, int x) { return p->a + x; }
"""

C_MODULE = r"""
struct list_head { struct list_head *next, *prev; };
struct mod_thing {
    struct list_head node;
    int x;
    unsigned int y:4, z:12;
    enum { MOD_A = 1, MOD_B = -2 } e;
    union { long l; struct { int lo, hi; }; };
};
struct mod_thing g_thing;
"""


@pytest.fixture(scope="module")
def pahole_btf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real BTF encoded by pahole from gcc's DWARF: a base object and a split module object."""
    if PAHOLE is None or GCC is None:
        pytest.skip("needs gcc and pahole (apt dwarves) to make real BTF")
    d = tmp_path_factory.mktemp("pahole")
    for name, src in (("base", C_BASE), ("mod", C_MODULE)):
        (d / f"{name}.c").write_text(src)
        subprocess.run([GCC, "-g", "-O0", "-c", str(d / f"{name}.c"), "-o", str(d / f"{name}.o")],
                       check=True, capture_output=True)
    subprocess.run([PAHOLE, "-J", str(d / "base.o")], check=True, capture_output=True)
    subprocess.run([PAHOLE, "-J", "--btf_base", str(d / "base.o"), str(d / "mod.o")], check=True,
                   capture_output=True)
    out = {"base.o": d / "base.o", "mod.o": d / "mod.o"}
    if OBJCOPY is not None:
        for name in ("base", "mod"):
            subprocess.run([OBJCOPY, "--dump-section", f".BTF={d / name}.btf",
                            str(d / f"{name}.o")], check=True, capture_output=True)
            out[f"{name}.btf"] = d / f"{name}.btf"
    return out


# --------------------------------------------------------------------------------------------
# The host kernel's BTF (Linux 6.18 here) against bpftool and pahole
# --------------------------------------------------------------------------------------------


@need_sys_btf
@need_bpftool
def test_sys_vmlinux_every_type_matches_bpftool() -> None:
    btf = sys_btf()
    types = sys_json()
    assert btf.nr_types - 1 == len(types)
    assert btf.start_id == 1
    compared = compare_with_bpftool(btf, types)
    assert compared > 500_000


@need_sys_btf
@need_bpftool
def test_sys_vmlinux_enumerators_match_bpftool_text() -> None:
    """Every enumerator value against bpftool's plain-text dump (not its JSON, see above)."""
    assert BPFTOOL is not None
    out = subprocess.run([BPFTOOL, "btf", "dump", "file", str(SYS_VMLINUX)], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    theirs = [(m.group(1), int(m.group(2))) for m in
              re.finditer(r"^\t'([^']*)' val=(-?\d+)(?:ULL|LL)?$", out, re.MULTILINE)]
    btf = sys_btf()
    ours = [(e.name, e.val) for t in btf if t.kind in (BtfKind.ENUM, BtfKind.ENUM64)
            for e in t.enumerators]
    assert len(ours) > 10_000
    assert ours == theirs


@need_sys_btf
@need_bpftool
def test_sys_vmlinux_sizes_match_bpftool() -> None:
    btf = sys_btf()
    types = sys_json()
    expected = sizes_from_json(types)
    assert len(expected) > 30_000
    wrong = [(tid, btf.size_of(tid), size) for tid, size in expected.items()
             if btf.size_of(tid) != size]
    assert not wrong[:10]
    # Kinds that have no size say so instead of inventing one.
    for jt in types:
        if jt["kind"] in ("FUNC", "FUNC_PROTO", "FWD"):
            with pytest.raises(MissingDataError):
                btf.size_of(jt["id"])
            break


@need_sys_btf
@need_bpftool
def test_sys_vmlinux_enums_and_find_match_bpftool() -> None:
    btf = sys_btf()
    types = sys_json()
    named_enums = 0
    for jt in types:
        if jt["kind"] in ("ENUM", "ENUM64") and jt["name"] != "(anon)":
            ids = btf.find(jt["name"], (BtfKind.ENUM, BtfKind.ENUM64))
            assert jt["id"] in ids
            if ids[0] == jt["id"]:
                mask = 0xFFFFFFFF if jt["kind"] == "ENUM" and jt["encoding"] == "UNSIGNED" else -1
                assert btf.enumerators(jt["name"]) == {v["name"]: v["val"] & mask
                                                       for v in jt["values"]}
                named_enums += 1
    assert named_enums > 1000
    # Cross-enum search: PG_* (enum pageflags), PGTY_* (enum pagetype, newer kernels).
    pg = next(jt for jt in types if jt["kind"] == "ENUM" and jt["name"] == "pageflags")
    for v in pg["values"]:
        if len({x[1] for x in btf.find_enumerator(v["name"])}) == 1:
            assert btf.enum_value(None, v["name"]) == v["val"]
    assert btf.enum_value(None, "PG_locked") == next(v["val"] for v in pg["values"]
                                                     if v["name"] == "PG_locked")
    pgty = [jt for jt in types if jt["kind"] == "ENUM" and any(
        v["name"] == "PGTY_buddy" for v in jt["values"])]
    if pgty:
        want = next(v["val"] for v in pgty[0]["values"] if v["name"] == "PGTY_buddy")
        assert btf.enum_value(None, "PGTY_buddy") == want
        if pgty[0]["name"] != "(anon)":
            assert btf.enum_value(pgty[0]["name"], "PGTY_buddy") == want
    # Every named type is found under its name and kind.
    by_name: dict[tuple[str, str], list[int]] = {}
    for jt in types:
        if jt["name"] != "(anon)":
            by_name.setdefault((jt["name"], jt["kind"]), []).append(jt["id"])
    for (name, kind), ids in list(by_name.items())[:: max(1, len(by_name) // 5000)]:
        assert btf.find(name, BtfKind[kind]) == ids
    with pytest.raises(MissingDataError):
        btf.enum_value(None, "NO_SUCH_ENUMERATOR_XYZ")


SYS_STRUCTS = ["page", "folio", "zone", "free_area", "pglist_data", "list_head", "task_struct",
               "mm_struct", "mem_section", "address_space", "vm_area_struct", "kmem_cache"]


@need_sys_btf
@pytest.mark.skipif(PAHOLE is None, reason="pahole (apt dwarves) not installed")
@pytest.mark.parametrize("struct_name", SYS_STRUCTS)
def test_sys_vmlinux_member_offsets_match_pahole(struct_name: str) -> None:
    btf = sys_btf()
    if not btf.find(struct_name, (BtfKind.STRUCT, BtfKind.UNION)):
        pytest.skip(f"this kernel has no struct {struct_name}")
    layout = pahole_layout(SYS_VMLINUX, struct_name)
    assert layout, f"pahole printed no members for {struct_name}"
    for path, (bit_off, size, bits) in layout.items():
        info = btf.member_offset(struct_name, path)
        assert info.bit_offset == bit_off, path
        if bits is None:
            assert info.byte_size == size, path
            assert info.bit_size == 8 * size, path
        else:
            assert info.bit_size == bits, path


@need_sys_btf
@need_bpftool
def test_sys_vmlinux_struct_page_paths() -> None:
    """struct page members through its anonymous unions; expected offsets folded from bpftool's
    JSON (anonymous members add their offsets; C name lookup)."""
    btf = sys_btf()
    by_id = {t["id"]: t for t in sys_json()}

    strip = functools.partial(json_strip, by_id)

    def lookup(t: dict[str, Any], name: str) -> tuple[int, dict[str, Any]] | None:
        return json_member(by_id, t, name)

    page = next(t for t in by_id.values() if t["kind"] == "STRUCT" and t["name"] == "page")
    names = ["compound_head", "_mapcount", "page_type", "lru", "mapping", "private", "flags",
             "_refcount", "memcg_data", "index", "__folio_index", "buddy_list", "pcp_list",
             "pp_magic", "dma_addr", "callback_head", "zone_device_data"]
    checked = 0
    for name in names:
        hit = lookup(page, name)
        if hit is None:
            with pytest.raises(MissingDataError):
                btf.member_offset("page", name)
            continue
        info = btf.member_offset("struct page", name)
        assert info.bit_offset == hit[0], name
        assert info.type_id == hit[1]["type_id"], name
        checked += 1
    assert checked >= 8
    flags = strip(lookup(page, "flags")[1]["type_id"])  # type: ignore[index]
    if flags["kind"] == "STRUCT":  # memdesc_flags_t (6.18+): flags.f
        inner = flags["members"][0]
        assert btf.member_offset("page", f"flags.{inner['name']}").bit_offset == inner[
            "bits_offset"]
    # free_area[i] inside struct zone: offset of element i plus its member.
    zone = next(t for t in by_id.values() if t["kind"] == "STRUCT" and t["name"] == "zone")
    fa_off, fa = lookup(zone, "free_area")  # type: ignore[misc]
    arr = strip(fa["type_id"])
    fa_struct = strip(arr["type_id"])
    nr_free = next(m for m in fa_struct["members"] if m["name"] == "nr_free")
    info = btf.member_offset("zone", "free_area[3].nr_free")
    assert info.bit_offset == fa_off + 3 * fa_struct["size"] * 8 + nr_free["bits_offset"]
    with pytest.raises(MissingDataError):
        btf.member_offset("page", "no_such_member")
    with pytest.raises(MissingDataError):
        btf.member_offset("no_such_struct_xyz", "x")


@need_sys_btf
@need_bpftool
def test_sys_vmlinux_vars_match_bpftool() -> None:
    btf = sys_btf()
    types = sys_json()
    secs = [t for t in types if t["kind"] == "DATASEC"]
    assert secs
    by_id = {t["id"]: t for t in types}
    for sec in secs:
        assert btf.datasecs()[sec["name"]] == sec["id"]
        for v in sec["vars"][:50]:
            var = by_id[v["type_id"]]
            if len(btf.find(var["name"], BtfKind.VAR)) != 1:
                continue
            info = btf.find_var(var["name"])
            assert (info.datasec, info.offset, info.size, info.var_type) == (
                sec["name"], v["offset"], v["size"], var["type_id"])


@need_sys_btf
def test_sys_vmlinux_check_and_parse_time() -> None:
    data = SYS_VMLINUX.read_bytes()
    t0 = time.perf_counter()
    btf = Btf.parse(data, source=str(SYS_VMLINUX))
    parse_s = time.perf_counter() - t0
    btf.check()
    assert parse_s < 1.0
    assert btf.header.blob_size == len(data)


@need_sys_btf
@need_bpftool
@pytest.mark.skipif(OBJCOPY is None, reason="objcopy (binutils) not installed")
def test_btf_from_real_elf(tmp_path: Path) -> None:
    """objcopy puts the host's BTF into an ELF .BTF section; we find it, bpftool agrees."""
    elf = tmp_path / "vmlinux-like.elf"
    true = shutil.which("true") or "/bin/true"
    assert OBJCOPY is not None
    subprocess.run([OBJCOPY, "--add-section", f".BTF={SYS_VMLINUX}", "--set-section-flags",
                    ".BTF=alloc,readonly", true, str(elf)], check=True, capture_output=True)
    btf = load_btf(elf)
    assert btf.nr_types == sys_btf().nr_types
    types = bpftool_json(elf)
    assert len(types) == btf.nr_types - 1
    for i in range(0, len(types), 997):
        jt = types[i]
        t = btf.type(jt["id"])
        assert (t.kind_name, t.name or "(anon)") == (jt["kind"], jt["name"])


@need_sys_btf
def test_find_btf_blob_in_a_larger_region() -> None:
    """A BTF blob found by scanning memory-like bytes with decoy magics before it."""
    data = SYS_VMLINUX.read_bytes()
    decoy = b"\x9f\xeb\x01\x00" + struct.pack("<I", 24) + b"\xff" * 16  # lying lengths
    region = bytearray(os.urandom(4096)) + decoy + b"\x9f\xeb\x01" + bytes(1000) + data + bytes(
        4096)
    off, btf = find_btf_blob(bytes(region), source="region")
    assert off == len(region) - 4096 - len(data)
    assert btf.nr_types == sys_btf().nr_types
    off2, _ = find_btf_blob(memoryview(bytes(region)), source="region-mv")
    assert off2 == off
    with pytest.raises(MissingDataError) as ei:
        find_btf_blob(bytes(region[:4096]) + decoy, source="nothing-here")
    assert "nothing-here" in str(ei.value)


SYS_MODULES = sorted(p for p in Path("/sys/kernel/btf").glob("*") if p.name != "vmlinux")[:5] \
    if Path("/sys/kernel/btf").is_dir() else []


@need_sys_btf
@need_bpftool
@pytest.mark.skipif(not SYS_MODULES, reason="this host's kernel exposes no module BTF under "
                    "/sys/kernel/btf (modules built in, or CONFIG_DEBUG_INFO_BTF_MODULES off); "
                    "split BTF is covered by the Debian module and pahole tests")
@pytest.mark.parametrize("module", SYS_MODULES, ids=[p.name for p in SYS_MODULES])
def test_sys_module_split_btf_matches_bpftool(module: Path) -> None:
    split = load_btf(module, base=sys_btf())
    split.check()
    types = bpftool_json(module, base=SYS_VMLINUX)
    assert [t["id"] for t in types] == list(range(split.start_id, split.nr_types))
    compare_with_bpftool(split, types)


# --------------------------------------------------------------------------------------------
# Small real BTF from pahole: base and split
# --------------------------------------------------------------------------------------------


@need_bpftool
def test_pahole_base_matches_bpftool_and_pahole(pahole_btf: dict[str, Path]) -> None:
    data = pahole_btf["base.o"].read_bytes()
    btf = btf_from_image(data, source="base.o")
    btf.check()
    types = bpftool_json(pahole_btf["base.o"])
    assert btf.nr_types - 1 == len(types)
    compare_with_bpftool(btf, types)
    layout = pahole_layout(pahole_btf["base.o"], "page")
    assert {"compound_head", "lru", "_mapcount", "a", "b", "c", "named.x", "callback"} <= set(
        layout)
    for path, (bit_off, size, bits) in layout.items():
        info = btf.member_offset("page", path)
        assert info.bit_offset == bit_off, path
        assert (info.bit_size == bits) if bits is not None else (info.byte_size == size), path
    assert btf.enum_value("color", "RED") == -3
    assert btf.enum_value(None, "B2") == 0xFFFFFFFF00000000
    assert btf.enum_value("pagetype_t", "PGTY_buddy") == 0xF0  # enum named only by a typedef
    assert btf.enum_value(None, "PGTY_offline") == 0xF1
    assert btf.member_offset("memdesc_flags_t", "f").bit_offset == 0
    assert btf.member_offset("page", "flags.f").bit_offset == 0
    assert btf.member_offset("page", "dma_addr[1]").bit_offset == layout["dma_addr"][0] + 64


@need_bpftool
def test_pahole_split_matches_pahole_and_bpftool(pahole_btf: dict[str, Path]) -> None:
    base = btf_from_image(pahole_btf["base.o"].read_bytes(), source="base.o")
    mod = btf_from_image(pahole_btf["mod.o"].read_bytes(), source="mod.o", base=base)
    mod.check()
    assert mod.start_id == base.nr_types
    assert mod.nr_types > mod.start_id
    types = bpftool_json(pahole_btf["mod.o"], base=pahole_btf["base.o"])
    assert [t["id"] for t in types] == list(range(mod.start_id, mod.nr_types))
    compare_with_bpftool(mod, types)
    # Split-only parse without the base fails cleanly (its ids/strings point into the base).
    with pytest.raises(KdlayoutError):
        alone = btf_from_image(pahole_btf["mod.o"].read_bytes(), source="mod.o")
        alone.check()
        alone.member_offset("mod_thing", "node")
    layout = pahole_layout(pahole_btf["mod.o"], "mod_thing", base=pahole_btf["base.o"])
    assert {"node", "x", "y", "z", "e", "l", "lo", "hi"} <= set(layout)
    for path, (bit_off, size, bits) in layout.items():
        info = mod.member_offset("mod_thing", path)
        assert info.bit_offset == bit_off, path
        assert (info.bit_size == bits) if bits is not None else (info.byte_size == size), path
    # The module's list_head is the base's (dedup against the base): found via the split.
    node = mod.member_offset("mod_thing", "node")
    assert node.type_id < mod.start_id
    assert mod.type(node.type_id).name == "list_head"
    assert mod.enum_value(None, "MOD_B") == -2
    assert mod.find("page") == base.find("page")


# --------------------------------------------------------------------------------------------
# Synthetic BTF: every kind, both endiannesses, larger headers, split BTF (bpftool as oracle)
# --------------------------------------------------------------------------------------------


@need_bpftool
@pytest.mark.parametrize("big_endian", [False, True])
def test_synthetic_all_kinds_match_bpftool(tmp_path: Path, big_endian: bool) -> None:
    b, ids = sample()
    data = b.build(big_endian=big_endian)
    f = tmp_path / "sample.btf"
    f.write_bytes(data)
    btf = Btf.parse(data, source="sample")
    btf.check()
    assert btf.header.big_endian == big_endian
    types = bpftool_json(f)
    assert len(types) == btf.nr_types - 1 == len(ids)
    compare_with_bpftool(btf, types)
    assert {BtfKind[t["kind"]] for t in types} == set(BtfKind) - {BtfKind.UNKN}
    sizes = sizes_from_json(types)
    for tid, size in sizes.items():
        assert btf.size_of(tid) == size
    assert btf.member_offset("page", "lru_b").bit_offset == 64 + 64
    assert btf.member_offset("page", "whole[2]").bit_offset == 64 + 128
    info = btf.member_offset("page", "b")
    assert (info.bit_offset, info.bit_size, info.byte_size, info.is_bitfield) == (259, 5, 4, True)
    assert btf.member_offset("page", "flags.f").byte_offset == 0
    assert btf.resolve(ids["const"]) == ids["int"]
    assert btf.resolve(ids["type_tag"]) == ids["int"]
    assert btf.enum_value(None, "NEG") == -1
    assert btf.enum_value("big", "HUGE") == 0xFFFFFFFF00000000
    assert btf.find_var("counter").datasec == ".data"


def test_larger_header_is_skipped() -> None:
    b, _ = sample()
    plain = Btf.parse(b.build(), source="plain")
    grown = Btf.parse(b.build(hdr_extra=bytes(8)), source="grown")
    assert grown.header.hdr_len == 32
    assert [(t.kind, t.name, t.size, t.type, t.members) for t in grown] == [
        (t.kind, t.name, t.size, t.type, t.members) for t in plain]


@need_bpftool
def test_synthetic_split_matches_bpftool(tmp_path: Path) -> None:
    b, ids = sample()
    base_data = b.build()
    base = Btf.parse(base_data, source="base")
    s = BtfBuilder(start_id=base.nr_types, base_str_len=base.header.str_len)
    m_int = s.int_("long long int", 8, encoding=1)
    m_struct = s.composite("STRUCT", "mod_thing", 24, [
        ("p", ids["page"], 0, 0),  # base type id (pointer-free, by value: size of page is 72)
        ("n", m_int, 64, 0),
        ("bits", ids["uint"], 128, 7),
    ], kflag=True)
    s.composite("STRUCT", "mod_thing", 24, [("p", ids["page"], 0, 0)])  # same name, again
    s.enum("mod_enum", 4, [("MOD_X", 42)])
    s.ref("PTR", m_struct)
    s.raw(s.s("list_head"), (4 << 24), 0)  # empty struct named by a reused-looking string
    split_data = s.build()
    (tmp_path / "base.btf").write_bytes(base_data)
    (tmp_path / "split.btf").write_bytes(split_data)
    split = Btf.parse(split_data, base=base, source="split")
    split.check()
    types = bpftool_json(tmp_path / "split.btf", base=tmp_path / "base.btf")
    assert [t["id"] for t in types] == list(range(split.start_id, split.nr_types))
    compare_with_bpftool(split, types)
    assert split.find("mod_thing") == [m_struct, m_struct + 1]
    assert split.member_offset(m_struct, "bits").bit_size == 7
    assert split.enum_value(None, "MOD_X") == 42
    assert split.enum_value(None, "PG_locked") == 0  # base enumerators are searched too
    assert split.type(m_struct).name == "mod_thing"
    assert split.type(ids["page"]).name == "page"


# --------------------------------------------------------------------------------------------
# Error paths
# --------------------------------------------------------------------------------------------


def _err(fn: Callable[[], object], cls: type[KdlayoutError] = CorruptError) -> KdlayoutError:
    t0 = time.perf_counter()
    with pytest.raises(cls) as ei:
        fn()
    assert time.perf_counter() - t0 < 2.0
    e = ei.value
    assert e.path is not None
    assert "\n" not in str(e)
    return e


def _header(data: bytes, **fields: int) -> bytes:
    names = ["magic", "version", "flags", "hdr_len", "type_off", "type_len", "str_off", "str_len"]
    vals = list(struct.unpack_from("<HBBIIIII", data))
    for k, v in fields.items():
        vals[names.index(k)] = v
    return struct.pack("<HBBIIIII", *vals) + data[24:]


def test_truncated_at_every_header_boundary() -> None:
    data = sample()[0].build()
    hdr = parse_header(data, source="x")
    cuts = [*range(0, 24), 24, 24 + hdr.type_len // 2, 24 + hdr.type_len, len(data) - 1]
    for cut in cuts:
        piece = data[:cut]
        e = _err(lambda piece=piece: Btf.parse(piece, source="cut"))  # type: ignore[misc]
        assert e.path == "cut" and e.offset is not None
        assert e.offset <= len(data)


@pytest.mark.parametrize("fields, offset", [
    ({"magic": 0x1234}, 0),
    ({"hdr_len": 8}, 4),
    ({"hdr_len": 0xFFFFFF00}, 4),
    ({"type_len": 0x7FFFFFFC}, 8),
    ({"str_len": 0x7FFFFFFF}, 16),
    ({"str_off": 0xFFFFFFF0}, 16),
    ({"type_off": 2}, 8),
])
def test_lying_header(fields: dict[str, int], offset: int) -> None:
    data = _header(sample()[0].build(), **fields)
    e = _err(lambda: Btf.parse(data, source="liar"))
    assert e.offset == offset


def test_version_and_unknown_kind_are_unsupported() -> None:
    data = bytearray(sample()[0].build())
    data[2] = 2
    e = _err(lambda: Btf.parse(bytes(data), source="v2"), UnsupportedError)
    assert e.offset == 2
    b = BtfBuilder()
    b.int_("int", 4)
    b.raw(0, 25 << 24, 0)
    e = _err(lambda: Btf.parse(b.build(), source="kind25"), UnsupportedError)
    assert e.offset == 24 + 16 + 4 and "kind 25" in str(e)
    b = BtfBuilder()
    b.raw(0, 0, 0)
    _err(lambda: Btf.parse(b.build(), source="kind0"))


def test_huge_vlen_is_corrupt_quickly() -> None:
    b = BtfBuilder()
    b.int_("int", 4)
    b.raw(b.s("s"), (4 << 24) | 0xFFFF, 8, [0, 1, 0])
    e = _err(lambda: Btf.parse(b.build(), source="vlen"))
    assert e.offset == 24 + 16 and "vlen 65535" in str(e)


def test_type_id_loops() -> None:
    b = BtfBuilder()
    a = b.ref("TYPEDEF", 2, "A")  # A -> B
    bb = b.ref("TYPEDEF", 1, "B")  # B -> A
    arr = b.array(bb, 0, 4)
    btf = Btf.parse(b.build(), source="loop")
    e = _err(lambda: btf.resolve(a))
    assert e.offset is not None
    _err(lambda: btf.size_of(arr))
    _err(btf.check)
    # A struct containing itself by value (through an anonymous member and an array).
    b = BtfBuilder()
    i = b.int_("int", 4)
    b.composite("STRUCT", "outer", 8, [("x", i, 0, 0), ("", 3, 32, 0)])
    b.composite("UNION", "", 4, [("", 1 + 1, 0, 0)])  # anon union containing "outer"
    btf = Btf.parse(b.build(), source="self")
    _err(lambda: btf.member_offset("outer", "nope"))
    _err(btf.check)
    b = BtfBuilder()
    i = b.int_("int", 4)
    b.composite("STRUCT", "s", 8, [("me", 3, 0, 0)])
    b.array(2, i, 2)
    _err(Btf.parse(b.build(), source="self2").check)


def test_out_of_range_ids_and_strings() -> None:
    b = BtfBuilder()
    b.int_("int", 4)
    b.ref("PTR", 99)
    btf = Btf.parse(b.build(), source="ids")
    e = _err(lambda: btf.type(2))
    assert e.offset == 24 + 16 + 8
    _err(btf.check)
    _err(lambda: btf.type(3))
    b = BtfBuilder()
    b.int_("int", 4)
    b.composite("STRUCT", "s", 4, [("x", 1, 0, 0)])
    data = bytearray(b.build())
    struct.pack_into("<I", data, 24 + 16 + 12, 0xFFFF)  # member name_off
    btf = Btf.parse(bytes(data), source="strs")
    e = _err(lambda: btf.type(2))
    assert e.offset == 24 + 16 + 12
    _err(btf.check)
    data = bytearray(b.build())
    struct.pack_into("<I", data, 24, 0xFFFF)  # the INT's own name_off
    btf = Btf.parse(bytes(data), source="names")
    _err(lambda: btf.find("int"))
    # String section without its NUL terminator, and without the leading empty string.
    data = bytearray(b.build())
    data[-1] = ord("x")
    _err(lambda: Btf.parse(bytes(data), source="noterm"))
    data = bytearray(b.build())
    data[24 + parse_header(data, source="x").str_off] = ord("x")
    _err(lambda: Btf.parse(bytes(data), source="nolead"))


def _small_real_btf() -> bytes:
    """pahole-encoded BTF when gcc/pahole exist, else the synthetic sample."""
    if PAHOLE is None or GCC is None or OBJCOPY is None:
        return sample()[0].build()
    return _pahole_blob()


@cache
def _pahole_blob() -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        c = Path(d) / "a.c"
        c.write_text(C_BASE)
        o = Path(d) / "a.o"
        assert GCC is not None and PAHOLE is not None and OBJCOPY is not None
        subprocess.run([GCC, "-g", "-c", str(c), "-o", str(o)], check=True, capture_output=True)
        subprocess.run([PAHOLE, "-J", str(o)], check=True, capture_output=True)
        subprocess.run([OBJCOPY, "--dump-section", f".BTF={d}/a.btf", str(o)], check=True,
                       capture_output=True)
        return (Path(d) / "a.btf").read_bytes()


def _exercise(btf: Btf) -> None:
    btf.check()
    for t in btf:
        if t.kind in (BtfKind.STRUCT, BtfKind.UNION):
            for m in t.members:
                if m.name:
                    btf.member_offset(t.id, m.name)
        with contextlib.suppress(MissingDataError):
            btf.size_of(t.id)
        btf.resolve(t.id)
    btf.find("page")
    btf.find_enumerator("RED")


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    n = len(data)
    interesting = st.sampled_from([0, 1, 0xFF, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, n, n - 24,
                                   0x80000000, 0x0D000002, 0x0400FFFF, 0x08000000])
    word = st.tuples(st.integers(0, n // 4 - 1), interesting).map(
        lambda p: data[:4 * p[0]] + struct.pack("<I", p[1]) + data[4 * p[0] + 4:])
    byte = st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 255)), min_size=1,
                    max_size=8).map(lambda ps: _poke(data, ps))
    cut = st.integers(0, n).map(lambda k: data[:k])
    return st.one_of(word, byte, cut)


def _poke(data: bytes, pokes: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for i, v in pokes:
        out[i] = v
    return bytes(out)


SMALL = _small_real_btf()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations(SMALL))
def test_mutated_real_btf_fails_cleanly(blob: bytes) -> None:
    """Every mutation of a small real BTF either parses and answers, or raises a KdlayoutError
    (never another exception, a hang or unbounded work), within a time bound."""
    t0 = time.perf_counter()
    try:
        btf = Btf.parse(blob, source="mutant")
        _exercise(btf)
    except KdlayoutError as e:
        assert e.path == "mutant"
        assert "\n" not in str(e)
    assert time.perf_counter() - t0 < 1.0


def test_mutation_corpus_is_real() -> None:
    """The corpus above is the real thing: it parses and covers the tricky kinds."""
    btf = Btf.parse(SMALL, source="small")
    btf.check()
    kinds = {t.kind for t in btf}
    assert {BtfKind.STRUCT, BtfKind.UNION, BtfKind.ENUM, BtfKind.TYPEDEF, BtfKind.PTR} <= kinds


# --------------------------------------------------------------------------------------------
# Debian kernels from the fixture cache
# --------------------------------------------------------------------------------------------


def _debian_kernels() -> Iterator[Path]:
    yield from sorted((CACHE / "kernels").glob("*/vmlinuz"))


DEBIAN = list(_debian_kernels())


@cache
def debian_vmlinux(vmlinuz: Path) -> tuple[bytes, float]:
    """The decompressed vmlinux ELF of a Debian vmlinuz and the seconds that took."""
    from kdlayout.vmlinuz import extract_vmlinux

    t0 = time.perf_counter()
    elf = extract_vmlinux(vmlinuz.read_bytes(), source=str(vmlinuz))
    return elf, time.perf_counter() - t0


@need_bpftool
@pytest.mark.fixtures
@pytest.mark.skipif(not DEBIAN, reason=f"no Debian kernels under {CACHE}/kernels "
                    "(built by tools/build_fixtures.py)")
@pytest.mark.parametrize("vmlinuz", DEBIAN, ids=[p.parent.name for p in DEBIAN])
def test_debian_vmlinuz_btf_matches_bpftool(vmlinuz: Path, tmp_path: Path) -> None:
    from kdlayout.vmlinuz import elf_section

    elf, took = debian_vmlinux(vmlinuz)
    btf = btf_from_elf(elf, source=str(vmlinuz))
    btf.check()
    # bpftool reads the raw .BTF bytes (located by pyelftools, independently of our ELF reader).
    from io import BytesIO

    from elftools.elf.elffile import ELFFile

    sec = ELFFile(BytesIO(elf)).get_section_by_name(".BTF")
    assert sec is not None
    raw = sec.data()
    assert bytes(elf_section(elf, ".BTF", source="x")[1]) == raw
    f = tmp_path / "vmlinux.btf"
    f.write_bytes(raw)
    types = bpftool_json(f)
    assert len(types) == btf.nr_types - 1
    compare_with_bpftool(btf, types)
    for tid, size in sizes_from_json(types).items():
        assert btf.size_of(tid) == size
    # struct page members through anonymous unions, folded from bpftool's JSON (compound_head
    # is compound_info in 7.x; _mapcount/page_type moved around over the years).
    by_id = {t["id"]: t for t in types}
    page = next(t for t in types if t["kind"] == "STRUCT" and t["name"] == "page")
    checked = 0
    for name in ("compound_head", "compound_info", "_mapcount", "page_type", "lru", "mapping",
                 "private", "_refcount", "index", "__folio_index"):
        hit = json_member(by_id, page, name)
        if hit is None:
            with pytest.raises(MissingDataError):
                btf.member_offset("page", name)
            continue
        assert btf.member_offset("page", name).bit_offset == hit[0], name
        checked += 1
    assert checked >= 6
    assert took < 30


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        import lzma

        return lzma.decompress(data)
    if path.suffix == ".zst":
        import zstandard

        return bytes(zstandard.ZstdDecompressor().stream_reader(data).read())
    return data


def _debian_modules(vmlinuz: Path) -> list[Path]:
    """A few real modules of that kernel: ext4 (big, many types) and two small ones."""
    mods = sorted((vmlinuz.parent / "root" / "lib" / "modules").glob("*/kernel/**/*.ko*"))
    picks = [m for m in mods if m.name.startswith("ext4.ko")]
    picks += [m for m in mods if m.name.split(".ko")[0] in ("af_key", "vsock", "loop")][:2]
    return picks


@need_bpftool
@pytest.mark.fixtures
@pytest.mark.skipif(not DEBIAN, reason=f"no Debian kernels under {CACHE}/kernels "
                    "(built by tools/build_fixtures.py)")
@pytest.mark.parametrize("vmlinuz", DEBIAN, ids=[p.parent.name for p in DEBIAN])
def test_debian_module_split_btf_matches_bpftool(vmlinuz: Path, tmp_path: Path) -> None:
    """Real split BTF: Debian modules' .BTF on top of that kernel's vmlinux BTF."""
    from kdlayout.vmlinuz import elf_section

    mods = _debian_modules(vmlinuz)
    if not mods:
        pytest.skip(f"no modules unpacked beside {vmlinuz}")
    elf, _ = debian_vmlinux(vmlinuz)
    _, raw_base = elf_section(elf, ".BTF", source=str(vmlinuz))
    base_file = tmp_path / "vmlinux.btf"
    base_file.write_bytes(bytes(raw_base))
    base = Btf.parse(raw_base, source=str(vmlinuz))
    from io import BytesIO

    from elftools.elf.elffile import ELFFile

    checked = 0
    for mod in mods:
        ko = _module_bytes(mod)
        if ELFFile(BytesIO(ko)).get_section_by_name(".BTF") is None:  # pyelftools decides
            with pytest.raises(MissingDataError):
                btf_from_image(ko, source=str(mod), base=base)
            continue
        checked += 1
        ko_file = tmp_path / mod.name.split(".ko")[0]
        ko_file.write_bytes(ko)
        split = btf_from_image(ko, source=str(mod), base=base)
        split.check()
        assert split.start_id == base.nr_types
        types = bpftool_json(ko_file, base=base_file)
        assert [t["id"] for t in types] == list(range(split.start_id, split.nr_types))
        compare_with_bpftool(split, types)
        base_sizes = {tid: base.size_of(tid) for tid in range(1, base.nr_types)
                      if base.kind(tid) in (BtfKind.STRUCT, BtfKind.UNION, BtfKind.INT)}
        for tid, size in sizes_from_json(types, base_sizes).items():
            if tid >= split.start_id:
                assert split.size_of(tid) == size, tid
    if not checked:
        pytest.skip(f"{vmlinuz.parent.name}: its modules carry no .BTF "
                    "(built without CONFIG_DEBUG_INFO_BTF_MODULES)")


def _fixtures_with_vmcore() -> list[Any]:
    try:
        from fixtures import load_fixtures
    except ImportError:
        return []
    return [f for f in load_fixtures() if f.path("vmcore") and f.path("vmlinuz")]


FIXTURES = _fixtures_with_vmcore()


@pytest.mark.fixtures
@pytest.mark.skipif(not FIXTURES, reason="no kdump fixtures with a vmcore and its vmlinuz "
                    "(built by tools/build_fixtures.py)")
@pytest.mark.parametrize("fx", FIXTURES, ids=[f.name for f in FIXTURES])
def test_find_btf_blob_in_real_vmcore(fx: Any) -> None:
    """The crashed kernel's BTF, found by scanning the raw vmcore file (kernel image memory),
    is byte-identical to the .BTF section of the vmlinuz it booted (located by pyelftools)."""
    import mmap
    from io import BytesIO

    from elftools.elf.elffile import ELFFile

    elf, _ = debian_vmlinux(fx.path("vmlinuz"))
    sec = ELFFile(BytesIO(elf)).get_section_by_name(".BTF")
    assert sec is not None
    want = sec.data()
    vmcore = fx.path("vmcore")
    with open(vmcore, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        t0 = time.perf_counter()
        off, btf = find_btf_blob(m, source=str(vmcore))
        took = time.perf_counter() - t0
        assert m[off:off + len(want)] == want
    assert btf.header.blob_size == len(want)
    assert btf.nr_types == Btf.parse(want, source="vmlinuz").nr_types
    assert took < 60


def test_find_btf_blob_both_byte_orders() -> None:
    b, _ = sample()
    le, be = b.build(), b.build(big_endian=True)
    decoy_le = b"\x9f\xeb\x01\x00" + struct.pack("<I", 24) + b"\xff" * 16
    decoy_be = b"\xeb\x9f\x01\x00" + struct.pack(">I", 24) + b"\xff" * 16
    junk = bytes(range(256)) * 4
    for region, want_off, want_big in (
        (junk + decoy_le + decoy_be + be + junk + le, len(junk) + 48, True),
        (junk + decoy_be + le + decoy_be + be, len(junk) + 24, False),
        (junk + decoy_le + decoy_le + junk + be, len(junk) * 2 + 48, True),
    ):
        for r in (region, memoryview(region)):
            off, btf = find_btf_blob(r, source="mixed")
            assert (off, btf.header.big_endian) == (want_off, want_big)
            assert btf.member_offset("page", "c").bit_offset == 288
    with pytest.raises(MissingDataError):
        find_btf_blob(junk + decoy_be + decoy_le + junk, source="decoys")
    # start/end bound the scan; base_offset shifts reported offsets.
    region = junk + le + junk + be
    off, btf = find_btf_blob(region, source="bounded", start=len(junk) + 1)
    assert off == 2 * len(junk) + len(le) and btf.header.big_endian
    with pytest.raises(MissingDataError) as ei:
        find_btf_blob(region, source="bounded", end=len(junk) + 10, base_offset=0x1000)
    assert ei.value.offset == 0x1000


@need_bpftool
def test_shared_suffix_and_duplicate_strings(tmp_path: Path) -> None:
    """Name offsets into the middle of a string and duplicated strings are legal BTF; lookups
    find them (names checked against bpftool)."""
    b = BtfBuilder()
    long_off = b.s("struct_page")
    i = b.int_("int", 4, encoding=1)
    suffix = b.raw(long_off + len("struct_"), (4 << 24), 0)  # STRUCT named "page" (a suffix)
    whole = b.raw(long_off, (4 << 24), 0)  # STRUCT named "struct_page"
    dup1 = len(b.strings)
    b.strings += b"dup\0"
    dup2 = len(b.strings)
    b.strings += b"dup\0"
    t1 = b.raw(dup1, (8 << 24), i)  # TYPEDEF dup -> int
    t2 = b.raw(dup2, (8 << 24), i)  # another TYPEDEF dup
    e_off = b.s("MY_PG_locked")
    en = b.raw(b.s("e"), (6 << 24) | 2, 4, [e_off + 3, 7, e_off, 8])  # PG_locked=7, MY_PG_locked=8
    data = b.build()
    (tmp_path / "x.btf").write_bytes(data)
    btf = Btf.parse(data, source="suffix")
    btf.check()
    compare_with_bpftool(btf, bpftool_json(tmp_path / "x.btf"))
    assert btf.find("page") == [suffix]
    assert btf.find("struct_page") == [whole]
    assert btf.find("dup") == [t1, t2]
    assert btf.find("dup", BtfKind.TYPEDEF) == [t1, t2]
    assert btf.find("ge") == []
    assert btf.find_enumerator("PG_locked") == [(en, 7)]
    assert btf.enum_value(None, "MY_PG_locked") == 8
    assert btf.enumerators("e") == {"PG_locked": 7, "MY_PG_locked": 8}


def _string_offsets_by_split(btf: Btf) -> Callable[[str], list[int]]:
    """Reference for ``Btf.string_offsets``: every string split out of the section, plus the
    mid-string offsets that type and enumerator names use (a slow, obvious rebuild)."""
    strings = btf._strings
    starts: dict[bytes, list[int]] = {}
    pos = 0
    for part in strings.split(b"\0")[:-1]:
        starts.setdefault(part, []).append(pos)
        pos += len(part) + 1
    used = set(btf._name_sorted()[0].tolist()) | set(btf._enum_entries()[0].tolist())
    mids: dict[bytes, list[int]] = {}
    for off in sorted(used):
        if off and strings[off - 1] != 0:
            mids.setdefault(strings[off:strings.index(b"\0", off)], []).append(off)
    return lambda name: starts.get(name.encode(), []) + mids.get(name.encode(), [])


def test_string_offsets_match_a_split_of_the_section() -> None:
    """Names are found with bytes.find on the section (no per-string index); the offsets must be
    those of every equal string, duplicates and shared suffixes included, in the same order."""
    b = BtfBuilder()
    long_off = b.s("struct_page")
    i = b.int_("int", 4, encoding=1)
    b.raw(long_off + len("struct_"), (4 << 24), 0)
    b.strings += b"dup\0page\0dup\0"
    b.raw(len(b.strings) - 4, (8 << 24), i)
    e_off = b.s("MY_PG_locked")
    b.raw(b.s("e"), (6 << 24) | 2, 4, [e_off + 3, 7, e_off, 8])
    btfs = [Btf.parse(b.build(), source="synthetic")]
    if SYS_VMLINUX.exists():
        btfs.append(Btf.parse(SYS_VMLINUX.read_bytes(), source=str(SYS_VMLINUX)))
    for btf in btfs:
        ref = _string_offsets_by_split(btf)
        names = ["page", "dup", "PG_locked", "MY_PG_locked", "struct_page", "ge", "int", "e",
                 "zone", "pageflags", "long unsigned int", "list_head", "a\0b", "\udcff", ""]
        strings = btf._strings
        names += [strings[k:strings.index(b"\0", k)].decode() for k in
                  range(1, len(strings), max(1, len(strings) // 500)) if strings[k - 1] == 0]
        for name in names:
            want = ref(name) if name and "\0" not in name and "\udcff" not in name else []
            assert btf.string_offsets(name).tolist() == want, name


SYS_DATA = SYS_VMLINUX.read_bytes() if SYS_VMLINUX.exists() else b""


@need_sys_btf
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 0xFFFFFFFF)), min_size=1,
                max_size=4))
def test_mutated_sys_btf_fails_cleanly(pokes: list[tuple[int, int]]) -> None:
    """Words of the header and first records of the real 5.5 MB BTF overwritten: parse, full
    check and typical queries end in success or a KdlayoutError, in bounded time."""
    data = bytearray(SYS_DATA)
    for word, value in pokes:
        struct.pack_into("<I", data, 4 * word, value)
    t0 = time.perf_counter()
    try:
        btf = Btf.parse(bytes(data), source="mutant-vmlinux")
        btf.check()
        btf.member_offset("page", "flags")
        btf.enum_value(None, "PG_locked")
        btf.size_of(btf.find_one("task_struct", BtfKind.STRUCT))
    except KdlayoutError as e:
        assert e.path == "mutant-vmlinux" and "\n" not in str(e)
    assert time.perf_counter() - t0 < 10


DBG_FIXTURES = [f for f in FIXTURES if f.path("vmlinux_dbg")]
DWARF_STRUCTS = ["page", "folio", "zone", "free_area", "pglist_data", "mem_section", "list_head",
                 "task_struct", "mm_struct", "vm_area_struct", "address_space", "kmem_cache",
                 "uts_namespace", "new_utsname", "printk_ringbuffer", "prb_desc_ring",
                 "prb_desc", "prb_data_ring", "printk_info", "memdesc_flags_t", "atomic_long_t",
                 "prb_data_blk_lpos", "per_cpu_pages", "lruvec", "super_block", "inode"]


def _drgn_members(tp: Any, base: int = 0) -> Iterator[tuple[str, int, int]]:
    """(name, absolute bit offset, bit-field size) of every member C can name directly,
    anonymous structs/unions expanded (drgn's view of the DWARF)."""
    cur = tp.unqualified()
    while cur.kind.name == "TYPEDEF":
        cur = cur.type.unqualified()
    for m in cur.members or ():
        if m.name is None:
            yield from _drgn_members(m.type, base + m.bit_offset)
        else:
            yield m.name, base + m.bit_offset, m.bit_field_size or 0


def _btf_type_id(btf: Btf, name: str) -> int | None:
    ids = btf.find(name, (BtfKind.STRUCT, BtfKind.UNION)) or btf.find(name, BtfKind.TYPEDEF)
    return ids[0] if ids else None


@pytest.mark.fixtures
@pytest.mark.skipif(not DBG_FIXTURES, reason="no fixtures with vmlinux-dbg DWARF, vmcore and "
                    "vmlinuz (built by tools/build_fixtures.py --dbg)")
@pytest.mark.parametrize("fx", DBG_FIXTURES, ids=[f.name for f in DBG_FIXTURES])
def test_btf_layouts_agree_with_dwarf_via_drgn(fx: Any) -> None:
    """The kernel's BTF (from its vmlinuz) against its -dbg DWARF read by drgn: sizes, every
    directly nameable member (anonymous unions expanded) of the structs the resolver and the
    scanner use, the catalogue's dotted paths, and the catalogue's enums and enumerators."""
    drgn = pytest.importorskip("drgn", reason="drgn is not installed")
    from drgn_oracle import _find_type, _member, load_program
    from kdlayout.catalogue import ENUM_QUERIES, ENUMERATOR_QUERIES, TYPE_QUERIES

    prog = load_program(fx.path("vmlinux_dbg"), fx.path("vmcore"))
    elf, _ = debian_vmlinux(fx.path("vmlinuz"))
    btf = btf_from_elf(elf, source=str(fx.path("vmlinuz")))
    names = list(dict.fromkeys(DWARF_STRUCTS + [q.type_name for q in TYPE_QUERIES]))
    compared = 0
    for name in names:
        tp = _find_type(prog, name)
        tid = _btf_type_id(btf, name)
        assert (tp is None) == (tid is None), name
        if tp is None or tid is None:
            continue
        assert btf.size_of(tid) == drgn.sizeof(tp), name
        for mname, bit_off, bits in _drgn_members(tp):
            info = btf.member_offset(tid, mname)
            assert info.bit_offset == bit_off, f"{name}.{mname}"
            if bits:
                assert info.bit_size == bits, f"{name}.{mname}"
            compared += 1
    for q in TYPE_QUERIES:
        tp = _find_type(prog, q.type_name)
        tid = _btf_type_id(btf, q.type_name)
        if tp is None or tid is None:
            continue
        for path in q.members:
            loc = _member(prog, tp, path)
            if loc is None:
                with pytest.raises(MissingDataError):
                    btf.member_offset(tid, path)
                continue
            bit, bits, _length, size = loc
            info = btf.member_offset(tid, path)
            assert (info.bit_offset, info.byte_size) == (bit, size), f"{q.type_name}.{path}"
            if bits:
                assert info.bit_size == bits
            compared += 1
    for enum in ENUM_QUERIES:
        try:
            etp = prog.type(f"enum {enum}")
        except LookupError:
            with pytest.raises(MissingDataError):
                btf.enumerators(enum)
            continue
        assert btf.enumerators(enum) == {e.name: e.value for e in etp.enumerators or ()}
        compared += 1
    for enumerator in ENUMERATOR_QUERIES:
        try:
            want = prog.constant(enumerator).value_()
        except LookupError:
            assert not btf.find_enumerator(enumerator)
            continue
        assert btf.enum_value(None, enumerator) == want
        compared += 1
    assert compared > 300
