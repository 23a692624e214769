"""tools/fetch_headers.py: which headers packages it picks (no network)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import fetch_headers as fh  # type: ignore[import-not-found, unused-ignore]


def _deb(name: str, version: str) -> fh.Deb:
    return fh.Deb(name, version, f"http://deb.debian.org/debian/pool/{name}.deb", "0" * 64, 1)


INDEX = {d.package: d for d in (
    _deb("linux-headers-6.1.0-9-amd64", "6.1.27-1"),
    _deb("linux-headers-6.1.0-10-amd64", "6.1.38-1"),
    _deb("linux-headers-6.1.0-10-cloud-amd64", "6.1.38-1"),
    _deb("linux-headers-6.1.0-10-rt-amd64", "6.1.38-1"),
    _deb("linux-headers-6.1.0-10-common", "6.1.38-1"),
    _deb("linux-headers-amd64", "6.1.38-1"),
    _deb("linux-headers-6.12.9+deb13-amd64", "6.12.9-1"),
)}


def test_newest_abi_of_the_series_without_fixtures(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDLAYOUT_CACHE", str(tmp_path))
    # 6.1.0-10 beats 6.1.0-9 (numeric, not string order); cloud/rt flavours and 6.12 are ignored.
    assert fh.choose_release("bookworm", INDEX, None) == "6.1.0-10-amd64"
    assert fh.choose_release("trixie", INDEX, None) == "6.12.9+deb13-amd64"


def test_fixture_release_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDLAYOUT_CACHE", str(tmp_path))
    (tmp_path / "fixtures/bookworm").mkdir(parents=True)
    (tmp_path / "fixtures/bookworm/manifest.json").write_text(
        json.dumps({"release": "6.1.0-9-amd64"}))
    assert fh.fixture_releases() == ["6.1.0-9-amd64"]
    assert fh.choose_release("bookworm", INDEX, None) == "6.1.0-9-amd64"


def test_unknown_release_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDLAYOUT_CACHE", str(tmp_path))
    with pytest.raises(SystemExit, match=r"6\.1\.0-99-amd64"):
        fh.choose_release("bookworm", INDEX, "6.1.0-99-amd64")
    assert fh.choose_release("bookworm", INDEX, "6.1.0-9-amd64") == "6.1.0-9-amd64"
