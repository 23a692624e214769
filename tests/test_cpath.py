"""Member designator paths shared by the BTF, DWARF and drgn type sources."""

from __future__ import annotations

from kdlayout.cpath import Designator, parse_member_path


def test_plain_and_nested_members() -> None:
    assert parse_member_path("flags") == [Designator("flags", ())]
    assert parse_member_path("flags.f") == [Designator("flags", ()), Designator("f", ())]


def test_array_indexes_decimal_and_hex() -> None:
    assert parse_member_path("free_area[10].free_list[0x2]") == [
        Designator("free_area", (10,)), Designator("free_list", (2,))]
    assert parse_member_path("a[4][2]") == [Designator("a", (4, 2))]


def test_malformed_index_is_rejected() -> None:
    assert parse_member_path("free_area[x]") is None
    assert parse_member_path("a[1][]") is None
