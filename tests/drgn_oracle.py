"""Independent ground truth from drgn reading the kernel's own -dbg DWARF.

Nothing here uses kdlayout: the catalogue's questions are asked of drgn's type system, so that
kdlayout's answers from the dump alone (VMCOREINFO, kallsyms, BTF) can be checked fact by fact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdlayout.catalogue import ENUM_QUERIES, ENUMERATOR_QUERIES, TYPE_QUERIES


def load_program(vmlinux: Path, core: Path | None = None) -> Any:
    """A drgn Program with the vmlinux's DWARF (and the core dump, if given)."""
    import drgn

    prog = drgn.Program()
    if core is not None:
        prog.set_core_dump(str(core))
    prog.load_debug_info([str(vmlinux)])
    return prog


def _find_type(prog: Any, name: str) -> Any | None:
    import drgn

    for spelling in (f"struct {name}", f"union {name}", name):
        try:
            return prog.type(spelling)
        except (LookupError, SyntaxError, drgn.FaultError):
            continue
    return None


def _member(prog: Any, tp: Any, path: str) -> tuple[int, int, int | None, int] | None:
    """(bit offset, bit-field size or 0, array length or None, byte size) of a dotted member."""
    bit = 0
    cur = tp
    member: Any = None
    for comp in path.split("."):
        cur = cur.unqualified()
        while cur.kind.name == "TYPEDEF":
            cur = cur.type.unqualified()
        try:
            member = cur.member(comp)
        except (LookupError, ValueError, TypeError):
            return None
        bit += member.bit_offset
        cur = member.type
    assert member is not None
    target = member.type.unqualified()
    while target.kind.name == "TYPEDEF":
        target = target.type.unqualified()
    length = target.length if target.kind.name == "ARRAY" else None
    import drgn

    return bit, member.bit_field_size or 0, length, drgn.sizeof(member.type)


def catalogue_facts(prog: Any) -> dict[str, int]:
    """Every SIZE/OFFSET/BITOFFSET/LENGTH/NUMBER fact of the catalogue, as drgn sees it."""
    import drgn

    facts: dict[str, int] = {}
    for q in TYPE_QUERIES:
        tp = _find_type(prog, q.type_name)
        if tp is None:
            continue
        facts[f"SIZE({q.type_name})"] = drgn.sizeof(tp)
        for path in q.members:
            loc = _member(prog, tp, path)
            if loc is None:
                continue
            bit, bits, length, _ = loc
            if bits or bit % 8:
                facts[f"BITOFFSET({q.type_name}.{path})"] = bit
            else:
                facts[f"OFFSET({q.type_name}.{path})"] = bit // 8
            if path in q.arrays and length is not None:
                facts[f"LENGTH({q.type_name}.{path})"] = length
    for enum in ENUM_QUERIES:
        try:
            tp = prog.type(f"enum {enum}")
        except LookupError:
            continue
        for e in tp.enumerators or ():
            facts[f"NUMBER({e.name})"] = e.value
    for name in ENUMERATOR_QUERIES:
        try:
            facts[f"NUMBER({name})"] = prog.constant(name).value_()
        except LookupError:
            continue
    return facts
