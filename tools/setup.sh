#!/usr/bin/env bash
# Install everything kdlayout, its tests and its fixture builder need on a fresh Debian machine.
# Idempotent: a second run only checks. Needs root (apt) on Debian bookworm or newer.
set -euo pipefail
cd "$(dirname "$0")/.."

# QEMU boots the Debian kernels (TCG); busybox/cpio/kmod make the guest's initramfs; kexec-tools
# loads the capture kernel; zstd/xz/dpkg unpack packages; e2fsprogs and gcc serve the guest
# workload; makedumpfile, crash, bpftool and binutils are the independent peers; liblzo2-dev lets
# python-lzo build; libclang-dev serves the headers source; gpgv verifies the package indexes;
# clang, dwarves (pahole) and gdb are independent DWARF producers and readers for the tests.
# dwarves (pahole) encodes small real BTF and prints struct layouts for the BTF tests; lz4 makes
# kernel-style lz4 payloads for the vmlinuz tests.
APT_PACKAGES=(
    qemu-system-x86 qemu-utils
    busybox-static cpio kmod
    kexec-tools
    zstd xz-utils dpkg
    e2fsprogs
    gcc libc6-dev
    makedumpfile crash
    bpftool binutils
    dwarves lz4
    liblzo2-dev libclang-dev
    gpgv debian-archive-keyring
    clang dwarves gdb
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if ! "$PY" -c "import kdlayout, drgn, lzo, snappy, zstandard, elftools, cachetools, clang.cindex, pytest, hypothesis, mypy, ruff, jsonschema" 2>/dev/null \
   || ! "$PY" -c "import kdlayout, sys; sys.exit(0 if kdlayout.__file__.startswith('$(pwd)/') else 1)" 2>/dev/null; then
    echo "setup: installing the package and its development dependencies with pip"
    "$PY" -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v -E "^(WARNING|DEPRECATION)" || true
fi
"$PY" -c "import kdlayout" >/dev/null
