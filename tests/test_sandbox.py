"""The sandbox every command runs in, over a real toolchain: a locked deb_packages set.

The toolchain's package is generated offline from this machine's own bash and coreutils (with
the libraries they load), published in a signed repository, locked and unpacked like any other
package set. What a command can see and do, how keys follow the toolchain, and the errors when
the sandbox cannot start are all shown against it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest
from cachedisk import cache_stats
from conftest import MK, Workspace, WorkspaceFactory, mk_env, parse_summary, read_events
from debrepo import Deb, Member, Repo

TOOLS = ("bash", "cat", "chmod", "cp", "cut", "head", "id", "ls", "mkdir", "sha256sum", "touch")
LOCALE = Path("/usr/lib/locale/C.utf8")  # what LC_ALL=C.UTF-8 loads, from libc-bin

BUILD = """
deb_packages(name = "tools", packages = ["hosttools"], suites = ["bookworm"], keyring = "{keyring}")
"""
PKG = {
    "pkg/BUILD": """
genrule(
    name = "digest",
    srcs = ["in.txt"],
    outs = ["digest.txt"],
    cmd = "sha256sum < $< | cut -c1-16 > $@; id -u >> $@; cat /proc/sys/kernel/hostname >> $@; pwd >> $@",
)
""",
    "pkg/in.txt": "hello\n",
    "pkg/secret.txt": "not declared\n",
}


def _libraries(binary: str) -> set[str]:
    """The shared libraries `binary` loads, by the names the loader looks for, as ldd finds them."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0]
        if path.startswith("/"):
            found.add(path)
    return found


def host_tools_deb(version: str, extra: tuple[str, ...] = ()) -> Deb:
    """A package of this machine's TOOLS (and `extra`) with the libraries they load, each at the
    path the loader looks for it on a merged-/usr system, holding the real file's bytes."""
    binaries = [f"/usr/bin/{tool}" for tool in (*TOOLS, *extra)]
    locale = {str(p) for p in LOCALE.rglob("*") if p.is_file()}
    wanted = set(binaries).union(locale, *(_libraries(b) for b in binaries))
    files = {path if path.startswith("/usr/") else f"/usr{path}": os.path.realpath(path) for path in wanted}
    folders = sorted({os.path.dirname(f) for f in files})
    members = [Member(f".{folder}/", kind="dir") for folder in folders]
    members += [Member(f".{path}", Path(source).read_bytes(), mode=0o755) for path, source in sorted(files.items())]
    return Deb("hosttools", version, members=members)


def publish(root: Path, deb: Deb) -> Repo:
    repo = Repo(root)
    repo.add("bookworm", deb)
    repo.publish()
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return publish(tmp_path_factory.mktemp("tools") / "repo", host_tools_deb("1.0"))


def toolchain_workspace(workspace: WorkspaceFactory, repo: Repo, name: str = "ws",
                        files: dict[str, str] | None = None) -> Workspace:
    ws = workspace({"tc/BUILD": BUILD.format(keyring=repo.keyring), **(files if files is not None else PKG)},
                   name=name, toml=f'toolchain = "//tc:tools"\ndebian_mirror = "{repo.url}"\n')
    locked = ws.mk("lock", "//tc:tools")
    assert locked.code == 0, locked
    return ws


@pytest.fixture
def ws(workspace: WorkspaceFactory, repo: Repo) -> Workspace:
    return toolchain_workspace(workspace, repo)


def failing(ws: Workspace, cmd: str) -> str:
    """stderr of a genrule running `cmd`, which must fail."""
    ws.write("pkg/BUILD", f'genrule(name = "probe", srcs = ["in.txt"], outs = ["probe.txt"], cmd = """{cmd}""")\n')
    result = ws.mk("build", "//pkg:probe")
    assert result.code == 1, result
    assert "hint: " in result.err and "the command ran in mk's sandbox" in result.err, result.err
    assert "the toolchain tc/tools" in result.err, result.err
    return result.err


def test_a_command_runs_on_the_toolchain_as_a_fixed_user_in_a_fixed_place(ws: Workspace) -> None:
    result = ws.build("//pkg:digest")
    assert "not hermetic" not in result.err
    digest, uid, hostname, cwd = ws.read("mk-out/pkg/digest.txt").splitlines()
    assert (uid, hostname, cwd) == ("1000", "mk", "/mk/execroot")
    assert len(digest) == 16


def test_an_undeclared_workspace_file_is_not_there(ws: Workspace) -> None:
    err = failing(ws, "cat pkg/secret.txt > $@")
    assert "pkg/secret.txt: No such file or directory" in err


@pytest.mark.parametrize("path", ["/etc/hostname", "{cache}", "{workspace}", "/home", "/root"])
def test_host_paths_are_not_there(ws: Workspace, path: str) -> None:
    shown = path.format(cache=ws.cache_dir.resolve(), workspace=ws.root)
    err = failing(ws, f"ls {shown} > $@")
    assert f"cannot access '{shown}': No such file or directory" in err


def test_no_connection_reaches_a_listener_on_the_loopback(ws: Workspace) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        accepted: list[object] = []

        def accept() -> None:
            with contextlib.suppress(TimeoutError):
                accepted.append(listener.accept())

        err = failing(ws, f"exec 3<>/dev/tcp/127.0.0.1/{port}; echo sent >&3; echo > $@")
        waiter = threading.Thread(target=accept)
        waiter.start()
        waiter.join()
    assert accepted == []
    assert "Connection refused" in err or "Network is unreachable" in err, err
    assert "with no network" in err


@pytest.mark.parametrize(("cmd", "path"), [
    ("echo x > /usr/bin/planted; echo > $@", "/usr/bin/planted"),
    ("echo x > ../escaped; echo > $@", "../escaped"),
    ("echo x > top.txt; echo > $@", "top.txt"),
    ("echo x >> $<; echo > $@", "pkg/in.txt"),
])
def test_writing_outside_the_declared_outputs_fails(ws: Workspace, cmd: str, path: str) -> None:
    err = failing(ws, cmd)
    # An input is read-only twice over: by its mode (checked first) and by its mount.
    assert f"{path}: Read-only file system" in err or f"{path}: Permission denied" in err, err
    assert "only the folders of declared outputs and /tmp are writable, and inputs are read-only" in err
    assert ws.read("pkg/in.txt") == "hello\n"


def test_a_host_binary_missing_from_the_toolchain_is_named(ws: Workspace) -> None:
    assert Path("/usr/bin/sed").exists()  # on the host, but not in the toolchain
    err = failing(ws, "sed -e s/a/b/ $< > $@")
    assert "sed: command not found" in err
    assert "'sed' is not in the toolchain tc/tools" in err


def test_sandbox_debug_shows_the_command_line_and_keeps_the_sandbox(ws: Workspace) -> None:
    ws.write("pkg/BUILD", 'genrule(name = "a", srcs = ["in.txt"], outs = ["a.txt"], '
                          'cmd = "echo scratch > /tmp/left; echo said; echo warned >&2; cp $< $@")\n')
    result = ws.mk("build", "--sandbox-debug", "//pkg:a")
    assert result.code == 0, result
    assert "mk: sandbox of Genrule //pkg:a: " in result.err and "--unshare-net" in result.err, result.err
    [kept] = (ws.cache_dir / "sandbox-debug").iterdir()
    assert f"is kept in {kept} (execroot/, tmp/, stdout, stderr)" in result.err, result.err
    assert (kept / "tmp/left").read_text() == "scratch\n"
    assert (kept / "execroot/pkg/a.txt").read_text() == "hello\n"
    assert ((kept / "stdout").read_text(), (kept / "stderr").read_text()) == ("said\n", "warned\n")


# ---- keys ----------------------------------------------------------------------------------------

def test_same_genrule_same_key_and_bytes_in_workspaces_at_different_paths(
    workspace: WorkspaceFactory, repo: Repo, tmp_path: Path
) -> None:
    first = toolchain_workspace(workspace, repo, "first")
    second = toolchain_workspace(workspace, repo, "elsewhere/second")
    keys = []
    for ws in (first, second):
        events = tmp_path / f"{ws.root.name}.jsonl"
        ws.mk("build", "//pkg:digest", "--json-events", str(events), env={"MK_CACHE_DIR": str(tmp_path / ws.root.name)})
        keys.append({e["label"]: e["key"] for e in read_events(events) if e.get("mnemonic") == "Genrule"})
    assert keys[0] == keys[1] and keys[0]
    assert first.read("mk-out/pkg/digest.txt") == second.read("mk-out/pkg/digest.txt")


def test_a_new_toolchain_lockfile_reruns_exactly_the_commands(
    workspace: WorkspaceFactory, repo: Repo, tmp_path: Path
) -> None:
    ws = toolchain_workspace(workspace, repo, files={
        **PKG, "other/BUILD": 'write_file(name = "w", out = "w.txt", content = "plain\\n")\n'})
    ws.build("//pkg:digest", "//other:w")
    upgraded = publish(tmp_path / "upgraded", host_tools_deb("1.1", extra=("sed",)))
    ws.write("tc/BUILD", BUILD.format(keyring=upgraded.keyring))
    ws.write("mk.toml", f'toolchain = "//tc:tools"\ndebian_mirror = "{upgraded.url}"\n')
    before = ws.read("tc/tools.lock.json")
    assert ws.mk("lock", "//tc:tools").code == 0
    assert ws.read("tc/tools.lock.json") != before
    events = tmp_path / "events.jsonl"
    ws.build("//pkg:digest", "//other:w", events=events)
    ran = sorted(str(e["label"]) for e in read_events(events) if e["status"] == "executed")
    # The package set is fetched and unpacked again, and the command on it reruns; the file layer does not.
    assert "//pkg:digest" in ran and "//other:w" not in ran, ran
    explained = ws.mk("explain", "//pkg:digest").out
    assert "Genrule //pkg:digest: input tc/tools" in explained and "changed" in explained, explained


# ---- when the sandbox cannot start ----------------------------------------------------------------

def test_bubblewrap_missing_is_one_clear_error(ws: Workspace) -> None:
    result = ws.mk("build", "//pkg:digest", env={"PATH": "/nonexistent"})
    assert result.code == 1, result
    assert "bwrap is not on PATH: install it (Debian: apt-get install bubblewrap)" in result.err, result.err


def test_user_namespaces_disabled_is_one_clear_error(ws: Workspace) -> None:
    # A user namespace of its own in which no further one may be made: what a kernel that
    # forbids unprivileged user namespaces does to bubblewrap.
    script = f'echo 0 > /proc/sys/user/max_user_namespaces && exec "{MK}" build //pkg:digest'
    result = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", script], cwd=ws.root,
                            env=mk_env(ws.cache_dir), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result
    assert "the kernel refuses unprivileged user namespaces; enable them" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    parse_summary(result.stdout)


# ---- choosing a toolchain -------------------------------------------------------------------------

def test_a_target_s_toolchain_attribute_overrides_the_setting(ws: Workspace) -> None:
    ws.write("pkg/BUILD", PKG["pkg/BUILD"] + 'genrule(name = "on_host", outs = ["host.txt"], toolchain = "host", '
                          'cmd = "sed --version | head -c 8 > $@")\n')
    result = ws.build("//pkg:digest", "//pkg:on_host")
    assert ws.read("mk-out/pkg/host.txt") == "sed (GNU"  # the host has sed; the toolchain does not
    assert "1 command ran on the host's tools" in result.err
    ws.write("mk.toml", f'toolchain = "host"\ndebian_mirror = "{ws.read("mk.toml").split(chr(34))[-2]}"\n')
    ws.write("pkg/BUILD", 'genrule(name = "pinned", outs = ["p.txt"], toolchain = "//tc:tools", cmd = "sed > $@")\n')
    result = ws.mk("build", "//pkg:pinned")
    assert "'sed' is not in the toolchain tc/tools" in result.err, result.err


@pytest.mark.parametrize(("toolchain", "error"), [
    ('"//pkg:in.txt"', "error: genrule //pkg:digest: attribute 'toolchain' needs a target that provides TreeInfo; "
                       "'//pkg:in.txt' is a file, which provides nothing (the 'toolchain' setting in mk.toml gives "
                       "'toolchain')"),
    ('"pkg:tools"', 'mk.toml:1:1: error: toolchain must be "host" or the label of a tree target such as '
                    '"//toolchains:default", got \'pkg:tools\' (it is not an absolute label)'),
    ('"//tc:nothing"', "error: genrule //pkg:digest depends on '//tc:nothing', which does not exist"),
    ('"//pkg:files"', "error: genrule //pkg:digest: attribute 'toolchain' needs a target that provides TreeInfo; "
                      "//pkg:files (filegroup) provides only files (the 'toolchain' setting in mk.toml"),
])
def test_a_toolchain_that_is_not_a_tree_is_refused(ws: Workspace, toolchain: str, error: str) -> None:
    ws.write("pkg/BUILD", PKG["pkg/BUILD"] + 'filegroup(name = "files", srcs = ["in.txt"])\n')
    ws.write("mk.toml", f"toolchain = {toolchain}\n")
    result = ws.mk("build", "//pkg:digest")
    assert result.code == 2, result
    assert error in result.err, result.err


def test_a_toolchain_without_bash_says_so(workspace: WorkspaceFactory) -> None:
    ws = workspace({**PKG, "tc/BUILD": 'layer(name = "tiny", files = {"/etc/issue": "issue"})\n',
                    "tc/issue": "tiny\n"}, toml='toolchain = "//tc:tiny"\n')
    result = ws.mk("build", "//pkg:digest")
    assert result.code == 1, result
    assert "error: Genrule //pkg:digest cannot run /bin/bash: the toolchain tc/tiny.tree does not hold it" \
        in result.err, result.err


# ---- host tools -----------------------------------------------------------------------------------

def test_no_toolchain_at_all_is_an_error_that_says_what_to_set(workspace: WorkspaceFactory) -> None:
    ws = workspace(PKG)
    ws.write("mk.toml", "")
    result = ws.mk("build", "//pkg:digest")
    assert result.code == 2, result
    assert 'pkg/BUILD:2:1: error: //pkg:digest runs a command, so it needs a toolchain: set toolchain = ' in result.err
    assert 'toolchain = "host" runs commands on the host\'s /usr instead (not hermetic)' in result.err


def test_host_mode_hides_the_workspace_home_and_etc_too(workspace: WorkspaceFactory) -> None:
    ws = workspace(PKG, toml='toolchain = "host"\n')
    for path in ("/etc/hostname", str(ws.root), "/home", str(ws.cache_dir.resolve())):
        ws.write("pkg/BUILD", f'genrule(name = "p", outs = ["p.txt"], cmd = "ls {path} > $@")\n')
        result = ws.mk("build", "//pkg:p")
        assert result.code == 1 and f"cannot access '{path}'" in result.err, result
    ws.write("pkg/BUILD", 'genrule(name = "p", outs = ["p.txt"], cmd = "sed -n 1p /proc/self/status > $@")\n')
    result = ws.build("//pkg:p")
    assert 'mk: warning: this build is not hermetic: 1 command ran on the host\'s tools (toolchain = "host")' \
        in result.err
    assert "their results are kept out of remote caches" in result.err
    assert ws.build("//pkg:p").err == ""  # nothing ran: nothing to warn about


def test_the_toolchain_is_written_out_once_read_only_and_dropped_by_gc(ws: Workspace) -> None:
    ws.build("//pkg:digest")
    [root] = (ws.cache_dir / "toolchains").iterdir()
    bash = root / "usr/bin/bash"
    assert bash.stat().st_mode & 0o777 == 0o555
    inode = bash.stat().st_ino
    ws.write("pkg/in.txt", "changed\n")
    ws.build("//pkg:digest")
    assert bash.stat().st_ino == inode  # reused, not written again
    size, files, what = cache_stats(ws)["toolchains/"]
    assert size != "0 B" and files > 0
    assert what == "toolchains and input trees written out for sandboxes [dropped by gc]"
    assert ws.mk("cache", "gc", "--max-size", "1G").code == 0
    assert not any((ws.cache_dir / "toolchains").iterdir())
    ws.write("pkg/in.txt", "again\n")
    ws.build("//pkg:digest")  # written out again when needed
    assert bash.is_file() and ws.read("mk-out/pkg/digest.txt").startswith(
        subprocess.run(["sha256sum"], input=b"again\n", capture_output=True, check=True).stdout.decode()[:16])


def test_a_package_builds_on_its_toolchain_with_its_deps_merged_over_it(workspace: WorkspaceFactory,
                                                                          repo: Repo) -> None:
    ws = toolchain_workspace(workspace, repo, files={
        "pkg/BUILD": """
layer(name = "src", files = {"/greeting.txt": "greeting.txt"})
layer(name = "dep", files = {"/usr/share/dep/data.txt": "data.txt"})
package(
    name = "built",
    src = ":src",
    deps = [":dep"],
    build = "cat /usr/share/dep/data.txt greeting.txt > joined.txt",
    install = "mkdir -p $DESTDIR/usr/share && cp joined.txt $DESTDIR/usr/share/",
)
tar(name = "built_tar", src = ":built")
""",
        "pkg/greeting.txt": "hello\n",
        "pkg/data.txt": "from a dependency\n",
    })
    result = ws.build("//pkg:built_tar")
    assert "not hermetic" not in result.err
    with tarfile.open(ws.root / "mk-out/pkg/built_tar.tar") as archive:
        joined = archive.extractfile("usr/share/joined.txt")
        assert joined is not None and joined.read() == b"from a dependency\nhello\n"
    # The merged root is a tree of its own: the toolchain's own tree does not hold the dependency.
    listing = ws.mk("ls", "//tc:tools", "/usr/share")
    assert "/usr/share/dep" not in listing.out
