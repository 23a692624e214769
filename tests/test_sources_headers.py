"""Headers source: a linux-headers tree compiled with libclang.

Synthetic trees (written here) pin down extraction, anonymous members, arrays, bitfields, enums,
tree discovery and error reporting. Real Debian trees (tools/fetch_headers.py) are compared fact by
fact with the same kernel's BTF (pahole's output from the real build's DWARF) and, when the
fixture builder fetched the -dbg vmlinux, with its DWARF through drgn.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from fixtures import cache_dir, load_fixtures
from kdlayout.errors import CorruptError, KdlayoutError, UnsupportedError
from kdlayout.layout import Fact
from kdlayout.sources import headers
from kdlayout.sources.base import type_facts

clang = pytest.importorskip("clang.cindex", reason="libclang Python bindings not installed")

# ---- synthetic trees -------------------------------------------------------------------------

TYPES_H = """
#ifndef _LINUX_TYPES_H
#define _LINUX_TYPES_H
struct list_head { struct list_head *next, *prev; };
typedef struct { int counter; } atomic_t;
typedef struct { long counter; } atomic_long_t;
#endif
"""

MM_TYPES_H = """
#include <linux/types.h>
struct page {
	unsigned long flags;
	union {
		struct {
			struct list_head lru;
			void *mapping;
			unsigned long index;
		};
		struct {
			unsigned long compound_head;
			unsigned char compound_order;
		};
	};
	union {
		atomic_t _mapcount;
		unsigned int page_type;
	};
	atomic_t _refcount;
#ifdef CONFIG_KDL_EXTRA
	unsigned long extra;
#endif
};
struct free_area {
	struct list_head free_list[5];
	unsigned long nr_free;
};
struct zone {
	unsigned long zone_start_pfn;
	unsigned int odd : 3, spanned_pages : 13;
	struct free_area free_area[11];
};
enum pageflags { PG_locked, PG_referenced, PG_uptodate, PG_slab = 9, __NR_PAGEFLAGS,
                 PG_checked = PG_referenced };
#define PAGE_TYPE_BASE	0xf0000000
#define PG_buddy	0x00000080
#define PAGE_MAPCOUNT_RESERVE	(~0x0000007f)
#define SECTION_SIZE_BITS	27
#define PG_head_mask ((1UL << (PG_uptodate)))
int runtime_l5(void);
#define MAX_PHYSMEM_BITS (runtime_l5() ? 52 : 46)
"""


def make_tree(root: Path, mm_types: str = MM_TYPES_H, *, extra: bool = False,
              config: str = "CONFIG_X86_64=y\n", split: str | None = None) -> Path:
    """A minimal headers tree; ``split`` = "makefile" or "symlink" makes it Debian/O= style."""
    obj = root / "linux-headers-9.9.9-amd64"
    src = obj if split is None else root / "linux-headers-9.9.9-common"
    (src / "include/linux").mkdir(parents=True, exist_ok=True)
    (obj / "include/generated").mkdir(parents=True, exist_ok=True)
    (src / "include/linux/types.h").write_text(TYPES_H)
    (src / "include/linux/kconfig.h").write_text("#include <generated/autoconf.h>\n")
    (src / "include/linux/mm_types.h").write_text(mm_types)
    (src / "Makefile").write_text("KBUILD_CFLAGS += -std=gnu11\n")
    (obj / ".config").write_text(config + ("CONFIG_KDL_EXTRA=y\n" if extra else ""))
    (obj / "include/generated/autoconf.h").write_text(
        "#define CONFIG_X86_64 1\n" + ("#define CONFIG_KDL_EXTRA 1\n" if extra else ""))
    (obj / "include/generated/utsrelease.h").write_text('#define UTS_RELEASE "9.9.9-amd64"\n')
    if split == "makefile":
        # As Debian ships it: an absolute /usr/src path that does not exist here.
        (obj / "Makefile").write_text(f"include /usr/src/{src.name}/Makefile\n")
    elif split == "symlink":
        (obj / "source").symlink_to(src)
    elif split == "relative-symlink":
        (obj / "source").symlink_to(Path("..") / src.name)
    elif split == "relative-makefile":
        (obj / "Makefile").write_text(f"include ../{src.name}/Makefile\n")
    return obj


def facts_of(src: headers.HeadersTypeSource) -> dict[str, Any]:
    return {f.key: f.value for f in type_facts(src)}


def test_synthetic_offsets_sizes_arrays_enums(tmp_path: Path) -> None:
    src = headers.HeadersTypeSource(make_tree(tmp_path), use_disk_cache=False)
    f = facts_of(src)
    # x86_64 LP64: list_head 16, page = 8 + union(16+8+8=32) + 4 + 4 = 48.
    assert f["SIZE(page)"] == 48
    assert f["OFFSET(page.flags)"] == 0
    assert f["OFFSET(page.lru)"] == 8
    assert f["OFFSET(page.mapping)"] == 24
    assert f["OFFSET(page.index)"] == 32
    assert f["OFFSET(page.compound_head)"] == 8     # second struct of the same union
    assert f["OFFSET(page.compound_order)"] == 16
    assert f["OFFSET(page._mapcount)"] == 40
    assert f["OFFSET(page.page_type)"] == 40
    assert f["OFFSET(page._refcount)"] == 44
    assert f["SIZE(free_area)"] == 5 * 16 + 8
    assert f["LENGTH(free_area.free_list)"] == 5
    assert f["LENGTH(zone.free_area)"] == 11
    assert f["OFFSET(zone.free_area)"] == 16
    assert f["BITOFFSET(zone.spanned_pages)"] == 64 + 3
    assert "OFFSET(zone.spanned_pages)" not in f
    assert f["SIZE(atomic_long_t)"] == 8 and f["OFFSET(atomic_long_t.counter)"] == 0
    assert f["NUMBER(PG_slab)"] == 9 and f["NUMBER(__NR_PAGEFLAGS)"] == 10
    assert f["NUMBER(PG_checked)"] == 1
    # Members this "kernel" lacks are absent, not zero.
    assert "OFFSET(page.buddy_list)" not in f and "SIZE(folio)" not in f
    assert src.release == "9.9.9-amd64"
    assert all(fact.source == "headers" for fact in type_facts(src))


def test_constants_are_probed(tmp_path: Path) -> None:
    src = headers.HeadersTypeSource(make_tree(tmp_path), use_disk_cache=False)
    nums = src.numbers()
    assert nums["PG_buddy"] == 0x80
    assert "PAGE_TYPE_BASE" not in nums   # not probed: see HEADER_NUMBERS
    assert nums["PAGE_MAPCOUNT_RESERVE"] == -128 and nums["SECTION_SIZE_BITS"] == 27
    assert nums["PG_head_mask"] == 4
    # Not constant here, or not defined at all: absent (never a made-up 0).
    assert "MAX_PHYSMEM_BITS" not in nums and "PG_offline" not in nums
    assert "PAGE_SHIFT" not in nums
    facts = headers.headers_facts(src)
    keys = [f.key for f in facts]
    assert len(keys) == len(set(keys))              # PG_slab: the enumerator, once
    by_key = {f.key: f for f in facts}
    assert by_key["NUMBER(PG_slab)"].value == 9 and "enum pageflags" in by_key["NUMBER(PG_slab)"].origin
    assert by_key["NUMBER(PG_buddy)"].origin.endswith("constant PG_buddy")


def test_enumerator_queries_take_enumerators_not_macros(tmp_path: Path) -> None:
    anon = "enum { SECTION_MARKED_PRESENT_BIT, SECTION_HAS_MEM_MAP_BIT, SECTION_MAP_LAST_BIT };\n"
    src = headers.HeadersTypeSource(make_tree(tmp_path / "a", MM_TYPES_H + anon),
                                    use_disk_cache=False)
    f = facts_of(src)
    assert f["NUMBER(SECTION_HAS_MEM_MAP_BIT)"] == 1 and f["NUMBER(SECTION_MAP_LAST_BIT)"] == 2
    old = "#define SECTION_MAP_LAST_BIT (1UL<<4)\n"   # 5.x: a mask, not a bit number
    src = headers.HeadersTypeSource(make_tree(tmp_path / "b", MM_TYPES_H + old),
                                    use_disk_cache=False)
    assert src.enumerator("SECTION_MAP_LAST_BIT") is None
    assert "NUMBER(SECTION_MAP_LAST_BIT)" not in facts_of(src)


def test_config_decides_layout(tmp_path: Path) -> None:
    plain = facts_of(headers.HeadersTypeSource(make_tree(tmp_path / "a"), use_disk_cache=False))
    extra = facts_of(headers.HeadersTypeSource(make_tree(tmp_path / "b", extra=True),
                                               use_disk_cache=False))
    assert plain["SIZE(page)"] == 48 and extra["SIZE(page)"] == 56


@pytest.mark.parametrize("split", ["makefile", "symlink", "relative-symlink",
                                   "relative-makefile"])
def test_split_trees_are_found(tmp_path: Path, split: str) -> None:
    obj = make_tree(tmp_path, split=split)
    tree = headers.find_tree(obj)
    assert tree.src.name == "linux-headers-9.9.9-common" and tree.obj == obj
    assert facts_of(headers.HeadersTypeSource(obj, use_disk_cache=False))["SIZE(page)"] == 48


def test_compile_error_names_header_and_line(tmp_path: Path) -> None:
    bad = MM_TYPES_H.replace("\tatomic_t _refcount;", "\tatomic_t _refcount\n\tint oops;")
    obj = make_tree(tmp_path, bad)
    with pytest.raises(CorruptError) as err:
        headers.HeadersTypeSource(obj, use_disk_cache=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert "mm_types.h" in msg and "line 2" in msg  # the line of "int oops;"


def test_missing_header_is_one_line_error(tmp_path: Path) -> None:
    obj = make_tree(tmp_path, '#include <linux/nonexistent.h>\n' + MM_TYPES_H)
    with pytest.raises(CorruptError, match=r"mm_types\.h: line 1: .*nonexistent\.h"):
        headers.HeadersTypeSource(obj, use_disk_cache=False)


@pytest.mark.parametrize("text", [
    "#include <linux/mm_types.h>\n",          # includes itself forever: clang's depth limit
    "\x00\x01garbage\xff{{{ struct\n",
])
def test_hostile_headers_fail_quickly_with_one_line(tmp_path: Path, text: str) -> None:
    obj = make_tree(tmp_path, text)
    start = time.monotonic()
    with pytest.raises(CorruptError) as err:
        headers.HeadersTypeSource(obj, use_disk_cache=False)
    assert time.monotonic() - start < 60
    msg = str(err.value)
    assert "\n" not in msg and "mm_types.h" in msg and "line " in msg


def test_compile_that_never_ends_is_abandoned(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDLAYOUT_HEADERS_TIMEOUT", "0.5")
    monkeypatch.setattr(headers, "_CHILD_CODE", "import time; time.sleep(60)")
    start = time.monotonic()
    with pytest.raises(UnsupportedError, match=r"within 0\.5 s"):
        headers.HeadersTypeSource(make_tree(tmp_path), use_disk_cache=False)
    assert time.monotonic() - start < 30


def test_crashing_libclang_is_one_line_error(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(headers, "_CHILD_CODE",
                        "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    obj = make_tree(tmp_path)
    with pytest.raises(UnsupportedError, match=r"crashed \(signal 11\)") as err:
        headers.HeadersTypeSource(obj, use_disk_cache=False)
    assert str(err.value).startswith(str(obj))
    monkeypatch.setattr(headers, "_CHILD_CODE", "raise SystemExit('boom')")
    with pytest.raises(UnsupportedError, match=r"status 1.*boom"):
        headers.HeadersTypeSource(obj, use_disk_cache=False)


def test_not_a_tree(tmp_path: Path) -> None:
    with pytest.raises(KdlayoutError, match="no such headers directory"):
        headers.HeadersTypeSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorruptError, match=r"autoconf\.h"):
        headers.HeadersTypeSource(tmp_path / "empty")
    obj = make_tree(tmp_path / "split", split="makefile")
    (obj / "Makefile").write_text("include /nowhere/linux-headers-x-common/Makefile\n")
    with pytest.raises(CorruptError, match="source half"):
        headers.HeadersTypeSource(obj)


def test_non_x86_64_is_unsupported(tmp_path: Path) -> None:
    obj = make_tree(tmp_path, config="CONFIG_ARM64=y\n")
    with pytest.raises(UnsupportedError, match=r"\.config.*x86_64"):
        headers.HeadersTypeSource(obj, use_disk_cache=False)


def test_model_cache_is_keyed_by_tree_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    monkeypatch.setenv("KDLAYOUT_CACHE", str(tmp_path / "cache"))
    obj = make_tree(tmp_path)
    calls: list[object] = []
    real = headers.extract

    def counting(*args: Any) -> headers.HeadersModel:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(headers, "extract", counting)
    first = headers.HeadersTypeSource(obj)
    second = headers.HeadersTypeSource(obj)
    assert len(calls) == 1 and first.model is second.model
    # The disk cache answers a fresh process (simulated by clearing the memory cache).
    headers._model_cache.clear()
    third = headers.HeadersTypeSource(obj)
    assert len(calls) == 1 and facts_of(third) == facts_of(first)
    # Changing the configuration changes the key.
    later = time.time() + 5
    os.utime(obj / ".config", (later, later))
    headers.HeadersTypeSource(obj)
    assert len(calls) == 2


def test_resolver_uses_headers(tmp_path: Path) -> None:
    from kdlayout.resolver import ResolveOptions, resolve

    obj = make_tree(tmp_path)
    result = resolve(None, ResolveOptions(headers=str(obj), use_cache=False))
    status = {s.name: s for s in result.sources}
    assert status["headers"].status == "used"
    res = result.layout["OFFSET(page.compound_head)"]
    assert res.value == 8 and res.chosen.source == "headers"


def test_headers_of_another_release_are_warned(tmp_path: Path) -> None:
    from kdlayout import resolver
    from kdlayout.resolver import ResolveOptions, resolve

    obj = make_tree(tmp_path)
    vi = tmp_path / "vmcoreinfo"
    vi.write_text("OSRELEASE=9.9.8-amd64\n")
    result = resolve(None, ResolveOptions(headers=str(obj), vmcoreinfo=str(vi), use_cache=False))
    assert any("9.9.9-amd64" in w and "9.9.8-amd64" in w for w in result.layout.warnings)
    vi.write_text("OSRELEASE=9.9.9-amd64\n")
    resolver._memory_cache.clear()
    result = resolve(None, ResolveOptions(headers=str(obj), vmcoreinfo=str(vi), use_cache=False))
    assert not [w for w in result.layout.warnings if "9.9.8" in w or "headers" in w]


PRB_H = """
struct prb_data_blk_lpos { unsigned long begin; unsigned long next; };
struct prb_desc { long state_var; struct prb_data_blk_lpos text_blk_lpos; };
"""


def test_in_tree_build_includes_private_printk_header(tmp_path: Path) -> None:
    obj = make_tree(tmp_path)  # src == obj: a configured kernel source tree
    (obj / "kernel/printk").mkdir(parents=True)
    (obj / "kernel/printk/printk_ringbuffer.h").write_text(PRB_H)
    f = facts_of(headers.HeadersTypeSource(obj, use_disk_cache=False))
    assert f["SIZE(prb_desc)"] == 24 and f["OFFSET(prb_desc.text_blk_lpos)"] == 8
    assert f["OFFSET(prb_data_blk_lpos.next)"] == 8


# ---- real Debian trees -----------------------------------------------------------------------

FETCH = "no Debian headers tree: run python tools/fetch_headers.py"


def real_trees() -> list[Any]:
    root = cache_dir() / "headers"
    trees = sorted(root.glob("*/usr/src/linux-headers-*-amd64")) if root.is_dir() else []
    trees = [t for t in trees if t.name == f"linux-headers-{t.parent.parent.parent.name}"]
    if not trees:
        return [pytest.param(None, id="no-headers", marks=pytest.mark.skip(reason=FETCH))]
    return [pytest.param(t, id=t.parent.parent.parent.name) for t in trees]


def _release(tree: Path) -> str:
    return tree.name.removeprefix("linux-headers-")


def btf_candidates(tree: Path) -> list[Path]:
    """Files with BTF of the same build: fixture vmlinuz, kernels/ vmlinuz, the package vmlinux."""
    rel = _release(tree)
    out: list[Path] = []
    for fx in load_fixtures():
        p = fx.path("vmlinuz")
        if fx.release == rel and p is not None:
            out.append(p)
    out.append(cache_dir() / "kernels" / rel / "vmlinuz")
    out.append(tree / "vmlinux")   # Debian >= 6.x ships a BTF-only vmlinux for module builds
    return [p for p in out if p.is_file()]


def dbg_fixture(tree: Path) -> tuple[Path, Path] | None:
    """(-dbg vmlinux, a dump of it) from a fixture of the same release, if one was built."""
    rel = _release(tree)
    for fx in load_fixtures():
        vmlinux = fx.path("vmlinux_dbg")
        core = fx.path("vmcore") or fx.path("qemu_elf")
        if fx.release == rel and vmlinux is not None and core is not None:
            return vmlinux, core
    return None


@pytest.fixture(scope="module")
def real_facts() -> dict[Path, list[Fact]]:
    return {}


def _headers_facts(tree: Path, cache: dict[Path, list[Fact]]) -> dict[str, Any]:
    if tree not in cache:
        cache[tree] = type_facts(headers.HeadersTypeSource(tree))
    return {f.key: f.value for f in cache[tree]}


@pytest.mark.parametrize("tree", real_trees())
def test_real_headers_equal_btf(tree: Path, real_facts: dict[Path, list[Fact]]) -> None:
    from kdlayout.btf import load_btf
    from kdlayout.sources.btf_source import BtfTypeSource

    files = btf_candidates(tree)
    if not files:
        pytest.skip(f"no BTF of {_release(tree)} (no fixture vmlinuz, kernels/ or package vmlinux)")
    h = _headers_facts(tree, real_facts)
    for path in files:
        b = {f.key: f.value for f in type_facts(BtfTypeSource(load_btf(path), str(path)))}
        common = sorted(set(h) & set(b))
        # Everything a crash tool needs from struct page and the buddy allocator is answered.
        for key in ("SIZE(page)", "OFFSET(page.flags)", "OFFSET(page._refcount)",
                    "OFFSET(page._mapcount)", "OFFSET(page.lru)",
                    "OFFSET(zone.free_area)", "LENGTH(zone.free_area)",
                    "OFFSET(free_area.nr_free)", "SIZE(free_area)", "NUMBER(PG_lru)",
                    "NUMBER(PG_head)", "NUMBER(__NR_PAGEFLAGS)"):
            assert key in common, (key, path)
        # The tail-page link: compound_head, renamed compound_info in 7.1.
        assert {"OFFSET(page.compound_head)", "OFFSET(page.compound_info)"} & set(common)
        diffs = {k: (h[k], b[k]) for k in common if h[k] != b[k]}
        assert not diffs, f"headers vs BTF {path}: {diffs}"
        # Only the printk ring buffer (a private header under kernel/, not shipped) may be missing.
        missing = {k for k in set(b) - set(h) if "prb_" not in k and "printk_" not in k}
        assert not missing, missing
        assert len(common) >= 100


@pytest.mark.parametrize("tree", real_trees())
def test_real_headers_equal_dwarf(tree: Path, real_facts: dict[Path, list[Fact]]) -> None:
    pytest.importorskip("drgn")
    from drgn_oracle import catalogue_facts, load_program

    found = dbg_fixture(tree)
    if found is None:
        pytest.skip(f"no -dbg vmlinux of {_release(tree)}: tools/build_fixtures.py --dbg")
    vmlinux, core = found
    dwarf = catalogue_facts(load_program(vmlinux, core))
    h = _headers_facts(tree, real_facts)
    common = set(h) & set(dwarf)
    diffs = {k: (h[k], dwarf[k]) for k in common if h[k] != dwarf[k]}
    assert not diffs, f"headers vs DWARF of {vmlinux}: {diffs}"
    assert set(h) <= set(dwarf)
    missing = {k for k in set(dwarf) - set(h) if "prb_" not in k and "printk_" not in k}
    assert not missing, missing
    assert len(common) >= 100


def test_headers_agree_with_the_dump_in_the_resolver(fixture: Any) -> None:
    """Resolving a real dump with its kernel's headers: every headers fact agrees with the
    dump's own VMCOREINFO and BTF (no conflicts), and the headers answer >= 100 facts."""
    from kdlayout import resolver
    from kdlayout.dumpfile import open_dump
    from kdlayout.resolver import ResolveOptions, resolve

    tree = cache_dir() / "headers" / fixture.release / "usr/src" / f"linux-headers-{fixture.release}"
    core = fixture.path("vmcore") or fixture.path("md_zlib")
    if not tree.is_dir() or core is None:
        pytest.skip(f"no headers tree or dump for {fixture.release}: {FETCH}")
    providers = tuple(p for p in resolver.PROVIDERS if p[0] in ("vmcoreinfo", "btf", "headers"))
    resolver._memory_cache.clear()
    with open_dump(str(core)) as dump:
        result = resolve(dump, ResolveOptions(headers=str(tree), use_cache=False),
                         providers=providers)
    status = {s.name: s for s in result.sources}
    assert status["headers"].status == "used" and status["headers"].facts >= 100
    lay = result.layout
    from_headers = [r for r in lay.values() if any(c.source == "headers" for c in r.candidates)]
    assert len(from_headers) == status["headers"].facts
    assert not [r.key for r in from_headers if r.conflicts]
    # Independently confirmed by the dump: each type fact also offered by VMCOREINFO or the BTF.
    constants = {f"NUMBER({n})" for n in headers.HEADER_NUMBERS}
    types = [r for r in from_headers if r.key not in constants or "enum" in r.chosen.origin]
    assert all({"vmcoreinfo", "btf"} & {c.source for c in r.candidates} for r in types)
    # Probed constants VMCOREINFO also exports agree with it (checked above: no conflicts) ...
    shared = [r for r in from_headers if r.key in constants
              and any(c.source == "vmcoreinfo" for c in r.candidates)]
    assert len(shared) >= 4   # SECTION_SIZE_BITS, KERNEL_IMAGE_SIZE, NR_FREE_PAGES, PG_head_mask
    # ... and the page-type masks only headers give match VMCOREINFO's mapcount values.
    for name in ("buddy", "offline"):
        mask = lay.get_value(f"NUMBER(PG_{name})")
        mapcount = lay.get_value(f"NUMBER(PAGE_{name.upper()}_MAPCOUNT_VALUE)")
        if isinstance(mask, int) and mask >= 0x80 and isinstance(mapcount, int):
            assert ~mask == mapcount, name


def test_resolver_disk_cache_sees_a_reconfigured_tree(tmp_path: Path) -> None:
    from kdlayout import resolver
    from kdlayout.resolver import ResolveOptions, resolve

    obj = make_tree(tmp_path / "t")
    vi = tmp_path / "vmcoreinfo"
    vi.write_text("OSRELEASE=9.9.9-amd64\nBUILD-ID=0123456789abcdef0123456789abcdef01234567\n")
    opts = ResolveOptions(headers=str(obj), vmcoreinfo=str(vi), cache_dir=str(tmp_path / "c"))
    resolver._memory_cache.clear()
    assert resolve(None, opts).layout.size("page") == 48
    # Reconfigure: only .config and autoconf.h change, deep inside the tree.
    make_tree(tmp_path / "t", extra=True)
    later = time.time() + 5
    for f in (obj / ".config", obj / "include/generated/autoconf.h"):
        os.utime(f, (later, later))
    resolver._memory_cache.clear()
    again = resolve(None, ResolveOptions(headers=str(obj), vmcoreinfo=str(vi),
                                         cache_dir=str(tmp_path / "c")))
    assert not again.from_cache and again.layout.size("page") == 56


def test_headers_keep_every_derived_fact(fixture: Any) -> None:
    """Adding a kernel's headers to a resolve of its dump must not cost any derived fact nor
    change one (kdlayout.semantics reads the NUMBER() constants headers add)."""
    from kdlayout import resolver
    from kdlayout.dumpfile import open_dump
    from kdlayout.resolver import ResolveOptions, resolve

    tree = cache_dir() / "headers" / fixture.release / "usr/src" / f"linux-headers-{fixture.release}"
    core = fixture.path("vmcore") or fixture.path("md_zlib")
    if not tree.is_dir() or core is None:
        pytest.skip(f"no headers tree or dump for {fixture.release}: {FETCH}")
    providers = tuple(p for p in resolver.PROVIDERS
                      if p[0] in ("vmcoreinfo", "kallsyms", "btf", "headers"))
    derived = []
    for headers_dir in (None, str(tree)):
        resolver._memory_cache.clear()
        with open_dump(str(core)) as dump:
            lay = resolve(dump, ResolveOptions(headers=headers_dir, use_cache=False),
                          providers=providers).layout
        derived.append({k: lay[k].value for k in lay if lay[k].chosen.source == "derived"})
    without, with_headers = derived
    assert without, "semantics derived nothing from the dump alone"
    assert {k: with_headers.get(k) for k in without} == without
