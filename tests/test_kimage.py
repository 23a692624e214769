"""kdlayout.kimage: kernel-image virtual reads.

Real fixtures: ``phys_base`` from VMCOREINFO agrees with the kexec vmcore's kernel-text PT_LOAD as
``readelf`` prints it, and the other two methods (PT_LOAD, init_uts_ns probe) reproduce it when
VMCOREINFO's NUMBER(phys_base) is hidden; ``init_uts_ns`` reads back the OSRELEASE; the kernel
image bytes are the same through the kexec vmcore, makedumpfile's and QEMU's dumps. Synthetic
memory for error paths only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures import Fixture
from kallsyms_synth import PHYS, TEXT, BlobMemory
from kdlayout.errors import CorruptError, MissingDataError, NotInDumpError, UnsupportedError
from kdlayout.kimage import START_KERNEL_MAP, KernelImage
from kdlayout.vmcoreinfo import VmcoreInfo
from realdumps import readelf_loads


class _HiddenKeys:
    """A VMCOREINFO view with some keys removed (to force the fallback methods)."""

    def __init__(self, vi: VmcoreInfo, hidden: set[str]) -> None:
        self._vi = vi
        self._hidden = hidden

    def get(self, key: str) -> str | None:
        return None if key in self._hidden else self._vi.get(key)


def _open(path: Path):  # type: ignore[no-untyped-def]
    from kdlayout.dumpfile import open_dump

    return open_dump(str(path))


def _vmcore(fixture: Fixture) -> Path:
    p = fixture.path("vmcore")
    if p is None:
        pytest.skip(f"fixture {fixture.name} has no kexec vmcore")
    return p


def test_phys_base_agrees_with_kexec_pt_load(fixture: Fixture) -> None:
    path = _vmcore(fixture)
    # readelf: the PT_LOAD whose virtual address is in the kernel-image region.
    loads = readelf_loads(path)
    text = [(vaddr, paddr) for _off, vaddr, paddr, _fs, _ms in loads
            if START_KERNEL_MAP <= vaddr < START_KERNEL_MAP + (1 << 30)]
    assert text, "kexec vmcore without a kernel-text PT_LOAD"
    vaddr, paddr = text[0]
    want = (paddr - (vaddr - START_KERNEL_MAP)) % (1 << 64)
    with _open(path) as mem:
        image = KernelImage(mem)
        assert image.phys_base.method == "vmcoreinfo"
        assert image.phys_base.value == want
        assert image.vmcoreinfo is not None
        hidden = _HiddenKeys(image.vmcoreinfo, {"NUMBER(phys_base)"})  # type: ignore[arg-type]
        via_elf = KernelImage(mem, hidden)
        assert via_elf.phys_base.method == "elf-pt-load"
        assert via_elf.phys_base.value == want


@pytest.mark.parametrize("key", ["qemu_elf", "md_zlib"])
def test_phys_base_probe_matches(fixture: Fixture, key: str) -> None:
    path = fixture.path(key)
    if path is None:
        pytest.skip(f"fixture {fixture.name} has no {key}")
    with _open(path) as mem:
        image = KernelImage(mem)
        assert image.vmcoreinfo is not None
        hidden = _HiddenKeys(image.vmcoreinfo, {"NUMBER(phys_base)"})  # type: ignore[arg-type]
        probed = KernelImage(mem, hidden)
        # QEMU ELF PT_LOADs carry no kernel-image virtual addresses, kdump files no PT_LOADs.
        assert probed.phys_base.method == "init_uts_ns-probe"
        assert probed.phys_base.value == image.phys_base.value


def test_init_uts_ns_holds_osrelease(fixture: Fixture) -> None:
    with _open(_vmcore(fixture)) as mem:
        image = KernelImage(mem)
        vi = image.vmcoreinfo
        assert vi is not None
        uts = int(vi.get("SYMBOL(init_uts_ns)") or "0", 16)
        release = vi.get("OSRELEASE")
        blob = image.read(uts, 256)
        at = blob.find(b"Linux\0")
        assert 0 <= at <= 8
        assert image.read_cstring(uts + at) == b"Linux"
        assert image.read_cstring(uts + at + 2 * 65).decode() == release


def test_image_bytes_agree_across_dump_formats(fixture: Fixture) -> None:
    keys = [k for k in ("vmcore", "md_zlib", "md_lzo", "qemu_elf") if fixture.path(k)]
    if len(keys) < 2:
        pytest.skip(f"fixture {fixture.name} has fewer than two dump formats")
    blobs = {}
    for key in keys:
        path = fixture.path(key)
        assert path is not None
        with _open(path) as mem:
            image = KernelImage(mem)
            vi = image.vmcoreinfo
            assert vi is not None
            stext = int(vi.get("SYMBOL(_stext)") or "0", 16)
            uts = int(vi.get("SYMBOL(init_uts_ns)") or "0", 16)
            # Kernel text (never written after boot-time patching) and init_uts_ns.
            blobs[key] = image.read(stext + 0x100000, 0x10000) + image.read(uts, 512)
    first = blobs[keys[0]]
    for key in keys[1:]:
        assert blobs[key] == first, key


# -- error paths (synthetic) -----------------------------------------------------------------


def _mem(vi: bytes | None = b"NUMBER(phys_base)=0\n") -> BlobMemory:
    return BlobMemory(b"hello\0world" + bytes(8192 - 11) + b"x" * 4096, vmcoreinfo=vi)


def test_reads_translate_with_phys_base() -> None:
    image = KernelImage(_mem())
    assert image.pa(TEXT) == PHYS
    assert image.read(TEXT, 5) == b"hello"
    assert image.read_cstring(TEXT) == b"hello"
    assert image.read_cstring(TEXT + 6) == b"world"
    assert image.read_u32(TEXT) == int.from_bytes(b"hell", "little")
    assert image.read_u64(TEXT) == int.from_bytes(b"hello\0wo", "little")
    assert image.contains(TEXT, 10) and not image.contains(TEXT + 0x4000, 1)


def test_not_in_dump_names_both_addresses() -> None:
    image = KernelImage(_mem())
    with pytest.raises(NotInDumpError) as err:
        image.read(TEXT + 0x10000, 16)
    msg = str(err.value)
    assert "\n" not in msg and "<synthetic>" in msg
    assert f"{TEXT + 0x10000:#x}" in msg and f"{PHYS + 0x10000:#x}" in msg


def test_outside_kernel_image_is_missing_data() -> None:
    image = KernelImage(_mem())
    with pytest.raises(MissingDataError, match="not in the kernel image"):
        image.read(0xFFFF888000000000, 8)
    with pytest.raises(MissingDataError):
        image.read(0xFFFFFFFFC0000000 - 4, 8)    # runs into the module area


def test_unterminated_string() -> None:
    image = KernelImage(_mem())
    with pytest.raises(CorruptError, match="no NUL"):
        image.read_cstring(TEXT + 8192, 100)
    with pytest.raises(NotInDumpError):          # runs off the dumped range first
        image.read_cstring(TEXT + 8192, 8192)


def test_no_way_to_find_phys_base() -> None:
    with pytest.raises(MissingDataError, match="phys_base"):
        KernelImage(_mem(None))


def test_negative_phys_base_number_wraps() -> None:
    # VMCOREINFO prints phys_base with %ld, so it can read negative.
    image = KernelImage(_mem(b"NUMBER(phys_base)=-16777216\n"))
    assert image.phys_base.value == (1 << 64) - 0x1000000
    assert image.pa(TEXT) == 0


def test_other_architectures_unsupported() -> None:
    mem = _mem()
    mem.info.arch = "aarch64"
    with pytest.raises(UnsupportedError, match="x86_64"):
        KernelImage(mem)
