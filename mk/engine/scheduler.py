"""The scheduler decides in what order actions run: each as soon as its inputs exist, up to -j.

It knows nothing of caching; it asks the rebuilder, for each ready action, whether a result is
already there, and hands the rest to a pool of worker threads.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mk.cache.stat_cache import FileDigest
from mk.engine.actions import Action
from mk.engine.errors import MkError
from mk.engine.keys import KeyMaterial
from mk.engine.rebuilder import Outcome, Rebuilder

if TYPE_CHECKING:
    import concurrent.futures as cf


@dataclass
class ScheduleResult:
    outcomes: list[Outcome] = field(default_factory=list)
    failures: list[tuple[Action, BaseException]] = field(default_factory=list)
    skipped: list[Action] = field(default_factory=list)
    files: dict[str, FileDigest] = field(default_factory=dict)
    # The key material of every action whose key was made (cached, run or failed), for explain.
    considered: list[tuple[Action, KeyMaterial]] = field(default_factory=list)


def run_actions(
    actions: Sequence[Action],
    sources: Mapping[str, FileDigest],
    rebuilder: Rebuilder,
    jobs: int,
    keep_going: bool,
    on_outcome: Callable[[Outcome], None],
    on_start: Callable[[Action], None],
) -> ScheduleResult:
    producer = {out.path: a for a in actions for out in a.outputs}
    waiting_on: dict[int, set[int]] = {}
    dependents: dict[int, list[Action]] = {id(a): [] for a in actions}
    for action in actions:
        deps = {id(producer[i.path]) for i in action.inputs if not i.is_source}
        waiting_on[id(action)] = deps
        for dep in deps:
            dependents[dep].append(action)

    state = ScheduleResult(files=dict(sources))
    # A heap keeps the order of ready actions stable (by owner) without re-sorting.
    ready: list[tuple[tuple[str, str], int, Action]] = []
    for action in actions:
        if not waiting_on[id(action)]:
            heapq.heappush(ready, (_order(action), id(action), action))
    skipped: set[int] = set()
    running: dict[cf.Future[Outcome], Action] = {}
    stopping = False

    def finish(action: Action, outcome: Outcome) -> None:
        state.outcomes.append(outcome)
        for out in outcome.result.outputs:
            state.files[out.path] = FileDigest(out.digest, out.executable)
        on_outcome(outcome)
        for dependent in dependents[id(action)]:
            waiting_on[id(dependent)].discard(id(action))
            if not waiting_on[id(dependent)]:
                heapq.heappush(ready, (_order(dependent), id(dependent), dependent))

    def fail(action: Action, error: BaseException) -> None:
        nonlocal stopping
        if isinstance(error, MkError) and error.location is None:
            error.location = action.where  # the error names the BUILD file line of the target it is about
        state.failures.append((action, error))
        stopping = stopping or not keep_going
        blocked = list(dependents[id(action)])
        while blocked:
            dependent = blocked.pop()
            if id(dependent) not in skipped:
                skipped.add(id(dependent))
                state.skipped.append(dependent)
                blocked.extend(dependents[id(dependent)])

    with ExitStack() as stack:
        pool: cf.ThreadPoolExecutor | None = None  # started on first use: a no-op needs none
        try:
            while (ready and not stopping) or running:
                # Submit no more than -j at a time, so a failure stops the build without running a queue.
                while ready and not stopping and len(running) < max(1, jobs):
                    _, _, action = heapq.heappop(ready)
                    inputs = {i.path: state.files[i.path] for i in action.inputs}
                    try:
                        material = rebuilder.material(action, inputs)
                        state.considered.append((action, material))
                        hit = rebuilder.cached(action, material)
                    except Exception as e:  # reported as this action's failure
                        fail(action, e)
                        continue
                    if hit is not None:
                        finish(action, hit)
                        continue
                    if pool is None:
                        import concurrent.futures as cf

                        pool = stack.enter_context(
                            cf.ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="mk-worker")
                        )
                    # Told when the action really runs: the rebuilder may find it in a remote cache first.
                    started = functools.partial(on_start, action)
                    running[pool.submit(rebuilder.execute, action, material, inputs, started)] = action
                if not running:
                    break
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: _order(running[f])):
                    action = running.pop(future)
                    error = future.exception()
                    if error is None:
                        finish(action, future.result())
                    else:
                        fail(action, error)
        except BaseException:
            rebuilder.executor.processes.kill_all()
            raise
    return state


def _order(action: Action) -> tuple[str, str]:
    return (str(action.owner), action.outputs[0].path if action.outputs else "")
