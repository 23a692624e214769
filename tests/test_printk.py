"""Tests of the printk log reader and ``makedumpfile --dump-dmesg`` text (src/kdlayout/printk.py,
``kdlayout dmesg``, ``kdlayout dump --dump-dmesg``).

Ground truth: makedumpfile itself, run in the test on the same file (Debian's 1.7.2 at
/usr/bin/makedumpfile; trixie's 1.7.6 from tools/peers.py for the caller-id column), and drgn's
``get_printk_records`` with the kernel's -dbg DWARF. makedumpfile also reads the synthetic cores
of tests/printk_synth.py, which cover the formats no fixture has (3.5-5.9 records, pre-3.5 text)
and the corner cases of the ring. Where makedumpfile is wrong (docs/printk.md) the test undoes
exactly the documented difference and proves the rest equal.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fixtures import Fixture, cache_dir, load_fixtures
from kdlayout.cli import main
from kdlayout.dumpfile import open_dump
from kdlayout.elfcore import ElfCore
from kdlayout.errors import CorruptError, KdlayoutError, MissingDataError, NotInDumpError
from kdlayout.layout import Fact, Layout
from kdlayout.printk import (
    LogFormat,
    PrintkLog,
    PrintkRecord,
    format_makedumpfile,
    format_record,
    read_log,
)
from kdlayout.resolver import merge, resolve
from kdlayout.sources.vmcoreinfo_source import vmcoreinfo_facts
from kdlayout.vmcoreinfo import VmcoreInfo
from printk_synth import (
    DATA,
    DBASE,
    DESCS,
    INFOS,
    PRB,
    Ring,
    SynthRecord,
    core_bytes,
    plain_segment,
    plain_vmcoreinfo,
    printk_log_record,
    records_segment,
    records_vmcoreinfo,
    vmcoreinfo_text,
)

MAKEDUMPFILE = "/usr/bin/makedumpfile"
TOOLS = Path(__file__).resolve().parents[1] / "tools"


# --------------------------------------------------------------------------------------------
# Helpers


def _makedumpfile_cmd() -> list[str]:
    if Path(MAKEDUMPFILE).exists():
        return [MAKEDUMPFILE]
    exe = shutil.which("makedumpfile")
    if exe is None:
        pytest.skip("makedumpfile is not installed (apt-get install makedumpfile)")
    return [exe]


def _peer_makedumpfile() -> list[str]:
    """trixie's makedumpfile (1.7.6: prints caller ids) if tools/peers.py has unpacked it."""
    sys.path.insert(0, str(TOOLS))
    try:
        import peers
    except ImportError as exc:
        pytest.skip(f"tools/peers.py not importable: {exc}")
    tool = peers.cached_peer("makedumpfile", "makedumpfile", "trixie", cache_dir())
    if tool is None:
        pytest.skip("trixie's makedumpfile is not unpacked (python tools/peers.py makedumpfile "
                    "trixie, or a fixture build, fetches it)")
    return list(tool.command)


def makedumpfile_dmesg(core: Path, tmp: Path, cmd: list[str] | None = None) -> bytes:
    """``makedumpfile --dump-dmesg core OUT``, run now; its OUT."""
    out = tmp / f"mdf-{core.name}-{time.monotonic_ns()}.txt"
    r = subprocess.run([*(cmd or _makedumpfile_cmd()), "--dump-dmesg", str(core), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"makedumpfile failed on {core}: {r.stdout}{r.stderr}"
    return out.read_bytes()


def ours(path: Path, *, caller_id: bool = False) -> tuple[PrintkLog, bytes]:
    with open_dump(path) as dump:
        log = read_log(dump, resolve(dump).layout)
    return log, format_makedumpfile(log, caller_id=caller_id)


def as_makedumpfile_prints(log: PrintkLog, *, caller_id: bool = False) -> bytes:
    """Our records with the two documented disagreements of docs/printk.md put back:
    makedumpfile drops empty-line records (it takes their begin == next for "no data"), and it
    prints a byte >= 0x80 as ``\\xffffffNN`` (a sign-extended ``char`` through ``%02x``)."""
    out = []
    for rec in log.records:
        if not rec.text and not rec.truncated:
            continue
        line = format_record(rec, caller_id=caller_id)
        out.append(re.sub(rb"\\x([89a-f][0-9a-f])", rb"\\xffffff\1", line))
    return b"".join(out)


def synth_layout(dump: ElfCore, btf: dict[str, int] | None = None) -> Layout:
    """The layout from the synthetic core's VMCOREINFO (what the fixtures' VMCOREINFO has), plus
    ``btf``: facts a type source would add (members VMCOREINFO does not export)."""
    raw = dump.vmcoreinfo
    assert raw is not None
    facts = vmcoreinfo_facts(VmcoreInfo.parse(raw), where=dump.info.path)
    facts += [Fact(k, v, "btf", "test") for k, v in (btf or {}).items()]
    return merge(facts)


def synth_core(tmp: Path, segment: bytes, vmcoreinfo: str, name: str = "synth.core") -> Path:
    path = tmp / name
    path.write_bytes(core_bytes(segment, vmcoreinfo))
    return path


def synth_log(path: Path, btf: dict[str, int] | None = None) -> PrintkLog:
    with ElfCore.open(path) as dump:
        return read_log(dump, synth_layout(dump, btf))


# --------------------------------------------------------------------------------------------
# Real fixtures


def test_text_equals_makedumpfile(fixture: Fixture, tmp_path: Path) -> None:
    """On the kexec vmcore and on makedumpfile's own kdump-compressed output (md_zlib), our text
    is makedumpfile 1.7.2's, byte for byte (apart from the documented disagreements, which the
    fixtures do not hit unless they contain empty-line records or bytes >= 0x80)."""
    vmcore = fixture.path("vmcore")
    assert vmcore is not None
    log, text = ours(vmcore)
    assert log.format is LogFormat.LOCKLESS
    assert len(log.records) > 100 and not log.warnings and log.complete
    theirs = makedumpfile_dmesg(vmcore, tmp_path)
    assert as_makedumpfile_prints(log) == theirs
    if all(r.text and max(r.text) < 0x80 for r in log.records):
        assert text == theirs
    assert log.records[0].text.startswith(b"Linux version " + fixture.release.encode())
    zlib = fixture.path("md_zlib")
    if zlib is None:
        pytest.skip(f"{fixture.name}: no md_zlib")
    zlog, ztext = ours(zlib)
    assert ztext == text
    assert zlog.records == log.records
    assert as_makedumpfile_prints(zlog) == makedumpfile_dmesg(zlib, tmp_path)


def test_caller_id_equals_makedumpfile_176(fixture: Fixture, tmp_path: Path) -> None:
    """``--caller-id`` gives the text of makedumpfile 1.7.6 (``[      T<pid>] `` after the time)."""
    cmd = _peer_makedumpfile()
    vmcore = fixture.path("vmcore")
    assert vmcore is not None
    log, _ = ours(vmcore, caller_id=True)
    theirs = makedumpfile_dmesg(vmcore, tmp_path, cmd)
    assert b"[      T0] " in theirs
    assert as_makedumpfile_prints(log, caller_id=True) == theirs


def test_records_equal_drgn(fixture: Fixture) -> None:
    """Every record's seq, timestamp, level, facility, caller, text and device info equals what
    drgn's get_printk_records() reads with the kernel's DWARF."""
    pytest.importorskip("drgn", reason="drgn is not installed (pip install drgn)")
    from drgn.helpers.linux.printk import get_printk_records

    from drgn_oracle import load_program

    vmcore, dbg = fixture.path("vmcore"), fixture.path("vmlinux_dbg")
    if dbg is None:
        pytest.skip(f"{fixture.name}: built without --dbg (no vmlinux_dbg)")
    assert vmcore is not None
    theirs = get_printk_records(load_program(dbg, vmcore))
    log, _ = ours(vmcore)

    def caller(r: Any) -> int:
        return int(r.caller_tid) if r.caller_tid is not None else 0x80000000 | int(r.caller_cpu)

    want = [(r.seq, r.timestamp, r.level, r.facility, caller(r), r.text,
             sorted((k.decode(), v.decode()) for k, v in r.context.items())) for r in theirs]
    got = [(r.seq, r.ts_nsec, r.level, r.facility, r.caller_id, r.text, sorted(r.dev_info))
           for r in log.records]
    assert got == want
    assert any(r.dev_info for r in log.records)        # a device record was compared


def _one_fixture() -> Fixture:
    fixtures = load_fixtures()
    if not fixtures:
        pytest.skip("fixture matrix not built: run python tools/build_fixtures.py")
    return next((f for f in fixtures if f.name == "bookworm"), fixtures[0])


def test_cli_dump_dmesg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``kdlayout dump --dump-dmesg VMCORE FILE`` as kdump-tools runs it: makedumpfile's text,
    mode 0600, no temporary file left; an existing FILE is refused (``-f`` forces) and the input
    can never be the output. ``kdlayout dmesg VMCORE`` writes the same text to stdout."""
    fx = _one_fixture()
    vmcore = fx.path("vmcore")
    assert vmcore is not None
    out = tmp_path / "dmesg.txt"
    assert main(["dump", "--dump-dmesg", str(vmcore), str(out)]) == 0
    theirs = makedumpfile_dmesg(vmcore, tmp_path)
    assert out.read_bytes() == theirs
    assert (out.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
    capsys.readouterr()
    assert main(["dump", "--dump-dmesg", str(vmcore), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to overwrite" in err and str(out) in err
    assert main(["dump", "--dump-dmesg", "-f", str(vmcore), str(out)]) == 0
    before = vmcore.stat()
    link = tmp_path / "link.vmcore"
    link.symlink_to(vmcore)
    assert main(["dump", "--dump-dmesg", "-f", str(vmcore), str(link)]) == 2
    assert "input dump" in capsys.readouterr().err
    after = vmcore.stat()
    assert (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
    r = subprocess.run([sys.executable, "-m", "kdlayout.cli", "dmesg", str(vmcore)],
                       capture_output=True, timeout=300)
    assert r.returncode == 0 and r.stdout == theirs


# --------------------------------------------------------------------------------------------
# Synthetic rings checked by makedumpfile


def _common_ring() -> Ring:
    """Multi-line text, tabs and control characters, big timestamps, CPU and task callers,
    reserved/reusable/committed records, a lying text_len, a data-less (lost) record."""
    return Ring(records=[
        SynthRecord(b"reusable, not shown", 1, state=3),
        SynthRecord(b"hello", 1_000_000_000),
        SynthRecord(b"two\nlines\tand a tab\n", 2_500_000, caller_id=0x80000003),
        SynthRecord(b"ctl\x01\x1b[0m\x7f bell\x07", 123_456_789_012_345),
        SynthRecord(b"reserved, not shown", 5, state=0),
        SynthRecord(b"committed, not finalized", 6, state=1, caller_id=4242),
        SynthRecord(b"claims more than its block", 7, text_len=200),
        SynthRecord(b"", 8, lpos=(1, 1)),                  # FAILED_LPOS: data lost
        SynthRecord(b"last", 99_999_999_999_999_999, subsystem=b"pci",
                    device=b"+pci:0000:00:01.0"),
    ])


@pytest.mark.parametrize("direct_map", [False, True], ids=["image", "direct-map"])
def test_synthetic_ring_equals_makedumpfile(tmp_path: Path, direct_map: bool) -> None:
    """The ring's common cases, read by makedumpfile 1.7.2 from the same core, give our text;
    with the buffers in the direct map (``log_buf_len=``) they are reached through the page
    tables and read the same."""
    seg = _common_ring().build()
    if direct_map:
        struct.pack_into("<QQ", seg, PRB + 8, DBASE + DESCS, DBASE + INFOS)
        struct.pack_into("<Q", seg, PRB + 48 + 8, DBASE + DATA)
    core = synth_core(tmp_path, seg, vmcoreinfo_text())
    log = synth_log(core)
    assert dict(log.skipped) == {"reusable": 1, "reserved": 1, "lost": 1}
    assert not log.warnings
    texts = [r.text for r in log.records]
    assert texts[0] == b"hello" and texts[-1] == b"last"
    trunc = next(r for r in log.records if r.truncated)
    assert trunc.text.startswith(b"claims more than its block")
    assert log.records[-1].dev_info == (("SUBSYSTEM", "pci"), ("DEVICE", "+pci:0000:00:01.0"))
    assert log.records[0].level == log.records[0].facility == None  # noqa: E711 - not in VMCOREINFO
    assert format_makedumpfile(log) == makedumpfile_dmesg(core, tmp_path)


def test_synthetic_caller_id_equals_makedumpfile_176(tmp_path: Path) -> None:
    cmd = _peer_makedumpfile()
    core = synth_core(tmp_path, _common_ring().build(), vmcoreinfo_text())
    text = format_makedumpfile(synth_log(core), caller_id=True)
    assert b"[      C3] two" in text and b"[   T4242] committed" in text
    assert text == makedumpfile_dmesg(core, tmp_path, cmd)


def test_disagreements_with_makedumpfile(tmp_path: Path) -> None:
    """The two disagreements docs/printk.md derives from the kernel source, shown on makedumpfile
    itself: an empty-line record (EMPTY_LINE_LPOS) is a record the kernel prints and makedumpfile
    drops; a UTF-8 byte is ``\\xc3`` for us and the kernel's /dev/kmsg, ``\\xffffffc3`` for
    makedumpfile."""
    ring = Ring(records=[SynthRecord(b"before", 1), SynthRecord(b"", 2_000_000),
                         SynthRecord("caf\u00e9".encode(), 3_000_000)])
    core = synth_core(tmp_path, ring.build(), vmcoreinfo_text())
    log = synth_log(core)
    text = format_makedumpfile(log)
    assert text.splitlines() == [b"[    0.000000] before", b"[    0.002000] ",
                                 b"[    0.003000] caf\\xc3\\xa9"]
    theirs = makedumpfile_dmesg(core, tmp_path)
    assert theirs.splitlines() == [b"[    0.000000] before",
                                   b"[    0.003000] caf\\xffffffc3\\xffffffa9"]
    assert as_makedumpfile_prints(log) == theirs


def test_block_ending_at_ring_end(tmp_path: Path) -> None:
    """A block that ends exactly at the data ring's end (kernels with "don't needlessly wrap data
    blocks around") and whose ``next`` overflows to 0 on the first wrap (the ring starts at
    ``-size``): the kernel's get_data() reads it in place; makedumpfile takes ``begin > next``
    for a wrapped block and prints the first block's text again. A real wrapped block is read
    from index 0 by both."""
    a, b = b"A" * 248, b"B" * 248                      # two 256-byte blocks fill 512 bytes
    core = synth_core(tmp_path, Ring(records=[SynthRecord(a, 1), SynthRecord(b, 2)]).build(),
                      vmcoreinfo_text(), "end.core")
    log = synth_log(core)
    assert [r.text for r in log.records] == [a, b]
    theirs = makedumpfile_dmesg(core, tmp_path).splitlines()
    assert theirs == [b"[    0.000000] " + a, b"[    0.000000] " + a]     # its bug
    # 312 + 264 > 512: the second block wraps, stored whole at index 0 over the (reusable) first.
    wrap = Ring(records=[SynthRecord(b"C" * 300, 1, state=3), SynthRecord(b"D" * 250, 2)])
    core = synth_core(tmp_path, wrap.build(), vmcoreinfo_text(), "wrap.core")
    log = synth_log(core)
    assert [r.text for r in log.records] == [b"D" * 250]
    assert format_makedumpfile(log) == makedumpfile_dmesg(core, tmp_path)


def test_records_format_equals_makedumpfile(tmp_path: Path) -> None:
    """3.5-5.9 struct printk_log records (detected by SYMBOL(log_first_idx)): the chain from
    log_first_idx across the zero-length wrap marker to log_next_idx, multi-line text, the dict
    as dev_info; makedumpfile 1.7.2 prints the same."""
    recs = [printk_log_record(b"first", 1000),
            printk_log_record(b"multi\nline", 2_000_000_000,
                              b"SUBSYSTEM=pci\0DEVICE=+pci:0000:00:01.0"),
            printk_log_record(b"after the wrap", 3_000_000)]
    seg, _ = records_segment(recs, first=0x300, wrap_at=2)
    core = synth_core(tmp_path, seg, records_vmcoreinfo())
    # struct printk_log {u64 ts_nsec; u16 len, text_len, dict_len; u8 facility; u8 flags:5,
    # level:3}: what BTF or DWARF of a 5.4 kernel say (VMCOREINFO has no dict_len or level).
    log = synth_log(core, {"OFFSET(printk_log.dict_len)": 12, "OFFSET(printk_log.facility)": 14,
                           "BITOFFSET(printk_log.flags)": 120, "BITOFFSET(printk_log.level)": 125})
    assert log.format is LogFormat.RECORDS and log.complete
    assert {(r.level, r.flags, r.facility) for r in log.records} == {(6, 2, 0)}
    assert synth_log(core).records[1].dev_info == ()        # VMCOREINFO alone: no dict_len
    assert [r.text for r in log.records] == [b"first", b"multi\nline", b"after the wrap"]
    assert log.records[1].dev_info == (("SUBSYSTEM", "pci"), ("DEVICE", "+pci:0000:00:01.0"))
    assert log.records[0].seq is None
    assert format_makedumpfile(log) == makedumpfile_dmesg(core, tmp_path)


# --------------------------------------------------------------------------------------------
# --partial-dmesg


def makedumpfile_partial(core: Path, tmp: Path) -> bytes:
    """``makedumpfile --dump-dmesg --partial-dmesg core OUT``, run now; its OUT."""
    out = tmp / f"mdf-partial-{core.name}-{time.monotonic_ns()}.txt"
    r = subprocess.run([*_makedumpfile_cmd(), "--dump-dmesg", "--partial-dmesg", str(core),
                        str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"makedumpfile failed on {core}: {r.stdout}{r.stderr}"
    return out.read_bytes()


def test_partial_dmesg_fixtures_equal_makedumpfile(fixture: Fixture, tmp_path: Path) -> None:
    """On the fixtures (logs never cleared: clear_seq at or before the oldest record) the
    partial log is the whole log, and makedumpfile 1.7.2 --partial-dmesg writes the same."""
    src = fixture.path("vmcore")
    if src is None:
        pytest.skip(f"{fixture.name}: no vmcore")
    with open_dump(src) as dump:
        layout = resolve(dump).layout
        full = read_log(dump, layout)
        part = read_log(dump, layout, partial=True)
    assert layout.has("SYMBOL(clear_seq)")
    assert part.records == full.records and not part.warnings
    assert format_makedumpfile(part) == makedumpfile_partial(src, tmp_path)


CLEAR_SEQ = 0x300          # where the synthetic cores keep clear_seq / clear_idx


def _partial_ring(latched: bool, clear: int) -> tuple[bytearray, str]:
    recs = [SynthRecord(b"line %d" % i, 1000 * i) for i in range(6)]
    seg = Ring(records=recs).build()                     # ids and seqs 0x40..0x45
    extra = f"SYMBOL(clear_seq)={0xFFFFFFFF81000000 + CLEAR_SEQ:x}\n"
    if latched:                # struct latched_seq {seqcount_latch_t latch; u64 val[2];}
        struct.pack_into("<IxxxxQQ", seg, CLEAR_SEQ, 7, 0x41, clear)   # odd: val[1] counts
        extra += "SIZE(latched_seq)=24\nOFFSET(latched_seq.val)=8\n"
    else:
        struct.pack_into("<Q", seg, CLEAR_SEQ, clear)
    return seg, vmcoreinfo_text(extra)


@pytest.mark.parametrize("latched", [False, True], ids=["u64", "latched_seq"])
def test_partial_dmesg_lockless_synthetic(tmp_path: Path, latched: bool) -> None:
    """clear_seq in the middle of the ring (a plain u64 as in 5.10-5.12, a latched_seq as
    since 5.13): only the records from that seq on; makedumpfile 1.7.2 agrees. Without the
    symbol: the whole log and a warning."""
    seg, info = _partial_ring(latched, 0x43)
    core = synth_core(tmp_path, seg, info)
    with ElfCore.open(core) as dump:
        layout = synth_layout(dump)
        part = read_log(dump, layout, partial=True)
        full = read_log(dump, layout)
    assert [r.text for r in part.records] == [b"line 3", b"line 4", b"line 5"]
    assert len(full.records) == 6 and not part.warnings
    assert format_makedumpfile(part) == makedumpfile_partial(core, tmp_path)
    # cleared before the oldest record still in the ring: everything
    seg, info = _partial_ring(latched, 0x10)
    core = synth_core(tmp_path, seg, info, "old.core")
    assert len(synth_log_partial(core).records) == 6
    # cleared after the newest: nothing (the kernel's READ_ALL returns nothing either)
    seg, info = _partial_ring(latched, 0x46)
    core = synth_core(tmp_path, seg, info, "new.core")
    assert synth_log_partial(core).records == []
    core = synth_core(tmp_path, Ring(records=_records()).build(), vmcoreinfo_text(), "no.core")
    log = synth_log_partial(core)
    assert len(log.records) == len(_records()) and "clear_seq" in log.warnings[0]


def synth_log_partial(path: Path) -> PrintkLog:
    with ElfCore.open(path) as dump:
        return read_log(dump, synth_layout(dump), partial=True)


def test_partial_dmesg_records_synthetic(tmp_path: Path) -> None:
    """3.5-5.9: the walk starts at clear_idx (the third record, after the wrap marker's
    neighbour); makedumpfile 1.7.2 agrees. With clear_seq and log_first_seq in the layout and
    clear_seq behind, the kernel's rule applies: from log_first_idx."""
    recs = [printk_log_record(b"rec %d" % i, 1000 * i) for i in range(4)]
    seg, _ = records_segment(recs, first=0x300, wrap_at=2)
    clear_idx = 0                       # the third record, at the buffer start after the wrap
    struct.pack_into("<I", seg, 0x128, clear_idx)
    info = records_vmcoreinfo().replace(
        f"SYMBOL(clear_idx)={0xFFFFFFFF81000000 + 0x110:x}",
        f"SYMBOL(clear_idx)={0xFFFFFFFF81000000 + 0x128:x}")
    assert f"SYMBOL(clear_idx)={0xFFFFFFFF81000128:x}" in info
    core = synth_core(tmp_path, seg, info)
    log = synth_log_partial(core)
    assert [r.text for r in log.records] == [b"rec 2", b"rec 3"]
    assert format_makedumpfile(log) == makedumpfile_partial(core, tmp_path)
    assert len(synth_log(core).records) == 4
    struct.pack_into("<QQ", seg, 0x130, 5, 9)          # clear_seq 5 < log_first_seq 9
    seqs = (f"SYMBOL(clear_seq)={0xFFFFFFFF81000130:x}\n"
            f"SYMBOL(log_first_seq)={0xFFFFFFFF81000138:x}\n")
    core = synth_core(tmp_path, seg, info + seqs, "stale.core")
    assert len(synth_log_partial(core).records) == 4
    struct.pack_into("<QQ", seg, 0x130, 11, 9)         # clear_seq 11 >= 9: clear_idx holds
    core = synth_core(tmp_path, seg, info + seqs, "fresh.core")
    assert len(synth_log_partial(core).records) == 2


def test_partial_dmesg_cli(tmp_path: Path) -> None:
    """``--partial-dmesg`` through both commands; refused without --dump-dmesg, as makedumpfile
    does."""
    seg, info = _partial_ring(True, 0x44)
    core = synth_core(tmp_path, seg, info)
    out = tmp_path / "d.txt"
    assert main(["dump", "--dump-dmesg", "--partial-dmesg", "--message-level", "0", str(core),
                 str(out)]) == 0
    assert out.read_bytes().splitlines() == [b"[    0.000004] line 4", b"[    0.000005] line 5"]
    assert main(["dmesg", "--partial-dmesg", str(core), str(tmp_path / "e.txt")]) == 0
    assert (tmp_path / "e.txt").read_bytes() == out.read_bytes()
    assert main(["dump", "--partial-dmesg", str(core), str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("count", [10, 40], ids=["not-wrapped", "wrapped"])
def test_plain_format_equals_makedumpfile(tmp_path: Path, count: int) -> None:
    """Pre-3.5 character ring (SYMBOL(log_end)): written as it is, oldest character first."""
    text = b"".join(b"<6>line %d\n" % i for i in range(count))
    core = synth_core(tmp_path, plain_segment(text), plain_vmcoreinfo())
    log = synth_log(core)
    assert log.format is LogFormat.PLAIN
    assert log.plain == text[-0x100:]
    assert format_makedumpfile(log) == makedumpfile_dmesg(core, tmp_path)


# --------------------------------------------------------------------------------------------
# Error paths (no oracle: what must not happen is a hang, a traceback or a silent wrong answer)


def _ring_error(tmp_path: Path, ring: Ring, patch: Any = None) -> KdlayoutError:
    seg = ring.build()
    if patch is not None:
        patch(seg)
    core = synth_core(tmp_path, seg, vmcoreinfo_text())
    started = time.monotonic()
    with pytest.raises(KdlayoutError) as info:
        synth_log(core)
    assert time.monotonic() - started < 10
    err = info.value
    assert "\n" not in str(err) and str(core) in str(err)
    return err


def _records(n: int = 3) -> list[SynthRecord]:
    return [SynthRecord(b"record %d" % i, i) for i in range(n)]


@pytest.mark.parametrize("bits", [0, 32, 77])
def test_bad_size_bits(tmp_path: Path, bits: int) -> None:
    err = _ring_error(tmp_path, Ring(records=_records(), size_bits_override=bits))
    assert isinstance(err, CorruptError) and f"size_bits={bits}" in str(err)


def test_count_bits_beyond_size_bits(tmp_path: Path) -> None:
    err = _ring_error(tmp_path, Ring(records=_records(), count_bits=4),
                      lambda seg: struct.pack_into("<I", seg, PRB, 12))
    assert isinstance(err, CorruptError) and "count_bits=12" in str(err)


def test_ids_spanning_more_than_the_ring(tmp_path: Path) -> None:
    """head_id far ahead of tail_id (ids that would loop round the ring): refused, not walked."""
    err = _ring_error(tmp_path, Ring(records=_records(), head_id_override=(1 << 62) - 5))
    assert isinstance(err, CorruptError) and "more than the ring's 16" in str(err)


def test_prb_pointer_not_mapped(tmp_path: Path) -> None:
    err = _ring_error(tmp_path, Ring(records=_records()),
                      lambda seg: struct.pack_into("<Q", seg, 0, 0xFFFFC90000000000))
    assert isinstance(err, MissingDataError) and "struct printk_ringbuffer" in str(err)


def test_data_ring_not_in_dump(tmp_path: Path) -> None:
    """The text ring's pointer is mapped (same 2 MiB page) but beyond what the dump holds."""
    err = _ring_error(tmp_path, Ring(records=_records()),
                      lambda seg: struct.pack_into("<Q", seg, PRB + 56, DBASE + 0x100000))
    assert isinstance(err, NotInDumpError) and "text_data_ring.data" in str(err)


def test_inconsistent_records_skipped_and_counted(tmp_path: Path) -> None:
    """Records that contradict the ring are skipped with a count and one warning; the good ones
    around them are read. Covers: a seq of another slot, a data block holding another id, a
    misaligned position, a begin/next pair more than a wrap apart, and a descriptor that holds
    another id (state_var)."""
    ring = Ring(records=[
        SynthRecord(b"good 1", 1),
        SynthRecord(b"seq of another slot", 2, seq_delta=1),
        SynthRecord(b"block of another id", 3, block_id_delta=16),
        SynthRecord(b"misaligned", 4, lpos=(0x13, 0x40)),
        SynthRecord(b"too far apart", 5, lpos=(0x0, 0x10000)),
        SynthRecord(b"good 2", 6),
        SynthRecord(b"missed", 7),
    ])

    def patch(seg: bytearray) -> None:     # descriptor 6's state_var holds the next wrap's id
        off = DESCS + ((ring.first_id + 6) % 16) * 24
        struct.pack_into("<Q", seg, off, (2 << 62) | (ring.first_id + 6 + 16))

    seg = ring.build()
    patch(seg)
    log = synth_log(synth_core(tmp_path, seg, vmcoreinfo_text()))
    assert [r.text for r in log.records] == [b"good 1", b"good 2"]
    assert dict(log.skipped) == {"seq": 1, "block-id": 1, "bad-lpos": 2, "miss": 1}
    assert len(log.warnings) == 1 and "skipped 5 inconsistent records" in log.warnings[0]


def test_record_chain_cycle_terminates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """3.5-5.9 format whose log_next_idx is on no record boundary: the chain from log_first_idx
    wraps and comes round again. The walk stops (bounded by the buffer size), keeps the records
    before the damage, and the command writes them then exits 2 with one line."""
    recs = [printk_log_record(b"r%d" % i, i) for i in range(4)]
    seg, _ = records_segment(recs, first=0x300, wrap_at=2)
    struct.pack_into("<I", seg, 0x118, 0x3F0)          # log_next_idx: not a record start
    core = synth_core(tmp_path, seg, records_vmcoreinfo())
    started = time.monotonic()
    log = synth_log(core)
    assert time.monotonic() - started < 10
    assert not log.complete and len(log.warnings) == 1
    assert [r.text for r in log.records] == [b"r0", b"r1", b"r2", b"r3"]
    out = tmp_path / "dmesg"
    assert main(["dmesg", "--no-cache", str(core), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("kdlayout: ") == 2 and "corrupt" in err.splitlines()[-1]
    assert out.read_bytes().startswith(b"[    0.000000] r0\n")


def test_record_beyond_buffer(tmp_path: Path) -> None:
    """A struct printk_log whose len runs past log_buf_len: the log stops there."""
    recs = [printk_log_record(b"ok", 1), printk_log_record(b"bad", 2)]
    seg, _ = records_segment(recs, first=0)
    struct.pack_into("<H", seg, 0x1000 + len(recs[0]) + 8, 0xFFF0)
    log = synth_log(synth_core(tmp_path, seg, records_vmcoreinfo()))
    assert [r.text for r in log.records] == [b"ok"] and not log.complete
    assert "does not fit" in log.warnings[0]


def test_no_log_in_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A kernel whose facts name no log buffer: one line, exit 2."""
    vi = "OSRELEASE=6.1.0-synthetic-amd64\nPAGESIZE=4096\nNUMBER(phys_base)=16777216\n"
    core = synth_core(tmp_path, bytes(0x20000), vi)
    with pytest.raises(MissingDataError, match="no printk log"):
        synth_log(core)
    assert main(["dmesg", "--no-cache", str(core)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(core) in err


def test_format_record_prefix_widths() -> None:
    """makedumpfile's "[%5lld.%06ld] ": five-digit seconds minimum, microseconds truncated; the
    continuation indent is the prefix's width (caller id included)."""
    rec = PrintkRecord(1, 123_456_789_999_999, 6, 0, 2, 0x80000001, b"a\nb")
    lines = format_record(rec, caller_id=True).split(b"\n")
    assert lines[0] == b"[123456.789999] [      C1] a"
    assert lines[1] == b" " * len(b"[123456.789999] [      C1] ") + b"b"
    rec = rec._replace(caller_id=None)
    assert format_record(rec, caller_id=True) == format_record(rec)


def test_cli_stdout_and_output_refusals(tmp_path: Path) -> None:
    core = synth_core(tmp_path, _common_ring().build(), vmcoreinfo_text())
    env = {**os.environ, "KDLAYOUT_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "kdlayout.cli", "dmesg", str(core)],
                       capture_output=True, timeout=120, env=env)
    assert r.returncode == 0 and r.stdout == format_makedumpfile(synth_log(core))
    r = subprocess.run([sys.executable, "-m", "kdlayout.cli", "dump", "--dump-dmesg", "-E",
                        str(core), str(tmp_path / "x")], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 2 and "give no -F or -E" in r.stderr


def test_log_buf_not_in_dump(tmp_path: Path) -> None:
    """3.5-5.9 format whose log_buf pointer is mapped but not held by the dump: one line naming
    the file, the buffer and its address."""
    seg, _ = records_segment([printk_log_record(b"x", 1)])
    struct.pack_into("<Q", seg, 0x100, DBASE + 0x180000)
    core = synth_core(tmp_path, seg, records_vmcoreinfo())
    with pytest.raises(NotInDumpError) as info:
        synth_log(core)
    msg = str(info.value)
    assert "\n" not in msg and str(core) in msg and f"log_buf at {DBASE + 0x180000:#x}" in msg


@pytest.mark.parametrize("buf_len", [0, 0x300, 0xFFFFFFFF], ids=["zero", "not-pow2", "huge"])
def test_plain_bad_log_buf_len(tmp_path: Path, buf_len: int) -> None:
    seg = plain_segment(b"<6>hello\n")
    struct.pack_into("<I", seg, 0x108, buf_len)
    with pytest.raises(CorruptError, match=f"log_buf_len={buf_len} "):
        synth_log(synth_core(tmp_path, seg, plain_vmcoreinfo()))


def test_ring_larger_than_the_dump(tmp_path: Path) -> None:
    """A plausible but huge size_bits (2 GiB ring) in a small dump: refused before any read, so
    memory stays bounded by what the dump holds."""
    err = _ring_error(tmp_path, Ring(records=_records(), size_bits_override=31))
    assert isinstance(err, CorruptError) and "more than the dump holds" in str(err)
