"""Archive writers: external tools accept what they write, and the bytes never vary."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from conftest import MK, WorkspaceFactory, mk_env, parse_summary, require

COMPRESSIONS = {"none": "", "gzip": ".gz", "zstd": ".zst", "xz": ".xz"}

BUILD = """
layer(
    name = "base",
    tars = ["base.tar"],
    files = {"/etc/motd": "motd", "/usr/bin/hello": "hello.sh", "/usr/share/data/": ":data"},
    directories = ["/tmp", "/var/empty"],
    modes = {"/tmp": "1777", "/etc/motd": "0640"},
    owners = {"/var/empty": "100:65534"},
    symlinks = {"/bin": "usr/bin", "/etc/localtime": "/usr/share/zoneinfo/UTC"},
    devices = {"/dev/console": "c 5 1", "/dev/null": "c 1 3"},
    users = ["root:0:0:root:/root:/bin/sh", "sshd:100:65534:privsep:/run/sshd:/usr/sbin/nologin"],
    groups = ["root:0", "nogroup:65534"],
)
filegroup(name = "data", srcs = glob(["data/*"]))
layer(name = "app", files = {"/etc/motd": "motd2"})
rootfs(name = "root", layers = [":base", ":app"], remove = ["/usr/share/doc/**"])
""" + "".join(
    f'tar(name = "tar_{c}", src = ":root", compression = "{c}")\n'
    f'cpio(name = "cpio_{c}", src = ":root", compression = "{c}")\n'
    for c in COMPRESSIONS
) + """
oci_image(name = "image", layers = [":base", ":app"], entrypoint = ["/usr/bin/hello"], env = {"A": "1"})
oci_image(name = "flat", layers = [":base", ":app"], flatten = True, tag = "v1.0")
"""


def base_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in (("usr/share/doc/readme", b"doc\n"), ("usr/lib/os-release", b"ID=mk\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1234567890
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("usr/lib/os-release.hard")
        link.type, link.linkname = tarfile.LNKTYPE, "usr/lib/os-release"
        archive.addfile(link)
    return buffer.getvalue()


def make_workspace(workspace: WorkspaceFactory, name: str) -> Path:
    ws = workspace({"img/BUILD": BUILD, "img/motd": "hello\n", "img/motd2": "hello again\n",
                    "img/hello.sh": "#!/bin/sh\necho hello\n", "img/data/a.txt": "a\n", "img/data/b.txt": "b\n"},
                   name=name)
    ws.write("img/base.tar", base_tar())
    (ws.root / "img/hello.sh").chmod(0o755)
    return ws.root


def build(root: Path, cache: Path, jobs: int, umask: int, extra_env: dict[str, str]) -> dict[str, str]:
    proc = subprocess.run([MK, "build", "-j", str(jobs), "//img:all"], cwd=root, env=mk_env(cache, extra_env),
                          capture_output=True, text=True, umask=umask, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    parse_summary(proc.stdout)
    out = root / "mk-out" / "img"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


def test_every_writer_is_reproducible_across_machines_and_settings(workspace: WorkspaceFactory, tmp_path: Path) -> None:
    first = build(make_workspace(workspace, "one"), tmp_path / "cache-one", 1, 0o022,
                  {"TZ": "UTC", "LC_ALL": "C", "LANG": "C"})
    second = build(make_workspace(workspace, "a/much/deeper/workspace two"), tmp_path / "cache-two", 2, 0o077,
                   {"TZ": "Pacific/Chatham", "LC_ALL": "C.UTF-8", "LANG": "de_DE.UTF-8"})
    expected = {f"{kind}_{c}.{kind}{suffix}" for kind in ("tar", "cpio") for c, suffix in COMPRESSIONS.items()}
    assert expected | {"image.oci.tar", "flat.oci.tar"} <= set(first)
    assert first == second


def test_check_finds_every_writer_deterministic(workspace: WorkspaceFactory) -> None:
    ws = workspace(name="check")
    root = make_workspace(workspace, "checked")
    result = subprocess.run([MK, "build", "--check", "//img:all"], cwd=root, env=mk_env(ws.cache_dir),
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    # layers, rootfs, a tar and a cpio per compression, 2 OCI images and their 3 OCI layers
    actions = 2 + 1 + 2 * len(COMPRESSIONS) + 2 + 3
    assert parse_summary(result.stdout).actions == actions
    assert result.stderr.splitlines()[-1] == (
        f"mk: --check: rebuilt {actions} actions; all {actions + 3} outputs are identical"  # an OCI layer makes 2
    )


def oci_layers(archive_path: Path) -> list[str]:
    """The layer digests of the one image in an oci-archive, lowest first."""
    with tarfile.open(archive_path) as archive:
        def document(name: str) -> Any:
            member = archive.extractfile(name)
            assert member is not None
            return json.loads(member.read())

        (manifest,) = document("index.json")["manifests"]
        layers = document(f"blobs/sha256/{manifest['digest'].removeprefix('sha256:')}")["layers"]
        return [str(layer["digest"]) for layer in layers]


def test_an_edit_to_one_tree_rewrites_only_its_layer_of_the_oci_image(workspace: WorkspaceFactory) -> None:
    ws = workspace(name="cache-only")
    root = make_workspace(workspace, "edited")

    def built_image() -> tuple[int, list[str]]:
        proc = subprocess.run([MK, "build", "//img:image"], cwd=root, env=mk_env(ws.cache_dir),
                              capture_output=True, text=True, check=False, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return parse_summary(proc.stdout).executed, oci_layers(root / "mk-out/img/image.oci.tar")

    _, before = built_image()
    (root / "img/motd2").write_text("hello once more\n")
    executed, after = built_image()
    assert executed == 3, "the app layer, its OCI layer and the archive"
    assert after[0] == before[0] and after[1] != before[1]


EXPECTED_LISTING = {
    # path: (type and permission string as `ls -l`, owner uid/gid)
    "bin": ("lrwxrwxrwx", "0/0"),
    "dev/console": ("crw-------", "0/0"),
    "dev/null": ("crw-------", "0/0"),
    "etc/motd": ("-rw-r--r--", "0/0"),
    "etc/passwd": ("-rw-r--r--", "0/0"),
    "etc/shadow": ("-rw-------", "0/0"),
    "tmp": ("drwxrwxrwt", "0/0"),
    "usr/bin/hello": ("-rwxr-xr-x", "0/0"),
    "usr/share/data/a.txt": ("-rw-r--r--", "0/0"),
    "var/empty": ("drwxr-xr-x", "100/65534"),
}


@pytest.fixture
def built(workspace: WorkspaceFactory, tmp_path: Path) -> Path:
    root = make_workspace(workspace, "ext")
    build(root, tmp_path / "cache", 2, 0o022, {})
    return root / "mk-out" / "img"


def test_gnu_tar_lists_the_tar(built: Path) -> None:
    listing = subprocess.run([require("tar"), "--numeric-owner", "-tvf", built / "tar_none.tar"],
                             capture_output=True, text=True, check=True).stdout
    rows = {line.split()[-1].rstrip("/") if " -> " not in line else line.split()[-3]: line.split()
            for line in listing.splitlines()}
    for path, (mode, owner) in EXPECTED_LISTING.items():
        assert rows[path][0] == mode and rows[path][1] == owner, (path, rows[path])
    assert "usr/share/doc/readme" not in rows
    assert all(" 1970-01-01 00:00 " in line for line in listing.splitlines())


def test_gnu_cpio_lists_the_initramfs(built: Path) -> None:
    data = (built / "cpio_none.cpio").read_bytes()
    listing = subprocess.run([require("cpio"), "-itv", "--numeric-uid-gid", "--quiet"], input=data,
                             capture_output=True, check=True).stdout.decode()
    rows = {(line.split()[-3] if " -> " in line else line.split()[-1]): line.split() for line in listing.splitlines()}
    for path, (mode, owner) in EXPECTED_LISTING.items():
        uid, gid = owner.split("/")
        assert rows[path][0] == mode and rows[path][2:4] == [uid, gid], (path, rows[path])
    assert rows["usr/lib/os-release.hard"][1] == "2"  # the hard link shares the inode
    # Every compression holds the same archive.
    for c, suffix in COMPRESSIONS.items():
        if c != "none":
            tool = {"gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dc"], "xz": ["xz", "-dc"]}[c]
            unpacked = subprocess.run([require(tool[0]), *tool[1:], built / f"cpio_{c}.cpio{suffix}"],
                                      capture_output=True, check=True).stdout
            assert unpacked == data, c


def test_skopeo_and_umoci_accept_the_oci_archive(built: Path, tmp_path: Path) -> None:
    inspect = subprocess.run([require("skopeo"), "inspect", f"oci-archive:{built / 'image.oci.tar'}"],
                             capture_output=True, text=True, check=True)
    info = json.loads(inspect.stdout)
    assert len(info["Layers"]) == 2 and info["Created"] == "1970-01-01T00:00:00Z" and info["Env"] == ["A=1"]
    flat = json.loads(subprocess.run(["skopeo", "inspect", f"oci-archive:{built / 'flat.oci.tar'}"],
                                     capture_output=True, text=True, check=True).stdout)
    assert len(flat["Layers"]) == 1
    # The reference names in index.json are NAME:TAG, the tag 'latest' unless the target sets one.
    for file, reference in (("image.oci.tar", "image:latest"), ("flat.oci.tar", "flat:v1.0")):
        named = subprocess.run(["skopeo", "inspect", f"oci-archive:{built / file}:{reference}"],
                               capture_output=True, text=True, check=False)
        assert named.returncode == 0, named.stderr
    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(built / "image.oci.tar") as archive:
        archive.extractall(layout, filter="data")
    bundle = tmp_path / "bundle"
    subprocess.run([require("umoci"), "unpack", "--rootless", "--image", f"{layout}:image:latest", bundle],
                   capture_output=True, check=True)
    assert (bundle / "rootfs/etc/motd").read_text() == "hello again\n"
    assert os.readlink(bundle / "rootfs/bin") == "usr/bin"


def test_zstd_output_does_not_depend_on_the_number_of_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    from mk.rules.formats import compression

    data = b"".join(b"%d mk reproducible %d\n" % (i, i * i % 977) for i in range(400_000))
    outputs = set()
    for workers in (1, 2, 4):
        monkeypatch.setattr(compression, "ZSTD_WORKERS", workers)
        buffer = io.BytesIO()
        with compression.compressed(buffer, "zstd") as writer:
            for start in range(0, len(data), 16384):
                writer.write(data[start:start + 16384])
        outputs.add(buffer.getvalue())
    assert len(outputs) == 1


def test_check_names_an_output_that_is_not_reproducible(workspace: WorkspaceFactory) -> None:
    ws = workspace({"p/BUILD": 'genrule(name = "rand", outs = ["rand.bin"], cmd = "head -c 32 /dev/urandom > $@")\n'
                               'genrule(name = "same", outs = ["same.txt"], cmd = "echo same > $@")\n'})
    result = ws.mk("build", "--check", "//p:all")
    assert result.code == 1, result
    assert "error: --check: p/rand.bin of //p:rand is not reproducible: cached " in result.err
    assert "same.txt" not in result.err
    parse_summary(result.out)


def test_layer_imports_a_tarball_made_by_another_target(workspace: WorkspaceFactory, tmp_path: Path) -> None:
    ws = workspace({"p/BUILD": """
genrule(
    name = "make_tar",
    srcs = ["hello.txt"],
    outs = ["made.tar"],
    cmd = "mkdir -p /tmp/t/opt && cp $< /tmp/t/opt/hello && tar --sort=name --owner=0 --group=0 --mtime=@0 " +
          "-C /tmp/t -cf $@ opt",
)
layer(name = "l", tars = [":make_tar"], files = {"/etc/extra": "hello.txt"})
tar(name = "out", src = ":l")
""", "p/hello.txt": "hi\n"})
    ws.build("//p:out")
    with tarfile.open(ws.root / "mk-out/p/out.tar") as archive:
        names = archive.getnames()
        member = archive.extractfile("opt/hello")
        assert member is not None and member.read() == b"hi\n"
    assert names == ["etc", "etc/extra", "opt", "opt/hello"]


def test_an_oci_tag_that_no_tool_accepts_is_refused(workspace: WorkspaceFactory) -> None:
    ws = workspace({"img/BUILD": 'layer(name = "base", directories = ["/srv"])\n'
                                 'oci_image(name = "image", layers = [":base"], tag = "v1 final")\n'})
    result = ws.mk("build", "//img:image")
    assert result.code == 2
    assert result.err == ("img/BUILD:2:1: error: oci_image //img:image: tag 'v1 final' is not an OCI tag (letters, "
                          "digits, '_', '.' and '-', at most 128, not starting with '.' or '-')\n")
