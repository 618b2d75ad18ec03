"""The package rule on a tiny C project built with the host's compiler (toolchain = "host"), and
`mk log`: what a build printed, kept whether it succeeded or failed."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from conftest import Workspace, WorkspaceFactory, parse_summary, require, run_from_tar

HELLO_C = '#include <stdio.h>\nint main(void) { puts(GREETING); return 0; }\n'
MAKEFILE = """hello: hello.c
\t$(CC) -O2 -DGREETING='"$(GREETING)"' -o $@ $<
install: hello
\tinstall -D -m 0755 hello $(DESTDIR)/usr/bin/hello
\tinstall -D -m 0644 greeting.txt $(DESTDIR)/usr/share/hello/greeting.txt
"""
BUILD = """
layer(name = "src", files = {{"/Makefile": "src/Makefile", "/hello.c": "src/hello.c"}})
package(
    name = "hello",
    src = ":src",
    srcs = ["greeting.txt"],
    configure = "cp $(location greeting.txt) . && echo configured in $(pwd)",
    build = {build!r},
    install = "make install",
    env = {{"GREETING": "hello from a package"}},
)
tar(name = "hello_tar", src = ":hello")
"""


def project(workspace: WorkspaceFactory, build: str = "make CC=gcc GREETING=\"$GREETING\"", name: str = "ws",
            hello_c: str = HELLO_C) -> Workspace:
    require("gcc")
    require("make")
    return workspace({"p/BUILD": BUILD.format(build=build), "p/src/hello.c": hello_c, "p/src/Makefile": MAKEFILE,
                      "p/greeting.txt": "greetings\n"}, name=name)


def members(ws: Workspace, path: str) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(ws.root / path) as archive:
        return {m.name: m for m in archive.getmembers()}


def test_a_package_is_built_in_the_sandbox_and_installs_a_tree(workspace: WorkspaceFactory, tmp_path: Path) -> None:
    ws = project(workspace)
    ws.build("//p:hello_tar")
    found = members(ws, "mk-out/p/hello_tar.tar")
    assert sorted(found) == ["usr", "usr/bin", "usr/bin/hello", "usr/share", "usr/share/hello",
                             "usr/share/hello/greeting.txt"]
    hello = found["usr/bin/hello"]
    assert (hello.mode, hello.uid, hello.gid) == (0o755, 0, 0)
    assert run_from_tar(ws.root / "mk-out/p/hello_tar.tar", "usr/bin/hello", tmp_path) == "hello from a package\n"


def test_mk_log_shows_what_the_build_printed(workspace: WorkspaceFactory) -> None:
    ws = project(workspace)
    ws.build("//p:hello")
    log = ws.mk("log", "//p:hello")
    assert log.code == 0, log.err
    assert log.out.startswith("==> Package //p:hello (executed): p/hello.tree\n"
                              "mk: configure\nconfigured in /tmp/build\n"), log.out
    assert 'gcc -O2 -DGREETING=\'"hello from a package"\' -o hello hello.c\n' in log.out
    # A build served from the cache keeps showing the log of the run that made its result.
    ws.build("//p:hello")
    assert ws.mk("log", "//p:hello").out == log.out
    # Another workspace sharing the cache gets the result, and the log, from the cache.
    other = project(workspace, name="other")
    other.build("//p:hello")
    assert other.mk("log", "//p:hello").out == log.out.replace("(executed)", "(cached (local))")


def test_the_same_package_from_two_workspaces_is_the_same_tree(workspace: WorkspaceFactory) -> None:
    first, second = project(workspace, name="one"), project(workspace, name="two")
    first.build("//p:hello_tar")
    built = second.mk("build", "--check", "//p:hello_tar")
    assert built.code == 0, built.err
    assert (first.root / "mk-out/p/hello_tar.tar").read_bytes() == \
        (second.root / "mk-out/p/hello_tar.tar").read_bytes()


def test_a_compile_error_shows_the_target_the_step_and_the_last_lines(workspace: WorkspaceFactory) -> None:
    ws = project(workspace, hello_c=HELLO_C.replace("return 0;", "return 0"))
    failed = ws.mk("build", "//p:hello")
    assert failed.code == 1
    assert "p/BUILD:3:1: error: Package //p:hello failed (exit code 2)\n" in failed.err
    plain = failed.err.replace("\u2018", "'").replace("\u2019", "'")  # gcc quotes as C.UTF-8 asks
    assert "  | hello.c:2:" in plain and "error: expected ';' before '}' token" in plain
    assert "  | make: *** [Makefile:2: hello] Error 1\n" in failed.err
    assert "  | mk: the build step failed: make CC=gcc GREETING=\"$GREETING\" (exit code 2)\n" in failed.err
    parse_summary(failed.out)
    log = ws.mk("log", "//p:hello")
    assert log.out.startswith("==> Package //p:hello (failed): p/hello.tree\n"), log.out
    assert "make: *** [Makefile:2: hello] Error 1\n" in log.out


def test_mk_log_before_any_build_says_to_build(workspace: WorkspaceFactory) -> None:
    ws = project(workspace)
    result = ws.mk("log", "//p:hello")
    assert result.code == 2
    assert "mk log: no build of //p:hello is recorded in this workspace; build it first (mk build //p:hello)" \
        in result.err


@pytest.mark.parametrize(("install", "said"), [
    ("ln -s ../../../etc/passwd $DESTDIR/escape", "tree output 'p/hello.tree': symlink 'escape' -> "
     "'../../../etc/passwd' escapes the tree"),
    ("mkfifo $DESTDIR/pipe", "tree output 'p/hello.tree': 'pipe' is neither a file, a folder nor a symlink"),
    ("rmdir $DESTDIR && echo not a folder > $DESTDIR", "tree output 'p/hello.tree' is not a folder"),
])
def test_an_install_that_makes_what_a_tree_cannot_hold_is_refused(workspace: WorkspaceFactory, install: str,
                                                                   said: str) -> None:
    require("mkfifo")
    ws = workspace({"p/BUILD": f'layer(name = "src", directories = ["/d"])\n'
                               f'package(name = "hello", src = ":src", install = {install!r})\n'})
    failed = ws.mk("build", "//p:hello")
    assert failed.code == 1
    assert f"error: Package //p:hello: {said}" in failed.err or f"error: Package //p:hello {said}" in failed.err, \
        failed.err


def test_the_build_sees_the_source_read_only_and_its_environment_fixed(workspace: WorkspaceFactory) -> None:
    install = ("env | sort | grep -E '^(DESTDIR|SOURCE_DATE_EPOCH|KBUILD_BUILD_[A-Z]+|HOME|TZ|LC_ALL)=' > /tmp/env; "
               "touch /mk/execroot/p/src.tree/x 2> /dev/null && echo writable >> /tmp/env; "
               "install -D /tmp/env $DESTDIR/env")
    ws = workspace({"p/BUILD": f'layer(name = "src", directories = ["/d"])\n'
                               f'package(name = "hello", src = ":src", install = {install!r})\n'
                               'tar(name = "t", src = ":hello")\n'}, toml='source_date_epoch = 86400\n')
    ws.build("//p:t")
    with tarfile.open(ws.root / "mk-out/p/t.tar") as archive:
        env = archive.extractfile("env")
        assert env is not None
        text = io.TextIOWrapper(env, encoding="utf-8").read()
    assert text == ("DESTDIR=/mk/execroot/p/hello.tree\nHOME=/tmp\nKBUILD_BUILD_HOST=mk\n"
                    "KBUILD_BUILD_TIMESTAMP=Fri Jan  2 00:00:00 UTC 1970\nKBUILD_BUILD_USER=mk\nLC_ALL=C.UTF-8\n"
                    "SOURCE_DATE_EPOCH=86400\nTZ=UTC\n")


def test_deps_need_a_toolchain_tree(workspace: WorkspaceFactory) -> None:
    ws = workspace({"p/BUILD": 'layer(name = "src", directories = ["/d"])\n'
                               'package(name = "hello", src = ":src", deps = [":src"], install = "true")\n'})
    failed = ws.mk("build", "//p:hello")
    assert failed.code == 2
    assert "package //p:hello: 'deps' are merged into the toolchain's tree, and toolchain = \"host\" has none" \
        in failed.err
