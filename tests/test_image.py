"""kernel, image and mk run, offline: generated kernel and busybox packages, no boot."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard
from conftest import MIRROR_SECONDS, MK, WorkspaceFactory, mk_env, read_events, require, run_within
from debrepo import Deb, Member, Repo

from mk.cache.cas import ContentStore, digest_bytes
from mk.cache.tree import Entry, Kind, Tree
from mk.engine.errors import MkError
from mk.rules import elf
from mk.rules import qemu as vm
from mk.rules.images.programs import with_libraries
from mk.rules.kernel import modinfo_depends
from mk.rules.providers import Boot
from mk.rules.vm_agent import UPDATE_DRIVE_BYTES, Agent

RELEASE = "6.1.0-1-test"


def elf_file(sections: dict[str, bytes]) -> bytes:
    """A minimal ELF64 file holding `sections` (by name), then its table of section names."""
    names = b"\0" + b"".join(name.encode() + b"\0" for name in sections) + b".shstrtab\0"
    body, headers, name_offset = bytearray(64), [bytes(64)], 1
    for name, content in sections.items():
        headers.append(struct.pack("<IIQQQQIIQQ", name_offset, 1, 0, 0, len(body), len(content), 0, 0, 1, 0))
        body += content
        name_offset += len(name) + 1
    headers.append(struct.pack("<IIQQQQIIQQ", name_offset, 3, 0, 0, len(body), len(names), 0, 0, 1, 0))
    body += names + bytes(-(len(body) + len(names)) % 8)
    fields = (1, 62, 1, 0, 0, len(body), 0, 64, 0, 0, 64, len(headers), len(headers) - 1)  # x86-64, names last
    body[:64] = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHIQQQIHHHHHH", *fields)
    return bytes(body) + b"".join(headers)


def module(name: str, depends: str) -> bytes:
    """A kernel module whose .modinfo section says `depends=`."""
    return elf_file({".modinfo": f"license=GPL\0depends={depends}\0name={name}\0".encode()})


def program(loader: str | None, libraries: list[str]) -> bytes:
    """A dynamically linked program (or library, without `loader`) that needs `libraries`."""
    names, dynamic = b"\0", b""
    for library in libraries:
        dynamic += struct.pack("<qQ", 1, len(names))  # DT_NEEDED
        names += library.encode() + b"\0"
    sections = {".dynstr": names, ".dynamic": dynamic + struct.pack("<qQ", 0, 0)}
    return elf_file({**({".interp": loader.encode() + b"\0"} if loader else {}), **sections})


MODULES = {  # name: (path under kernel/, depends)
    "virtio_ring": ("drivers/virtio", ""),
    "virtio": ("drivers/virtio", "virtio_ring"),
    "virtio_pci_modern_dev": ("drivers/virtio", ""),
    "virtio_pci": ("drivers/virtio", "virtio,virtio_ring,virtio_pci_modern_dev"),
    "failover": ("net/core", ""),
    "net_failover": ("drivers/net", "failover"),
    "virtio_net": ("drivers/net", "net_failover,virtio,virtio_ring,crc32c_generic"),
    "unused": ("drivers/misc", ""),
}


def kernel_deb() -> Deb:
    base = f"./lib/modules/{RELEASE}"
    members = [Member("./boot/", kind="dir"), Member(f"./boot/vmlinuz-{RELEASE}", b"not really a kernel")]
    members += [Member(f"{base}/kernel/{path}/{name}.ko", module(name, deps)) for name, (path, deps) in MODULES.items()]
    members.append(Member(f"{base}/modules.builtin", b"kernel/crypto/crc32c_generic.ko\n"))
    return Deb(f"linux-image-{RELEASE}", "6.1.1-1", members=members)


BUILD = """
deb_packages(name = "kernel_packages", packages = ["linux-image-6.1.0-1-test"], keyring = "{keyring}")
kernel(name = "kernel", packages = ":kernel_packages", modules = {modules})
deb_packages(name = "busybox", packages = ["busybox-static"], keyring = "{keyring}")
layer(name = "motd", files = {{"/etc/motd": "motd"}})
layer(name = "app", files = {{"/usr/bin/sleep-forever": "sleep-forever"}})
image(
    name = "box",
    kernel = ":kernel",
    base = [":busybox", ":motd", ":app"],
    hostname = "boxy",
    cmdline = "console=ttyS0 quiet",
    onboot = ["echo first", "echo second"],
    services = ["/usr/bin/sleep-forever"],
    ssh_key_user = "root",
)
image(name = "bare", kernel = ":kernel", base = [":motd"])
image(name = "nokey", kernel = ":kernel", base = [":busybox"])
image(
    name = "typo",
    kernel = ":kernel",
    base = [":busybox", ":app"],
    onboot = ["mkdir -p /run/app", "if [ -d /srv ]; then cd /srv; fi"],
    services = ["/usr/bin/sleep-forevr --long", "httpd -f", "FOO=1 exec sleep-forever"],
)
"""
# busybox's applet names, as the real binary holds them: one sorted, NUL-separated string.
APPLETS = b"\0".join(b"[ [[ ash awk cat chmod echo hostname httpd insmod ip ls mkdir mount poweroff sh sleep sync "
                      b"tr udhcpc".split()) + b"\0"


def busybox_deb() -> Deb:
    return Deb("busybox-static", members=[Member("./bin/", kind="dir"),
                                          Member("./bin/busybox", b"\x7fELF busybox\0" + APPLETS, mode=0o755)])


def bookworm(root: Path, *debs: Deb) -> Repo:
    """A signed repository whose bookworm suite holds `debs` (bookworm-updates and -security are empty)."""
    repo = Repo(root)
    repo.add("bookworm", *debs)
    repo.add("bookworm-updates")
    repo.add("bookworm-security")
    repo.publish()
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return bookworm(tmp_path_factory.mktemp("kernel") / "repo", kernel_deb(), busybox_deb())


def image_workspace(workspace: WorkspaceFactory, repo: Repo, modules: str = '["virtio_pci", "virtio_net"]',
                    name: str = "ws") -> Path:
    ws = workspace({"img/BUILD": BUILD.format(keyring=repo.keyring, modules=modules), "img/motd": "hi\n",
                    "img/sleep-forever": "#!/bin/sh\nexec sleep 1000000\n"},
                   name=name, toml=f'debian_mirror = "{repo.url}"\n')
    (ws.root / "img/sleep-forever").chmod(0o755)
    for target in ("kernel_packages", "busybox"):
        assert ws.mk("lock", f"//img:{target}").code == 0
    return ws.root


def mk(root: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MK, *args], cwd=root, env=mk_env(cache), capture_output=True, text=True, check=False)


def initrd_archives(initrd: Path) -> list[bytes]:
    """The cpio archives of a segmented initrd, each decompressed on its own, in order."""
    archives, rest = [], initrd.read_bytes()
    while rest:
        segment = zstandard.ZstdDecompressor().decompressobj()
        archives.append(segment.decompress(rest))
        rest = segment.unused_data
    return archives


def unpack_initrd(initrd: Path, into: Path) -> None:
    """Unpacks the archives one over the other, as the kernel does."""
    into.mkdir()
    for archive in initrd_archives(initrd):
        subprocess.run(["cpio", "-idmu", "--quiet", "--no-absolute-filenames"], input=archive, cwd=into, check=True)


def test_modinfo_depends_reads_the_elf_section() -> None:
    assert modinfo_depends(module("x", "a,b")) == ["a", "b"]
    assert modinfo_depends(module("x", "")) == []
    with pytest.raises(ValueError, match="not a 64-bit little-endian ELF"):
        modinfo_depends(b"MZ not an elf")


def test_elf_names_the_libraries_and_loader_a_program_needs() -> None:
    dmsetup = program("/lib64/ld-linux-x86-64.so.2", ["libdevmapper.so.1.02.1", "libc.so.6"])
    assert elf.needed(dmsetup) == ["libdevmapper.so.1.02.1", "libc.so.6"]
    assert elf.interpreter(dmsetup) == "/lib64/ld-linux-x86-64.so.2"
    assert elf.interpreter(program(None, [])) is None and elf.needed(program(None, [])) == []
    assert elf.needed(module("x", "a")) == []  # no .dynamic section: a kernel module


def test_programs_come_with_the_libraries_they_load(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path)

    def stored(path: str, data: bytes, mode: int = 0o644) -> Entry:
        return Entry(path, Kind.FILE, mode, digest=cas.put_bytes(data), size=len(data))

    lib = "usr/lib/x86_64-linux-gnu"
    files = [
        stored("usr/sbin/dmsetup", program("/lib64/ld-linux-x86-64.so.2", ["libdevmapper.so.1.02.1"]), 0o755),
        stored(f"{lib}/libdevmapper.so.1.02.1", program(None, ["libc.so.6"])),
        stored(f"{lib}/libc.so.6.real", program("/lib64/ld-linux-x86-64.so.2", [])),
        stored(f"{lib}/ld-linux-x86-64.so.2", program(None, [])),
        stored("usr/bin/unrelated", b"not copied"),
    ]
    links = [Entry("lib", Kind.SYMLINK, 0o777, target="usr/lib"),
             Entry(f"{lib}/libc.so.6", Kind.SYMLINK, 0o777, target="libc.so.6.real"),
             Entry("lib64/ld-linux-x86-64.so.2", Kind.SYMLINK, 0o777, target=f"/{lib}/ld-linux-x86-64.so.2")]
    tree = Tree.build([*files, *links])
    copied = {e.path: e for e in with_libraries(tree, cas, {"usr/sbin/dmsetup": "dmsetup"}, "the test")}
    # Each where the loader looks for it, as a file with the content it links to.
    assert sorted(copied) == ["lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libdevmapper.so.1.02.1",
                              "lib64/ld-linux-x86-64.so.2", "usr/sbin/dmsetup"]
    assert copied["lib/x86_64-linux-gnu/libc.so.6"].digest == files[2].digest
    assert copied["lib64/ld-linux-x86-64.so.2"].digest == files[3].digest
    assert copied["usr/sbin/dmsetup"].mode == 0o755 and all(e.kind is Kind.FILE for e in copied.values())
    with pytest.raises(ValueError, match=r"^the test needs /usr/sbin/veritysetup, which is not in the image: "
                                         r"add cryptsetup-bin to 'base'$"):
        with_libraries(tree, cas, {"usr/sbin/veritysetup": "cryptsetup-bin"}, "the test")
    broken = Tree.build([files[0], *links[2:], files[3]])
    with pytest.raises(ValueError, match=re.escape("/usr/sbin/dmsetup needs the library libdevmapper.so.1.02.1, which "
                                                   "is in none of /lib/x86_64-linux-gnu, ")):
        with_libraries(broken, cas, {"usr/sbin/dmsetup": "dmsetup"}, "the test")


def test_kernel_closure_and_load_order(workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    result = mk(root, tmp_path / "cache", "image", "//img:box")
    assert result.returncode == 0, result.stderr
    unpack_initrd(root / "mk-out/img/box/initrd.img", tmp_path / "initrd")
    base = f"/usr/lib/modules/{RELEASE}/kernel"
    load = (tmp_path / "initrd/etc/mk/modules.load").read_text().split()
    assert [Path(p).stem for p in load] == [
        "failover", "net_failover", "virtio_ring", "virtio", "virtio_net", "virtio_pci_modern_dev", "virtio_pci"]
    assert load[0] == f"{base}/net/core/failover.ko"
    dep = (tmp_path / f"initrd/usr/lib/modules/{RELEASE}/modules.dep").read_text()
    assert "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n" in dep
    assert not (tmp_path / f"initrd{base}/drivers/misc/unused.ko").exists()  # only the closure
    assert (tmp_path / "initrd/etc/mk/kernel.release").read_text() == RELEASE + "\n"


def test_image_contents_and_outputs(workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    result = mk(root, tmp_path / "cache", "image", "//img:box", "--format", "tar")
    assert result.returncode == 0, result.stderr
    out = root / "mk-out/img/box"
    assert sorted(p.name for p in out.iterdir()) == [
        "cmdline", "initrd.img", "kernel", "manifest.json", "rootfs.tar", "sbom.spdx.json"]
    assert (out / "cmdline").read_text() == "console=ttyS0 quiet\n"
    assert (out / "kernel").read_bytes() == b"not really a kernel"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["initrd.img"]["sha256"] == hashlib.sha256((out / "initrd.img").read_bytes()).hexdigest()
    sbom = json.loads((out / "sbom.spdx.json").read_text())
    assert [p["name"] for p in sbom["packages"]] == ["busybox-static"]
    unpack_initrd(out / "initrd.img", tmp_path / "initrd")
    image = tmp_path / "initrd"
    assert (image / "init").stat().st_mode & 0o111
    assert (image / "init").read_text().startswith("#!/usr/bin/busybox sh\n")
    assert "exec /usr/bin/busybox init" in (image / "init").read_text()
    inittab = (image / "etc/inittab").read_text()
    assert "::sysinit:/etc/mk/onboot\n" in inittab and "::respawn:/usr/bin/sleep-forever\n" in inittab
    onboot = (image / "etc/mk/onboot").read_text()
    assert onboot.index("udhcpc") < onboot.index("mk.authorized_key") < onboot.index("( echo first )") < \
        onboot.index("( echo second )")
    assert 'key=/sys/firmware/qemu_fw_cfg/by_name/opt/mk/authorized_key/raw\n' in onboot  # for UEFI boots
    assert (image / "etc/hostname").read_text() == "boxy\n"
    assert (image / "etc/motd").read_text() == "hi\n"
    assert (image / "bin").is_symlink() and (image / "usr/bin/busybox").is_file()
    assert not list(image.rglob("ssh_host_*")) and not list(image.rglob("authorized_keys"))
    listing = subprocess.run(["tar", "-tf", out / "rootfs.tar"], capture_output=True, text=True, check=True).stdout
    # The tar format holds the same root filesystem as the initrd: /init and all.
    assert {line.rstrip("/") for line in listing.splitlines()} == {str(p.relative_to(image)) for p in image.rglob("*")}


def test_mk_image_takes_the_options_of_mk_build(workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    events, profile = tmp_path / "events.jsonl", tmp_path / "trace.json"
    result = mk(root, tmp_path / "cache", "image", "//img:box", "--format", "tar", "-j", "1",
                "--json-events", str(events), "--profile", str(profile))
    assert result.returncode == 0, result.stderr
    executed = {e["mnemonic"] for e in read_events(events) if e["status"] == "executed"}
    assert {"Tar", "Initrd", "Manifest"} <= executed
    trace = json.loads(profile.read_text())
    assert any(e["ph"] == "X" and e["name"] == "Tar //img:box" for e in trace["traceEvents"])
    # --check rebuilds everything the command asked for, the formats included, and compares the bytes.
    events.unlink()
    checked = mk(root, tmp_path / "cache", "image", "//img:box", "--format", "tar", "--check",
                 "--json-events", str(events))
    assert checked.returncode == 0, checked.stderr
    forced = [e["mnemonic"] for e in read_events(events) if e["status"] == "executed"]
    assert "Tar" in forced and "Initrd" in forced


def test_lock_of_an_image_says_what_it_is_in_good_english(workspace: WorkspaceFactory, repo: Repo) -> None:
    root = image_workspace(workspace, repo)
    result = subprocess.run([MK, "lock", "//img:box"], cwd=root, env=mk_env(root.parent / "cache"),
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "error: //img:box is an image; `mk lock` works on deb_packages and deb_source targets" in result.stderr, \
        result.stderr


def oci_reference_and_config(archive: Path) -> tuple[str, dict[str, object]]:
    """The reference name in index.json and the image configuration of a one-image OCI archive."""
    with tarfile.open(archive) as tar:
        def blob(digest: str) -> dict[str, object]:
            member = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
            assert member is not None
            document: dict[str, object] = json.load(member)
            return document

        index = tar.extractfile("index.json")
        assert index is not None
        (manifest,) = json.load(index)["manifests"]
        config = blob(blob(manifest["digest"])["config"]["digest"])["config"]  # type: ignore[index]
        assert isinstance(config, dict)
        return manifest["annotations"]["org.opencontainers.image.ref.name"], config


def oci_layers(archive: tarfile.TarFile) -> list[str]:
    """The members holding the layers of the one image of an OCI archive, lowest first."""
    def blob(digest: str) -> Any:
        member = archive.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
        assert member is not None
        return json.load(member)

    index = archive.extractfile("index.json")
    assert index is not None
    (manifest,) = json.load(index)["manifests"]
    return [f"blobs/sha256/{layer['digest'].removeprefix('sha256:')}" for layer in blob(manifest["digest"])["layers"]]


def test_the_oci_format_starts_the_first_service_as_a_container(workspace: WorkspaceFactory, repo: Repo,
                                                                tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    result = mk(root, tmp_path / "cache", "image", "//img:box", "--format", "oci")
    assert result.returncode == 0, result.stderr
    reference, config = oci_reference_and_config(root / "mk-out/img/box/image.oci.tar")
    assert reference == "box:latest"
    assert "Entrypoint" not in config  # so that `podman run IMAGE COMMAND` replaces the command
    assert config["Cmd"] == ["/usr/bin/busybox", "sh", "-c",
                             "/usr/bin/busybox --install -s 2> /dev/null; exec /usr/bin/sleep-forever"]
    assert config["Env"] == ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    result = mk(root, tmp_path / "cache", "image", "//img:nokey", "--format", "oci")
    assert result.returncode == 0, result.stderr
    reference, config = oci_reference_and_config(root / "mk-out/img/nokey/image.oci.tar")
    assert reference == "nokey:latest"
    assert config["Cmd"] == ["/usr/bin/busybox", "sh", "-c", "/usr/bin/busybox --install -s 2> /dev/null; exec sh"]


@pytest.mark.mirror
@pytest.mark.timeout(MIRROR_SECONDS + 60)
def test_the_oci_image_of_a_real_busybox_runs_in_a_container(tmp_path: Path) -> None:
    """//examples:hello's OCI image, unpacked and started by bubblewrap as a container runtime
    would: its command gets a shell with busybox's applets linked (it has no service)."""
    repo = Path(__file__).resolve().parent.parent
    built = run_within([MK, "image", "//examples:hello", "--format", "oci"], MIRROR_SECONDS,
                       "`mk image //examples:hello --format oci` (downloads its packages from the Debian mirror)",
                       cwd=repo, env=mk_env(tmp_path / "cache"))
    assert built.returncode == 0, built.stderr[-3000:]
    archive = repo / "mk-out/examples/hello/image.oci.tar"
    _, config = oci_reference_and_config(archive)
    rootfs = tmp_path / "rootfs"
    with tarfile.open(archive) as outer:
        layers = oci_layers(outer)
        assert len(layers) > 1, "one layer per segment of the root"
        for layer_name in layers:  # lowest first, each over the ones before, as a runtime does
            layer = outer.extractfile(layer_name)
            assert layer is not None
            with tarfile.open(fileobj=layer, mode="r:gz") as inner:
                inner.extractall(rootfs, filter="tar")
    command, variables = config["Cmd"], config["Env"]
    assert isinstance(command, list) and isinstance(variables, list)
    env = [word for variable in variables for word in ("--setenv", *variable.split("=", 1))]
    container = subprocess.run(
        [require("bwrap"), "--unshare-all", "--uid", "0", "--gid", "0", "--bind", rootfs, "/", "--proc", "/proc",
         "--dev", "/dev", "--clearenv", *env, "--", *command],
        input="echo container-ok; readlink /bin/sh; ls /sbin/poweroff\n", capture_output=True, text=True, timeout=60)
    assert container.returncode == 0, container.stderr
    assert container.stdout == "container-ok\n/usr/bin/busybox\n/sbin/poweroff\n"


def manifest_matches_the_folder(out: Path) -> dict[str, dict[str, object]]:
    """manifest.json, checked to list every other file of the image's folder with its sha256 and size."""
    manifest: dict[str, dict[str, object]] = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest) == sorted(p.name for p in out.iterdir() if p.name != "manifest.json")
    for name, entry in manifest.items():
        data = (out / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}, name
    return manifest


def test_a_plain_image_build_after_a_tar_one_leaves_no_stale_rootfs_tar(workspace: WorkspaceFactory, repo: Repo,
                                                                        tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    assert mk(root, tmp_path / "cache", "image", "//img:box", "--format", "tar").returncode == 0
    (root / "img/motd").write_text("edited\n")
    result = mk(root, tmp_path / "cache", "image", "//img:box")
    assert result.returncode == 0, result.stderr
    out = root / "mk-out/img/box"
    assert sorted(p.name for p in out.iterdir()) == ["cmdline", "initrd.img", "kernel", "manifest.json",
                                                     "sbom.spdx.json"]
    unpack_initrd(out / "initrd.img", tmp_path / "initrd")
    assert (tmp_path / "initrd/etc/motd").read_text() == "edited\n"
    assert sorted(manifest_matches_the_folder(out)) == ["cmdline", "initrd.img", "kernel", "sbom.spdx.json"]


def test_the_manifest_lists_every_output_with_the_formats_built(workspace: WorkspaceFactory, repo: Repo,
                                                                 tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    result = mk(root, tmp_path / "cache", "image", "//img:box", "--format", "tar", "--format", "oci")
    assert result.returncode == 0, result.stderr
    manifest = manifest_matches_the_folder(root / "mk-out/img/box")
    assert sorted(manifest) == ["cmdline", "image.oci.tar", "initrd.img", "kernel", "rootfs.tar", "sbom.spdx.json"]
    result = mk(root, tmp_path / "cache", "image", "//img:box", "--format", "oci")
    assert result.returncode == 0, result.stderr
    manifest = manifest_matches_the_folder(root / "mk-out/img/box")
    assert sorted(manifest) == ["cmdline", "image.oci.tar", "initrd.img", "kernel", "sbom.spdx.json"]


def test_image_without_busybox_is_refused(workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    result = mk(root, tmp_path / "cache", "image", "//img:bare")
    assert result.returncode == 1
    assert ("error: ImageRoot //img:bare failed: the image has no /usr/bin/busybox, which its init needs: "
            "add busybox-static to 'base'") in result.stderr


def test_a_service_the_image_does_not_have_fails_the_build(workspace: WorkspaceFactory, repo: Repo,
                                                          tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    result = mk(root, tmp_path / "cache", "image", "//img:typo")
    assert result.returncode == 1
    lines = (root / "img/BUILD").read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if text == "image(" and lines[n] == '    name = "typo",')
    assert (f"img/BUILD:{line}:1: error: ImageRoot //img:typo failed: service '/usr/bin/sleep-forevr --long': "
            "/usr/bin/sleep-forevr is not in the image (did you mean '/usr/bin/sleep-forever'?)\n") in result.stderr
    assert "httpd" not in result.stderr and "mkdir" not in result.stderr  # busybox applets, linked at boot


def test_unknown_module_is_named(workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    root = image_workspace(workspace, repo, modules='["virtio_nett"]')
    result = mk(root, tmp_path / "cache", "build", "//img:kernel")
    assert result.returncode == 1
    assert (f"error: KernelModules //img:kernel failed: module 'virtio_nett' (needed by the kernel rule) is not in "
            f"kernel {RELEASE} (did you mean 'virtio_net' or 'virtio_ring' or 'virtio'?)") in result.stderr


def test_ls_of_an_image_and_of_a_kernel(workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    result = mk(root, tmp_path / "cache", "ls", "//img:box", "/etc/hostname", "/etc/motd")
    assert result.returncode == 0, result.stderr
    hostname, motd = digest_bytes(b"boxy\n")[:12], digest_bytes(b"hi\n")[:12]
    assert result.stdout == f"-rw-r--r-- 0/0 5 {hostname} /etc/hostname\n-rw-r--r-- 0/0 3 {motd} /etc/motd\n"
    ko = module("virtio_net", MODULES["virtio_net"][1])
    path = f"/usr/lib/modules/{RELEASE}/kernel/drivers/net/virtio_net.ko"
    result = mk(root, tmp_path / "cache", "ls", "//img:kernel", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"-rw-r--r-- 0/0 {len(ko)} {digest_bytes(ko)[:12]} {path}\n"


def test_rdeps_of_a_lockfile(workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    result = mk(root, tmp_path / "cache", "query", "rdeps", "img/busybox.lock.json")
    assert result.returncode == 0, result.stderr
    # Every image of the package is built on the busybox set.
    assert result.stdout == "//img:box\n//img:busybox\n//img:nokey\n//img:typo\n"


def test_qemu_command_line(tmp_path: Path) -> None:
    (tmp_path / "cmdline").write_text("console=ttyS0\n")
    require(vm.QEMU)
    options = vm.VmOptions(mem="1G", cpus=2, publish=((2222, 22), (8080, 80)), ssh_key="ssh-ed25519 AAAA key@host")
    files = {role: tmp_path / role for role in ("kernel", "initrd", "cmdline")}
    command = vm.command(Boot("direct", "kernel", {}), files, options, "tcg")
    assert command[1:7] == ["-accel", "tcg", "-m", "1G", "-smp", "2"]
    assert command[command.index("-cpu") + 1] == "qemu64,+rdrand"  # the guest's entropy at once
    assert "-cpu" not in vm.command(Boot("direct", "kernel", {}), files, options, "kvm")
    assert "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80" in command
    append = command[command.index("-append") + 1]
    assert append.startswith("console=ttyS0 mk.authorized_key=")
    assert "-fw_cfg" not in command
    import base64

    assert base64.urlsafe_b64decode(append.split("=", 2)[2]).decode() == "ssh-ed25519 AAAA key@host"
    assert not {"-serial", "-chardev", "-drive"} & set(command)  # `mk run`: no soft-reboot agent


def test_qemu_command_line_with_the_soft_reboot_agent(tmp_path: Path) -> None:
    """`mk watch --run`: the agent's serial port and update drive, private to the user, and the
    word that starts it."""
    (tmp_path / "cmdline").write_text("console=ttyS0\n")
    require(vm.QEMU)
    files = {role: tmp_path / role for role in ("kernel", "initrd", "cmdline")}
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o700)
    command = vm.command(Boot("direct", "kernel", {}), files, vm.VmOptions(), "tcg", agent=Agent(scratch))
    assert command[command.index("-append") + 1] == "console=ttyS0 mk.watch"
    serials = [command[i + 1] for i, arg in enumerate(command) if arg == "-serial"]
    assert serials == ["mon:stdio", "chardev:mk-agent"]  # the console stays the first port
    assert f"socket,id=mk-agent,path={scratch}/agent.sock,server=on,wait=off" in command
    assert f"file={scratch}/update.img,if=none,id=mk-update,format=raw" in command
    assert (scratch / "update.img").stat().st_size == UPDATE_DRIVE_BYTES
    assert (scratch / "update.img").stat().st_blocks == 0  # sparse


def test_qemu_boots_the_uefi_formats_with_their_firmware_and_the_key_in_fw_cfg(tmp_path: Path) -> None:
    require(vm.QEMU)
    options = vm.VmOptions(ssh_key="ssh-ed25519 AAAA key@host")
    firmware = {"firmware_code": tmp_path / "CODE.fd", "firmware_vars": tmp_path / "VARS.fd"}
    disk = vm.command(Boot("uefi", "disk", {}), {"disk": tmp_path / "disk.img", **firmware}, options, "tcg")
    assert disk[disk.index("-snapshot"):] == [
        "-snapshot", "-drive", f"file={tmp_path}/disk.img,if=virtio,format=raw",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={tmp_path}/CODE.fd",
        "-drive", f"if=pflash,format=raw,unit=1,file={tmp_path}/VARS.fd",
        "-fw_cfg", "name=opt/mk/authorized_key,string=c3NoLWVkMjU1MTkgQUFBQSBrZXlAaG9zdA==",
    ]
    import base64

    assert base64.urlsafe_b64decode("c3NoLWVkMjU1MTkgQUFBQSBrZXlAaG9zdA==").decode() == options.ssh_key
    uki = vm.command(Boot("uefi", "kernel", {}), {"kernel": tmp_path / "uki.efi", **firmware}, vm.VmOptions(), "tcg")
    # The UKI's own command line: no -append, no -initrd, and without --ssh-key no fw_cfg either.
    assert uki[-6:] == ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={tmp_path}/CODE.fd",
                        "-drive", f"if=pflash,format=raw,unit=1,file={tmp_path}/VARS.fd",
                        "-kernel", f"{tmp_path}/uki.efi"]
    assert "-append" not in uki and "-initrd" not in uki and "-fw_cfg" not in uki


def test_each_uefi_run_writes_its_own_copy_of_the_firmware_variables(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir, log = tmp_path / "bin", tmp_path / "qemu.log"
    bin_dir.mkdir()
    # A QEMU that writes to the variable store it is given, and says where that was.
    qemu = bin_dir / vm.QEMU
    qemu.write_text(f"""#!/bin/sh
for arg; do
    case "$arg" in *unit=1,file=*) vars=${{arg##*file=}} ;; esac
done
echo "$vars" > {log}
echo written-by-the-guest > "$vars"
""")
    qemu.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    files = {role: tmp_path / name for role, name in
             (("disk", "disk.img"), ("firmware_code", "CODE.fd"), ("firmware_vars", "VARS.fd"))}
    for path in files.values():
        path.write_text("pristine\n")
    machine = vm.VirtualMachine(Boot("uefi", "disk", {}), files, vm.VmOptions(accel="tcg"), tmp_path / "state",
                                foreground=False)
    assert machine.wait() == 0
    used = Path(log.read_text().strip())
    assert used.name == "vars.fd" and used.parent != tmp_path
    assert not used.parent.exists()  # removed once QEMU is gone
    assert files["firmware_vars"].read_text() == "pristine\n"


def test_a_tcg_guest_boots_from_the_initrd_decompressed_by_the_host(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir, seen = tmp_path / "bin", tmp_path / "seen"
    bin_dir.mkdir()
    # A QEMU that keeps a copy of the initrd it is given.
    qemu = bin_dir / vm.QEMU
    qemu.write_text(f"""#!/bin/sh
while [ $# -gt 0 ]; do
    [ "$1" = -initrd ] && cp "$2" {seen}
    shift
done
""")
    qemu.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    files = {role: tmp_path / role for role in ("kernel", "initrd", "cmdline")}
    files["kernel"].write_bytes(b"kernel")
    files["cmdline"].write_text("console=ttyS0\n")
    segments = [b"070701first archive", b"070701second archive"]
    files["initrd"].write_bytes(b"".join(zstandard.ZstdCompressor().compress(s) for s in segments))
    for accel, expected in (("tcg", b"".join(segments)), ("kvm", files["initrd"].read_bytes())):
        machine = vm.VirtualMachine(Boot("direct", "kernel", {}), files, vm.VmOptions(accel=accel),
                                    tmp_path / "state", foreground=False)
        assert machine.wait() == 0
        assert seen.read_bytes() == expected
        assert machine.scratch is None or not machine.scratch.exists()  # the copy is gone with QEMU


def test_qemu_command_line_of_a_disk_the_firmware_boots(tmp_path: Path) -> None:
    require(vm.QEMU)
    options = vm.VmOptions(ssh_key="ssh-ed25519 AAAA key@host")
    command = vm.command(Boot("bios", "disk", {}, "qcow2"), {"disk": tmp_path / "disk.qcow2"}, options, "tcg")
    assert command[command.index("-drive") + 1] == f"file={tmp_path}/disk.qcow2,if=virtio,format=qcow2"
    assert "-snapshot" in command and "-kernel" not in command and "-append" not in command
    # The command line is on the disk: the key goes through QEMU's firmware configuration instead.
    name, value = command[command.index("-fw_cfg") + 1].split(",")
    assert name == "name=opt/mk/authorized_key"
    import base64

    assert base64.urlsafe_b64decode(value.removeprefix("string=")).decode() == "ssh-ed25519 AAAA key@host"


def test_qemu_command_line_of_a_cdrom(tmp_path: Path) -> None:
    require(vm.QEMU)
    command = vm.command(Boot("bios", "cdrom", {}), {"cdrom": tmp_path / "image.iso"}, vm.VmOptions(), "tcg")
    assert command[command.index("-cdrom") + 1] == f"{tmp_path}/image.iso"
    assert command[command.index("-boot") + 1] == "d"
    assert "-drive" not in command and "-fw_cfg" not in command and "-snapshot" not in command


def test_run_arguments_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert vm.parse_publish("2222:22") == (2222, 22)
    for bad in ("22", "a:b", "0:22", "70000:22"):
        with pytest.raises(MkError, match="expected HOST:GUEST port numbers"):
            vm.parse_publish(bad)
    private = tmp_path / "id"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(MkError, match="expected one OpenSSH public key line"):
        vm.read_ssh_key(private)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MkError, match="qemu-system-x86_64 is not installed; on Debian: apt-get install"):
        vm.qemu_binary()


def no_probe(image: Path) -> bool:
    raise AssertionError("the KVM probe ran")


def test_accel_auto_without_kvm_is_tcg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Path, "exists", lambda self: False if str(self) == "/dev/kvm" else Path.is_file(self))
    monkeypatch.setattr(vm, "_kvm_boots", no_probe)
    assert vm.choose_accel("auto", tmp_path, tmp_path / "state") == vm.Accel("tcg", "/dev/kvm is missing")
    assert not (tmp_path / "state").exists()  # nothing to remember: there is no /dev/kvm


@pytest.mark.parametrize("accel", ["tcg", "kvm"])
def test_an_explicit_accel_is_used_without_a_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accel: str) -> None:
    monkeypatch.setattr(vm, "_kvm_boots", no_probe)
    assert vm.choose_accel(accel, tmp_path, tmp_path / "state") == vm.Accel(accel, f"--accel {accel} asks for it")
    assert not (tmp_path / "state").exists()


def test_accel_auto_probes_kvm_once_per_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Path, "exists", lambda self: True if str(self) == "/dev/kvm" else Path.is_file(self))
    probes: list[Path] = []

    def guests_hang(image: Path) -> bool:  # /dev/kvm is there, but guests hang under it
        probes.append(image)
        return False

    monkeypatch.setattr(vm, "_kvm_boots", guests_hang)
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    remembered = tmp_path / "state" / f"kvm-works-{boot_id}"
    assert vm.choose_accel("auto", tmp_path, tmp_path / "state") == vm.Accel(
        "tcg", "/dev/kvm is there, but a probe did not boot the kernel under KVM within 8 s")
    assert vm.choose_accel("auto", tmp_path, tmp_path / "state") == vm.Accel(
        "tcg", f"/dev/kvm is there, but a probe did not boot the kernel under KVM within 8 s (the answer since "
               f"this host started, remembered in {remembered}; delete it to probe again)")
    assert probes == [tmp_path]
    assert remembered.read_text() == "tcg\n"


def test_accel_auto_uses_kvm_when_the_probe_boots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Path, "exists", lambda self: True if str(self) == "/dev/kvm" else Path.is_file(self))
    monkeypatch.setattr(vm, "_kvm_boots", lambda image: True)
    assert vm.choose_accel("auto", tmp_path, tmp_path / "state") == vm.Accel(
        "kvm", "a probe booted the kernel under KVM")
    monkeypatch.setattr(vm, "_kvm_boots", no_probe)
    assert vm.choose_accel("auto", tmp_path, tmp_path / "state").name == "kvm"


def test_the_accelerator_line_says_what_it_means() -> None:
    assert str(vm.Accel("tcg", "/dev/kvm is missing")) == \
        "mk: QEMU runs with tcg (emulation: slow) because /dev/kvm is missing"
    assert str(vm.Accel("kvm", "--accel kvm asks for it")) == "mk: QEMU runs with kvm because --accel kvm asks for it"


def fake_qemu(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH whose QEMU only writes down its arguments (into the file returned) and exits."""
    folder = tmp_path / "fake-bin"
    folder.mkdir()
    script = folder / vm.QEMU
    script.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/arguments"\n')
    script.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}, folder / "arguments"


def run_image(root: Path, cache: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MK, "run", *args], cwd=root, env=mk_env(cache, env), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False, timeout=120)


def test_run_says_which_accelerator_it_picked(workspace: WorkspaceFactory, repo: Repo, tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    env, arguments = fake_qemu(tmp_path)
    result = run_image(root, tmp_path / "cache", env, "//img:box", "--accel", "tcg")
    assert result.returncode == 0, result.stderr
    assert "mk: QEMU runs with tcg (emulation: slow) because --accel tcg asks for it\n" in result.stderr
    assert arguments.read_text().startswith("-accel tcg ")


def test_a_published_port_in_use_is_named_before_qemu_starts(workspace: WorkspaceFactory, repo: Repo,
                                                             tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    env, arguments = fake_qemu(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = run_image(root, tmp_path / "cache", env, "//img:box", "--accel", "tcg", "--publish", f"{port}:80")
    assert result.returncode == 2, result.stderr
    assert result.stderr.endswith(f"error: --publish {port}:80: port {port} is already in use on 127.0.0.1 "
                                  "(another program, or another mk run, listens there); choose another host port\n")
    assert not arguments.exists()  # QEMU never started


def test_one_host_port_published_twice_is_refused() -> None:
    with pytest.raises(MkError) as error:
        vm.VmOptions(publish=((8080, 80), (8080, 443)))
    assert str(error.value) == "error: --publish 8080:443: host port 8080 is already published to guest port 80"


def test_ssh_key_for_an_image_without_ssh_key_user_is_warned_about(workspace: WorkspaceFactory, repo: Repo,
                                                                   tmp_path: Path) -> None:
    root = image_workspace(workspace, repo)
    env, arguments = fake_qemu(tmp_path)
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAA user@host\n")
    result = run_image(root, tmp_path / "cache", env, "//img:nokey", "--accel", "tcg", "--ssh-key", str(key))
    assert result.returncode == 0, result.stderr
    assert ("mk: warning: --ssh-key is ignored: the image sets no ssh_key_user, so nothing would install the key "
            "at boot (set ssh_key_user, e.g. to \"root\", on the image target)\n") in result.stderr
    assert "mk.authorized_key=" not in arguments.read_text()
    result = run_image(root, tmp_path / "cache", env, "//img:box", "--accel", "tcg", "--ssh-key", str(key))
    assert result.returncode == 0, result.stderr
    assert "--ssh-key" not in result.stderr and "mk.authorized_key=" in arguments.read_text()


def test_run_help_says_how_to_stop_the_vm(tmp_path: Path) -> None:
    help_text = " ".join(subprocess.run([MK, "run", "--help"], capture_output=True, text=True, check=True,
                                        env=mk_env(tmp_path)).stdout.split())
    assert "Stop it with Ctrl-A X (QEMU's console), Ctrl-C, or poweroff inside the guest." in help_text
    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    assert "Stop it with Ctrl-A X (QEMU's console), Ctrl-C, or `poweroff` inside the guest" in readme


def test_unknown_accel_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MkError) as error:
        vm.choose_accel("hvf", tmp_path, tmp_path / "state")
    assert str(error.value) == "error: --accel hvf: choose tcg, kvm or auto"
