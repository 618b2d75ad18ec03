"""kernel_build, offline: a stand-in for Linux's source (its make targets, a tiny Kconfig) packaged as
Debian's linux-source-6.1 is, compiled on the host's tools. What it shows: the config is resolved
apart from the compile (so a fragment edit that leaves it unchanged compiles nothing), dropped
options are named, failures show their last lines, and the kernel boots an image like a packaged one.
The real kernel is built, booted and checked for reproducibility in test_custom_kernel.py."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from conftest import Workspace, WorkspaceFactory, executed_labels, parse_summary, read_events, without_host_warning
from debrepo import Deb, Member, Repo
from test_image import bookworm, busybox_deb, module, unpack_initrd

from mk.cache.cas import ContentStore
from mk.cache.tree import Tree

RELEASE = "6.1.0-fake"

MAKEFILE = f"""\
# A stand-in for Linux's top Makefile: the targets kernel_build runs, and a tiny Kconfig.
.PHONY: tinyconfig defconfig olddefconfig bzImage modules kernelrelease modules_install
tinyconfig:
\tprintf 'CONFIG_64BIT=y\\n# CONFIG_NET is not set\\nCONFIG_MODULES=y\\n' > .config
defconfig:
\tprintf 'CONFIG_64BIT=y\\nCONFIG_NET=y\\nCONFIG_MODULES=y\\n' > .config
olddefconfig:
\tpython3 scripts/olddefconfig.py
bzImage:
\tsh scripts/compile.sh '$(filter -j%,$(MAKEFLAGS))'
modules:
\t@echo '  LD [M]  drivers/net/virtio_net.ko'
kernelrelease:
\t@echo {RELEASE}
modules_install:
\tmkdir -p $(INSTALL_MOD_PATH)/lib/modules/{RELEASE}/kernel/drivers/net
\tcp prebuilt/*.ko $(INSTALL_MOD_PATH)/lib/modules/{RELEASE}/kernel/drivers/net/
\techo 'kernel/crypto/crc32c_generic.ko' > $(INSTALL_MOD_PATH)/lib/modules/{RELEASE}/modules.builtin
\tln -s /tmp/linux $(INSTALL_MOD_PATH)/lib/modules/{RELEASE}/build
"""

# The options this "kernel" knows, in order: name, what it depends on, its default, what it selects.
KCONFIG = """\
64BIT - y -
NET - n NET_CORE
NET_CORE - n -
INET NET y -
VIRTIO_NET NET n -
MODULES - y -
MODULE_SIG MODULES n -
BROKEN - n -
"""

# olddefconfig: known options keep their last value (or take their default), unknown ones go, an
# option whose dependency is off is left out, and what an option selects is forced on. (In Python:
# the host's awk is a link through /etc/alternatives, which the sandbox does not show.)
OLDDEFCONFIG = """\
import re
known = [line.split() for line in open("Kconfig.fake")]
asked = {}
for line in open(".config"):
    if m := re.fullmatch(r"(?:# )?CONFIG_(\\w+)(?:=(.*)| is not set)", line.strip()):
        asked[m[1]] = "" if m[2] in (None, "n") else m[2]
value = {name: asked.get(name, "" if default == "n" else default) for name, _, default, _ in known}
for name, _, _, selects in known:
    if selects != "-" and value[name]:
        value[selects] = value[name]
with open(".config", "w") as config:
    for name, depends, _, _ in known:
        if depends == "-" or value[depends]:
            config.write(f"CONFIG_{name}={value[name]}\\n" if value[name] else f"# CONFIG_{name} is not set\\n")
"""

# The "compile": the image holds what a real kernel shows of its build (uname -v) and its config,
# and the -j make was given; CONFIG_BROKEN=y fails as a C file would.
COMPILE = f"""\
set -e
RELEASE={RELEASE}
if grep -qx CONFIG_BROKEN=y .config; then
    echo '  CC      drivers/broken/broken.o'
    echo "drivers/broken/broken.c: In function 'broken_init':" >&2
    echo "drivers/broken/broken.c:3:1: error: expected ';' before '}}' token" >&2
    exit 1
fi
mkdir -p arch/x86/boot
{{ echo "Linux $RELEASE #$KBUILD_BUILD_VERSION $KBUILD_BUILD_TIMESTAMP $KBUILD_BUILD_USER@$KBUILD_BUILD_HOST make $1"
  grep ^CONFIG_ .config; }} > arch/x86/boot/bzImage
"""


def source_tarball() -> bytes:
    files = {"Makefile": MAKEFILE, "Kconfig.fake": KCONFIG, "scripts/olddefconfig.py": OLDDEFCONFIG,
             "scripts/compile.sh": COMPILE}
    binaries = {"prebuilt/virtio_net.ko": module("virtio_net", "failover,crc32c_generic"),
                "prebuilt/failover.ko": module("failover", ""), "prebuilt/unused.ko": module("unused", "")}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz", format=tarfile.GNU_FORMAT) as archive:
        for name, data in [*((n, t.encode()) for n, t in files.items()), *binaries.items()]:
            info = tarfile.TarInfo(f"linux-source-6.1/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


BUILD = """
deb_packages(name = "linux_source", packages = ["linux-source-6.1"], keyring = "{keyring}")
deb_packages(name = "busybox", packages = ["busybox-static"], keyring = "{keyring}")
kernel_build(
    name = "kernel",
    source = ":linux_source",
    base = "{base}",
    fragments = ["net.config", "extra.config"],
    modules = ["virtio_net"],
)
image(name = "box", kernel = ":kernel", base = [":busybox"], network = False)
image(name = "other", kernel = ":kernel", base = [":busybox"], hostname = "another")
write_file(name = "unrelated", out = "unrelated.txt", lines = ["not about kernels"])
"""
NET = "# Networking.\nCONFIG_NET=y\nCONFIG_VIRTIO_NET=m\n"
EVERYTHING = ("//k:box", "//k:other", "//k:unrelated")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    source = Member("./usr/src/linux-source-6.1.tar.xz", source_tarball())
    linux_source = Deb("linux-source-6.1", "6.1.0-1", members=[Member("./usr/src/", kind="dir"), source])
    return bookworm(tmp_path_factory.mktemp("kernel-source") / "repo", linux_source, busybox_deb())


def kernel_workspace(workspace: WorkspaceFactory, repo: Repo, name: str = "ws", base: str = "tinyconfig",
                     extra: str = "# Nothing more.\n") -> Workspace:
    ws = workspace({"k/BUILD": BUILD.format(keyring=repo.keyring, base=base), "k/net.config": NET,
                    "k/extra.config": extra}, name=name, toml=f'debian_mirror = "{repo.url}"\n')
    for target in ("linux_source", "busybox"):
        assert ws.mk("lock", f"//k:{target}").code == 0
    ws.age_sources()
    return ws


@pytest.fixture
def ws(workspace: WorkspaceFactory, repo: Repo) -> Workspace:
    return kernel_workspace(workspace, repo)


def edit(ws: Workspace, path: str, content: str) -> None:
    ws.write(path, content)
    ws.age_sources()


def executed(ws: Workspace, events: Path) -> list[tuple[str, str]]:
    """(label, mnemonic) of each action that ran, sorted."""
    result = ws.build(*EVERYTHING, events=events)
    ran = sorted((str(e["label"]), str(e["mnemonic"])) for e in read_events(events) if e["status"] == "executed")
    assert parse_summary(result.out).executed == len(ran)
    return ran


def test_the_kernel_and_its_modules_boot_an_image_as_a_packaged_kernel_does(ws: Workspace, tmp_path: Path) -> None:
    result = ws.mk("image", "-j", "3", "//k:box")
    assert result.code == 0, result.err
    kernel = ws.read("mk-out/k/box/kernel")
    assert kernel.splitlines()[0] == f"Linux {RELEASE} #1 Thu Jan  1 00:00:00 UTC 1970 mk@mk make -j3"
    assert kernel.splitlines()[1:] == ["CONFIG_64BIT=y", "CONFIG_NET=y", "CONFIG_NET_CORE=y", "CONFIG_INET=y",
                                       "CONFIG_VIRTIO_NET=m", "CONFIG_MODULES=y"]
    unpack_initrd(ws.root / "mk-out/k/box/initrd.img", tmp_path / "initrd")
    modules = f"/usr/lib/modules/{RELEASE}/kernel/drivers/net"
    # The closure of virtio_net, by its .modinfo, less what modules.builtin says is built in.
    assert (tmp_path / "initrd/etc/mk/modules.load").read_text() == f"{modules}/failover.ko\n{modules}/virtio_net.ko\n"
    assert (tmp_path / "initrd/etc/mk/kernel.release").read_text() == f"{RELEASE}\n"
    assert not (tmp_path / f"initrd/usr/lib/modules/{RELEASE}/build").exists()  # it pointed into the sandbox


def test_the_resolved_config_is_an_output_of_its_own(ws: Workspace) -> None:
    result = ws.build("//k:kernel")
    assert result.out.splitlines()[:-1] == ["mk-out/k/kernel.vmlinuz", "mk-out/k/kernel.modules.tree",
                                            "mk-out/k/kernel.config"]
    assert ws.read("mk-out/k/kernel.config").splitlines() == [
        "CONFIG_64BIT=y", "CONFIG_NET=y", "CONFIG_NET_CORE=y", "CONFIG_INET=y", "CONFIG_VIRTIO_NET=m",
        "CONFIG_MODULES=y", "# CONFIG_MODULE_SIG is not set", "# CONFIG_BROKEN is not set"]


def test_the_compile_takes_all_of_the_builds_jobs_and_its_result_serves_any(ws: Workspace, tmp_path: Path) -> None:
    assert ws.mk("build", "-j", "2", "//k:kernel").code == 0
    assert ws.read("mk-out/k/kernel.vmlinuz").splitlines()[0].endswith(" make -j2")
    # -j is not in the key: the result made with -j 2 is the one a build with -j 1 gets.
    result = ws.mk("build", "-j", "1", "//k:kernel")
    assert parse_summary(result.out).executed == 0
    assert ws.read("mk-out/k/kernel.vmlinuz").splitlines()[0].endswith(" make -j2")


def test_a_fragment_edit_that_leaves_the_config_unchanged_compiles_nothing(ws: Workspace, tmp_path: Path) -> None:
    executed(ws, tmp_path / "first.jsonl")
    # A comment and a repeated line: the merged fragment is the same, so olddefconfig does not run;
    # only the check of the fragments' lines against the config (they moved) does.
    edit(ws, "k/net.config", "# Networking, for the VM.\nCONFIG_NET=y\nCONFIG_VIRTIO_NET=m\nCONFIG_NET=y\n")
    assert executed(ws, tmp_path / "comment.jsonl") == [("//k:kernel", "KernelConfigCheck"),
                                                         ("//k:kernel", "KernelFragments")]
    # An option the config already has: olddefconfig runs, gives the same config, and that is all.
    edit(ws, "k/extra.config", "CONFIG_INET=y\n")
    assert executed(ws, tmp_path / "same.jsonl") == [
        ("//k:kernel", "KernelConfig"), ("//k:kernel", "KernelConfigCheck"), ("//k:kernel", "KernelFragments")]


def test_a_fragment_edit_that_changes_the_config_rebuilds_the_kernel_and_the_images_only(
        ws: Workspace, tmp_path: Path) -> None:
    executed(ws, tmp_path / "first.jsonl")
    edit(ws, "k/extra.config", "# CONFIG_INET is not set\n")
    ran = executed(ws, tmp_path / "changed.jsonl")
    assert sorted({label for label, _ in ran}) == ["//k:box", "//k:kernel", "//k:other"]
    assert [m for label, m in ran if label == "//k:kernel"] == [
        "KernelCompile", "KernelConfig", "KernelConfigCheck", "KernelFragments", "KernelModules", "KernelTree"]
    assert "CONFIG_INET=y" not in ws.read("mk-out/k/box/kernel").splitlines()  # (the image's copy of it)
    assert executed_labels(tmp_path / "changed.jsonl") == sorted(label for label, _ in ran)


def test_an_option_olddefconfig_drops_is_named_with_its_fragment_line(ws: Workspace, tmp_path: Path) -> None:
    executed(ws, tmp_path / "first.jsonl")
    edit(ws, "k/extra.config", "# More.\nCONFIG_NO_SUCH_OPTION=y\n# CONFIG_NET_CORE is not set\nCONFIG_INET=y\n")
    result = ws.mk("build", *EVERYTHING, "--json-events", str(tmp_path / "dropped.jsonl"))
    assert result.code == 0, result.err
    assert [line for line in without_host_warning(result.err).splitlines() if "warning" in line] == [
        "k/extra.config:2:1: warning: KernelConfigCheck //k:kernel: CONFIG_NO_SUCH_OPTION=y was dropped by "
        "`make olddefconfig`: it is not in the resolved config: this kernel has no such option, or an option it "
        "depends on is off",
        "k/extra.config:3:1: warning: KernelConfigCheck //k:kernel: # CONFIG_NET_CORE is not set was dropped by "
        "`make olddefconfig`: the resolved config has 'CONFIG_NET_CORE=y' (another option selects it)",
    ]
    # The resolved config is the same: nothing is compiled again.
    assert "KernelCompile" not in {e["mnemonic"] for e in read_events(tmp_path / "dropped.jsonl")
                                   if e["status"] == "executed"}


def test_a_compile_error_shows_the_failing_command_s_last_lines_and_the_target(
        workspace: WorkspaceFactory, repo: Repo) -> None:
    ws = kernel_workspace(workspace, repo, extra="CONFIG_BROKEN=y\n")
    result = ws.mk("build", "//k:box")
    assert result.code == 1
    lines = result.err.splitlines()
    where = next(i for i, line in enumerate(lines) if "error: KernelCompile" in line)
    assert lines[where] == "k/BUILD:4:1: error: KernelCompile //k:kernel failed (exit code 2)"
    shown = [line for line in lines[where:] if line.startswith("  | ")]
    assert shown[:2] == ["  | drivers/broken/broken.c: In function 'broken_init':",
                         "  | drivers/broken/broken.c:3:1: error: expected ';' before '}' token"]
    # make names the target that failed (and, at -j 2, may first say it waits for the other job).
    assert "  | make: *** [Makefile:10: bzImage] Error 1" in shown[2:]
    assert parse_summary(result.out).executed > 0


def test_a_line_that_is_no_option_stops_the_build_before_configuring(workspace: WorkspaceFactory, repo: Repo,
                                                                      tmp_path: Path) -> None:
    ws = kernel_workspace(workspace, repo, extra="CONFIG_INET=y\nINET=y\n")
    result = ws.mk("build", "//k:kernel", "--json-events", str(tmp_path / "events.jsonl"))
    assert result.code == 1
    assert ("k/BUILD:4:1: error: KernelFragments //k:kernel failed: k/extra.config:2: 'INET=y' is not a config line "
            "(`CONFIG_X=value`, `# CONFIG_X is not set` or a comment)") in result.err
    assert "KernelConfig" not in {e["mnemonic"] for e in read_events(tmp_path / "events.jsonl")}


def test_a_config_that_would_sign_modules_with_a_new_key_is_refused(workspace: WorkspaceFactory,
                                                                    repo: Repo) -> None:
    ws = kernel_workspace(workspace, repo, extra="CONFIG_MODULE_SIG=y\n")
    result = ws.mk("build", "//k:kernel")
    assert result.code == 1
    assert ("error: KernelConfigCheck //k:kernel failed: the resolved config cannot build the same kernel twice: "
            "CONFIG_MODULE_SIG=y: modules would be signed with a key made at build time (turn them off in a "
            "fragment: '# CONFIG_X is not set')") in result.err


def test_a_base_the_kernel_has_no_target_for_is_an_error_at_its_line(ws: Workspace) -> None:
    edit(ws, "k/BUILD", ws.read("k/BUILD").replace('base = "tinyconfig"', 'base = "menuconfig"'))
    result = ws.mk("build", "//k:kernel")
    assert result.code == 2
    assert result.err == ("k/BUILD:4:1: error: kernel_build //k:kernel: attribute 'base': 'menuconfig' is not one "
                          "of 'tinyconfig', 'allnoconfig', 'alldefconfig', 'defconfig'\n")


def test_a_source_without_a_kernel_tarball_is_refused(ws: Workspace) -> None:
    build = ws.read("k/BUILD").replace('source = ":linux_source"', 'source = ":busybox"')
    edit(ws, "k/BUILD", build)
    result = ws.mk("build", "//k:kernel")
    assert result.code == 1
    assert ("error: KernelSource //k:kernel failed: the source tree should hold one "
            "/usr/src/linux-source-*.tar.xz (Debian's linux-source-6.1 package), and holds 0") in result.err


def test_the_same_kernel_from_workspaces_at_different_paths(workspace: WorkspaceFactory, repo: Repo,
                                                            tmp_path: Path) -> None:
    built = []
    for name in ("one", "two/deeper"):
        ws = kernel_workspace(workspace, repo, name=name)
        ws.cache_dir = tmp_path / f"cache-{name.replace('/', '-')}"
        result = ws.mk("build", "-j", "2", "//k:kernel")
        assert result.code == 0, result.err
        tree = Tree.decode((ws.root / "mk-out/k/kernel.modules.tree").read_bytes())
        modules = {e.path: ContentStore(ws.cache_dir).read_bytes(e.digest) for e in tree.files()}
        built.append(((ws.root / "mk-out/k/kernel.vmlinuz").read_bytes(), modules))
    assert built[0] == built[1]
    assert f"usr/lib/modules/{RELEASE}/kernel/drivers/net/virtio_net.ko" in built[0][1]

