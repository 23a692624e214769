"""Pytest plumbing for the real kdump fixture matrix (see tests/fixtures.py, docs/fixtures.md).

Any test that takes an argument named ``fixture`` runs once per built fixture
(ids are fixture names) and carries the ``fixtures`` marker; without a built
matrix it gets a single case skipped with the reason ``NOT_BUILT``.
``fixture_names()`` gives the same parameters for explicit parametrize().
"""

from __future__ import annotations

from typing import Any

import pytest

from fixtures import NOT_BUILT, Fixture, load_fixtures


def fixture_names() -> list[Any]:
    """``pytest.param(name, id=name)`` per built fixture, or one skipped param when none exists."""
    names = [f.name for f in load_fixtures()]
    if not names:
        return [pytest.param(None, id="no-fixtures", marks=pytest.mark.skip(reason=NOT_BUILT))]
    return [pytest.param(n, id=n, marks=pytest.mark.fixtures) for n in names]


def fixture_params() -> list[Any]:
    """``pytest.param(Fixture, id=name)`` per built fixture, or one skipped param when none exists."""
    fixtures: list[Fixture] = load_fixtures()
    if not fixtures:
        return [pytest.param(None, id="no-fixtures", marks=pytest.mark.skip(reason=NOT_BUILT))]
    return [pytest.param(f, id=f.name, marks=pytest.mark.fixtures) for f in fixtures]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize the ``fixture`` argument over the built fixture matrix."""
    if "fixture" in metafunc.fixturenames:
        metafunc.parametrize("fixture", fixture_params())
