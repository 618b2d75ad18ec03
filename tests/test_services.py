"""service and the image's `containers` and `persistent`, offline: the OCI runtime bundles and boot
scripts an image holds, the build's refusals, and `mk run --disk`. Booted in test_services_boot.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import WorkspaceFactory
from debrepo import Deb, Member, Repo
from test_image import APPLETS, kernel_deb, mk, unpack_initrd

from mk.engine.errors import MkError
from mk.rules import qemu as vm
from mk.rules.oci_runtime import Isolation, Process, runtime_config
from mk.rules.providers import Boot, ImageInfo

BUILD = """
deb_packages(name = "kernel_packages", packages = ["linux-image-6.1.0-1-test"], keyring = "{keyring}")
kernel(name = "kernel", packages = ":kernel_packages", modules = [])
deb_packages(name = "host", packages = ["busybox-static", "crun", "e2fsprogs"], keyring = "{keyring}")
layer(
    name = "accounts",
    users = ["root:0:0:root:/root:/bin/sh", "nobody:65534:65534:nobody:/nonexistent:/bin/false"],
    groups = ["root:0", "nogroup:65534", "audio:29"],
)
layer(
    name = "site",
    files = {{"/srv/www/index.html": "index.html"}},
    users = ["root:0:0:root:/root:/bin/sh", "www:1000:1000:web:/srv/www:/bin/false"],
    groups = ["root:0", "www:1000"],
)
deb_packages(name = "busybox", packages = ["busybox-static"], keyring = "{keyring}")
oci_image(name = "site_image", layers = [":busybox", ":site"], cmd = ["/usr/bin/busybox", "httpd", "-f"],
          user = "www", env = {{"LANG": "C.UTF-8"}})
service(name = "web", image = ":site_image", network = "host", writable = {{"/run/web": "tmpfs"}})
service(name = "keeper", command = ["/usr/bin/busybox", "sh", "-c", "date >> /var/lib/app/log"],
        group = "audio", capabilities = ["net_bind_service", "CAP_CHOWN"], restart = "always", restarts = 2,
        writable = {{"/var/lib/app": "persistent"}}, after = ["web"])
service(name = "prepare", command = ["/usr/bin/busybox", "true"], onboot = True, user = "0")
image(name = "host_image", kernel = ":kernel", base = [":host", ":accounts"], network = False,
      containers = [":prepare", ":web", ":keeper"], persistent = {{"/var/lib/app": "data"}})

service(name = "typo", command = ["/usr/bin/htpd"])
service(name = "stranger", command = ["/usr/bin/busybox", "true"], user = "www")
service(name = "forgetful", command = ["/usr/bin/busybox", "true"], writable = {{"/var/lib/x": "persistent"}})
image(name = "bad", kernel = ":kernel", base = [":host", ":accounts"], network = False,
      containers = [":typo", ":stranger", ":forgetful"])
image(name = "no_runtime", kernel = ":kernel", base = [":busybox", ":accounts"], network = False,
      containers = [":web"])
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    repo = Repo(tmp_path_factory.mktemp("services") / "repo")

    def program(package: str, *paths: str) -> Deb:
        return Deb(package, members=[Member("./usr/", kind="dir"), Member("./usr/bin/", kind="dir"),
                                     Member("./usr/sbin/", kind="dir"),
                                     *(Member(f"./{p}", b"#!/bin/sh\n", mode=0o755) for p in paths)])

    repo.add("bookworm", kernel_deb(),
             Deb("busybox-static", members=[Member("./usr/", kind="dir"), Member("./usr/bin/", kind="dir"),
                                            Member("./usr/bin/busybox", b"\x7fELF busybox\0" + APPLETS,
                                                   mode=0o755)]),
             program("crun", "usr/bin/crun"), program("e2fsprogs", "usr/sbin/mkfs.ext4", "usr/sbin/dumpe2fs"))
    repo.add("bookworm-updates")
    repo.add("bookworm-security")
    repo.publish()
    return repo


def services_workspace(workspace: WorkspaceFactory, repo: Repo, build: str = BUILD) -> Path:
    ws = workspace({"svc/BUILD": build.format(keyring=repo.keyring), "svc/index.html": "<p>hi</p>\n"},
                   toml=f'debian_mirror = "{repo.url}"\n')
    for target in ("kernel_packages", "host", "busybox"):
        assert ws.mk("lock", f"//svc:{target}").code == 0
    return ws.root


def test_each_service_is_a_bundle_crun_starts_at_boot(workspace: WorkspaceFactory, repo: Repo,
                                                       tmp_path: Path) -> None:
    root = services_workspace(workspace, repo)
    result = mk(root, tmp_path / "cache", "image", "//svc:host_image")
    assert result.returncode == 0, result.stderr
    unpack_initrd(root / "mk-out/svc/host_image/initrd.img", tmp_path / "initrd")
    image = tmp_path / "initrd"
    web = json.loads((image / "containers/web/config.json").read_text())
    # The OCI image's user, looked up in its own root; no capabilities; its own root, read-only.
    assert web["process"]["user"] == {"uid": 1000, "gid": 1000}
    assert web["process"]["args"] == ["/usr/bin/busybox", "httpd", "-f"]
    assert web["process"]["env"] == ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]
    assert web["process"]["capabilities"] == {kind: [] for kind in ("ambient", "bounding", "effective",
                                                                      "inheritable", "permitted")}
    assert web["process"]["noNewPrivileges"] is True
    assert web["root"] == {"path": "rootfs", "readonly": True}
    assert [n["type"] for n in web["linux"]["namespaces"]] == ["mount", "ipc", "uts", "pid"]  # the host's network
    tmpfs = [m for m in web["mounts"] if m["destination"] == "/run/web"]
    assert tmpfs == [{"destination": "/run/web", "type": "tmpfs", "source": "tmpfs",
                      "options": ["nosuid", "nodev", "mode=0755", "uid=1000,gid=1000"]}]
    assert (image / "containers/web/rootfs/srv/www/index.html").read_text() == "<p>hi</p>\n"
    assert (image / "containers/web/rootfs/run/web").is_dir()  # its mount point, made by mk
    assert not (image / "containers/web/rootfs/usr/bin/crun").exists()  # the image's, not the service's
    keeper = json.loads((image / "containers/keeper/config.json").read_text())
    assert keeper["process"]["user"] == {"uid": 65534, "gid": 29}  # nobody, in the group named
    assert keeper["process"]["capabilities"]["effective"] == ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]
    assert keeper["process"]["capabilities"]["ambient"] == ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]
    assert [n["type"] for n in keeper["linux"]["namespaces"]] == ["mount", "ipc", "uts", "pid", "network"]
    assert {"destination": "/var/lib/app", "type": "bind", "source": "/var/lib/app",
            "options": ["rbind", "rw", "nosuid", "nodev"]} in keeper["mounts"]
    assert list((image / "containers/keeper/rootfs").iterdir()) == []  # the image's root is bound there at boot
    assert (image / "var/lib/app").is_dir()
    inittab = (image / "etc/inittab").read_text()
    assert "::once:/etc/mk/containers/web\n::once:/etc/mk/containers/keeper\n" in inittab
    assert "prepare" not in inittab
    onboot = (image / "etc/mk/onboot").read_text()
    assert onboot.index("cgroup2") < onboot.index("persist /var/lib/app data") < \
        onboot.index("/etc/mk/containers/prepare")
    supervisor = (image / "etc/mk/containers/keeper").read_text()
    assert 'mount --bind / "$bundle/rootfs"' in supervisor
    assert "chown 65534:29 /var/lib/app" in supervisor
    assert "crun --cgroup-manager=disabled state mk-web" in supervisor  # after = ["web"]
    assert "restarts = 2" in supervisor and "on-failure" not in supervisor
    assert 'mount --bind' not in (image / "etc/mk/containers/web").read_text()  # a root of its own


def test_services_the_build_cannot_start_are_refused(workspace: WorkspaceFactory, repo: Repo,
                                                     tmp_path: Path) -> None:
    root = services_workspace(workspace, repo)
    result = mk(root, tmp_path / "cache", "image", "//svc:bad")
    assert result.returncode == 1
    lines = (root / "svc/BUILD").read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if text.startswith('image(name = "bad"'))
    assert f"svc/BUILD:{line}:1: error: ImageRoot //svc:bad failed: service 'typo': its command /usr/bin/htpd: " \
           "/usr/bin/htpd is not in the image" in result.stderr
    assert "service 'stranger': its user 'www' is not in its root's /etc/passwd" in result.stderr
    assert ("service 'forgetful': the writable path /var/lib/x is `persistent`, but the image declares no "
            "persistent mount there (its `persistent`: none)") in result.stderr
    result = mk(root, tmp_path / "cache", "image", "//svc:no_runtime")
    assert result.returncode == 1
    assert "the image runs its services with crun, which it lacks (crun is not in /usr/sbin, /usr/bin, /sbin or " \
           "/bin, nor a busybox applet" in result.stderr
    assert "add Debian's crun to 'base'" in result.stderr


@pytest.mark.parametrize(("declaration", "message"), [
    ('capabilities = ["CAP_NET_BIND"]',
     "'CAP_NET_BIND' is not a Linux capability (did you mean 'CAP_NET_ADMIN' or 'CAP_NET_BIND_SERVICE'"),
    ('writable = {"/data": "disk"}', "writable path '/data': 'disk' is not one of tmpfs, persistent"),
    ('writable = {"data": "tmpfs"}', "writable path 'data' must be an absolute path below /"),
    ('writable = {"/my data": "tmpfs"}', "writable path '/my data' may hold only letters, digits and '/'"),
    ('network = "none"', "'none' is not one of 'own', 'host'"),
])
def test_bad_service_attributes_are_named_with_their_line(workspace: WorkspaceFactory, tmp_path: Path,
                                                          declaration: str, message: str) -> None:
    ws = workspace({"svc/BUILD": f'service(name = "s", command = ["/bin/true"], {declaration})\n'})
    result = ws.mk("build", "//svc:s")
    assert result.code == 2  # refused as the BUILD file is read
    assert re.search(r"svc/BUILD:1:\d+: .*" + re.escape(message), result.err), result.err


def test_runtime_config_is_the_declaration_alone() -> None:
    process = Process(("/bin/app",), 7, 8, ("CAP_KILL",), ("A=1",), "/")
    isolation = Isolation("app", own_network=False, own_pid=True, tmpfs=(), binds=())
    first = runtime_config(process, isolation)
    assert first == runtime_config(process, isolation) and first.endswith(b"}\n") and b" " not in first
    config = json.loads(first)
    assert config["process"]["capabilities"]["bounding"] == ["CAP_KILL"]
    assert config["hostname"] == "app" and "/proc/kcore" in config["linux"]["maskedPaths"]


def test_a_persistent_disk_is_attached_by_its_serial_and_kept(tmp_path: Path) -> None:
    disk = vm.parse_disk("data=64M", tmp_path / "disks")
    assert disk == vm.Disk("data", tmp_path / "disks/data.img", 64 << 20)
    files = {role: tmp_path / role for role in ("kernel", "initrd", "cmdline")}
    (tmp_path / "cmdline").write_text("console=ttyS0\n")
    command = vm.command(Boot("direct", "kernel", {}), files, vm.VmOptions(disks=(disk,)), "tcg")
    at = command.index(f"file={disk.path},if=none,id=disk-data,format=raw,snapshot=off")
    assert command[at + 1:at + 3] == ["-device", "virtio-blk-pci,drive=disk-data,serial=data"]
    vm.attach(disk)
    assert disk.path.stat().st_size == 64 << 20
    with open(disk.path, "rb") as blank:
        assert blank.read(1 << 20) == bytes(1 << 20)  # blank: the guest formats it
    disk.path.write_bytes(b"kept")
    vm.attach(disk)  # an existing disk is never replaced
    assert disk.path.read_bytes() == b"kept"
    for spec in ("data", "data=", "data=0", "data=12Q", "=1G"):
        with pytest.raises(MkError, match="expected NAME=SIZE"):
            vm.parse_disk(spec, tmp_path)


def test_run_refuses_a_disk_the_image_does_not_keep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = ImageInfo(*(None,) * 4, "", {}, ("data", "logs"))  # type: ignore[arg-type]
    with pytest.raises(MkError, match=r"--disk nope: the image has no persistent storage on a disk named 'nope' "
                                      r"\(its `persistent` disks: data, logs\)"):
        vm.check_disks(image, (vm.Disk("nope", tmp_path, 1),))
    vm.check_disks(image, (vm.Disk("data", tmp_path, 1),))
    assert capsys.readouterr().err == (
        "mk: warning: the disk 'logs' is not attached, so what the image keeps on it is not kept and the services "
        "writing there are not started (attach it with --disk logs=SIZE)\n")
