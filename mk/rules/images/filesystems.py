"""Root filesystem images: squashfs, erofs and ext4, each from the image's root tree as a tar.

Each tool runs in the sandbox on the image's toolchain, with every identifier and time fixed:
- the UUID (and ext4's directory hash seed) derive from the sha256 of the root tar, so they
  change exactly when the content does;
- times are SOURCE_DATE_EPOCH (mke2fs reads E2FSPROGS_FAKE_TIME, and treats 0 as unset, so an
  epoch of 0 becomes 1 there; it copies ctime and atime from the files it reads, which debugfs
  then sets).
Owners, modes and device nodes come from the tar. mksquashfs reads the tar itself; mkfs.erofs
and mke2fs read a folder, so the tar is unpacked under fakeroot, which keeps the owners and
devices it records for the tool that runs next in the same session.
"""

from __future__ import annotations

from mk.engine.actions import Action
from mk.rules.images.format import UUID_OF, Built, Format, FormatContext
from mk.rules.images.stage1 import stage1
from mk.rules.providers import Boot
from mk.rules.write_file import write

# The root tar unpacked under fakeroot (owners, devices) into /dev/shm/root, then `$@` in the same
# session. /dev/shm is a tmpfs, whose folders list their entries in the order they were made:
# mke2fs 1.47.0 adds files in that order, which on a disk filesystem follows hashes that differ
# from one folder (and machine) to the next. In the sandbox's user namespace a real chown to
# another owner fails with EINVAL, which fakeroot would pass on; FAKEROOTDONTTRYCHOWN makes it
# only record the owner, as it should.
_UNPACK_THEN = r"""export FAKEROOTDONTTRYCHOWN=1
fakeroot -s /tmp/fakeroot.state -- tar -xpf "$tar" -C /dev/shm/root --numeric-owner
# Every entry of an mk tree has the same time; GNU tar may touch a folder again after restoring
# its time (it makes some symlinks last), so set them all once more.
find /dev/shm/root -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
fakeroot -i /tmp/fakeroot.state -- "$@"
"""


def _unpacked(tool: str) -> str:
    """A script that unpacks the tar at $tar into /dev/shm/root under fakeroot, then runs `tool`."""
    return "mkdir /dev/shm/root\nset -- " + tool + "\n" + _UNPACK_THEN


def squashfs(fc: FormatContext) -> Built:
    out = fc.out("root.squashfs")
    fc.command("Squashfs", (fc.parts.tar,), (out,), f"""
mksquashfs - {out.path} -tar -noappend -quiet -no-progress -comp zstd -processors 1 < {fc.parts.tar.path}
""")
    return Built((out,))


def erofs(fc: FormatContext) -> Built:
    out = fc.out("root.erofs")
    fc.command("Erofs", (fc.parts.tar,), (out,), f"""{UUID_OF}
tar={fc.parts.tar.path}
{_unpacked(f'mkfs.erofs -d0 -T {fc.epoch} -U "$(uuid_of "$tar")" -zlz4hc {out.path} /dev/shm/root')}""")
    return Built((out,))


def ext4(fc: FormatContext) -> Built:
    out = fc.out("root.ext4")
    # Room for the files, their inodes and the journal: the tar's size, plus a quarter, plus 16 MiB,
    # in whole MiB (the size follows from the content, so the image stays reproducible).
    fc.command("Ext4", (fc.parts.tar,), (out,), f"""{UUID_OF}
tar={fc.parts.tar.path}
uuid=$(uuid_of "$tar")
size=$(( ($(stat -c %s "$tar") * 5 / 4 / 1048576 + 16) ))M
export E2FSPROGS_FAKE_TIME={max(fc.epoch, 1)}
{_unpacked(f'mke2fs -q -F -t ext4 -L root -U "$uuid" -E hash_seed="$uuid",root_owner=0:0 -d /dev/shm/root '
           f'{out.path} "$size"')}
# mke2fs copies each file's ctime and atime from the unpacked copy, which has today's: set them.
(cd /dev/shm/root && find . -mindepth 1 -printf '%P\\n') | while IFS= read -r path; do
    printf 'sif "/%s" ctime @{fc.epoch}\\nsif "/%s" atime @{fc.epoch}\\n' "$path" "$path"
done > /tmp/times
debugfs -w -f /tmp/times {out.path} > /dev/null
""")
    return Built((out,))


def kernel_squashfs(fc: FormatContext) -> Built:
    """The kernel, the stage-1 initrd, and the squashfs root on the first virtio disk."""
    root = fc.built("squashfs").files[0]
    initrd = fc.once("stage1", stage1)
    cmdline = fc.out("kernel+squashfs.cmdline")
    fc.add(Action(owner=fc.ctx.label, mnemonic="WriteFile", inputs=(), outputs=(cmdline,),
                  params={"content": f"{fc.parts.cmdline_text} mk.root=/dev/vda mk.rootfstype=squashfs\n",
                          "executable": False}, function=write))
    files = {"kernel": fc.parts.kernel, "initrd": initrd, "cmdline": cmdline, "disk": root}
    return Built(tuple(files.values()), Boot("direct", "kernel", files))


FORMATS = (
    Format("squashfs", "A squashfs root filesystem (zstd), `root.squashfs`.", squashfs),
    Format("erofs", "An erofs root filesystem (lz4hc), `root.erofs`.", erofs),
    Format("ext4", "An ext4 root filesystem, `root.ext4`, sized from its content.", ext4),
    Format("kernel+squashfs", "The kernel, a small initrd `stage1.img` and `kernel+squashfs.cmdline` that "
           "boot the squashfs root from a virtio disk (under a tmpfs overlay).", kernel_squashfs),
)
