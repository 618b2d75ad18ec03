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
    remote_jobs: int = 0,
) -> ScheduleResult:
    """Run `actions`: up to `jobs` at a time here, and up to `remote_jobs` more at a time on the
    remote executor (for the actions the rebuilder sends there), which waits on the network, not
    on this machine's cores."""
    producer = {out.path: a for a in actions for out in a.outputs}
    waiting_on: dict[int, set[int]] = {}
    dependents: dict[int, list[Action]] = {id(a): [] for a in actions}
    for action in actions:
        # (an input made by none of `actions` is known already: the build server runs only some)
        deps = {id(producer[i.path]) for i in action.inputs if not i.is_source and i.path in producer}
        waiting_on[id(action)] = deps
        for dep in deps:
            dependents[dep].append(action)

    state = ScheduleResult(files=dict(sources))
    # Heaps keep the order of ready actions stable (by owner) without re-sorting: one of actions
    # to run here, one of actions for the remote executor, each with its own limit.
    lanes = {False: _Lane(max(1, jobs), weighed=True), True: _Lane(max(1, remote_jobs), weighed=False)}

    def make_ready(action: Action) -> None:
        lane = lanes[remote_jobs > 0 and rebuilder.runs_remotely(action)]
        heapq.heappush(lane.ready, (_order(action), id(action), action))

    for action in actions:
        if not waiting_on[id(action)]:
            make_ready(action)
    skipped: set[int] = set()
    running: dict[cf.Future[Outcome], tuple[Action, _Lane]] = {}
    stopping = False

    def finish(action: Action, outcome: Outcome) -> None:
        state.outcomes.append(outcome)
        for out in outcome.result.outputs:
            state.files[out.path] = FileDigest(out.digest, out.executable)
        on_outcome(outcome)
        for dependent in dependents[id(action)]:
            waiting_on[id(dependent)].discard(id(action))
            if not waiting_on[id(dependent)]:
                make_ready(dependent)

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

    def submittable() -> _Lane | None:
        """A lane with an action to start now, if any."""
        return None if stopping else next((lane for lane in lanes.values() if lane.can_start()), None)

    with ExitStack() as stack:
        pool: cf.ThreadPoolExecutor | None = None  # started on first use: a no-op needs none
        try:
            while submittable() or running:
                # Submit no more than each lane's slots, so a failure stops the build without running a queue.
                while (lane := submittable()) is not None:
                    if lane.held is None:
                        _, _, action = heapq.heappop(lane.ready)
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
                        lane.held = (action, material, inputs)
                        if not lane.fits(action):
                            continue  # until running actions free enough slots
                    action, material, inputs = lane.held
                    lane.held = None
                    if pool is None:
                        import concurrent.futures as cf

                        workers = sum(lane.limit for lane in lanes.values()) if remote_jobs > 0 else max(1, jobs)
                        pool = stack.enter_context(cf.ThreadPoolExecutor(max_workers=workers,
                                                                         thread_name_prefix="mk-worker"))
                    # Told when the action really runs: the rebuilder may find it in a remote cache first.
                    started = functools.partial(on_start, action)
                    running[pool.submit(rebuilder.execute, action, material, inputs, started)] = (action, lane)
                    lane.busy += lane.slots(action)
                if not running:
                    break
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: _order(running[f][0])):
                    action, lane = running.pop(future)
                    lane.busy -= lane.slots(action)
                    error = future.exception()
                    if error is None:
                        finish(action, future.result())
                    else:
                        fail(action, error)
        except BaseException:
            rebuilder.stop()
            raise
    return state


@dataclass
class _Lane:
    """Ready actions of one kind (run here, or run remotely) and the slots they may take at once.

    Here an action takes `Action.slots` of the -j slots (a parallel make takes them all); on the
    remote executor each takes one."""

    limit: int
    weighed: bool
    ready: list[tuple[tuple[str, str], int, Action]] = field(default_factory=list)
    # The next action to start, waiting for enough free slots: nothing overtakes it, so a parallel
    # action is not starved by a stream of small ones.
    held: tuple[Action, KeyMaterial, dict[str, FileDigest]] | None = None
    busy: int = 0  # the slots running actions take

    def slots(self, action: Action) -> int:
        return action.slots(self.limit) if self.weighed else 1

    def fits(self, action: Action) -> bool:
        return self.busy == 0 or self.busy + self.slots(action) <= self.limit

    def can_start(self) -> bool:
        if self.held is not None:
            return self.fits(self.held[0])
        return bool(self.ready) and self.busy < self.limit


def _order(action: Action) -> tuple[str, str]:
    return (str(action.owner), action.outputs[0].path if action.outputs else "")
