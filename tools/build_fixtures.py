#!/usr/bin/env python3
"""Build the real kdump fixture matrix for kdlayout's tests.

For each Debian suite the newest kernel (with a matching -dbg package) is
downloaded from the archive, booted under QEMU/TCG with a workload that creates
every page class a dump filter must recognise, dumped by QEMU itself
(dump-guest-memory ELF and kdump-zlib), then crashed with sysrq-c so that the
kdump capture kernel (kexec -p) writes /proc/vmcore to a virtio disk.
makedumpfile then derives compressed/filtered dumps from that vmcore.

Everything lives under $KDLAYOUT_CACHE (default ~/.cache/kdlayout); see
docs/fixtures.md.  Reruns skip finished fixtures (manifest.json with the same
builder_version).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import json
import lzma
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fixture_debian as deb
import peers

BUILDER_VERSION = 1
SUITES = ("bullseye", "bookworm", "trixie", "sid")
#: QEMU -cpu of the matrix: LA57 off, so Debian's CONFIG_X86_5LEVEL kernels run with 4 levels.
DEFAULT_CPU = "max,la57=off"


class Variant(NamedTuple):
    """A fixture beside the per-suite matrix: another capture kernel and/or another guest CPU."""

    suite: str                      # the crashed kernel's suite
    capture_suite: str              # the kdump capture kernel's suite
    cpu: str = DEFAULT_CPU          # QEMU -cpu
    paging_levels: int | None = None  # required NUMBER(pgtable_l5_enabled) outcome, if any


VARIANTS: dict[str, Variant] = {
    "trixie-cap-bookworm": Variant("trixie", "bookworm"),
    # An LA57 CPU: Debian kernels (CONFIG_X86_5LEVEL=y) switch to 5-level paging at boot.
    "trixie-la57": Variant("trixie", "trixie", cpu="max,la57=on", paging_levels=5),
}
TOOLS = Path(__file__).resolve().parent
GUEST = TOOLS / "guest"
CRASHKERNEL_MIB = 256
MAIN_MODULES: list[tuple[str, str, bool]] = [
    # (module, params, required)
    ("virtio_pci", "", True),
    ("virtio_blk", "", True),
    ("virtio_balloon", "", True),
    ("qemu_fw_cfg", "", True),
    ("crc32c_generic", "", False),
    ("crc32c_intel", "", False),
    ("crc32c_cryptoapi", "", False),
    ("libcrc32c", "", False),
    ("lzo", "", False),
    ("lzo_rle", "", False),
    ("zram", "num_devices=1", True),
    ("brd", "rd_nr=1 rd_size={brd_kib}", True),
    ("ext4", "", True),
]
CAPTURE_MODULES: list[tuple[str, str, bool]] = [
    ("virtio_pci", "", True),
    ("virtio_blk", "", True),
]
CAPTURE_CMDLINE = "console=ttyS0 nr_cpus=1 reset_devices irqpoll panic=1 loglevel=4"


def cache_dir(arg: str | None = None) -> Path:
    """The cache root: --cache, else $KDLAYOUT_CACHE, else ~/.cache/kdlayout."""
    if arg:
        return Path(arg).expanduser().resolve()
    env = os.environ.get("KDLAYOUT_CACHE")
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "kdlayout"


_LOGFILE: list[Path] = []


def log(msg: str) -> None:
    """Timestamped progress line on stderr (and in $cache/logs/build-<time>.log once set)."""
    line = f"[{dt.datetime.now(dt.UTC).strftime('%H:%M:%S')}] {msg}"
    print(line, file=sys.stderr, flush=True)
    for f in _LOGFILE:
        with open(f, "a") as o:
            o.write(line + "\n")


# --------------------------------------------------------------------------
# Kernel trees


@dataclass
class KernelTree:
    """An unpacked Debian kernel under kernels/<release>/."""

    release: str
    suite: str
    package: str
    version: str
    dir: Path
    root: Path
    vmlinuz: Path
    config: Path
    moddir: Path
    deps: dict[str, list[str]] = field(default_factory=dict)  # module name -> [dep names]
    files: dict[str, Path] = field(default_factory=dict)  # module name -> .ko(.xz/.zst) path
    builtin: set[str] = field(default_factory=set)
    vmlinux_dbg: Path | None = None


def _modname(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    return base.replace("-", "_")


_kernel_locks: dict[str, threading.Lock] = {}
_kernel_locks_guard = threading.Lock()


def prepare_kernel(choice: deb.KernelChoice, cache: Path, dbg: bool) -> KernelTree:
    """Download, verify and unpack a kernel; run depmod; optionally fetch the -dbg vmlinux."""
    with _kernel_locks_guard:
        lock = _kernel_locks.setdefault(choice.release, threading.Lock())
    with lock:
        return _prepare_kernel(choice, cache, dbg)


def _prepare_kernel(choice: deb.KernelChoice, cache: Path, dbg: bool) -> KernelTree:
    rel = choice.release
    kdir = cache / "kernels" / rel
    root = kdir / "root"
    done = kdir / ".unpacked"
    if not done.exists():
        if root.exists():
            shutil.rmtree(root)
        for rec in choice.packages:
            log(f"{rel}: download {rec.name} {rec.version} ({rec.size >> 20} MiB)")
            debfile = deb.fetch_deb(rec, cache)
            deb.extract_deb(debfile, root)
        if not (root / "lib" / "modules" / rel).exists() and (root / "usr" / "lib" / "modules" / rel).exists():
            if (root / "lib").exists():
                (root / "lib" / "modules").symlink_to("../usr/lib/modules")
            else:
                (root / "lib").symlink_to("usr/lib")
        subprocess.run(["depmod", "-b", str(root), rel], check=True)
        vmlinuz = next(
            (p for p in (root / "boot" / f"vmlinuz-{rel}", root / "usr/lib/modules" / rel / "vmlinuz") if p.is_file()),
            None,
        )
        config = next(
            (p for p in (root / "boot" / f"config-{rel}", root / "usr/lib/modules" / rel / "config") if p.is_file()),
            None,
        )
        if vmlinuz is None or config is None:
            raise RuntimeError(f"{rel}: vmlinuz or config not found in {[r.name for r in choice.packages]}")
        shutil.copy2(vmlinuz, kdir / "vmlinuz")
        shutil.copy2(config, kdir / "config")
        done.write_text(json.dumps({"packages": [r.name + "=" + r.version for r in choice.packages]}))
    moddir = root / "lib" / "modules" / rel
    tree = KernelTree(rel, choice.suite, choice.root_package, choice.version, kdir, root,
                      kdir / "vmlinuz", kdir / "config", moddir)
    for line in (moddir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        mod, _, rest = line.partition(":")
        name = _modname(mod)
        tree.files[name] = moddir / mod
        tree.deps[name] = [_modname(d) for d in rest.split()]
    builtin = moddir / "modules.builtin"
    if builtin.exists():
        tree.builtin = {_modname(x) for x in builtin.read_text().split()}
    dbgfile = kdir / "vmlinux-dbg"
    if dbg and not dbgfile.exists() and choice.dbg is not None:
        log(f"{rel}: streaming {choice.dbg.name} ({choice.dbg.size >> 20} MiB) for vmlinux")
        got = deb.stream_extract_first(
            choice.dbg,
            [f"./usr/lib/debug/lib/modules/{rel}/vmlinux", f"./usr/lib/debug/boot/vmlinux-{rel}"],
            dbgfile,
            cache / "debs",
        )
        log(f"{rel}: vmlinux from {got}")
    if dbgfile.exists():
        tree.vmlinux_dbg = dbgfile
    return tree


def _decompress_module(src: Path, dst: Path) -> None:
    if src.name.endswith(".xz"):
        dst.write_bytes(lzma.decompress(src.read_bytes()))
    elif src.name.endswith(".zst"):
        import zstandard

        with open(src, "rb") as f, open(dst, "wb") as o:
            zstandard.ZstdDecompressor().copy_stream(f, o)
    elif src.name.endswith(".gz"):
        import gzip

        dst.write_bytes(gzip.decompress(src.read_bytes()))
    else:
        shutil.copyfile(src, dst)


def stage_modules(tree: KernelTree, wanted: list[tuple[str, str, bool]], dest: Path, fmt: dict[str, Any]) -> list[str]:
    """Copy decompressed modules (deps first) to dest/modules/<release>/ with an order file."""
    out = dest / "modules" / tree.release
    out.mkdir(parents=True, exist_ok=True)
    order: list[str] = []
    notes: list[str] = []

    def visit(name: str, stack: tuple[str, ...] = ()) -> None:
        if name in order or name in stack:
            return
        for d in tree.deps.get(name, []):
            visit(d, (*stack, name))
        order.append(name)

    params: dict[str, str] = {}
    for name, p, required in wanted:
        if name in tree.files:
            visit(name)
            params[name] = p.format(**fmt)
        elif name in tree.builtin:
            notes.append(f"{name}: built-in")
        elif required:
            notes.append(f"{name}: MISSING")
    lines = []
    for name in order:
        _decompress_module(tree.files[name], out / f"{name}.ko")
        lines.append(f"{name} {params.get(name, '')}".strip())
    (out / "order").write_text("\n".join(lines) + "\n")
    return notes


# --------------------------------------------------------------------------
# initramfs


def _copy_with_libs(binary: str, dest: Path) -> None:
    """Copy a dynamically linked host binary and the libraries ldd lists."""
    target = dest / binary.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, target)
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = re.search(r"(/\S+)", line.split("=>")[-1])
        if not m:
            continue
        lib = m.group(1)
        if not os.path.exists(lib):
            continue
        t = dest / lib.lstrip("/")
        t.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(lib), t)


def _cpio(src: Path, out: Path) -> None:
    files = subprocess.run(["find", "."], cwd=src, capture_output=True, text=True, check=True).stdout
    with open(out, "wb") as f:
        cp = subprocess.Popen(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=src,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        gz = subprocess.Popen(["gzip", "-1", "-n"], stdin=cp.stdout, stdout=f)
        assert cp.stdin is not None and cp.stdout is not None
        cp.stdout.close()
        cp.stdin.write(files.encode())
        cp.stdin.close()
        if cp.wait() != 0 or gz.wait() != 0:
            raise RuntimeError(f"cpio/gzip of {src} failed")


def guest_binary(cache: Path, name: str) -> Path:
    """Compile tools/guest/<name>.c statically (cached by source mtime)."""
    src = GUEST / f"{name}.c"
    out = cache / "build" / name
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{name}.{os.getpid()}.{threading.get_ident()}")
        subprocess.run(["gcc", "-static", "-O2", "-o", str(tmp), str(src)], check=True)
        os.replace(tmp, out)
    return out


def build_initrds(work: Path, crashed: KernelTree, capture: KernelTree, init_vars: dict[str, str],
                  cache: Path) -> tuple[Path, list[str]]:
    """Build the capture initrd and the main initrd (which contains the capture one)."""
    init_text = (GUEST / "init.sh").read_text()
    for k, v in init_vars.items():
        init_text = init_text.replace(f"@{k}@", v)
    notes: list[str] = []

    def base(d: Path) -> None:
        (d / "bin").mkdir(parents=True)
        shutil.copy2("/bin/busybox", d / "bin" / "busybox")
        (d / "init").write_text(init_text)
        (d / "init").chmod(0o755)

    cap = work / "cap-root"
    if cap.exists():
        shutil.rmtree(cap)
    base(cap)
    notes += [f"capture {n}" for n in stage_modules(capture, CAPTURE_MODULES, cap, {})]
    shutil.copy2(guest_binary(cache, "vmcore_copy"), cap / "bin" / "vmcore_copy")
    cap_img = work / "capture-initrd.img"
    _cpio(cap, cap_img)

    main = work / "main-root"
    if main.exists():
        shutil.rmtree(main)
    base(main)
    brd_kib = int(init_vars["BRD_KIB"])
    notes += [f"main {n}" for n in stage_modules(crashed, MAIN_MODULES, main, {"brd_kib": brd_kib})]
    (main / "capture").mkdir()
    shutil.copy2(capture.vmlinuz, main / "capture" / "vmlinuz")
    shutil.copy2(cap_img, main / "capture" / "initrd.img")
    _copy_with_libs("/usr/sbin/kexec", main)
    (main / "sbin" / "kexec").unlink(missing_ok=True)
    shutil.copy2(guest_binary(cache, "workload"), main / "bin" / "workload")
    img = work / "initrd.img"
    _cpio(main, img)
    shutil.rmtree(main)
    shutil.rmtree(cap)
    return img, notes


# --------------------------------------------------------------------------
# QEMU control


def _connect_unix(path: Path, timeout: float) -> socket.socket:
    """Connect to the unix socket QEMU is about to create, retrying until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class QMP:
    """Minimal QMP client over a unix socket (events are queued)."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.sock = _connect_unix(path, timeout)
        self.sock.settimeout(600)
        self.buf = b""
        self.events: list[dict[str, Any]] = []
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """Run a command; return its 'return' value or raise on 'error'."""
        req: dict[str, Any] = {"execute": cmd}
        if args:
            req["arguments"] = args
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        while True:
            msg = self._read()
            if "event" in msg:
                self.events.append(msg)
                continue
            if "error" in msg:
                raise RuntimeError(f"QMP {cmd}: {msg['error']}")
            if "return" in msg:
                return msg["return"]

    def close(self) -> None:
        """Close the socket."""
        with contextlib.suppress(OSError):
            self.sock.close()


class Serial:
    """Reads the guest serial console from a unix socket into a log file and a line queue."""

    def __init__(self, path: Path, logfile: Path, timeout: float = 30.0) -> None:
        self.sock = _connect_unix(path, timeout)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.all_lines: list[str] = []
        self.log = open(logfile, "wb")  # noqa: SIM115 - closed by the reader thread
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.log.write(chunk)
                self.log.flush()
                buf += chunk
                while b"\n" in buf:
                    line, _, buf = buf.partition(b"\n")
                    text = line.decode("utf-8", "replace").rstrip("\r")
                    self.all_lines.append(text)
                    self.lines.put(text)
        except OSError:
            pass
        finally:
            self.lines.put(None)
            self.log.close()

    def wait_for(self, pattern: str, timeout: float) -> str:
        """Wait for a console line matching pattern; raise TimeoutError."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no console line matching {pattern!r} in {timeout:.0f}s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise ConnectionError(f"console closed while waiting for {pattern!r}")
            if rx.search(line):
                return line

    def send(self, text: str) -> None:
        """Type text on the guest console."""
        self.sock.sendall(text.encode())


def _wait_dump(qmp: QMP, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st: dict[str, Any] = qmp.execute("query-dump")
        if st.get("status") in ("completed", "failed"):
            return st
        time.sleep(0.5)
    raise TimeoutError("dump-guest-memory did not complete")


def parse_workload(lines: list[str]) -> dict[str, Any]:
    """Collect the KDL-INFO records the guest printed (by kind; repeated kinds become lists)."""
    out: dict[str, Any] = {}
    for line in lines:
        i = line.find("KDL-INFO {")
        if i < 0:
            continue
        try:
            rec = json.loads(line[i + len("KDL-INFO "):])
        except json.JSONDecodeError:
            continue
        kind = rec.pop("kind", "unknown")
        if kind in out:
            if not isinstance(out[kind], list):
                out[kind] = [out[kind]]
            out[kind].append(rec)
        else:
            out[kind] = rec
    return out


# --------------------------------------------------------------------------
# One fixture


@dataclass
class Job:
    """What to build: a fixture name, crashed kernel suite and capture kernel suite."""

    name: str
    suite: str
    capture_suite: str
    cpu: str = DEFAULT_CPU
    paging_levels: int | None = None


def variant_jobs(mem: int) -> list[Job]:
    """The variants as jobs; guests other than 1024 MiB get a ``-<mem>m`` suffix."""
    return [Job(name if mem == 1024 else f"{name}-{mem}m", v.suite, v.capture_suite, v.cpu,
                v.paging_levels) for name, v in VARIANTS.items()]


def vmcore_paging_levels(path: Path, limit: int = 1 << 20) -> int | None:
    """4 or 5 from VMCOREINFO ``NUMBER(pgtable_l5_enabled)`` in an ELF vmcore, else None.

    kexec's /proc/vmcore puts its notes right after the program headers, so the first ``limit``
    bytes hold the VMCOREINFO note.  x86_64 writes the number only with CONFIG_X86_5LEVEL.
    """
    with open(path, "rb") as f:
        head = f.read(limit)
    m = re.search(rb"NUMBER\(pgtable_l5_enabled\)=(\d+)\n", head)
    if m is None:
        return None
    return 5 if int(m.group(1)) else 4


def fixture_name(suite: str, capture_suite: str, mem: int) -> str:
    """Fixture directory name: suite[-cap-<capture>][-<mem>m]."""
    name = suite if capture_suite == suite else f"{suite}-cap-{capture_suite}"
    if mem != 1024:
        name += f"-{mem}m"
    return name


def _is_complete(fdir: Path) -> bool:
    m = fdir / "manifest.json"
    if not m.exists():
        return False
    try:
        return int(json.loads(m.read_text()).get("builder_version", -1)) == BUILDER_VERSION
    except (ValueError, json.JSONDecodeError):
        return False


def run_makedumpfile(fdir: Path, files: dict[str, str | None], cache: Path, timings: dict[str, float]) -> list[str]:
    """Derive md_* files from the ELF vmcore with makedumpfile (1.7.2 host, peer for snappy/zstd)."""
    notes: list[str] = []
    vmcore = fdir / "vmcore"
    host = ["/usr/bin/makedumpfile"]
    mlog = open(fdir / "makedumpfile.log", "w")  # noqa: SIM115 - closed at the end of this function

    def run(key: str, cmd: list[str], out: str, flat: bool = False) -> None:
        t = time.monotonic()
        dst = fdir / out
        tmp = fdir / (out + ".part")
        tmp.unlink(missing_ok=True)
        mlog.write(f"$ {' '.join(cmd)} {vmcore.name} {out}\n")
        mlog.flush()
        if flat:
            with open(tmp, "wb") as o:
                r = subprocess.run([*cmd, str(vmcore)], stdout=o, stderr=mlog, timeout=1800)
        else:
            r = subprocess.run([*cmd, str(vmcore), str(tmp)], stdout=mlog, stderr=subprocess.STDOUT, timeout=1800)
        mlog.write(f"[exit {r.returncode}]\n\n")
        mlog.flush()
        text = (fdir / "makedumpfile.log").read_text(errors="replace")
        disabled = "option is disabled" in text[text.rfind("$ "):]
        if disabled:
            notes.append(f"{key}: this makedumpfile build lacks the codec ({' '.join(cmd[-3:])})")
        if r.returncode == 0 and tmp.exists() and not disabled:
            os.replace(tmp, dst)
            files[key] = out
        else:
            tmp.unlink(missing_ok=True)
            files[key] = None
            if not disabled:
                notes.append(f"{key}: makedumpfile exit {r.returncode}")
        timings[key] = round(time.monotonic() - t, 1)

    run("md_zlib", [*host, "--message-level", "31", "-c", "-d", "31"], "md_zlib.kdump")
    run("md_lzo", [*host, "-l", "-d", "31"], "md_lzo.kdump")
    run("md_flat", [*host, "-F", "-c", "-d", "31"], "md_flat.flat", flat=True)
    try:
        peer = peers.makedumpfile("trixie", cache)
    except Exception as e:  # archive trouble must not kill the fixture
        peer = None
        notes.append(f"peer makedumpfile unavailable: {e}")
    if peer is not None:
        mlog.write(f"# peer makedumpfile {peer.version}: {' '.join(peer.command)}\n")
        run("md_snappy", [*peer.command, "-p", "-d", "31"], "md_snappy.kdump")
        run("md_zstd", [*peer.command, "-z", "-d", "31"], "md_zstd.kdump")
    else:
        files["md_snappy"] = None
        files["md_zstd"] = None
    mlog.close()
    return notes


def build_fixture(job: Job, cache: Path, mem: int, workload_mib: int | None, dbg: bool,
                  kernels: dict[str, deb.KernelChoice], force: bool = False,
                  qemu_dumps: bool = True) -> dict[str, Any]:
    """Build one fixture end to end; returns its manifest."""
    fdir = cache / "fixtures" / job.name
    if _is_complete(fdir) and not force:
        manifest: dict[str, Any] = json.loads((fdir / "manifest.json").read_text())
        if not dbg or manifest.get("vmlinux_dbg"):
            log(f"{job.name}: up to date")
            return manifest
        if manifest.get("release") != kernels[job.suite].release:
            # the archive moved on: a -dbg for another release would not match this vmcore
            log(f"{job.name}: built from {manifest.get('release')}, archive now has "
                f"{kernels[job.suite].release}: rebuilding")
            force = True
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    crashed = prepare_kernel(kernels[job.suite], cache, dbg)
    capture = prepare_kernel(kernels[job.capture_suite], cache, False) if job.capture_suite != job.suite else crashed
    timings["kernel_prepare"] = round(time.monotonic() - t0, 1)
    if _is_complete(fdir) and not force:
        # only the dbg file was missing
        manifest = json.loads((fdir / "manifest.json").read_text())
        _link_kernel_files(fdir, crashed, manifest)
        _write_manifest(fdir, manifest)
        return manifest
    if fdir.exists():
        shutil.rmtree(fdir)
    fdir.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix=f"kdl-{job.name}-", dir=cache / "build" if (cache / "build").exists() else None))
    wl_mib = workload_mib if workload_mib is not None else max(64, mem // 4)
    balloon_mib = max(32, mem // 8)
    hugepages = max(4, (wl_mib * 10 // 100) // 2 + 4)
    init_vars = {
        "HUGEPAGES": str(hugepages),
        "ZRAM_BYTES": str(max(32, wl_mib // 4) << 20),
        "BRD_KIB": str(max(32, wl_mib // 4 + 16) << 10),
        "WORKLOAD_MIB": str(wl_mib),
        "CAPTURE_CMDLINE": CAPTURE_CMDLINE,
    }
    t = time.monotonic()
    initrd, notes = build_initrds(work, crashed, capture, init_vars, cache)
    timings["initrd"] = round(time.monotonic() - t, 1)
    disk = fdir / "vmcore.disk"
    with open(disk, "wb") as f:
        f.truncate((mem + 256) << 20)
    qmp_sock = work / "qmp.sock"
    ser_sock = work / "serial.sock"
    console = fdir / "console.log"
    cmdline = f"console=ttyS0 crashkernel={CRASHKERNEL_MIB}M panic=1 loglevel=4"
    qemu = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", str(mem), "-smp", "2", "-cpu", job.cpu,
        "-nographic", "-no-reboot", "-monitor", "none",
        "-kernel", str(crashed.vmlinuz), "-initrd", str(initrd), "-append", cmdline,
        "-device", "vmcoreinfo", "-device", "virtio-balloon-pci",
        "-drive", f"file={disk},if=none,id=d0,format=raw,discard=unmap,detect-zeroes=unmap,cache=unsafe",
        "-device", "virtio-blk-pci,drive=d0",
        "-chardev", f"socket,id=ser0,path={ser_sock},server=on,wait=off",
        "-serial", "chardev:ser0",
        "-qmp", f"unix:{qmp_sock},server=on,wait=off",
    ]
    log(f"{job.name}: boot {crashed.release} (capture {capture.release}), {mem} MiB, workload {wl_mib} MiB")
    qlog = open(work / "qemu.stderr", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(qemu, stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog)
    qmp: QMP | None = None
    serial: Serial | None = None
    info: dict[str, Any] = {"qemu_cmdline": qemu, "kernel_cmdline": cmdline, "capture_cmdline": CAPTURE_CMDLINE}
    files: dict[str, str | None] = {
        "vmcore": None, "qemu_elf": None, "qemu_kdump": None, "md_zlib": None, "md_lzo": None,
        "md_flat": None, "md_snappy": None, "md_zstd": None, "console_log": "console.log",
    }
    try:
        serial = Serial(ser_sock, console)
        qmp = QMP(qmp_sock)
        t = time.monotonic()
        serial.wait_for(r"KDL-STAGE main", 300)
        timings["boot"] = round(time.monotonic() - t, 1)
        serial.wait_for(r"KDL-READY", 900 + wl_mib)
        timings["workload"] = round(time.monotonic() - t - timings["boot"], 1)
        # inflate the balloon: its pages become PageOffline in the guest
        t = time.monotonic()
        target = (mem - balloon_mib) << 20
        qmp.execute("balloon", {"value": target})
        actual = mem << 20
        while time.monotonic() - t < 120 + mem // 64:
            actual = int(qmp.execute("query-balloon")["actual"])
            if actual <= target:
                break
            time.sleep(0.5)
        info["balloon"] = {"target_bytes": target, "actual_bytes": actual, "inflated_bytes": (mem << 20) - actual}
        timings["balloon"] = round(time.monotonic() - t, 1)
        time.sleep(1)
        # QEMU's own dumps (guest keeps running afterwards)
        for key, fmt, fname in (("qemu_elf", "elf", "qemu.elf"), ("qemu_kdump", "kdump-zlib", "qemu-kdump.flat")
                                ) if qemu_dumps else ():
            t = time.monotonic()
            qmp.execute("dump-guest-memory",
                        {"paging": False, "protocol": f"file:{fdir / fname}", "detach": True, "format": fmt})
            st = _wait_dump(qmp, 900 + mem // 2)
            timings[key] = round(time.monotonic() - t, 1)
            if st.get("status") == "completed":
                files[key] = fname
            else:
                notes.append(f"{key}: dump-guest-memory {st}")
        # crash; the capture kernel writes /proc/vmcore to the disk and powers off
        t = time.monotonic()
        serial.send("crash\n")
        serial.wait_for(r"KDL-STAGE capture", 300)
        line = serial.wait_for(r"KDL-VMCORE-(SIZE \d+|FAILED)", 300)
        if "FAILED" in line:
            raise RuntimeError(f"capture kernel: {line.strip()}")
        size = int(line.split("KDL-VMCORE-SIZE", 1)[1].split()[0])
        done = serial.wait_for(r"KDL-VMCORE-(DONE|FAILED)", 1800 + mem)
        if "FAILED" in done:
            raise RuntimeError(f"capture kernel: {done.strip()}")
        proc.wait(timeout=120)
        timings["kdump"] = round(time.monotonic() - t, 1)
    finally:
        if qmp is not None:
            qmp.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        qlog.close()
        if serial is not None:
            serial.thread.join(timeout=10)
    os.truncate(disk, size)
    os.replace(disk, fdir / "vmcore")
    with open(fdir / "vmcore", "rb") as f:
        if f.read(4) != b"\x7fELF":
            raise RuntimeError(f"{job.name}: vmcore is not ELF")
    files["vmcore"] = "vmcore"
    levels = vmcore_paging_levels(fdir / "vmcore")
    if job.paging_levels is not None and levels != job.paging_levels:
        raise RuntimeError(f"{job.name}: the guest ran with {levels or 'unknown'}-level paging "
                           f"(VMCOREINFO NUMBER(pgtable_l5_enabled)), {job.paging_levels} wanted")
    lines = serial.all_lines if serial else []
    workload = parse_workload(lines)
    workload.update(info)
    workload["console_markers"] = [ln for ln in lines if re.search(r"KDL-(MOD|WARN|KEXEC|STAGE)", ln)]
    t = time.monotonic()
    notes += run_makedumpfile(fdir, files, cache, timings)
    timings["makedumpfile_total"] = round(time.monotonic() - t, 1)
    shutil.rmtree(work, ignore_errors=True)
    timings["total"] = round(time.monotonic() - t0, 1)
    manifest = {
        "name": job.name,
        "suite": job.suite,
        "release": crashed.release,
        "capture_suite": job.capture_suite,
        "capture_release": capture.release,
        "package": crashed.package,
        "version": crashed.version,
        "capture_package": capture.package,
        "capture_version": capture.version,
        "guest_mem_mib": mem,
        "guest_cpu": job.cpu,
        "paging_levels": levels,
        "crashkernel_mib": CRASHKERNEL_MIB,
        "tools": _tool_versions(cache),
        "builder_version": BUILDER_VERSION,
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "workload": workload,
        "files": files,
        "timings_s": timings,
        "notes": notes,
    }
    _link_kernel_files(fdir, crashed, manifest)
    _write_manifest(fdir, manifest)
    log(f"{job.name}: done in {timings['total']} s {timings}")
    return manifest


def _tool_versions(cache: Path) -> dict[str, str]:
    """Versions of the programs that made the fixture files (first line of their version output)."""
    out: dict[str, str] = {}
    cmds: dict[str, list[str]] = {
        "qemu": ["qemu-system-x86_64", "--version"],
        "makedumpfile": ["/usr/bin/makedumpfile", "-v"],
        "kexec": ["kexec", "--version"],
        "busybox": ["busybox"],
    }
    peer = peers.cached_peer("makedumpfile", "makedumpfile", "trixie", cache)
    if peer is not None:
        cmds["makedumpfile_peer"] = [*peer.command, "-v"]
    for name, cmd in cmds.items():
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        lines = [ln.strip() for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
        if lines:
            out[name] = lines[0]
    return out


def _link_kernel_files(fdir: Path, kernel: KernelTree, manifest: dict[str, Any]) -> None:
    """Make vmlinuz/config/vmlinux-dbg available in the fixture dir (hard links, else copies)."""
    def place(src: Path, name: str) -> str:
        dst = fdir / name
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        return name

    manifest["vmlinuz"] = place(kernel.vmlinuz, "vmlinuz")
    manifest["config"] = place(kernel.config, "config")
    manifest["vmlinux_dbg"] = place(kernel.vmlinux_dbg, "vmlinux-dbg") if kernel.vmlinux_dbg else None


def _write_manifest(fdir: Path, manifest: dict[str, Any]) -> None:
    tmp = fdir / "manifest.json.part"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, fdir / "manifest.json")


# --------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", nargs="+", choices=SUITES, help="suites to build (default: all)")
    ap.add_argument("--variants", action="store_true", help="build the cross-version capture variant(s)")
    ap.add_argument("--no-variants", action="store_true", help="skip variants even when building all suites")
    ap.add_argument("--dbg", action="store_true", help="also fetch the -dbg vmlinux (0.8-1.2 GB .deb each)")
    ap.add_argument("--mem", type=int, default=1024, help="guest RAM in MiB (default 1024)")
    ap.add_argument("--workload-mib", type=int, default=None, help="workload size in MiB (default mem/4)")
    ap.add_argument("--no-qemu-dumps", action="store_true",
                    help="skip QEMU's own ELF and kdump dumps (saves a guest-sized file each on big guests)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel QEMU builds (default 2)")
    ap.add_argument("--cache", default=None, help="cache dir (default $KDLAYOUT_CACHE or ~/.cache/kdlayout)")
    ap.add_argument("--list", action="store_true", help="print the chosen packages and exit")
    ap.add_argument("--force", action="store_true", help="rebuild even if a complete fixture exists")
    args = ap.parse_args(argv)
    cache = cache_dir(args.cache)
    (cache / "build").mkdir(parents=True, exist_ok=True)
    if not args.list:
        (cache / "logs").mkdir(exist_ok=True)
        _LOGFILE.append(cache / "logs" / f"build-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S')}.log")
    suites = list(args.suite or SUITES)
    jobs = [Job(fixture_name(s, s, args.mem), s, s) for s in suites]
    if args.variants or (args.suite is None and not args.no_variants):
        jobs += variant_jobs(args.mem)
    needed = sorted({j.suite for j in jobs} | {j.capture_suite for j in jobs}, key=SUITES.index)
    def has_dbg(fdir: Path) -> bool:
        return bool(json.loads((fdir / "manifest.json").read_text()).get("vmlinux_dbg"))

    if not args.list and not args.force and all(
        _is_complete(cache / "fixtures" / j.name) and (not args.dbg or has_dbg(cache / "fixtures" / j.name))
        for j in jobs
    ):
        log("all fixtures up to date")
        return 0
    kernels: dict[str, deb.KernelChoice] = {}
    for s in needed:
        idx = deb.load_index(s, cache, names=re.compile(r"linux-"))
        kernels[s] = deb.choose_kernel(idx, s)
    if args.list:
        for s in needed:
            k = kernels[s]
            print(f"{s}: {k.release} {k.version}")
            for p in k.packages:
                print(f"  {p.name} {p.version} [{p.suite}] {p.filename} sha256={p.sha256}")
            if k.dbg:
                print(f"  dbg: {k.dbg.name} {k.dbg.version} [{k.dbg.suite}] {k.dbg.size >> 20} MiB")
        return 0
    failures = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        futs = {
            ex.submit(build_fixture, j, cache, args.mem, args.workload_mib, args.dbg, kernels, args.force,
                      not args.no_qemu_dumps): j
            for j in jobs
        }
        for fut in concurrent.futures.as_completed(futs):
            j = futs[fut]
            try:
                fut.result()
            except Exception as e:
                failures += 1
                log(f"{j.name}: FAILED: {type(e).__name__}: {e} (console: {cache / 'fixtures' / j.name / 'console.log'})")
                for w in (cache / "build").glob(f"kdl-{j.name}-*"):
                    shutil.rmtree(w, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
