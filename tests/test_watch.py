"""`mk watch` driven in a subprocess: what an edit rebuilds, and what it does not."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from conftest import MK, Workspace, WorkspaceFactory, mk_env

BUILD = textwrap.dedent("""
    genrule(name = "a", srcs = ["a.txt"], outs = ["a.out"], cmd = "cp $< $@")
    genrule(name = "b", srcs = [":a"], outs = ["b.out"], cmd = "cat $< $< > $@")
    genrule(name = "other", srcs = ["o.txt"], outs = ["o.out"], cmd = "cp $< $@")
""")
TIMEOUT = 20.0


class Watch:
    def __init__(self, ws: Workspace, *targets: str, launcher: tuple[str, ...] = (MK,)) -> None:
        self.proc = subprocess.Popen(
            [*launcher, "watch", *targets, "-j", "2"], cwd=ws.root, env=mk_env(ws.cache_dir),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.errors: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.pumps = [threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True),
                      threading.Thread(target=self._pump, args=(self.proc.stderr, self.errors.append), daemon=True)]
        for pump in self.pumps:
            pump.start()

    @staticmethod
    def _pump(stream: IO[str], sink: object) -> None:
        for line in stream:
            sink(line.rstrip("\n"))  # type: ignore[operator]

    def until_watching(self) -> list[str]:
        """The lines up to the next "watching" line (the end of one rebuild)."""
        got: list[str] = []
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"mk watch said nothing more; so far {got}; stderr {self.errors}")
            got.append(line)
            if line.startswith("mk watch: watching"):
                return got

    def quiet(self, seconds: float = 1.0) -> list[str]:
        time.sleep(seconds)
        got = []
        while not self.lines.empty():
            got.append(self.lines.get())
        return got

    def stop(self) -> int:
        """Ctrl-C; once it has exited, `errors` holds all it wrote on stderr."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=TIMEOUT)
        for pump in self.pumps:
            pump.join(timeout=TIMEOUT)
        return code


@pytest.fixture
def watching(workspace: WorkspaceFactory) -> Iterator[tuple[Workspace, Watch]]:
    ws = workspace({"pkg/BUILD": BUILD, "pkg/a.txt": "one\n", "pkg/o.txt": "o\n", "elsewhere/x.txt": "x\n"})
    ws.age_sources()
    w = Watch(ws, "//pkg:b")
    try:
        first = w.until_watching()
        assert "mk watch: ran Genrule //pkg:a, Genrule //pkg:b" in first, first
        yield ws, w
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


def edit(ws: Workspace, path: str, content: str) -> None:
    ws.write(path, content)


def test_an_edit_rebuilds_once_what_it_affects(watching: tuple[Workspace, Watch]) -> None:
    ws, w = watching
    edit(ws, "pkg/a.txt", "two\n")
    lines = w.until_watching()
    assert lines[0] == "mk watch: changed pkg/a.txt"
    assert "mk watch: ran Genrule //pkg:a, Genrule //pkg:b" in lines
    assert ws.read("mk-out/pkg/b.out") == "two\ntwo\n"
    extra = w.quiet()
    assert extra == [], (extra, w.errors)  # exactly one rebuild
    assert w.stop() == 0, w.errors
    assert "mk watch: stopped" in w.errors


def test_an_edit_outside_the_closure_does_nothing(watching: tuple[Workspace, Watch]) -> None:
    ws, w = watching
    edit(ws, "pkg/o.txt", "changed\n")  # same folder, not a dependency of //pkg:b
    edit(ws, "elsewhere/x.txt", "changed\n")
    edit(ws, "pkg/new.txt", "new\n")
    assert w.quiet(1.5) == []
    assert w.stop() == 0, w.errors


def test_a_new_target_in_build_is_picked_up(watching: tuple[Workspace, Watch]) -> None:
    ws, w = watching
    ws.write("pkg/c.txt", "c\n")
    new_b = 'srcs = [":a", ":c"], outs = ["b.out"], cmd = "cat $(SRCS) > $@"'
    edit(ws, "pkg/BUILD", BUILD.replace('srcs = [":a"], outs = ["b.out"], cmd = "cat $< $< > $@"', new_b)
         + 'genrule(name = "c", srcs = ["c.txt"], outs = ["c.out"], cmd = "cp $< $@")\n')
    lines = w.until_watching()
    assert "mk watch: ran Genrule //pkg:b, Genrule //pkg:c" in lines, lines
    # c.txt is now watched too.
    edit(ws, "pkg/c.txt", "cc\n")
    lines = w.until_watching()
    assert lines[0] == "mk watch: changed pkg/c.txt"
    assert "mk watch: ran Genrule //pkg:b, Genrule //pkg:c" in lines
    assert ws.read("mk-out/pkg/b.out") == "one\ncc\n"
    assert w.stop() == 0, w.errors


def test_a_broken_edit_reports_and_the_next_good_one_recovers(watching: tuple[Workspace, Watch]) -> None:
    ws, w = watching
    edit(ws, "pkg/BUILD", BUILD + "genrule(name = )\n")
    lines = w.until_watching()
    assert lines[:2] == ["mk watch: changed pkg/BUILD", "mk watch: build failed; waiting for the next change"], lines
    edit(ws, "pkg/a.txt", "three\n")  # still watched
    edit(ws, "pkg/BUILD", BUILD)
    lines = w.until_watching()
    assert "mk watch: ran Genrule //pkg:a, Genrule //pkg:b" in lines, lines
    assert ws.read("mk-out/pkg/b.out") == "three\nthree\n"
    assert w.stop() == 0, w.errors
    errors = [e for e in w.errors if "error" in e]
    assert len(errors) == 1, w.errors
    assert errors == ["pkg/BUILD:5:16: error: unexpected symbol ')' here, expected a value"], errors


def test_a_failing_command_is_reported_and_the_outputs_stay(watching: tuple[Workspace, Watch]) -> None:
    ws, w = watching
    edit(ws, "pkg/BUILD", BUILD.replace("cp $< $@", "exit 3"))
    lines = w.until_watching()
    assert lines[0] == "mk watch: changed pkg/BUILD", lines
    assert "mk watch: ran Genrule //pkg:a (failed)" in lines, lines
    assert re.fullmatch(r"mk watch: failed in \d+\.\d\d s", lines[-2]), lines
    assert w.stop() == 0, w.errors
    assert "error: Genrule //pkg:a failed (exit code 3)\n  command: exit 3\n" in "\n".join(w.errors), w.errors
    assert ws.read("mk-out/pkg/b.out") == "one\none\n"  # what the last good build placed


def test_run_reboots_the_vm_after_each_good_rebuild(workspace: WorkspaceFactory, tmp_path: Path) -> None:
    """--run with a stand-in QEMU that logs each start and stop: a good edit reboots, a bad one does not."""
    log = tmp_path / "qemu.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    qemu = bin_dir / "qemu-system-x86_64"
    qemu.write_text(f"#!/bin/sh\necho \"start $$ $*\" >> {log}\ntrap 'echo \"stop $$\" >> {log}; exit 0' TERM\n"
                    "while :; do sleep 0.1; done\n")
    qemu.chmod(0o755)
    # A real image target (what --run starts is decided by its ImageInfo provider), made offline:
    # its "kernel" and "busybox" are the motd file.
    image = textwrap.dedent("""
        layer(name = "base", files = {"/usr/bin/busybox": "motd", "/boot/vmlinuz-6.1.0-mk": "motd"})
        kernel(name = "k", packages = ":base")
        image(name = "vm", kernel = ":k", base = [":base"])
    """)
    ws = workspace({"pkg/BUILD": image, "pkg/motd": "one\n"})
    ws.age_sources()
    env = mk_env(ws.cache_dir, {"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    said = tmp_path / "stderr"
    with open(said, "w") as stderr:
        proc = subprocess.Popen([MK, "watch", "//pkg:vm", "--run", "--accel", "tcg"], cwd=ws.root, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, text=True)

    def starts() -> list[str]:
        return [line for line in log.read_text().splitlines() if line.startswith("start")] if log.exists() else []

    def wait_for(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no qemu log"
            time.sleep(0.1)

    try:
        wait_for(lambda: len(starts()) == 1)
        assert "-kernel" in starts()[0] and "pkg/vm/kernel" in starts()[0]
        assert " mk.watch" in starts()[0] and "serial=mk-update" in starts()[0]  # its soft-reboot agent's
        ws.write("pkg/motd", "two\n")
        wait_for(lambda: len(starts()) == 2)
        first_pid = starts()[0].split()[1]
        assert f"stop {first_pid}" in log.read_text()  # the old VM was stopped before the new one
        # Its kernel is the motd: no soft reboot (the kernel stays running in one) stands for it.
        assert "mk watch: a full reboot: the kernel changed" in said.read_text()
        ws.write("pkg/motd", "two\n")  # saved again unchanged, as editors do: rebuilt, not rebooted
        wait_for(lambda: "mk watch: the image did not change; the VM keeps running" in said.read_text())
        assert len(starts()) == 2
        ws.write("pkg/BUILD", "image(name = \"vm\", kernel = \":k\"\n")  # broken: no reboot
        time.sleep(2)
        assert len(starts()) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=TIMEOUT)
    assert len([line for line in log.read_text().splitlines() if line.startswith("stop")]) == 2


def test_an_edit_made_during_a_build_is_not_lost(workspace: WorkspaceFactory) -> None:
    """The first build sleeps; the source is edited while it runs, before any watch exists."""
    slow = 'genrule(name = "s", srcs = ["s.txt"], outs = ["s.out"], cmd = "sleep 2; cp $< $@")\n'
    ws = workspace({"pkg/BUILD": slow, "pkg/s.txt": "before\n"})
    ws.age_sources()
    w = Watch(ws, "//pkg:s")
    try:
        time.sleep(1.0)  # the build is sleeping now
        edit(ws, "pkg/s.txt", "after\n")
        first = w.until_watching()
        assert "mk watch: ran Genrule //pkg:s" in first, first
        second = w.until_watching()
        assert second[0] == "mk watch: changed pkg/s.txt", second
        assert "mk watch: ran Genrule //pkg:s" in second, second
        assert ws.read("mk-out/pkg/s.out") == "after\n"
        assert w.quiet() == []  # and then it settles
    finally:
        code = w.stop()  # (asserted below: here, a failed assertion would hide the body's)
    assert code == 0, w.errors


# watchdog's Observer failing as it does when the user has no inotify instance left
# (fs.inotify.max_user_instances, shared by every process of the user: test runs have used it up).
_WITHOUT_INOTIFY = """
import errno, sys, watchdog.observers
def refuse():
    raise OSError(errno.EMFILE, "inotify instance limit reached")
watchdog.observers.Observer = refuse
from mk.client import main
main()
"""


def test_without_inotify_it_says_so_and_polls(workspace: WorkspaceFactory) -> None:
    ws = workspace({"pkg/BUILD": BUILD, "pkg/a.txt": "one\n", "pkg/o.txt": "o\n"})
    ws.age_sources()
    w = Watch(ws, "//pkg:b", launcher=(sys.executable, "-c", _WITHOUT_INOTIFY))
    try:
        first = w.until_watching()
        assert "mk watch: ran Genrule //pkg:a, Genrule //pkg:b" in first, first
        edit(ws, "pkg/a.txt", "two\n")
        second = w.until_watching()
        assert second[0] == "mk watch: changed pkg/a.txt", second
        assert ws.read("mk-out/pkg/b.out") == "two\ntwo\n"
    finally:
        code = w.stop()
    assert code == 0, w.errors
    assert w.errors[0].startswith("mk watch: warning: inotify is not available (inotify instance limit reached); "
                                  "listing the watched folders every 0.5 s instead"), w.errors
