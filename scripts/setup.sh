#!/usr/bin/env bash
# Installs what mk needs on a Debian 12 machine: system packages (apt-get) and a Python venv
# in .venv with mk and its dependencies. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(python3 python3-venv python3-pip bash coreutils git tar gzip xz-utils zstd cpio bubblewrap skopeo umoci nginx gnupg gpgv debian-archive-keyring dpkg qemu-system-x86 qemu-system-arm openssh-client mmdebstrap graphviz e2fsprogs squashfs-tools erofs-utils dosfstools mtools fdisk xorriso qemu-utils ovmf binutils cryptsetup-bin postgresql
    dpkg-dev gcc make)  # dpkg-source, and a compiler: the offline tests of deb_source and package run on the host's tools

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null; then
        echo "setup: need Debian packages ${missing[*]} but apt-get is not available; install them by hand" >&2
        exit 1
    fi
    sudo=""
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null || { echo "setup: installing ${missing[*]} needs root (or sudo)" >&2; exit 1; }
        sudo="sudo"
    fi
    echo "setup: installing ${missing[*]}"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: mk needs Python 3.11 or newer; $python is $("$python" --version 2>&1)" >&2
    exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e '.[dev]'
# BuildGrid, the REAPI server the remote-execution tests run against, in its own venv.
scripts/setup-buildgrid.sh
