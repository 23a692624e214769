"""VMCOREINFO as a layout source.

VMCOREINFO is the crashed kernel's own export for dump tools: its ``SYMBOL()`` values are runtime
addresses (KASLR already applied), its ``OFFSET()``/``SIZE()``/``LENGTH()``/``NUMBER()`` values
were computed by the compiler that built that kernel. Every entry becomes a :class:`Fact` under the
same key it has in the text, with the line's file offset as origin.
"""

from __future__ import annotations

import re

from ..layout import Fact
from ..vmcoreinfo import VmcoreInfo

_TYPED = re.compile(r"^(SYMBOL|OFFSET|SIZE|LENGTH|NUMBER)\((.+)\)$")

# Plain keys worth carrying into the layout, with the fact name used there.
_PLAIN_INT = {"PAGESIZE": "PAGESIZE", "CRASHTIME": "CRASHTIME"}
_PLAIN_HEX = {"KERNELOFFSET": "KERNELOFFSET"}
_PLAIN_STR = {"OSRELEASE": "OSRELEASE", "BUILD-ID": "BUILD-ID"}


def vmcoreinfo_facts(info: VmcoreInfo, *, where: str) -> list[Fact]:
    """Every usable VMCOREINFO entry of ``info`` as a fact (source ``"vmcoreinfo"``).

    ``where`` names the container (the dump path, or ``-i FILE``) for provenance.
    """
    facts: list[Fact] = []
    tables = {"SYMBOL": info.symbols, "OFFSET": info.offsets, "SIZE": info.sizes,
              "LENGTH": info.lengths, "NUMBER": info.numbers}
    for line in info.lines:
        origin = f"{where} VMCOREINFO offset {line.offset:#x}"
        m = _TYPED.match(line.key)
        if m:
            value = tables[m.group(1)].get(m.group(2))
            if value is not None:
                facts.append(Fact(line.key, value, "vmcoreinfo", origin))
            continue
        if line.key.startswith("CONFIG_"):
            facts.append(Fact(f"CONFIG({line.key})", line.value, "vmcoreinfo", origin))
        elif line.key in _PLAIN_STR:
            facts.append(Fact(_PLAIN_STR[line.key], line.value, "vmcoreinfo", origin))
        elif line.key in _PLAIN_INT:
            try:
                facts.append(Fact(_PLAIN_INT[line.key], int(line.value, 10), "vmcoreinfo", origin))
            except ValueError:
                continue
        elif line.key in _PLAIN_HEX:
            try:
                facts.append(Fact(_PLAIN_HEX[line.key], int(line.value, 16), "vmcoreinfo", origin))
            except ValueError:
                continue
    # The last occurrence of a key wins in the parser; keep only that one here as well.
    last: dict[str, Fact] = {}
    for f in facts:
        last[f.key] = f
    return list(last.values())
