"""Target platforms, offline: one BUILD file built for amd64 and arm64 from a generated repository
that has both, one lockfile per architecture, and every platform-independent action shared."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import blake3
import pytest
from conftest import Workspace, WorkspaceFactory, parse_summary, read_events, require
from debrepo import Deb, Member, Repo

BUILD = """
deb_packages(
    name = "base",
    packages = ["app"],
    suites = ["bookworm"],
    keyring = "{keyring}",
)
deb_packages(
    name = "amd64_only",
    packages = ["only-amd64"],
    suites = ["bookworm"],
    keyring = "{keyring}",
)
deb_packages(
    name = "kernel_packages",
    packages = ["linux-image-cloud-$(ARCH)"],
    suites = ["bookworm"],
    keyring = "{keyring}",
)
layer(name = "etc", files = {{"/etc/motd": "motd"}})
genrule(name = "shout", srcs = ["motd"], outs = ["motd.upper"], cmd = "tr a-z A-Z < $(location motd) > $@")
rootfs(name = "root", layers = [":base", ":etc"])
tar(name = "root_tar", src = ":root")
oci_image(name = "oci", layers = [":etc"])
oci_image(name = "app_image", layers = [":base", ":etc"], cmd = ["/usr/bin/app"])
oci_index(name = "index", image = ":app_image")
deb_packages(
    name = "tools",
    packages = ["tool"],
    suites = ["bookworm"],
    keyring = "{keyring}",
)
genrule(name = "run_tool", srcs = [":tools"], outs = ["out.txt"],
        cmd = "for f in $(SRCS); do if [ -d $$f ]; then $$f/usr/bin/tool; fi; done > $@")
package(name = "compiled", src = ":etc", install = "true")
rootfs(name = "with_compiled", layers = [":etc", ":compiled"])
kernel(name = "kernel", packages = ":base")
image(name = "img", kernel = ":kernel", base = [":base"])
image(name = "img_efi", kernel = ":kernel", base = [":base"], efi_boot = ":tools")
"""

ARM64 = "linux/arm64"


def app(arch: str) -> Deb:
    return Deb("app", "1.0", arch=arch, depends="app-data",
               members=[Member("./usr/", kind="dir"), Member("./usr/bin/", kind="dir"),
                        Member("./usr/bin/app", f"app for {arch}\n".encode(), mode=0o755)])


def elf_header(arch: str) -> bytes:
    """The first 64 bytes of a 64-bit little-endian executable for `arch`: enough for the kernel to refuse
    it as another machine's (ENOEXEC) before it reads anything more."""
    machine = {"amd64": 62, "arm64": 183}[arch]
    return b"\x7fELF\x02\x01\x01" + bytes(9) + (2).to_bytes(2, "little") + machine.to_bytes(2, "little") + \
        (1).to_bytes(4, "little") + bytes(40)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    repo = Repo(tmp_path_factory.mktemp("debian") / "repo")
    repo.add("bookworm", app("amd64"), app("arm64"),
             Deb("app-data", "1.0", arch="all", members=[Member("./usr/", kind="dir"),
                                                        Member("./usr/share/", kind="dir"),
                                                        Member("./usr/share/app-data", b"the same everywhere\n")]),
             Deb("only-amd64", "1.0", arch="amd64"),
             Deb("linux-image-cloud-amd64", "1.0", arch="amd64"),
             *(Deb("tool", "1.0", arch=arch, members=[Member("./usr/", kind="dir"), Member("./usr/bin/", kind="dir"),
                                                      Member("./usr/bin/tool", elf_header(arch), mode=0o755)])
               for arch in ("amd64", "arm64")))
    repo.publish()
    return repo


def platform_workspace(workspace: WorkspaceFactory, repo: Repo, name: str = "ws") -> Workspace:
    return workspace({"os/BUILD": BUILD.format(keyring=repo.keyring), "os/motd": "hello\n"}, name=name,
                     toml=f'debian_mirror = "{repo.url}"\n')


def locked(ws: Workspace) -> Workspace:
    for platform in ("linux/amd64", ARM64):
        result = ws.mk("lock", "//os:base", "--platform", platform)
        assert result.code == 0, result
    return ws


def test_mk_lock_writes_one_lockfile_per_architecture(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = platform_workspace(workspace, repo)
    result = ws.mk("lock", "//os:base", "--platform", "linux/amd64", "--platform", ARM64)
    assert result.code == 0, result
    assert result.out.splitlines() == ["os/base.lock.json: 2 packages (written)",
                                       "os/base.arm64.lock.json: 2 packages (written)"]
    amd64 = {p["name"]: p for p in json.loads(ws.read("os/base.lock.json"))["packages"]}
    arm64 = {p["name"]: p for p in json.loads(ws.read("os/base.arm64.lock.json"))["packages"]}
    assert (amd64["app"]["architecture"], arm64["app"]["architecture"]) == ("amd64", "arm64")
    assert amd64["app"]["sha256"] != arm64["app"]["sha256"]
    assert amd64["app-data"] == arm64["app-data"]  # Architecture: all: the very same file
    assert amd64["app-data"]["architecture"] == "all"


def test_lock_without_a_platform_covers_every_lockfile_the_target_has(workspace: WorkspaceFactory,
                                                                      repo: Repo) -> None:
    """A check (or an update) that left out the arm64 lockfile would keep quiet about its updates."""
    ws = platform_workspace(workspace, repo)
    assert ws.mk("lock", "//os:base").out == "os/base.lock.json: 2 packages (written)\n"  # the host's alone
    assert ws.mk("lock", "//os:base", "--platform", ARM64).code == 0
    checked = ws.mk("lock", "--check", "//os:base")
    assert checked.code == 0, checked
    assert checked.out.splitlines() == ["os/base.lock.json: up to date (2 packages)",
                                        "os/base.arm64.lock.json: up to date (2 packages)"]
    assert ws.mk("lock", "//os:base").out.splitlines() == ["os/base.lock.json: 2 packages (unchanged)",
                                                          "os/base.arm64.lock.json: 2 packages (unchanged)"]
    named = ws.mk("lock", "--check", "//os:base", "--platform", "linux/amd64")  # as asked, no more
    assert named.out.splitlines() == ["os/base.lock.json: up to date (2 packages)"]


def test_both_platforms_share_every_action_that_does_not_depend_on_the_platform(
    workspace: WorkspaceFactory, repo: Repo, tmp_path: Path,
) -> None:
    ws = locked(platform_workspace(workspace, repo))
    targets = ("//os:root_tar", "//os:shout", "//os:etc")
    events = {}
    for name, platforms in (("amd64", ["linux/amd64"]), ("arm64", [ARM64]), ("both", ["linux/amd64", ARM64])):
        events[name] = tmp_path / f"{name}.jsonl"
        flags = [f"--platform={p}" for p in platforms]
        result = ws.mk("build", *flags, *targets, "--json-events", str(events[name]))
        assert result.code == 0, result
    amd64, arm64, both = (read_events(events[n]) for n in ("amd64", "arm64", "both"))

    def outputs(found: list[dict[str, object]]) -> set[str]:
        return {str(e["outputs"][0]) for e in found}  # type: ignore[index]

    shared = outputs(amd64) & outputs(arm64)
    assert {(e["label"], e["mnemonic"]) for e in amd64 if e["outputs"][0] in shared} == {  # type: ignore[index]
        ("//os:etc", "Layer"), ("//os:shout", "Genrule"),
        ("//os:base", "DebUnpack"),  # app-data, Architecture: all
    }
    assert not any(o.startswith("linux-arm64/") for o in shared)
    # The build of both runs each shared action once: so many actions fewer than the two builds apart.
    assert len(both) == len(amd64) + len(arm64) - len(shared)
    assert Counter(e["mnemonic"] for e in both)["DebUnpack"] == 3  # app twice, app-data once
    # Built for arm64 after amd64, the shared actions were cached, and only they.
    assert {str(e["outputs"][0]) for e in arm64 if e["status"] == "cached"} == shared  # type: ignore[index]


def test_outputs_of_another_platform_sit_apart_and_the_summary_names_it(
    workspace: WorkspaceFactory, repo: Repo,
) -> None:
    ws = locked(platform_workspace(workspace, repo))
    host = ws.build("//os:root_tar")
    assert host.out.splitlines()[0] == "mk-out/os/root_tar.tar"
    assert parse_summary(host.out).platforms == ()
    result = ws.mk("build", "--platform", ARM64, "//os:root_tar", "//os:shout")
    assert result.code == 0, result
    assert result.out.splitlines()[:2] == ["mk-out/linux-arm64/os/root_tar.tar", "mk-out/os/motd.upper"]
    assert parse_summary(result.out).platforms == (ARM64,)

    def app_in(path: str) -> bytes:
        with tarfile.open(fileobj=io.BytesIO((ws.root / path).read_bytes())) as archive:
            member = archive.extractfile("usr/bin/app")
            assert member is not None
            return member.read()

    assert app_in("mk-out/os/root_tar.tar") == b"app for amd64\n"
    assert app_in("mk-out/linux-arm64/os/root_tar.tar") == b"app for arm64\n"
    # Building for arm64 left the host's files alone.
    assert (ws.root / "mk-out/os/root_tar.tar").is_file()


def test_an_oci_image_names_the_platform_it_was_built_for(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = platform_workspace(workspace, repo)
    assert ws.mk("build", "--platform", ARM64, "//os:oci").code == 0
    with tarfile.open(ws.root / "mk-out/linux-arm64/os/oci.oci.tar") as archive:
        blobs = [f.read() for m in archive.getmembers() if m.name.startswith("blobs/")
                 and (f := archive.extractfile(m)) is not None]
        configs = [json.loads(b) for b in blobs if b[:1] == b"{"]
    assert [c["architecture"] for c in configs if "rootfs" in c] == ["arm64"]


def test_a_package_missing_for_one_architecture_is_named_with_it(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = platform_workspace(workspace, repo)
    assert ws.mk("lock", "//os:amd64_only").code == 0
    result = ws.mk("lock", "//os:amd64_only", "--platform", ARM64)
    assert result.code == 2
    assert ("os/BUILD:8:1: error: deb_packages //os:amd64_only: package 'only-amd64' is not in the indices for "
            "architecture arm64") in result.err
    assert not (ws.root / "os/amd64_only.arm64.lock.json").exists()


def test_a_kernel_flavour_missing_for_arm64_is_named_with_it(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = platform_workspace(workspace, repo)
    assert ws.mk("lock", "//os:kernel_packages").out == "os/kernel_packages.lock.json: 1 package (written)\n"
    result = ws.mk("lock", "//os:kernel_packages", "--platform", ARM64)
    assert result.code == 2
    assert ("error: deb_packages //os:kernel_packages: package 'linux-image-cloud-arm64' is not in the indices "
            "for architecture arm64") in result.err


def test_building_for_an_unlocked_architecture_says_how_to_lock_it(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = platform_workspace(workspace, repo)
    assert ws.mk("lock", "//os:base").code == 0
    result = ws.mk("build", "--platform", ARM64, "//os:root")
    assert result.code == 2
    assert ("error: deb_packages //os:base: no lockfile 'os/base.arm64.lock.json' for architecture arm64; "
            "run `mk lock //os:base --platform linux/arm64` to create it") in result.err


def test_an_unknown_platform_is_refused(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = platform_workspace(workspace, repo)
    result = ws.mk("build", "--platform", "linux/riscv64", "//os:motd")
    assert result.code == 2
    assert "unknown platform 'linux/riscv64' (mk builds for: linux/amd64, linux/arm64)" in result.err


def test_explain_says_when_the_target_platform_is_what_changed(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = locked(platform_workspace(workspace, repo))
    ws.build("//os:root")
    assert ws.mk("build", "--platform", ARM64, "//os:root").code == 0
    lines = ws.mk("explain", "//os:root").out.splitlines()
    assert "MergeTrees //os:root: target platform changed (linux/amd64 -> linux/arm64)" in lines, lines
    assert not any("//os:etc" in line for line in ws.mk("explain", "//os:etc").out.splitlines()
                   if "changed" in line)  # the layer is shared: it did not run again


def test_an_oci_index_holds_the_image_for_both_platforms_and_skopeo_and_umoci_read_it(
    workspace: WorkspaceFactory, repo: Repo, tmp_path: Path,
) -> None:
    skopeo, umoci = require("skopeo"), require("umoci")
    ws = locked(platform_workspace(workspace, repo))
    result = ws.build("//os:index")
    assert result.out.splitlines()[0] == "mk-out/os/index.oci.tar"
    archive = ws.root / "mk-out/os/index.oci.tar"
    raw = subprocess.run([skopeo, "inspect", "--raw", f"oci-archive:{archive}"], capture_output=True, text=True,
                         check=True)
    index = json.loads(raw.stdout)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [m["platform"] for m in index["manifests"]] == [{"architecture": "amd64", "os": "linux"},
                                                           {"architecture": "arm64", "os": "linux"}]
    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(archive) as members:
        members.extractall(layout, filter="data")
        names = members.getnames()
    assert len(names) == len(set(names))  # the layer the platforms share is stored once
    listed = subprocess.run([umoci, "ls", "--layout", str(layout)], capture_output=True, text=True, check=True)
    assert listed.stdout.split() == ["index:latest"]
    for arch in ("amd64", "arm64"):
        # umoci (0.4) does not choose a platform by itself ("tag is ambiguous"): skopeo picks one.
        picked = f"{tmp_path}/{arch}"
        subprocess.run([skopeo, "copy", "-q", "--override-arch", arch, f"oci-archive:{archive}", f"oci:{picked}:x"],
                       check=True)
        subprocess.run([umoci, "unpack", "--rootless", "--image", f"{picked}:x", f"{picked}-bundle"], check=True,
                       capture_output=True)
        assert Path(f"{picked}-bundle/rootfs/usr/bin/app").read_bytes() == f"app for {arch}\n".encode()
        assert Path(f"{picked}-bundle/rootfs/etc/motd").read_text() == "hello\n"


def test_a_command_running_a_target_binary_is_told_why_it_cannot(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = platform_workspace(workspace, repo)
    assert ws.mk("lock", "//os:tools", "--platform", ARM64).code == 0
    result = ws.mk("build", "--platform", ARM64, "//os:run_tool")
    assert result.code == 1
    assert "Genrule //os:run_tool failed" in result.err
    assert ("hint: the command ran a program built for linux/arm64, the target platform; commands run on the exec "
            "platform, linux/amd64, and mk does not emulate another") in result.err, result.err


def test_a_package_compiled_from_source_is_refused_for_another_platform(workspace: WorkspaceFactory,
                                                                        repo: Repo) -> None:
    ws = platform_workspace(workspace, repo)
    ws.build("//os:with_compiled")  # for the host, which its compiler builds for
    result = ws.mk("build", "--platform", ARM64, "//os:with_compiled")
    assert result.code == 2
    assert ("error: package //os:compiled: builds with its toolchain's native compiler, for linux/amd64; "
            "linux/arm64 would need a cross compiler") in result.err


def test_the_platform_setting_is_the_default_target_platform(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = workspace({"os/BUILD": BUILD.format(keyring=repo.keyring), "os/motd": "hello\n"},
                   toml=f'debian_mirror = "{repo.url}"\nplatform = "linux/arm64"\n')
    assert ws.mk("lock", "//os:base").out == "os/base.arm64.lock.json: 2 packages (written)\n"
    result = ws.mk("build", "//os:root_tar")
    assert result.code == 0, result
    assert result.out.splitlines()[0] == "mk-out/linux-arm64/os/root_tar.tar"
    host = ws.mk("build", "--platform", "linux/amd64", "//os:etc")  # the command line wins
    assert parse_summary(host.out).platforms == ()
    (ws.root / "mk.toml").write_text((ws.root / "mk.toml").read_text().replace("linux/arm64", "arm64"))
    bad = ws.mk("build", "//os:etc")
    assert bad.code == 2
    assert "mk.toml: the platform setting: unknown platform 'arm64'" in bad.err


def test_an_arm64_image_refuses_the_formats_that_boot_x86_64_pcs_only(workspace: WorkspaceFactory,
                                                                      repo: Repo) -> None:
    ws = locked(platform_workspace(workspace, repo))
    assert ws.mk("lock", "//os:tools", "--platform", ARM64).code == 0
    result = ws.mk("image", "--platform", ARM64, "//os:img_efi", "--format", "raw-bios", "--format", "qcow2")
    assert result.code == 2
    assert ("error: image //os:img_efi: the formats raw-bios, qcow2 boot x86-64 PCs only; for linux/arm64 the image "
            "offers tar, oci, squashfs, erofs, ext4, kernel+squashfs, uki, raw-efi, iso-efi") in result.err


def test_an_arm64_image_offers_the_uefi_formats_only_with_systemd_boot_for_arm64(workspace: WorkspaceFactory,
                                                                                 repo: Repo) -> None:
    """The toolchain's systemd-boot-efi is the host's (x64): an arm64 image takes linuxaa64.efi.stub
    from its `efi_boot` tree, resolved for arm64, and without one does not offer the UEFI formats."""
    ws = locked(platform_workspace(workspace, repo))
    assert ws.mk("lock", "//os:tools", "--platform", ARM64).code == 0
    without = ws.mk("image", "--platform", ARM64, "//os:img", "--format", "uki", "--format", "iso-efi")
    assert without.code == 2
    assert ("error: image //os:img: the formats uki, iso-efi need systemd-boot for linux/arm64: give the image an "
            "`efi_boot` tree (Debian's systemd-boot-efi, resolved for its platform); for linux/arm64 the image "
            "offers tar, oci, squashfs, erofs, ext4, kernel+squashfs\n") in without.err
    with_tree = ws.mk("image", "-k", "--platform", ARM64, "//os:img_efi", "--format", "uki")
    assert with_tree.code == 1  # built as far as the packages allow: //os:tools is no systemd-boot-efi
    assert ("the image's efi_boot has no file /usr/lib/systemd/boot/efi/linuxaa64.efi.stub: name a tree that holds "
            "Debian's systemd-boot-efi") in with_tree.err
    assert ws.mk("image", "//os:img", "--format", "uki").err.count("need systemd-boot") == 0  # the host's own


def test_an_aarch64_image_runs_on_qemus_virt_board_under_tcg_only(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    from mk.engine.errors import MkError
    from mk.rules import qemu
    from mk.rules.providers import Boot

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    files = {name: tmp_path / name for name in ("kernel", "initrd", "cmdline")}
    files["cmdline"].write_text("console=ttyAMA0 panic=-1\n")
    args = qemu.command(Boot("direct", "kernel", {}), files, qemu.VmOptions(publish=((2222, 22),)), "tcg", "aarch64")
    assert args[:7] == ["/usr/bin/qemu-system-aarch64", "-M", "virt", "-cpu", "max", "-accel", "tcg"]
    assert "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22" in args
    assert args[args.index("-append") + 1] == "console=ttyAMA0 panic=-1"
    assert qemu.command(Boot("direct", "kernel", {}), files, qemu.VmOptions(), "tcg")[0] == \
        "/usr/bin/qemu-system-x86_64"  # an x86_64 image's command line is what it was
    chosen = qemu.choose_accel("auto", None, tmp_path, "aarch64")
    assert (chosen.name, chosen.why) == ("tcg", "the image is for aarch64, which QEMU emulates on this x86_64 host")
    with pytest.raises(MkError, match="--accel kvm: the image is for aarch64 and this host is x86_64"):
        qemu.choose_accel("kvm", None, tmp_path, "aarch64")


def test_an_aarch64_uefi_format_boots_from_aavmf_in_flash_and_its_cdrom_on_virtio_scsi(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mk.rules import qemu
    from mk.rules.providers import Boot

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    firmware = {"firmware_code": tmp_path / "AAVMF_CODE.fd", "firmware_vars": tmp_path / "vars.fd"}
    options = qemu.VmOptions(ssh_key="ssh-ed25519 AAAA k")
    disk = qemu.command(Boot("uefi", "disk", {}), {"disk": tmp_path / "raw-efi.img", **firmware}, options, "tcg",
                        "aarch64")
    assert disk[:5] == ["/usr/bin/qemu-system-aarch64", "-M", "virt", "-cpu", "max"]
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={tmp_path}/AAVMF_CODE.fd" in disk
    assert f"if=pflash,format=raw,unit=1,file={tmp_path}/vars.fd" in disk
    assert f"file={tmp_path}/raw-efi.img,if=virtio,format=raw" in disk
    assert any(arg.startswith("name=opt/mk/authorized_key,string=") for arg in disk)  # the key through fw_cfg
    cdrom = qemu.command(Boot("uefi", "cdrom", {}), {"cdrom": tmp_path / "iso-efi.iso", **firmware},
                         qemu.VmOptions(), "tcg", "aarch64")
    # The virt board has no IDE for -cdrom.
    assert "-cdrom" not in cdrom
    assert cdrom[cdrom.index("virtio-scsi-pci") - 3:cdrom.index("virtio-scsi-pci") + 3] == [
        "-drive", f"file={tmp_path}/iso-efi.iso,if=none,id=cdrom,media=cdrom,readonly=on", "-device",
        "virtio-scsi-pci", "-device", "scsi-cd,drive=cdrom"]


def test_mk_ls_lists_the_tree_built_for_the_platform_asked(workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = locked(platform_workspace(workspace, repo))
    host = ws.mk("ls", "//os:root", "/usr/bin/app")
    arm64 = ws.mk("ls", "//os:root", "--platform", ARM64, "/usr/bin/app")
    assert host.code == arm64.code == 0, (host, arm64)
    assert host.out.split()[-1] == arm64.out.split()[-1] == "/usr/bin/app"
    digest = blake3.blake3(b"app for arm64\n").hexdigest()[:12]
    assert arm64.out.split()[3] == digest != host.out.split()[3]
    assert arm64.err.splitlines()[-1].endswith(", for linux/arm64")


def test_query_answers_for_the_platform_a_build_would_use(workspace: WorkspaceFactory, repo: Repo) -> None:
    """Each package set reads the lockfile of its platform: `mk query` must say which, as `mk build` uses it."""
    base_only = BUILD[:BUILD.index('deb_packages(\n    name = "amd64_only"')]
    build = base_only + 'rootfs(name = "root", layers = [":base"])\n'
    ws = locked(workspace({"os/BUILD": build.format(keyring=repo.keyring)}, toml=f'debian_mirror = "{repo.url}"\n'))
    host = ws.mk("query", "rdeps", "os/base.arm64.lock.json")
    assert host.code == 0, host
    assert host.err == "mk query: no target uses os/base.arm64.lock.json\n"
    arm64 = ws.mk("query", "rdeps", "os/base.arm64.lock.json", "--platform", ARM64)
    assert arm64.code == 0, arm64
    assert "//os:base" in arm64.out.splitlines() and "//os:root" in arm64.out.splitlines(), arm64.out
    assert ws.mk("query", "rdeps", "os/base.lock.json", "--platform", ARM64).err == \
        "mk query: no target uses os/base.lock.json\n"
    # The workspace's platform setting is the default, as for `mk build`.
    (ws.root / "mk.toml").write_text((ws.root / "mk.toml").read_text() + 'platform = "linux/arm64"\n')
    assert ws.mk("query", "rdeps", "os/base.arm64.lock.json").out == arm64.out
