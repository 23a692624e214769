"""C member designators: the ``a.b[2][3].c`` paths every type source accepts."""

from __future__ import annotations

from typing import NamedTuple


class Designator(NamedTuple):
    """One step of a member path: a member name and the array indexes applied to it."""

    member: str
    indexes: tuple[int, ...]


def parse_member_path(path: str) -> list[Designator] | None:
    """Split ``path`` at dots into designators (``"x[2][3]"`` -> ``("x", (2, 3))``).

    Indexes may be decimal or ``0x`` hex; returns None for a malformed index.
    """
    out: list[Designator] = []
    for comp in path.split("."):
        indexes: tuple[int, ...] = ()
        if "[" in comp:
            comp, _, rest = comp.partition("[")
            try:
                indexes = tuple(int(x, 0) for x in rest.rstrip("]").split("]["))
            except ValueError:
                return None
        out.append(Designator(comp, indexes))
    return out
