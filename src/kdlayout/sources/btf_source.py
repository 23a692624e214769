"""BTF as a layout source: a :class:`~kdlayout.btf.Btf` seen through the `TypeSource` protocol.

Where the BTF comes from (the dump's kernel image, a vmlinux ``.BTF`` section, a compressed
vmlinuz, ``/sys/kernel/btf/vmlinux``) is decided by the resolver; this module only answers
questions about one parsed blob.
"""

from __future__ import annotations

from ..btf import Btf, BtfKind
from ..errors import MissingDataError
from .base import MemberLocation

_COMPOSITES = (BtfKind.STRUCT, BtfKind.UNION)


class BtfTypeSource:
    """Answers :class:`~kdlayout.sources.base.TypeSource` questions from one BTF blob."""

    kind = "btf"

    def __init__(self, btf: Btf, where: str) -> None:
        self.btf = btf
        self.where = where

    def describe(self) -> str:
        return self.where

    def _composite_or_typedef(self, type_name: str) -> int | None:
        ids = self.btf.find(type_name, _COMPOSITES)
        if ids:
            return ids[0]
        for tid in self.btf.find(type_name, BtfKind.TYPEDEF):
            target = self.btf.resolve(tid)
            if target and self.btf.kind(target) in _COMPOSITES:
                return tid
        return None

    def type_size(self, type_name: str) -> int | None:
        """``sizeof(struct type_name)`` (or of the typedef ``type_name``, e.g. ``atomic_long_t``)."""
        tid = self._composite_or_typedef(type_name)
        return None if tid is None else self.btf.size_of(tid)

    def member(self, type_name: str, path: str) -> MemberLocation | None:
        """Location of ``path`` in ``type_name``; None when the kernel has no such member."""
        tid = self._composite_or_typedef(type_name)
        if tid is None:
            return None
        try:
            info = self.btf.member_offset(tid, path)
        except MissingDataError:
            return None
        length: int | None = None
        target = self.btf.resolve(info.type_id)
        if target and self.btf.kind(target) == BtfKind.ARRAY:
            arr = self.btf.type(target).array
            length = None if arr is None else arr.nelems
        bit_size = info.bit_size if info.is_bitfield else 0
        return MemberLocation(info.bit_offset, info.byte_size, bit_size, length)

    def enumerators(self, enum_name: str) -> dict[str, int] | None:
        """Every enumerator of ``enum enum_name``; None when BTF has no such enum."""
        try:
            return self.btf.enumerators(enum_name)
        except MissingDataError:
            return None

    def enumerator(self, name: str) -> int | None:
        """Value of enumerator ``name`` in any enum (named or anonymous); None if absent."""
        try:
            return self.btf.enum_value(None, name)
        except MissingDataError:
            return None
