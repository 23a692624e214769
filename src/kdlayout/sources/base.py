"""What every type-information source provides, and the one routine that turns it into facts.

BTF, DWARF, kernel headers and the layout database differ in how they find a type, but they answer
the same questions. Each implements :class:`TypeSource`; :func:`type_facts` asks the catalogue's
questions of any of them, so that the facts they produce are named and shaped identically and can
be cross-checked fact by fact.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from ..catalogue import ENUM_QUERIES, ENUMERATOR_QUERIES, TYPE_QUERIES
from ..layout import Fact


class MemberLocation(NamedTuple):
    """Where a member sits inside its outermost containing type."""

    bit_offset: int
    byte_size: int          # size of the member's type (of the whole array for arrays)
    bit_size: int = 0       # non-zero for bitfields
    array_length: int | None = None


class TypeSource(Protocol):
    """A source of C type information about one kernel build."""

    #: Short kind for provenance: "btf", "dwarf", "headers", "db".
    kind: str

    def describe(self) -> str:
        """Where the information comes from (file, section), for the report."""
        ...

    def type_size(self, type_name: str) -> int | None:
        """``sizeof`` the struct, union or typedef named ``type_name``; None if unknown."""
        ...

    def member(self, type_name: str, path: str) -> MemberLocation | None:
        """Location of ``path`` (dotted; anonymous members transparent) in ``type_name``."""
        ...

    def enumerators(self, enum_name: str) -> dict[str, int] | None:
        """All enumerators of ``enum enum_name``; None if the enum is unknown."""
        ...


def type_facts(src: TypeSource) -> list[Fact]:
    """Answer every type and enum query of the catalogue from ``src``.

    Members the kernel does not have yield nothing; byte offsets of bitfields are not emitted as
    OFFSET facts (they are not byte-addressable) but as ``BITOFFSET``.
    """
    facts: list[Fact] = []
    origin = src.describe()
    for q in TYPE_QUERIES:
        size = src.type_size(q.type_name)
        if size is None:
            continue
        facts.append(Fact(f"SIZE({q.type_name})", size, src.kind, origin))
        for path in q.members:
            loc = src.member(q.type_name, path)
            if loc is None:
                continue
            if loc.bit_size or loc.bit_offset % 8:
                facts.append(Fact(f"BITOFFSET({q.type_name}.{path})", loc.bit_offset, src.kind,
                                  origin))
            else:
                facts.append(Fact(f"OFFSET({q.type_name}.{path})", loc.bit_offset // 8, src.kind,
                                  origin))
            if path in q.arrays and loc.array_length is not None:
                facts.append(Fact(f"LENGTH({q.type_name}.{path})", loc.array_length, src.kind,
                                  origin))
    for enum_name in ENUM_QUERIES:
        values = src.enumerators(enum_name)
        if values is None:
            continue
        for name, value in values.items():
            facts.append(Fact(f"NUMBER({name})", value, src.kind, f"{origin} enum {enum_name}"))
    # Optional: sources that can search every enum, named or not, answer ENUMERATOR_QUERIES.
    find = getattr(src, "enumerator", None)
    if find is not None:
        for name in ENUMERATOR_QUERIES:
            found = find(name)
            if found is not None:
                facts.append(Fact(f"NUMBER({name})", found, src.kind, f"{origin} enumerator"))
    return facts
