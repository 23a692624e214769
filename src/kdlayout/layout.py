"""The `Layout`: every kernel fact the later stages need, each with where it came from.

Facts are named the way VMCOREINFO names them, so that a fact read from VMCOREINFO, from BTF, from
DWARF or from headers lands under the same key and can be compared:

* ``SYMBOL(name)``       — a kernel virtual address (already KASLR-adjusted for the crashed kernel),
* ``SIZE(type)``         — ``sizeof(struct type)`` (or of a typedef / enum),
* ``OFFSET(type.member)`` — byte offset of a member, dots descending through named members and
  through anonymous structs/unions transparently (``OFFSET(page.compound_head)``),
* ``LENGTH(name)``       — number of elements of an array,
* ``NUMBER(name)``       — an integer constant: enumerators (``NUMBER(PG_slab)``, ``NUMBER(PGTY_buddy)``),
  macros VMCOREINFO exports (``NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)``), configuration-derived values,
* ``CONFIG(name)``       — a kernel configuration value,
* plain keys for anything else the resolver derives (``page_type_scheme``, ``memory_model``).

A :class:`Source` produces :class:`Fact` records; the resolver merges them into a :class:`Layout`,
keeping every candidate so that disagreements are visible (``Resolution.conflicts``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from .errors import MissingDataError

FactValue = int | str | bool


@dataclass(frozen=True)
class Fact:
    """One value from one source.

    ``source`` is a short source kind ("vmcoreinfo", "btf", "kallsyms", "dwarf", "headers", "db",
    "derived"); ``origin`` says exactly where inside it (a file and offset, a BTF type id, a
    VMCOREINFO line), so that a reader of the report can go and check.
    """

    key: str
    value: FactValue
    source: str
    origin: str = ""


@dataclass
class Resolution:
    """The chosen value of one fact, and every candidate the sources offered."""

    key: str
    chosen: Fact
    candidates: list[Fact] = field(default_factory=list)

    @property
    def value(self) -> FactValue:
        return self.chosen.value

    @property
    def agreeing(self) -> list[str]:
        """Sources other than the chosen one that offered the same value."""
        return [f.source for f in self.candidates
                if f is not self.chosen and f.value == self.chosen.value]

    @property
    def conflicts(self) -> list[Fact]:
        """Candidates whose value differs from the chosen one."""
        return [f for f in self.candidates if f.value != self.chosen.value]


class Layout(Mapping[str, Resolution]):
    """Resolved facts of one crashed kernel, keyed as described in the module docstring."""

    def __init__(self, resolutions: Iterable[Resolution] = (), *, release: str | None = None,
                 build_id: str | None = None) -> None:
        self._res: dict[str, Resolution] = {r.key: r for r in resolutions}
        self.release = release
        self.build_id = build_id
        self.warnings: list[str] = []

    def __getitem__(self, key: str) -> Resolution:
        return self._res[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._res)

    def __len__(self) -> int:
        return len(self._res)

    def add(self, resolution: Resolution) -> None:
        self._res[resolution.key] = resolution

    def get_value(self, key: str) -> FactValue | None:
        res = self._res.get(key)
        return None if res is None else res.value

    def require(self, key: str) -> FactValue:
        """The value of ``key``, or :class:`MissingDataError` naming the fact."""
        res = self._res.get(key)
        if res is None:
            raise MissingDataError(f"layout fact {key} could not be resolved from any source")
        return res.value

    def int_value(self, key: str) -> int:
        value = self.require(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise MissingDataError(f"layout fact {key} is {value!r}, not an integer")
        return value

    def optional_int(self, key: str) -> int | None:
        value = self.get_value(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    # Convenience spellings of the VMCOREINFO-style keys.
    def symbol(self, name: str) -> int:
        return self.int_value(f"SYMBOL({name})")

    def offset(self, type_name: str, member: str) -> int:
        return self.int_value(f"OFFSET({type_name}.{member})")

    def size(self, type_name: str) -> int:
        return self.int_value(f"SIZE({type_name})")

    def number(self, name: str) -> int:
        return self.int_value(f"NUMBER({name})")

    def has(self, key: str) -> bool:
        return key in self._res

    def conflicts(self) -> list[Resolution]:
        return [r for r in self._res.values() if r.conflicts]

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict: one entry per fact with value, source, agreeing sources, conflicts."""
        facts: dict[str, object] = {}
        for key in sorted(self._res):
            r = self._res[key]
            facts[key] = {
                "value": r.value,
                "source": r.chosen.source,
                "origin": r.chosen.origin,
                "agreeing": r.agreeing,
                "conflicts": [{"value": f.value, "source": f.source, "origin": f.origin}
                              for f in r.conflicts],
            }
        return {"release": self.release, "build_id": self.build_id, "warnings": self.warnings,
                "facts": facts}
