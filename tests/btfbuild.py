"""A tiny BTF encoder for parser and error-path tests (synthetic bytes only).

Written from include/uapi/linux/btf.h; it is deliberately independent of kdlayout.btf (no imports
from it) so that a test's expectations do not come from the code under test. Valid blobs built here
are additionally checked against bpftool where the test can run it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

KINDS = {
    "INT": 1, "PTR": 2, "ARRAY": 3, "STRUCT": 4, "UNION": 5, "ENUM": 6, "FWD": 7, "TYPEDEF": 8,
    "VOLATILE": 9, "CONST": 10, "RESTRICT": 11, "FUNC": 12, "FUNC_PROTO": 13, "VAR": 14,
    "DATASEC": 15, "FLOAT": 16, "DECL_TAG": 17, "TYPE_TAG": 18, "ENUM64": 19,
}


def info(kind: int, vlen: int = 0, kflag: bool = False) -> int:
    """The btf_type info word."""
    return (int(kflag) << 31) | ((kind & 0x1F) << 24) | (vlen & 0xFFFF)


@dataclass
class BtfBuilder:
    """Append types and strings, then :meth:`build` a blob.

    For split BTF pass ``start_id`` (base nr_types) and ``base_str_len``; string offsets handed
    out then continue after the base's string section.
    """

    start_id: int = 1
    base_str_len: int = 0
    strings: bytearray = field(default_factory=lambda: bytearray(b"\0"))
    words: list[int] = field(default_factory=list)
    count: int = 0
    _str_index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.base_str_len:
            self.strings = bytearray()  # split string sections need no leading NUL

    def s(self, text: str) -> int:
        """Offset of ``text`` in the (split-aware) string section ('' is 0 in a base)."""
        if text == "" and not self.base_str_len:
            return 0
        if text in self._str_index:
            return self._str_index[text]
        off = self.base_str_len + len(self.strings)
        self.strings += text.encode() + b"\0"
        self._str_index[text] = off
        return off

    def raw(self, name_off: int, info_word: int, size_type: int, extra: list[int] | None = None
            ) -> int:
        """Append one btf_type plus extra words; returns its type id."""
        self.words += [name_off, info_word, size_type, *(extra or [])]
        tid = self.start_id + self.count
        self.count += 1
        return tid

    def int_(self, name: str, size: int, bits: int | None = None, encoding: int = 0,
             offset: int = 0) -> int:
        bits = size * 8 if bits is None else bits
        return self.raw(self.s(name), info(1), size, [(encoding << 24) | (offset << 16) | bits])

    def ref(self, kind: str, target: int, name: str = "") -> int:
        return self.raw(self.s(name), info(KINDS[kind]), target)

    def array(self, elem: int, index: int, nelems: int) -> int:
        return self.raw(0, info(3), 0, [elem, index, nelems])

    def composite(self, kind: str, name: str, size: int,
                  members: list[tuple[str, int, int, int]], kflag: bool = False) -> int:
        """members: (name, type, bit_offset, bitfield_size)."""
        extra: list[int] = []
        for mname, mtype, bit_off, bsize in members:
            off = (bsize << 24) | bit_off if kflag else bit_off
            extra += [self.s(mname), mtype, off]
        return self.raw(self.s(name), info(KINDS[kind], len(members), kflag), size, extra)

    def enum(self, name: str, size: int, values: list[tuple[str, int]], signed: bool = False
             ) -> int:
        extra: list[int] = []
        for vname, val in values:
            extra += [self.s(vname), val & 0xFFFFFFFF]
        return self.raw(self.s(name), info(6, len(values), signed), size, extra)

    def enum64(self, name: str, size: int, values: list[tuple[str, int]], signed: bool = False
               ) -> int:
        extra: list[int] = []
        for vname, val in values:
            v = val & 0xFFFFFFFFFFFFFFFF
            extra += [self.s(vname), v & 0xFFFFFFFF, v >> 32]
        return self.raw(self.s(name), info(19, len(values), signed), size, extra)

    def fwd(self, name: str, union: bool = False) -> int:
        return self.raw(self.s(name), info(7, 0, union), 0)

    def func_proto(self, ret: int, params: list[tuple[str, int]]) -> int:
        extra: list[int] = []
        for pname, ptype in params:
            extra += [self.s(pname), ptype]
        return self.raw(0, info(13, len(params)), ret, extra)

    def func(self, name: str, proto: int, linkage: int = 1) -> int:
        return self.raw(self.s(name), info(12, linkage), proto)

    def var(self, name: str, vtype: int, linkage: int = 1) -> int:
        return self.raw(self.s(name), info(14), vtype, [linkage])

    def datasec(self, name: str, size: int, secinfos: list[tuple[int, int, int]]) -> int:
        extra: list[int] = []
        for vtype, off, sz in secinfos:
            extra += [vtype, off, sz]
        return self.raw(self.s(name), info(15, len(secinfos)), size, extra)

    def float_(self, name: str, size: int) -> int:
        return self.raw(self.s(name), info(16), size)

    def decl_tag(self, name: str, target: int, component_idx: int = -1) -> int:
        return self.raw(self.s(name), info(17), target, [component_idx & 0xFFFFFFFF])

    def type_tag(self, name: str, target: int) -> int:
        return self.raw(self.s(name), info(18), target)

    def build(self, *, big_endian: bool = False, hdr_extra: bytes = b"") -> bytes:
        """``struct btf_header`` (plus ``hdr_extra`` bytes of a newer header), types, strings."""
        e = ">" if big_endian else "<"
        types = struct.pack(f"{e}{len(self.words)}I", *self.words)
        hdr_len = 24 + len(hdr_extra)
        header = struct.pack(f"{e}HBBIIIII", 0xEB9F, 1, 0, hdr_len, 0, len(types), len(types),
                             len(self.strings))
        return header + hdr_extra + types + bytes(self.strings)


def sample() -> tuple[BtfBuilder, dict[str, int]]:
    """A small BTF using every kind, with anonymous members and kind_flag bitfields."""
    b = BtfBuilder()
    ids: dict[str, int] = {}
    ids["int"] = b.int_("int", 4, encoding=1)
    ids["uint"] = b.int_("unsigned int", 4)
    ids["ulong"] = b.int_("long unsigned int", 8)
    ids["char"] = b.int_("char", 1, encoding=2)
    ids["bool"] = b.int_("_Bool", 1, bits=8, encoding=4)
    ids["ptr"] = b.ref("PTR", ids["char"])
    ids["arr"] = b.array(ids["ulong"], ids["int"], 3)
    ids["anon_s"] = b.composite("STRUCT", "", 16, [("lru_a", ids["ulong"], 0, 0),
                                                    ("lru_b", ids["ulong"], 64, 0)])
    ids["anon_u"] = b.composite("UNION", "", 24, [("", ids["anon_s"], 0, 0),
                                                  ("whole", ids["arr"], 0, 0)])
    ids["flags_s"] = b.composite("STRUCT", "flags_t", 8, [("f", ids["ulong"], 0, 0)])
    ids["flags_td"] = b.ref("TYPEDEF", ids["flags_s"], "memdesc_flags_t")
    ids["page"] = b.composite("STRUCT", "page", 72, [
        ("flags", ids["flags_td"], 0, 0),
        ("", ids["anon_u"], 64, 0),
        ("a", ids["uint"], 256, 3),
        ("b", ids["uint"], 259, 5),
        ("c", ids["int"], 288, 0),
        ("name", ids["ptr"], 320, 0),
        ("tail", ids["arr"], 384, 0),
    ], kflag=True)
    ids["enum"] = b.enum("pageflags", 4, [("PG_locked", 0), ("PG_writeback", 1),
                                          ("__NR_PAGEFLAGS", 2)])
    ids["senum"] = b.enum("", 4, [("NEG", -1), ("POS", 5)], signed=True)
    ids["enum64"] = b.enum64("big", 8, [("BIG", 1 << 40), ("HUGE", 0xFFFFFFFF00000000)])
    ids["fwd"] = b.fwd("later")
    ids["fwdu"] = b.fwd("ulater", union=True)
    ids["volatile"] = b.ref("VOLATILE", ids["int"])
    ids["const"] = b.ref("CONST", ids["volatile"])
    ids["restrict"] = b.ref("RESTRICT", ids["ptr"])
    ids["proto"] = b.func_proto(ids["int"], [("x", ids["int"]), ("p", ids["ptr"])])
    ids["func"] = b.func("do_thing", ids["proto"], 1)
    ids["var"] = b.var("counter", ids["int"], 1)
    ids["datasec"] = b.datasec(".data", 4, [(ids["var"], 0, 4)])
    ids["float"] = b.float_("double", 8)
    ids["decl_tag"] = b.decl_tag("tagged", ids["func"], -1)
    ids["type_tag"] = b.type_tag("user", ids["int"])
    ids["tt_ptr"] = b.ref("PTR", ids["type_tag"])
    return b, ids
