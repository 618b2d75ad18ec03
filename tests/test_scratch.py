"""An action's scratch folder is removed after the action on a background thread: the name is free
at once, and nothing is left when the process ends, or when the next build finds it dead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mk.cache.local import LocalCache
from mk.cache.parts import SCRATCH

PROGRAM = """
import sys
from pathlib import Path
from mk.cache.local import LocalCache
cache = LocalCache(Path(sys.argv[1]))
for n in range(20):
    with cache.scratch_dir("action", remove_later=True) as scratch:
        (scratch / "execroot" / "deep").mkdir(parents=True)
        (scratch / "execroot" / "deep" / "file").write_bytes(b"x" * 100_000)
        (scratch / "execroot" / "deep").chmod(0o555)  # what a build step may leave
    assert not scratch.exists(), "the name must be free as soon as the action ends"
"""


def test_scratch_removed_later_is_gone_when_the_process_ends(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path / "cache")], check=True, timeout=120)
    assert list((tmp_path / "cache" / SCRATCH.name).iterdir()) == []


def test_scratch_a_killed_process_left_aside_is_swept(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "cache")
    proc = subprocess.Popen(["true"])  # its pid names no process once it is reaped
    proc.wait()
    left = tmp_path / "cache" / SCRATCH.name / f"{proc.pid}-done-3"
    (left / "execroot").mkdir(parents=True)
    (left / "execroot" / "output").write_bytes(b"half")
    cache.sweep_stale_scratch()
    assert not left.exists()


HELD = """
import sys, time
from pathlib import Path
from mk.cache.local import LocalCache, _Remover
from mk.cache.parts import SCRATCH
cache = LocalCache(Path(sys.argv[1]))
base = Path(sys.argv[1]) / SCRATCH.name

def made(n):
    for _ in range(n):
        with cache.scratch_dir("action", remove_later=True) as scratch:
            (scratch / "file").write_bytes(b"x")

def left():
    time.sleep(0.5)  # the remover's time to act, were it allowed to
    return len(list(base.iterdir()))

with cache.scratch_removal_held():
    made(3)
    assert left() == 3, "removal waits while a build runs its actions"
    made(_Remover.BACKLOG)
    assert left() <= _Remover.BACKLOG, "but not beyond a backlog"
assert left() == 0, "and goes on once the build is over"
with cache.scratch_removal_held():
    made(2)
"""


def test_scratch_removal_waits_while_a_build_runs_and_nothing_is_left_at_exit(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", HELD, str(tmp_path / "cache")], check=True, timeout=120)
    assert list((tmp_path / "cache" / SCRATCH.name).iterdir()) == []


def test_an_in_process_action_gets_its_work_folder_when_it_asks(tmp_path: Path) -> None:
    """Made on first use (a folder costs a fifth of a millisecond of CPU here, twice per action),
    empty; and an input reads from the store whether or not it was written out."""
    from mk.cache.cas import ContentStore
    from mk.cache.fixed_outputs import FixedOutputs
    from mk.engine.actions import ActionIO

    cas = ContentStore(tmp_path / "cache")
    digest = cas.put_bytes(b"input bytes")
    (tmp_path / "scratch").mkdir()  # the action's scratch folder, which the engine makes
    io = ActionIO(inputs={"pkg/in": tmp_path / "not-written-out"}, digests={"pkg/in": digest}, outputs={},
                  params={}, cas=cas, work=tmp_path / "scratch" / "work", fixed_outputs=FixedOutputs(cas, None),
                  source_urls=lambda name: ())
    assert not io.work.exists()
    assert io.read_bytes("pkg/in") == b"input bytes"
    assert io.scratch == tmp_path / "scratch" / "work" and list(io.scratch.iterdir()) == []


def test_a_scratch_folder_left_under_the_same_name_is_emptied_first(tmp_path: Path) -> None:
    """A folder of this process's name left from an action cut short (an exception escaping the
    removal, say) is not handed to the next action with its files in it."""
    cache = LocalCache(tmp_path / "cache")
    left = tmp_path / "cache" / SCRATCH.name / f"{os.getpid()}-action"
    (left / "execroot").mkdir(parents=True)
    (left / "execroot" / "stale").write_bytes(b"from before")
    with cache.scratch_dir("action") as scratch:
        assert scratch == left and list(scratch.iterdir()) == []
    assert not left.exists()
