#!/usr/bin/env python3
"""Download Debian ``linux-headers`` trees for the headers layout source and its tests.

For each suite asked for (default: bookworm and trixie) this picks one kernel ABI, downloads
``linux-headers-<abi>-amd64`` and ``linux-headers-<abi>-common`` from deb.debian.org (checking each
.deb against the SHA256 in the suite's Packages index, whose own hash is checked against the
gpgv-verified InRelease), and unpacks both into ``$KDLAYOUT_CACHE/headers/<abi>-amd64/``. The tree
to hand to ``kdlayout resolve --headers`` is then
``$KDLAYOUT_CACHE/headers/<abi>-amd64/usr/src/linux-headers-<abi>-amd64``.

The ABI is the one of a fixture kernel of that suite when one exists (``fixtures/*/manifest.json``
or ``kernels/<release>/``), so that the headers describe exactly the kernel the tests compare
against; otherwise the newest ABI the suite (with its security and updates pockets) offers.

    tools/fetch_headers.py                   # bookworm and trixie
    tools/fetch_headers.py --suite trixie --release 6.12.118+deb13-amd64
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import NamedTuple

MIRRORS = {"": "http://deb.debian.org/debian", "-updates": "http://deb.debian.org/debian",
           "-security": "http://deb.debian.org/debian-security"}
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Major.minor series of each suite (ABI names are "<series>.<n>-<abi>" or "<series>.<n>+debNN");
# None: whatever the suite carries (unstable moves on).
SUITE_SERIES: dict[str, str | None] = {"bullseye": "5.10", "bookworm": "6.1", "trixie": "6.12",
                                       "sid": None}


class Deb(NamedTuple):
    package: str
    version: str
    url: str
    sha256: str
    size: int


def cache_root() -> Path:
    """``$KDLAYOUT_CACHE``, else ``~/.cache/kdlayout``."""
    return Path(os.environ.get("KDLAYOUT_CACHE") or Path.home() / ".cache" / "kdlayout")


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as resp:
        data: bytes = resp.read()
        return data


def _dist_path(suite: str, pocket: str) -> str:
    return f"{suite}-security" if pocket == "-security" else f"{suite}{pocket}"


def _signed_release(suite: str, pocket: str, where: Path) -> str:
    """The InRelease text of one pocket, signature checked with gpgv when a keyring exists."""
    dist = _dist_path(suite, pocket)
    path = where / dist / "InRelease"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_fetch(f"{MIRRORS[pocket]}/dists/{dist}/InRelease"))
    if KEYRING.exists() and shutil.which("gpgv"):
        out = subprocess.run(["gpgv", "--keyring", str(KEYRING), "--output", "-", str(path)],
                             capture_output=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"{path}: InRelease signature check failed")
        return out.stdout.decode("utf-8", "replace")
    return path.read_text("utf-8", "replace")


def _packages(suite: str, pocket: str, where: Path) -> str:
    """The uncompressed main/binary-amd64 Packages index of one pocket, hash-checked."""
    dist = _dist_path(suite, pocket)
    member = "main/binary-amd64/Packages.xz"
    release = _signed_release(suite, pocket, where)
    want = None
    in_sha256 = False
    for line in release.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.startswith("SHA256:")
            continue
        parts = line.split()
        if in_sha256 and len(parts) == 3 and parts[2] == member:
            want = parts[0]
    if want is None:
        raise SystemExit(f"{dist}: InRelease lists no {member}")
    path = where / dist / "Packages.xz"
    if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != want:
        path.write_bytes(_fetch(f"{MIRRORS[pocket]}/dists/{dist}/{member}"))
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != want:
        raise SystemExit(f"{path}: SHA256 {got} does not match InRelease {want}")
    return lzma.decompress(path.read_bytes()).decode("utf-8", "replace")


def _index(suite: str, where: Path) -> dict[str, Deb]:
    """Every linux-headers/linux-kbuild package of the suite's pockets (later pockets win)."""
    found: dict[str, Deb] = {}
    for pocket in ("", "-updates", "-security") if suite != "sid" else ("",):
        try:
            text = _packages(suite, pocket, where)
        except OSError as exc:
            print(f"{suite}{pocket}: skipped ({exc})", file=sys.stderr)
            continue
        for stanza in text.split("\n\n"):
            fields = dict(line.split(": ", 1) for line in stanza.splitlines()
                          if ": " in line and not line.startswith(" "))
            name = fields.get("Package", "")
            if not name.startswith(("linux-headers-", "linux-kbuild-")):
                continue
            deb = Deb(name, fields["Version"], f"{MIRRORS[pocket]}/{fields['Filename']}",
                      fields["SHA256"], int(fields["Size"]))
            if name not in found or _vkey(deb.version) > _vkey(found[name].version):
                found[name] = deb
    return found


def _vkey(version: str) -> tuple[int, ...]:
    """A sort key good enough for kernel package versions (digits runs only)."""
    return tuple(int(n) for n in re.findall(r"\d+", version))


def fixture_releases() -> list[str]:
    """Kernel releases the fixture builder has (manifests, then kernels/ directories)."""
    root = cache_root()
    releases: list[str] = []
    for manifest in sorted(root.glob("fixtures/*/manifest.json")):
        try:
            rel = json.loads(manifest.read_text()).get("release")
        except (OSError, ValueError):
            continue
        if isinstance(rel, str):
            releases.append(rel)
    releases.extend(p.name for p in sorted(root.glob("kernels/*")) if p.is_dir())
    return releases


def choose_release(suite: str, index: dict[str, Deb], wanted: str | None) -> str:
    """``<abi>-amd64``: the one asked for, a fixture's, or the newest the suite has."""
    series = SUITE_SERIES[suite]
    prefix = re.escape(series) + r"\." if series else r"[0-9]+\.[0-9]+\."
    pattern = re.compile(rf"^linux-headers-({prefix}[0-9][^ ]*)-amd64$")
    available = {m.group(1) + "-amd64" for name in index if (m := pattern.match(name))}
    available = {r for r in available if not r.endswith(("-cloud-amd64", "-rt-amd64"))}
    if wanted:
        if wanted not in available:
            raise SystemExit(f"{suite}: no linux-headers-{wanted}; have {sorted(available)}")
        return wanted
    for rel in fixture_releases():
        if rel in available:
            return rel
    if not available:
        raise SystemExit(f"{suite}: no linux-headers-{series or ''}* packages in the index")
    return max(available, key=lambda r: _vkey(index[f"linux-headers-{r}"].version))


def download(deb: Deb, dest: Path) -> Path:
    """Download one .deb into ``dest`` (kept across runs) and check its SHA256 and size."""
    path = dest / Path(deb.url).name
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == deb.sha256:
        return path
    dest.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    data = _fetch(deb.url)
    got = hashlib.sha256(data).hexdigest()
    if got != deb.sha256 or len(data) != deb.size:
        raise SystemExit(f"{deb.url}: SHA256 {got} (size {len(data)}) does not match the "
                         f"Packages index {deb.sha256} (size {deb.size})")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def fetch_suite(suite: str, release: str | None = None) -> Path:
    """Fetch and unpack the headers of ``suite``; return the ``-amd64`` headers tree."""
    root = cache_root()
    index = _index(suite, root / "headers" / "index")
    rel = choose_release(suite, index, release)
    abi = rel.removesuffix("-amd64")
    target = root / "headers" / rel
    tree = target / "usr" / "src" / f"linux-headers-{rel}"
    stamp = target / ".unpacked"
    if stamp.exists():
        return tree
    debs = [index[f"linux-headers-{rel}"], index[f"linux-headers-{abi}-common"]]
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        staging = Path(tmp) / "tree"
        for deb in debs:
            path = download(deb, root / "headers" / "debs")
            print(f"{suite}: unpack {path.name}", file=sys.stderr)
            subprocess.run(["dpkg-deb", "-x", str(path), str(staging)], check=True)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    stamp.write_text(json.dumps({"release": rel, "packages": [d._asdict() for d in debs]},
                                indent=1))
    return tree


def main(argv: list[str] | None = None) -> int:
    """Fetch the suites asked for; print each headers tree's path."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", action="append", choices=sorted(SUITE_SERIES),
                    help="suite to fetch (repeatable; default bookworm and trixie)")
    ap.add_argument("--release", help="exact <abi>-amd64 release (with a single --suite)")
    args = ap.parse_args(argv)
    suites = args.suite or ["bookworm", "trixie"]
    if args.release and len(suites) != 1:
        ap.error("--release needs exactly one --suite")
    for suite in suites:
        print(fetch_suite(suite, args.release))
    return 0


if __name__ == "__main__":
    sys.exit(main())
