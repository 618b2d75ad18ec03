"""Progress: a live view on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

from conftest import MK, WorkspaceFactory, mk_env, without_host_warning

from mk.cache.action_cache import ActionResult
from mk.engine.actions import Action, Artifact
from mk.engine.keys import KeyMaterial
from mk.engine.labels import Label
from mk.engine.rebuilder import Outcome
from mk.engine.report import Reporter


def action(name: str) -> Action:
    return Action(Label("pkg", name), "Genrule", (), (Artifact(f"pkg/{name}.out", False),))


def test_live_view_shows_running_actions_and_counts() -> None:
    screen = io.StringIO()
    reporter = Reporter(3, None, stream=screen, live=True)
    slow, quick = action("slow"), action("quick")
    reporter.started(slow)
    reporter.started(quick)
    material = KeyMaterial(quick.static, (), ())
    reporter.finished(Outcome(quick, material, ActionResult((), 0, "0" * 64), "executed", "local", 0.1))
    time.sleep(0.4)  # at least one refresh of the live view
    reporter.close()
    drawn = screen.getvalue()
    assert "Genrule //pkg:slow" in drawn
    assert "1/3 actions (1 executed, 0 cached), 1 running" in drawn
    assert "\x1b[" in drawn  # drawn with terminal control sequences, not plain lines


def test_live_view_shows_the_bytes_the_remote_cache_moved() -> None:
    from mk.cache.remote import TransferStats

    stats = TransferStats(hits=3, blobs_down=2, bytes_down=3 << 20)
    screen = io.StringIO()
    reporter = Reporter(1, None, stream=screen, live=True, transfer=stats.brief)
    reporter.started(action("fetch"))
    time.sleep(0.4)
    reporter.close()
    assert "remote cache: 3 hits, down 3.0 MiB (2 blobs), up 0 B (0 blobs)" in screen.getvalue()


def test_plain_lines_when_not_a_terminal(workspace: WorkspaceFactory) -> None:
    ws = workspace({"p/BUILD": 'genrule(name = "a", outs = ["a.txt"], cmd = "echo a > $@")\n'})
    result = ws.mk("build", "//p:a")
    assert without_host_warning(result.err).splitlines() == ["[0/1] Genrule //p:a"]


def test_a_terminal_build_ends_with_the_summary_and_no_live_view_left(workspace: WorkspaceFactory) -> None:
    """Under a pseudo-terminal (script(1)), the live view is drawn and taken away again."""
    ws = workspace({"p/BUILD": 'genrule(name = "a", outs = ["a.txt"], cmd = "sleep 0.5; echo a > $@")\n'})
    proc = subprocess.run(["script", "-qec", f"{MK} build //p:a", "/dev/null"], cwd=ws.root,
                          env=mk_env(ws.cache_dir), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    screen = proc.stdout  # what the pseudo-terminal showed: stderr and stdout together
    assert "Genrule //p:a" in screen and "[0/1]" not in screen
    assert screen.rstrip().splitlines()[-1].startswith("mk: 1 targets, 1 actions: 1 executed")


class Writes(io.StringIO):
    """A stream that records each write: lines must arrive whole, one write each, or another
    thread's output can land between a line and its newline."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_progress_and_remote_warnings_write_whole_lines(tmp_path: Path) -> None:
    from mk.cache.local import LocalCache
    from mk.cache.remote import RemoteCache, RemoteConfig

    stream = Writes()
    reporter = Reporter(2, None, stream=stream, live=False)
    reporter.started(action("one"))
    remote = RemoteCache(RemoteConfig("http://127.0.0.1:9"), LocalCache(tmp_path / "cache"), stream=stream)
    remote._warn("dead", "it does not answer")
    assert stream.calls and all(call.endswith("\n") and call.count("\n") == 1 for call in stream.calls), stream.calls
