"""Debian archive access for the fixture builder: indexes, version order, downloads.

Everything here talks to the archive with urllib only (no apt configuration on
the host).  Indexes are verified against the suite's InRelease file with gpgv
and the Debian archive keyring when both are available, and every downloaded
.deb is checked against the SHA256 recorded in the Packages index.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

DEBIAN_MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
ARCH = "amd64"
INDEX_MAX_AGE_S = 6 * 3600


class ArchiveError(RuntimeError):
    """The archive did not give us what we need (missing index, bad hash, ...)."""


# --------------------------------------------------------------------------
# Debian version comparison (Debian Policy 5.6.12), written from the policy text.


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _cmp_part(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        # non-digit prefix, compared with the policy's modified ASCII order
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ca = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            cb = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ca != cb:
                return -1 if ca < cb else 1
            if i < len(a) and not a[i].isdigit():
                i += 1
            if j < len(b) and not b[j].isdigit():
                j += 1
        # numeric part
        si = i
        while i < len(a) and a[i].isdigit():
            i += 1
        sj = j
        while j < len(b) and b[j].isdigit():
            j += 1
        na = int(a[si:i] or "0")
        nb = int(b[sj:j] or "0")
        if na != nb:
            return -1 if na < nb else 1
    return 0


def _split_version(v: str) -> tuple[int, str, str]:
    epoch = 0
    if ":" in v:
        e, v = v.split(":", 1)
        epoch = int(e)
    if "-" in v:
        upstream, revision = v.rsplit("-", 1)
    else:
        upstream, revision = v, ""
    return epoch, upstream, revision


def version_compare(a: str, b: str) -> int:
    """Compare two Debian version strings; return -1, 0 or 1 like dpkg --compare-versions."""
    ea, ua, ra = _split_version(a)
    eb, ub, rb = _split_version(b)
    if ea != eb:
        return -1 if ea < eb else 1
    c = _cmp_part(ua, ub)
    if c:
        return c
    return _cmp_part(ra, rb)


# --------------------------------------------------------------------------
# Packages index parsing


@dataclass(frozen=True)
class PackageRecord:
    """One stanza of a Packages index."""

    name: str
    version: str
    source: str  # source package name without the version in parentheses
    filename: str  # pool path relative to the mirror root
    sha256: str
    size: int
    depends: tuple[str, ...]  # first alternative of each Depends/Pre-Depends entry
    mirror: str
    suite: str


def parse_packages(text: str, mirror: str = DEBIAN_MIRROR, suite: str = "",
                   names: re.Pattern[str] | None = None) -> Iterator[PackageRecord]:
    """Parse the text of a Debian Packages index into records (malformed stanzas are skipped).

    With names, only stanzas whose Package matches it (re.match) are parsed.
    """
    for stanza in re.split(r"\n\s*\n", text):
        if names is not None:
            m = re.match(r"\s*Package:\s*(\S+)", stanza)
            if m is None or not names.match(m.group(1)):
                continue
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if not line:
                continue
            if line[0] in " \t" and key is not None:
                fields[key] += "\n" + line.strip()
                continue
            if ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        try:
            name = fields["Package"]
            version = fields["Version"]
            filename = fields["Filename"]
            sha256 = fields["SHA256"]
            size = int(fields["Size"])
        except (KeyError, ValueError):
            continue
        source = fields.get("Source", name).split(" ", 1)[0]
        deps: list[str] = []
        for dep_field in ("Pre-Depends", "Depends"):
            for entry in fields.get(dep_field, "").split(","):
                entry = entry.strip()
                if not entry:
                    continue
                first = entry.split("|", 1)[0].strip()
                dep_name = re.split(r"[\s(:]", first, maxsplit=1)[0]
                if dep_name:
                    deps.append(dep_name)
        yield PackageRecord(name, version, source, filename, sha256, size, tuple(deps), mirror, suite)


@dataclass
class PackageIndex:
    """Union of several Packages indexes; for each name the newest version wins."""

    packages: dict[str, PackageRecord] = field(default_factory=dict)
    suites: list[str] = field(default_factory=list)

    def add(self, records: Iterable[PackageRecord]) -> None:
        """Merge records, keeping the highest version of each package name."""
        for r in records:
            old = self.packages.get(r.name)
            if old is None or version_compare(r.version, old.version) > 0:
                self.packages[r.name] = r

    def get(self, name: str) -> PackageRecord | None:
        """Return the record for a package name, or None."""
        return self.packages.get(name)

    def closure(self, root: str, keep: re.Pattern[str]) -> list[PackageRecord]:
        """Return root plus its transitive Depends whose names match keep (existing ones only)."""
        out: list[PackageRecord] = []
        seen: set[str] = set()
        todo = [root]
        while todo:
            name = todo.pop(0)
            if name in seen:
                continue
            seen.add(name)
            rec = self.packages.get(name)
            if rec is None:
                continue
            out.append(rec)
            todo.extend(d for d in rec.depends if keep.search(d))
        return out


# --------------------------------------------------------------------------
# Kernel choice


# ABI forms seen: 5.10.0-46, 6.1.0-0.deb11.52, 6.12.118+deb13, 6.12.115+deb13.1, 7.2.13+deb14.
# The ABI never contains a further dash-separated word, so -cloud-amd64 / -rt-amd64 do not match.
_IMAGE_RE = re.compile(
    r"^linux-(?:image|binary|modules)-(?P<abi>[0-9]+\.[0-9]+(?:\.[0-9]+)?(?:-[0-9][^-\s]*|\+[^-\s]+)?)"
    r"-(?P<flavour>[a-z0-9]+)(?:-unsigned)?$"
)


@dataclass(frozen=True)
class KernelChoice:
    """The kernel packages picked for one suite."""

    suite: str
    release: str  # uname -r, e.g. 6.1.0-56-amd64
    version: str  # Debian package version
    root_package: str  # linux-image-X-unsigned or linux-image-X
    packages: tuple[PackageRecord, ...]  # everything to download for vmlinuz/modules/config
    dbg: PackageRecord | None


def choose_kernel(index: PackageIndex, suite: str, flavour: str = "amd64") -> KernelChoice:
    """Pick the newest kernel built from source 'linux' whose -dbg package is also indexed.

    The suite's own kernel is the one built from the source package named
    exactly ``linux`` (backports such as ``linux-6.12`` in bookworm-security
    are ignored).  The package that carries vmlinuz is ``linux-image-X-unsigned``
    when it exists, otherwise ``linux-image-X`` and its ``linux-*-X`` dependencies
    (``linux-binary-X`` + ``linux-modules-X`` in newer packaging).
    """
    best: tuple[str, str] | None = None  # (version, abi)
    for name, rec in index.packages.items():
        m = _IMAGE_RE.match(name)
        if not m or m.group("flavour") != flavour:
            continue
        if rec.source not in ("linux", "linux-signed-" + ARCH):
            continue
        abi = m.group("abi")
        release = f"{abi}-{flavour}"
        dbg = index.get(f"linux-image-{release}-dbg")
        if dbg is None or dbg.source != "linux":
            continue
        if index.get(f"linux-image-{release}-unsigned") is None and index.get(f"linux-image-{release}") is None:
            continue
        if best is None or version_compare(rec.version, best[0]) > 0:
            best = (rec.version, release)
    if best is None:
        raise ArchiveError(f"{suite}: no linux-image-*-{flavour} with a matching -dbg package in the index")
    release = best[1]
    root = f"linux-image-{release}-unsigned"
    if index.get(root) is None:
        root = f"linux-image-{release}"
    keep = re.compile(r"^linux-[a-z]+-" + re.escape(release) + r"$")
    pkgs = index.closure(root, keep)
    # A meta linux-image-X carries nothing itself; keep it anyway (tiny) for the record.
    dbg = index.get(f"linux-image-{release}-dbg")
    return KernelChoice(suite, release, pkgs[0].version, root, tuple(pkgs), dbg)


# --------------------------------------------------------------------------
# Network


def _urlopen(url: str, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    req = urllib.request.Request(url, headers={"User-Agent": "kdlayout-fixture-builder"})
    return urllib.request.urlopen(req, timeout=timeout)


def fetch_bytes(url: str, retries: int = 3) -> bytes:
    """GET a URL into memory (small files only), with retries."""
    last: Exception | None = None
    for attempt in range(retries):
        try:
            with _urlopen(url) as r:
                data: bytes = r.read()
                return data
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise
            last = e
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            last = e
        time.sleep(2 * (attempt + 1))
    raise ArchiveError(f"cannot fetch {url}: {last}")


def download(url: str, dest: Path, sha256: str, size: int | None = None, retries: int = 3) -> Path:
    """Stream url to dest (atomically), verifying its SHA256; skip if dest already matches."""
    if dest.exists() and (size is None or dest.stat().st_size == size):
        h = hashlib.sha256()
        with open(dest, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        if h.hexdigest() == sha256:
            return dest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(retries):
        tmp = dest.with_name(dest.name + f".part{os.getpid()}")
        try:
            h = hashlib.sha256()
            with _urlopen(url, timeout=120) as r, open(tmp, "wb") as f:
                while True:
                    chunk = r.read(1 << 20)
                    if not chunk:
                        break
                    h.update(chunk)
                    f.write(chunk)
            if h.hexdigest() != sha256:
                raise ArchiveError(f"{url}: SHA256 {h.hexdigest()} != index {sha256}")
            os.replace(tmp, dest)
            return dest
        except (urllib.error.URLError, TimeoutError, ConnectionError, ArchiveError) as e:
            last = e
            tmp.unlink(missing_ok=True)
            time.sleep(2 * (attempt + 1))
    raise ArchiveError(f"cannot download {url}: {last}")


def _suite_urls(suite: str) -> list[tuple[str, str]]:
    """(mirror, dist) pairs to read for a suite: the suite, -updates and -security."""
    out = [(DEBIAN_MIRROR, suite)]
    if suite not in ("sid", "unstable", "experimental"):
        out.append((DEBIAN_MIRROR, suite + "-updates"))
        out.append((SECURITY_MIRROR, suite + "-security"))
    return out


def _verify_inrelease(inrelease: Path) -> bytes:
    """Check an InRelease signature with gpgv; return the signed text (raises on failure)."""
    if not KEYRING.exists() or shutil.which("gpgv") is None or os.environ.get("KDLAYOUT_NO_GPGV"):
        return inrelease.read_bytes()
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        r = subprocess.run(
            ["gpgv", "--keyring", str(KEYRING), "--output", out.name, str(inrelease)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise ArchiveError(
                f"{inrelease}: gpgv failed: {r.stderr.strip().splitlines()[-1:]} (archive keys newer than "
                f"{KEYRING}? update debian-archive-keyring, or set KDLAYOUT_NO_GPGV=1 to rely on SHA256 only)"
            )
        return Path(out.name).read_bytes()


def _inrelease_sha256(signed: bytes, member: str) -> str | None:
    in_sha = False
    for line in signed.decode("utf-8", "replace").splitlines():
        if line.startswith("SHA256:"):
            in_sha = True
            continue
        if in_sha:
            if not line.startswith(" "):
                in_sha = False
                continue
            parts = line.split()
            if len(parts) == 3 and parts[2] == member:
                return parts[0]
    return None


def load_index(suite: str, cache: Path, log: list[str] | None = None,
               names: re.Pattern[str] | None = None) -> PackageIndex:
    """Download (or reuse, if younger than 6 h) and verify the indexes of a suite.

    names restricts parsing to matching package names (much faster for kernels).
    """
    idx = PackageIndex()
    member = f"main/binary-{ARCH}/Packages.xz"
    for mirror, dist in _suite_urls(suite):
        d = cache / "index" / dist
        d.mkdir(parents=True, exist_ok=True)
        pk = d / "Packages.xz"
        ir = d / "InRelease"
        fresh = pk.exists() and ir.exists() and time.time() - pk.stat().st_mtime < INDEX_MAX_AGE_S
        if not fresh:
            try:
                inrel = fetch_bytes(f"{mirror}/dists/{dist}/InRelease")
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    continue
                raise
            tmp = ir.with_name("InRelease.part")
            tmp.write_bytes(inrel)
            signed = _verify_inrelease(tmp)
            want = _inrelease_sha256(signed, member)
            if want is None:
                tmp.unlink()
                continue
            data = fetch_bytes(f"{mirror}/dists/{dist}/{member}")
            got = hashlib.sha256(data).hexdigest()
            if got != want:
                raise ArchiveError(f"{dist} {member}: SHA256 {got} != InRelease {want}")
            pk.with_name("Packages.xz.part").write_bytes(data)
            os.replace(pk.with_name("Packages.xz.part"), pk)
            os.replace(tmp, ir)
            if log is not None:
                log.append(f"{dist}: index verified ({len(data)} bytes)")
        text = lzma.decompress(pk.read_bytes()).decode("utf-8", "replace")
        idx.add(parse_packages(text, mirror, dist, names))
        idx.suites.append(dist)
    if not idx.suites:
        raise ArchiveError(f"{suite}: no index found")
    return idx


def fetch_deb(rec: PackageRecord, cache: Path) -> Path:
    """Download a package into cache/debs (verified against the index SHA256)."""
    dest = cache / "debs" / Path(rec.filename).name
    return download(f"{rec.mirror}/{rec.filename}", dest, rec.sha256, rec.size)


def extract_deb(deb: Path, dest: Path) -> None:
    """Unpack a .deb's data tree into dest with dpkg-deb -x."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)


def stream_extract_first(rec: PackageRecord, candidates: Iterable[str], dst: Path, tmpdir: Path) -> str | None:
    """Download a big .deb, verify it, stream its data tar and keep the first regular file
    among candidates (paths like ``./usr/lib/debug/boot/vmlinux-X``) as dst; delete the .deb.

    Returns the member name kept, or None when no candidate is a regular file.
    """
    import tarfile

    want = set(candidates)
    deb = download(f"{rec.mirror}/{rec.filename}", tmpdir / Path(rec.filename).name, rec.sha256, rec.size)
    try:
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        kept: str | None = None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
                for m in tf:
                    if kept is None and m.name in want and m.isfile():
                        src = tf.extractfile(m)
                        if src is None:
                            continue
                        tmp = dst.with_name(dst.name + ".part")
                        with open(tmp, "wb") as f:
                            shutil.copyfileobj(src, f, 1 << 20)
                        os.replace(tmp, dst)
                        kept = m.name
                        break  # the rest of the (multi-GB) tar is not needed
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.wait()
        return kept
    finally:
        deb.unlink(missing_ok=True)
