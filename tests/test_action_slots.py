"""Actions that take several -j slots (a parallel make), and warnings of in-process actions: what the
scheduler reserves, what a command is told in $MK_JOBS, what a warning looks like and where it goes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import cast

import pytest

from mk.cache.action_cache import ActionResult
from mk.cache.local import LocalCache
from mk.cache.stat_cache import FileDigest
from mk.engine.actions import ALL_JOBS, Action, ActionIO, Artifact
from mk.engine.errors import Location
from mk.engine.execute import Executor
from mk.engine.keys import KeyMaterial
from mk.engine.labels import Label
from mk.engine.rebuilder import Outcome, Rebuilder
from mk.engine.scheduler import run_actions


def action(name: str, jobs: int = 1, after: tuple[str, ...] = ()) -> Action:
    return Action(owner=Label.parse(f"//p:{name}"), mnemonic="Test", inputs=tuple(Artifact(f"p/{a}", False)
                  for a in after), outputs=(Artifact(f"p/{name}", False),), command=("true",), jobs=jobs)


class Recorder:
    """Stands in for the rebuilder: nothing is cached, and each action "runs" by noting which others
    are running with it. Those of `meet` wait for each other, so they must be let run together."""

    def __init__(self, meet: set[str]) -> None:
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.alongside: dict[str, set[str]] = {}
        self.barrier = threading.Barrier(len(meet)) if meet else None
        self.meet = meet
        self.executor = self  # run_actions reaches executor.processes.kill_all() on an interrupt

    def material(self, action: Action, inputs: Mapping[str, FileDigest]) -> KeyMaterial:
        return KeyMaterial(action.static, (), ())

    def cached(self, action: Action, material: KeyMaterial) -> Outcome | None:
        return None

    def execute(self, action: Action, material: KeyMaterial, inputs: Mapping[str, FileDigest],
                on_start: Callable[[], None] | None = None) -> Outcome:
        name = action.owner.name
        with self.lock:
            self.alongside[name] = set(self.running)
            for other in self.running:
                self.alongside[other].add(name)
            self.running.add(name)
        if name in self.meet and self.barrier is not None:
            self.barrier.wait(timeout=10)
        else:
            threading.Event().wait(0.05)
        with self.lock:
            self.running.discard(name)
        result = ActionResult(tuple(), 0, "")
        return Outcome(action, material, result, "executed", "local", 0.0)


def schedule(actions: list[Action], jobs: int, meet: tuple[str, ...] = ()) -> Recorder:
    recorder = Recorder(set(meet))
    result = run_actions(actions, {}, cast(Rebuilder, recorder), jobs, False, lambda outcome: None,
                         lambda action: None)
    assert not result.failures, result.failures
    assert len(result.outcomes) == len(actions)
    return recorder


def test_an_action_of_all_jobs_runs_alone_and_one_slot_actions_share() -> None:
    # "a" and "b" meet at a barrier: the build fails unless they run at the same time, on -j 2.
    recorder = schedule([action("a"), action("b"), action("c", jobs=ALL_JOBS)], jobs=2, meet=("a", "b"))
    assert recorder.alongside["a"] == {"b"}
    assert recorder.alongside["c"] == set()


def test_an_action_of_several_slots_shares_what_is_left() -> None:
    recorder = schedule([action("a", jobs=2), action("b"), action("c", jobs=2)], jobs=3, meet=("a", "b"))
    assert recorder.alongside["a"] == {"b"}  # 2 + 1 slots of 3
    assert "a" not in recorder.alongside["c"]  # 2 + 2 would be 4


def test_the_slots_an_action_takes() -> None:
    assert [action("x", jobs=ALL_JOBS).slots(n) for n in (1, 2, 16)] == [1, 2, 16]
    assert [action("x", jobs=4).slots(n) for n in (1, 2, 16)] == [1, 2, 4]
    assert action("x").slots(8) == 1 and action("x").slots(0) == 1


@pytest.mark.parametrize(("jobs", "build_jobs", "told"), [(ALL_JOBS, 3, "3"), (1, 3, "1"), (2, 1, "1")])
def test_a_command_is_told_its_slots_in_mk_jobs(tmp_path: Path, jobs: int, build_jobs: int, told: str) -> None:
    cache = LocalCache(tmp_path / "cache")
    out = Artifact("p/jobs.txt", False)
    command = Action(owner=Label.parse("//p:jobs"), mnemonic="Test", inputs=(), outputs=(out,),
                     command=("/bin/sh", "-c", "echo $MK_JOBS > p/jobs.txt"), jobs=jobs)
    executor = Executor(cache, cache.cas, tmp_path, lambda name: (), jobs=build_jobs)
    result = executor.run(command, "0" * 64, {})
    assert cache.cas.read_bytes(result.outputs[0].digest) == f"{told}\n".encode()


def warns(io: ActionIO) -> None:
    io.warn("the second line looks wrong", Location("p/input.txt", 2, 1))
    io.warn("something about the target itself")
    io.output().write_text("made anyway\n")


def test_warnings_of_an_in_process_action_name_where_and_are_kept_in_its_log(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "cache")
    warning = Action(owner=Label.parse("//p:w"), mnemonic="Check", inputs=(), outputs=(Artifact("p/w", False),),
                     function=warns, where=Location("p/BUILD", 7, 1))
    executor = Executor(cache, cache.cas, tmp_path, lambda name: ())
    result = executor.run(warning, "1" * 64, {})
    shown = ["p/input.txt:2:1: warning: Check //p:w: the second line looks wrong",
             "p/BUILD:7:1: warning: Check //p:w: something about the target itself"]
    assert executor.warnings == shown
    assert cache.cas.read_bytes(result.log_digest).decode() == "".join(f"{line}\n" for line in shown)
    assert cache.cas.read_bytes(result.outputs[0].digest) == b"made anyway\n"
