#!/usr/bin/env python3
"""Image formats benchmark: every format of //examples:sshd built by mk, cold and after a one-file
edit, against the same format made by hand from the same tree with the same tools.

mk side, per format, each build a fresh `mk image //examples:sshd --format F` process:
- cold: a cache holding only the downloaded .debs (their blobs and sha256 index, copied from
  a fill build), so every other action runs: unpacking each package, the kernel's modules, the
  root tree, writing the toolchain out, the default outputs (kernel, initrd, SBOM, manifest)
  and the format; nothing is downloaded;
- edit: after appending a comment to examples/sshd_config (a file the image holds), with the
  cold build's cache; each edit writes bytes never built before, and the format's file must change.
By hand, per format: the same tools (from the same written-out toolchain trees mk's actions run
on, //examples:image_tools, and //examples:toolchain for cpio, zstd, tar and gzip), run as root
under bubblewrap with the toolchain as root, with the options mk's rules pass, from the image's
tree unpacked once (untimed) from mk's rootfs.tar, with mk's kernel and stage-1 initrds. An edit
costs a person a full remake, so that is what is timed: every step from the tree to the file.

Needs the Debian mirror once (the fill build), bubblewrap, and root (the unpacked tree keeps
its owners). Usage: python3 bench/formats.py [--runs N] [--cold-runs N] [--formats a,b] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine import DEFAULT_TIMEOUT, BenchError, Mk, Run, default_mk, format_rows, log, precompile, rmtree
from sandbox import children_cpu, orphans_adopted

from mk.cache.cas import ContentStore
from mk.cache.parts import FIXED_OUTPUTS
from mk.rules.images import bios, efi_disk, iso
from mk.rules.images.all import FORMATS
from mk.rules.images.efi_boot import EFI_ARCHES
from mk.rules.images.format import TOOL_PATH

REPO = Path(__file__).resolve().parent.parent
TARGET = "//examples:sshd"
OUTPUTS = Path("mk-out/examples/sshd")
EDITED = Path("examples/sshd_config")
DEFAULT = "kernel+initrd"  # what `mk image` makes without --format
IMAGE_TOOLS, BASE_TOOLS = "image_tools", "toolchain"
# A program only that toolchain has tells the written-out trees apart.
TOOLCHAIN_MARKS = {IMAGE_TOOLS: "usr/bin/mksquashfs", BASE_TOOLS: "usr/bin/cpio"}
# FAT's first second: one SOURCE_DATE_EPOCH that mtools takes too (mk gives it max(epoch, 1980)).
HAND_EPOCH = "315532800"

# The by-hand recipes: bash functions over /tmp/in (tree/, kernel, stage1.img, stage1-verity.img,
# cmdline, ext4-size) writing into /tmp/out. They pass each tool the options mk's rules pass, with
# fixed identifiers where mk derives them from the content, and leave out what mk adds around the
# tools for reproducibility (fakeroot unpacking, content hashes for ids, debugfs time resets, the UKI's
# PE header and the VHD footer rewritten). The UKI uses the Arch wiki's fixed section addresses.
BY_HAND = r"""in=/tmp/in out=/tmp/out
uuid=0c9d5b1e-6f2a-4c3b-8d7e-1a2b3c4d5e6f salt=$(printf '%064d' 0)
cmdline=$(cat $in/cmdline)

initrd() { (cd $in/tree && find . -print0 | cpio --null -o -H newc --quiet | zstd -q -T0 -3 > $out/initrd.img); }
rootfs_tar() { tar -C $in/tree --numeric-owner -cf $out/rootfs.tar .; }
blob() {  # blob FILE: moves FILE into the OCI layout's blobs, prints its digest and size
    local digest
    digest=$(sha256sum < "$1" | cut -c1-64)
    mv "$1" $out/oci/blobs/sha256/$digest
    echo $digest $(stat -c %s $out/oci/blobs/sha256/$digest)
}
oci() {
    local diff_id layer config manifest
    mkdir -p $out/oci/blobs/sha256
    tar -C $in/tree --numeric-owner -cf $out/layer.tar .
    diff_id=$(sha256sum < $out/layer.tar | cut -c1-64)
    gzip -n < $out/layer.tar > $out/layer.tar.gz
    layer=($(blob $out/layer.tar.gz))  # digest, size
    cat > $out/config.json <<END
{"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/usr/sbin/sshd", "-D", "-e"]},
 "rootfs": {"type": "layers", "diff_ids": ["sha256:$diff_id"]}}
END
    config=($(blob $out/config.json))
    cat > $out/manifest.json <<END
{"schemaVersion": 2,
 "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:$config",
            "size": ${config[1]}},
 "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:$layer",
             "size": ${layer[1]}}]}
END
    manifest=($(blob $out/manifest.json))
    cat > $out/oci/index.json <<END
{"schemaVersion": 2,
 "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:$manifest",
                "size": ${manifest[1]}, "annotations": {"org.opencontainers.image.ref.name": "sshd:latest"}}]}
END
    echo '{"imageLayoutVersion":"1.0.0"}' > $out/oci/oci-layout
    tar -C $out/oci -cf $out/image.oci.tar .
}

squashfs() { mksquashfs $in/tree $out/root.squashfs -noappend -quiet -no-progress -comp zstd -processors 1; }
erofs() { mkfs.erofs -d0 -T 0 -U $uuid -zlz4hc $out/root.erofs $in/tree; }
ext4() {
    E2FSPROGS_FAKE_TIME=1 mke2fs -q -F -t ext4 -L root -U $uuid -E hash_seed=$uuid,root_owner=0:0 \
        -d $in/tree $out/root.ext4 "$(cat $in/ext4-size)"
}
kernel_squashfs() {
    squashfs
    echo "$cmdline mk.root=/dev/vda mk.rootfstype=squashfs" > $out/kernel+squashfs.cmdline
}

uki() {  # uki INITRD CMDLINE OUT
    printf %s "$2" > $out/uki.cmdline
    objcopy --add-section .osrel=$in/tree/usr/lib/os-release --change-section-vma .osrel=0x20000 \
        --add-section .cmdline=$out/uki.cmdline --change-section-vma .cmdline=0x30000 \
        --add-section .linux=$in/kernel --change-section-vma .linux=0x2000000 \
        --add-section .initrd="$1" --change-section-vma .initrd=0x3000000 $stub "$3"
}
fat() {  # fat IMAGE SPARE_MIB FOLDERS SOURCE=PATH...: a FAT16 image sized as mk sizes it
    local image=$1 spare=$2 folders=$3 bytes=0 source pair
    shift 3
    for source in "${@%%=*}"; do bytes=$((bytes + $(stat -c %s "$source"))); done
    mkfs.fat -C --invariant -i 12345678 -F 16 "$image" \
        $(( ((bytes / 1024 * 11 / 10 + 1023) / 1024 + 1 + spare) * 1024 )) > /dev/null
    [ -z "$folders" ] || mmd -i "$image" $folders
    for pair; do mcopy -i "$image" "${pair%%=*}" "::/${pair#*=}"; done
}
disk() {  # disk LABEL IMAGE FILE:TYPE...: each file a partition, in whole MiB from 1 MiB on
    local label=$1 image=$2 part start=1 size script= starts=() i=0
    shift 2
    for part; do
        size=$(( ($(stat -c %s "${part%%:*}") + 1048575) / 1048576 ))
        script+="start=$((start * 2048)), size=$((size * 2048)), type=${part#*:}"$'\n'
        starts+=($start)
        start=$((start + size))
    done
    [ $label = dos ] || start=$((start + 1))  # room for the backup GPT
    truncate -s $((start * 1048576)) "$image"
    printf 'label: %s\n%s' $label "$script" | sfdisk --quiet --no-reread --no-tell-kernel "$image"
    for part; do dd if="${part%%:*}" of="$image" bs=1M seek=${starts[i++]} conv=notrunc status=none; done
}
raw_efi() {
    squashfs
    veritysetup format --hash sha256 --data-block-size 4096 --hash-block-size 4096 --salt $salt --uuid $uuid \
        $out/root.squashfs $out/root.verity > $out/verity.txt
    blocks=$(sed -n 's/^Data blocks:[[:space:]]*//p' $out/verity.txt)
    roothash=$(sed -n 's/^Root hash:[[:space:]]*//p' $out/verity.txt)
    words="mk.root=/dev/vda2 mk.rootfstype=squashfs mk.verity=/dev/vda3 mk.verity.blocks=$blocks"
    uki $in/stage1-verity.img "$cmdline $words mk.verity.salt=$salt mk.roothash=$roothash" $out/BOOTX64.EFI
    fat $out/raw-efi.esp 0 "::/EFI ::/EFI/BOOT" $out/BOOTX64.EFI=EFI/BOOT/BOOTX64.EFI
    disk gpt $out/raw-efi.img $out/raw-efi.esp:$esp_type $out/root.squashfs:$root_type \
        $out/root.verity:$verity_type
}
syslinux_cfg() {  # syslinux_cfg FILE APPEND
    printf 'SERIAL 0 115200\nDEFAULT mk\nPROMPT 0\nLABEL mk\n  LINUX /vmlinuz\n  INITRD /initrd.img\n' > "$1"
    echo "  APPEND $2" >> "$1"
}
raw_bios() {
    squashfs
    syslinux_cfg $out/syslinux.cfg "$cmdline mk.root=/dev/vda2 mk.rootfstype=squashfs"
    fat $out/boot.fat 1 "" $in/kernel=vmlinuz $in/stage1.img=initrd.img $out/syslinux.cfg=syslinux.cfg
    syslinux --install $out/boot.fat
    disk dos $out/raw-bios.img "$out/boot.fat:e, bootable" $out/root.squashfs:83
    dd if=$mbr of=$out/raw-bios.img bs=440 count=1 conv=notrunc status=none
}
iso_bios() {
    syslinux_cfg $out/isolinux.cfg "$cmdline"
    xorriso -as mkisofs -quiet -o $out/iso-bios.iso -V SSHD -r --set_all_file_dates =1 \
        -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table \
        -isohybrid-mbr $isolinux/isohdpfx.bin -graft-points /isolinux/isolinux.bin=$isolinux/isolinux.bin \
        /isolinux/ldlinux.c32=$syslinux_modules/ldlinux.c32 /isolinux/isolinux.cfg=$out/isolinux.cfg \
        /vmlinuz=$in/kernel /initrd.img=$out/initrd.img
}
iso_efi() {
    printf 'timeout 0\ndefault mk.conf\n' > $out/loader.conf
    printf 'title sshd\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' "$cmdline" > $out/mk.conf
    fat $out/efi.fat 0 "::/EFI ::/EFI/BOOT ::/loader ::/loader/entries" $systemd_boot=EFI/BOOT/BOOTX64.EFI \
        $out/loader.conf=loader/loader.conf $out/mk.conf=loader/entries/mk.conf $in/kernel=vmlinuz \
        $out/initrd.img=initrd.img
    xorriso -as mkisofs -quiet -o $out/iso-efi.iso -V SSHD -r --set_all_file_dates =1 -e efi.img \
        -no-emul-boot -graft-points /efi.img=$out/efi.fat
}
qcow2() {
    raw_bios
    qemu-img convert -q -f raw -O qcow2 $out/raw-bios.img $out/disk.qcow2
}
vhd() {
    raw_bios
    qemu-img convert -q -f raw -O vpc -o subformat=fixed,force_size=on $out/raw-bios.img $out/disk.vhd
}
"""

# The toolchain files the recipes name, taken from mk's rules so both sides use the same ones (the
# amd64 image's: its systemd-boot-efi is the toolchain's own version).
X64 = EFI_ARCHES["x86_64"]
TOOLCHAIN_FILES = {"stub": f"/{X64.stub}", "mbr": bios.SYSLINUX_MBR, "isolinux": iso.ISOLINUX,
                   "syslinux_modules": iso.SYSLINUX_MODULES, "systemd_boot": f"/{X64.boot_manager}",
                   "esp_type": efi_disk.ESP_TYPE, "root_type": X64.root_type, "verity_type": X64.verity_type}


@dataclass(frozen=True)
class Step:
    """One bash call of the by-hand recipes, run on one of the written-out toolchains."""

    toolchain: str
    call: str


def image_tools(call: str) -> Step:
    return Step(IMAGE_TOOLS, call)


def base_tools(call: str) -> Step:
    """For cpio, zstd and gzip, which //examples:image_tools lacks."""
    return Step(BASE_TOOLS, call)


INITRD = base_tools("initrd")


@dataclass(frozen=True)
class Case:
    name: str  # as `mk image --format` names it
    file: str  # the file whose size is compared, in mk-out and in the by-hand folder
    by_hand: tuple[Step, ...]

    def mk_image(self) -> list[str]:
        return ["image", TARGET, *(["--format", self.name] if self.name != DEFAULT else [])]


CASES = (
    Case(DEFAULT, "initrd.img", (INITRD,)),
    Case("tar", "rootfs.tar", (base_tools("rootfs_tar"),)),
    Case("oci", "image.oci.tar", (base_tools("oci"),)),
    Case("squashfs", "root.squashfs", (image_tools("squashfs"),)),
    Case("erofs", "root.erofs", (image_tools("erofs"),)),
    Case("ext4", "root.ext4", (image_tools("ext4"),)),
    Case("kernel+squashfs", "root.squashfs", (image_tools("kernel_squashfs"),)),
    Case("uki", "uki.efi", (INITRD, image_tools('uki $out/initrd.img "$cmdline" $out/uki.efi'))),
    Case("raw-efi", "raw-efi.img", (image_tools("raw_efi"),)),
    Case("raw-bios", "raw-bios.img", (image_tools("raw_bios"),)),
    Case("iso-efi", "iso-efi.iso", (INITRD, image_tools("iso_efi"))),
    Case("iso-bios", "iso-bios.iso", (INITRD, image_tools("iso_bios"))),
    Case("qcow2", "disk.qcow2", (image_tools("qcow2"),)),
    Case("vhd", "disk.vhd", (image_tools("vhd"),)),
)


@dataclass(frozen=True)
class Setup:
    """Where a measurement runs: the workspace copy, mk with its cache, and the by-hand inputs."""

    mk: Mk  # its cache_dir is the one each cold build starts afresh
    ws: Path
    seed: Path  # the cache holding only the .debs
    events: Path  # --json-events of the edit builds
    toolchains: dict[str, Path]  # IMAGE_TOOLS and BASE_TOOLS, as the fill build wrote them out
    parts: Path  # what the by-hand recipes start from
    by_hand: Path  # where they write


@dataclass(frozen=True)
class Edit:
    run: Run
    cpu: float  # CPU seconds of mk and every process it waited for
    actions: float  # seconds in the actions that ran, summed (the rest is mk's start, analysis, placing)


@dataclass(frozen=True)
class Remake:
    seconds: float
    cpu: float  # of bubblewrap and the tools


@dataclass(frozen=True)
class Measured:
    case: Case
    cold: list[Run]
    edits: list[Edit]
    by_hand: list[Remake]
    mk_size: int
    hand_size: int


# ---- the workspace, the fill build and the cold cache ------------------------------------


def copy_workspace(ws: Path) -> None:
    ws.mkdir()
    shutil.copy(REPO / "mk.toml", ws / "mk.toml")
    shutil.copytree(REPO / "examples", ws / "examples", ignore=shutil.ignore_patterns("mk-out"))


def fill(mk: Mk, ws: Path) -> float:
    """Every format at once (downloading the .debs), and a genrule, so that //examples:toolchain
    is written out too; returns the seconds taken."""
    every = [word for case in CASES if case.name != DEFAULT for word in ("--format", case.name)]
    started = time.perf_counter()
    mk.command(ws, "image", TARGET, *every)
    mk.command(ws, "build", "//examples:motd")
    return time.perf_counter() - started


def seed_with_debs(full: Path, seed: Path) -> int:
    """A cache holding only the downloaded packages: each .deb's blob and its sha256 entry."""
    source, target = ContentStore(full), ContentStore(seed)
    entries = sorted((full / FIXED_OUTPUTS.name).glob("*/*"))
    for entry in entries:
        digest = entry.read_text().strip()
        for src, dst in ((source.path(digest), target.path(digest)), (entry, seed / entry.relative_to(full))):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return len(entries)


def written_toolchains(cache: Path) -> dict[str, Path]:
    found = {name: root for root in (cache / "toolchains").iterdir() for name, mark in TOOLCHAIN_MARKS.items()
             if (root / mark).is_file()}
    if missing := set(TOOLCHAIN_MARKS) - set(found):
        raise BenchError(f"the fill build wrote out no toolchain with {', '.join(sorted(missing))}")
    return found


# ---- the by-hand side ---------------------------------------------------------------------


def sandboxed(toolchain: Path, parts: Path, out: Path, call: str) -> None:
    """`call` of the recipes as root under bubblewrap, the toolchain as the root filesystem."""
    preamble = "".join(f"{name}={shlex.quote(value)}\n" for name, value in TOOLCHAIN_FILES.items())
    command = ["bwrap", "--ro-bind", str(toolchain), "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
               "--ro-bind", str(parts), "/tmp/in", "--bind", str(out), "/tmp/out", "--chdir", "/tmp/out",
               "--clearenv", "--setenv", "PATH", TOOL_PATH, "--setenv", "HOME", "/tmp", "--setenv", "TZ", "UTC",
               "--setenv", "LC_ALL", "C.UTF-8", "--setenv", "SOURCE_DATE_EPOCH", HAND_EPOCH,
               "--setenv", "MTOOLS_SKIP_CHECK", "1", "--", "bash", "-e", "-o", "pipefail", "-c",
               preamble + BY_HAND + call]
    result = subprocess.run(command, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise BenchError(f"by hand, `{call}` exited with {result.returncode}:\n{result.stdout}{result.stderr}")


def prepare_parts(reference: Path, toolchains: dict[str, Path], parts: Path) -> None:
    """What the by-hand recipes start from, taken from the fill build's outputs (untimed): the tree
    unpacked from rootfs.tar with its owners and devices, the kernel, the stage-1 initrds (the
    verity one out of the raw-efi UKI), the command line and the ext4 image's size."""
    (parts / "tree").mkdir(parents=True)
    subprocess.run(["tar", "-xpf", str(reference / "rootfs.tar"), "-C", str(parts / "tree"), "--numeric-owner"],
                   check=True)
    for name in ("kernel", "stage1.img", "cmdline", "BOOTX64.EFI"):
        shutil.copy(reference / name, parts / name)
    (parts / "ext4-size").write_text(f"{(reference / 'root.ext4').stat().st_size // 2**20}M\n")
    scratch = parts.parent / "dump"
    scratch.mkdir()
    sandboxed(toolchains[IMAGE_TOOLS], parts, scratch,
              "objcopy --dump-section .initrd=$out/stage1-verity.img $in/BOOTX64.EFI $out/rest.efi")
    shutil.move(scratch / "stage1-verity.img", parts / "stage1-verity.img")
    rmtree(scratch)


def by_hand(case: Case, setup: Setup) -> Remake:
    """One full remake of the format from the tree."""
    remove(setup.by_hand)
    setup.by_hand.mkdir()
    started, cpu = time.perf_counter(), children_cpu()
    for step in case.by_hand:
        sandboxed(setup.toolchains[step.toolchain], setup.parts, setup.by_hand, step.call)
    return Remake(time.perf_counter() - started, children_cpu() - cpu)


# ---- the mk side --------------------------------------------------------------------------


def mk_cold(case: Case, setup: Setup) -> Run:
    """A build with a copy of the cache that holds only the .debs, and no mk-out."""
    remove(setup.mk.cache_dir)
    remove(setup.ws / "mk-out")
    shutil.copytree(setup.seed, setup.mk.cache_dir)
    return setup.mk.command(setup.ws, *case.mk_image())


def mk_edit(case: Case, setup: Setup, text: str) -> Edit:
    """A build after sshd_config gets `text`."""
    (setup.ws / EDITED).write_text(text)
    cpu = children_cpu()
    run = setup.mk.command(setup.ws, *case.mk_image(), "--json-events", str(setup.events))
    cpu = children_cpu() - cpu
    with open(setup.events) as events:
        actions = sum(e["duration"] for e in map(json.loads, events) if e["status"] == "executed")
    return Edit(run, cpu, actions)


def measure(case: Case, setup: Setup, runs: int, cold_runs: int, problems: list[str]) -> Measured:
    """mk's cold builds, then each edit beside a remake by hand, so both sides see the same load."""
    config, output = setup.ws / EDITED, setup.ws / OUTPUTS / case.file
    original = config.read_text()
    try:
        cold = [mk_cold(case, setup) for _ in range(cold_runs)]
        mk_size, before = output.stat().st_size, sha256(output)
        edits, remakes = [], []
        for n in range(runs):
            edits.append(mk_edit(case, setup, f"{original}# edited by bench/formats.py: {n}\n"))
            if (after := sha256(output)) == before:
                problems.append(f"{case.name}: edit {n} of {EDITED} left {case.file} unchanged")
            before = after
            remakes.append(by_hand(case, setup))
    finally:
        config.write_text(original)
        remove(setup.mk.cache_dir)
    return Measured(case, cold, edits, remakes, mk_size, (setup.by_hand / case.file).stat().st_size)


# ---- helpers and the table ----------------------------------------------------------------


def remove(path: Path) -> None:
    if path.exists():
        rmtree(path)


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


LEGEND = """
mk cold: `mk image` with a cache holding only the .debs (exec: the actions it ran); mk edit: after appending a
line to examples/sshd_config; in actions: the seconds of the actions the edit ran, summed (the rest of mk edit
is mk's start, analysis and placing files in mk-out); by hand: every step from the unpacked tree to the file
on the same toolchains, a full remake (what an edit costs by hand); edit/hand: mk edit / by hand, wall and CPU
(user + system of every process waited for). `mk image` remakes its default outputs too (kernel+initrd,
manifest), so every mk edit includes the initrd."""


def table(results: Sequence[Measured]) -> str:
    rows = [("format", "mk cold", "exec", "mk edit", "exec", "in actions", "CPU", "by hand", "CPU", "edit/hand",
             "CPU", "mk MiB", "hand MiB")]
    median = statistics.median
    for m in results:
        edit, edit_cpu = median(e.run.seconds for e in m.edits), median(e.cpu for e in m.edits)
        hand, hand_cpu = median(r.seconds for r in m.by_hand), median(r.cpu for r in m.by_hand)
        rows.append((m.case.name, seconds(median(r.seconds for r in m.cold)), str(m.cold[-1].executed),
                     seconds(edit), str(m.edits[-1].run.executed), seconds(median(e.actions for e in m.edits)),
                     seconds(edit_cpu), seconds(hand), seconds(hand_cpu), f"{edit / hand:.2f}x",
                     f"{edit_cpu / hand_cpu:.2f}x", f"{m.mk_size / 2**20:.1f}", f"{m.hand_size / 2**20:.1f}"))
    return format_rows(rows, left=0)


def seconds(value: float) -> str:
    return f"{value:.2f} s"


def check_registry() -> None:
    """Every format mk offers has a case, so a new one cannot be left out unnoticed."""
    offered = {DEFAULT, "tar", "oci", *FORMATS}
    if missing := offered - {case.name for case in CASES}:
        raise BenchError(f"no by-hand recipe for the formats {', '.join(sorted(missing))}: add them to CASES")


def commit() -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip() or "unknown"


def run_all(args: argparse.Namespace, work: Path, cases: Sequence[Case]) -> int:
    ws, parts = work / "ws", work / "parts"
    copy_workspace(ws)
    precompile(args.mk)
    started_load = load()
    log("fill build: every format, downloading the .debs...")
    full = Mk(args.mk, work / "full", args.timeout)
    fill_seconds = fill(full, ws)
    debs = seed_with_debs(full.cache_dir, work / "seed")
    toolchains = written_toolchains(full.cache_dir)
    prepare_parts(ws / OUTPUTS, toolchains, parts)
    setup = Setup(Mk(args.mk, work / "cache", args.timeout), ws, work / "seed", work / "events.jsonl", toolchains,
                  parts, work / "by-hand")
    problems: list[str] = []
    results = []
    for case in cases:
        log(f"{case.name}: mk cold x{args.cold_runs}, then edit and by hand x{args.runs} (load {load()})")
        results.append(measure(case, setup, args.runs, args.cold_runs, problems))
    print(f"{TARGET} at {commit()}, {time.strftime('%Y-%m-%d')}; {os.cpu_count()} CPUs, mk -j {os.cpu_count()}; "
          f"medians: cold of {args.cold_runs}, edit and by hand of {args.runs}")
    print(f"load average (1, 5, 15 min): {started_load} at the start, {load()} at the end")
    print(f"fill build (all formats, {debs} .debs downloaded): {fill_seconds:.2f} s, untimed below\n")
    print(table(results))
    print(LEGEND)
    for problem in problems:
        print(f"WARNING  {problem}")
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="edits and by-hand remakes per format (median shown)")
    parser.add_argument("--cold-runs", type=int, default=1, help="cold builds per format (median shown)")
    parser.add_argument("--formats", type=lambda text: text.split(","), default=[c.name for c in CASES],
                        help="comma-separated formats to measure (default: all)")
    parser.add_argument("--mk", default=default_mk(), help="the mk executable")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds any single build may take")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    check_registry()
    unknown = set(args.formats) - {c.name for c in CASES}
    if unknown:
        parser.error(f"unknown formats {', '.join(sorted(unknown))}; choose from {', '.join(c.name for c in CASES)}")
    work = Path(tempfile.mkdtemp(prefix="mk-bench-formats-"))
    try:
        with orphans_adopted():  # so that the CPU time of mk's sandboxed commands is counted
            return run_all(args, work, [c for c in CASES if c.name in args.formats])
    except BenchError as e:
        log(f"error: {e}")
        return 2
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            remove(work)


if __name__ == "__main__":
    sys.exit(main())
