"""The `mk` command line."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO

import click

from mk.cache.local import LocalCache, default_cache_dir
from mk.engine.errors import MkError
from mk.engine.workspace import Workspace, find_workspace

if TYPE_CHECKING:
    from mk.engine.scheduler import ScheduleResult

EXIT_BUILD_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def main() -> None:
    # SIGTERM is handled like Ctrl-C: stop running actions and clean up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        cli(standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        _die("mk: interrupted; nothing partial was kept", EXIT_INTERRUPTED)
    except click.ClickException as e:
        e.show()
        sys.exit(EXIT_USAGE)
    except MkError as e:
        _die(str(e), EXIT_USAGE)


def _die(message: str, code: int) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(code)


def _workspace() -> Workspace:
    return find_workspace(Path.cwd())


def _cache(workspace: Workspace | None) -> LocalCache:
    if "MK_CACHE_DIR" not in os.environ and workspace and workspace.settings.cache_dir:
        return LocalCache(workspace.root / workspace.settings.cache_dir)
    return LocalCache(default_cache_dir())


@click.group()
def cli() -> None:
    """mk builds bootable Linux images reproducibly from BUILD files."""


@cli.command()
@click.argument("targets", nargs=-1, required=True)
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default=True,
              help="Actions run in parallel.")
@click.option("--keep-going", "-k", is_flag=True, help="Build as much as possible after a failure.")
@click.option("--json-events", type=click.Path(dir_okay=False, path_type=Path),
              help="Write one JSON object per action to FILE.")
@click.option("--check", is_flag=True, help="Rebuild every action ignoring the cache and compare the bytes.")
def build(targets: tuple[str, ...], jobs: int, keep_going: bool, json_events: Path | None, check: bool) -> None:
    """Build TARGETS and print the paths of their outputs."""
    from mk.engine.build import BuildOptions
    from mk.engine.build import build as run_build
    from mk.engine.report import Summary

    started = time.perf_counter()
    differs = False
    with _events_file(json_events) as events:
        try:
            workspace = _workspace()  # inside: a bad mk.toml still ends with the summary line
            cache = _cache(workspace)
            result = run_build(workspace, cache, targets, BuildOptions(jobs=jobs, keep_going=keep_going, events=events))
            if check and not result.schedule.failures:
                reference = result
                result = run_build(workspace, cache, targets, BuildOptions(jobs=jobs, force=True, events=events))
                differs = _report_check(cache, reference.schedule, result.schedule)
        except MkError as e:
            print(str(e), file=sys.stderr)
            print(Summary(0, 0, 0, 0, 0, time.perf_counter() - started).line())
            sys.exit(EXIT_USAGE)
    prefix = os.path.relpath(workspace.root)
    sys.stdout.write("".join(f"{os.path.join(prefix, path) if prefix != '.' else path}\n" for path in result.outputs))
    for _action, error in result.schedule.failures:
        print(f"error: {error}", file=sys.stderr)
    if skipped := len(result.schedule.skipped):
        print(f"mk: {skipped} actions not run because something they need failed", file=sys.stderr)
    print(result.summary.line())
    if result.schedule.failures or differs:
        sys.exit(EXIT_BUILD_FAILED)


def _report_check(cache: LocalCache, reference: ScheduleResult, rebuilt: ScheduleResult) -> bool:
    """Print what --check found; True when some output is not reproducible."""
    from mk.engine import check

    mismatches = check.compare(reference, rebuilt)
    for m in mismatches:
        print(f"error: --check: {m.path} of {m.label} is not reproducible: "
              f"cached {m.reference[:16] or 'nothing'}, rebuilt {m.rebuilt[:16]}", file=sys.stderr)
        with cache.scratch_dir("check") as scratch:
            report = check.diffoscope(cache.cas, m, scratch)
        if report:
            print(report, file=sys.stderr)
    if not mismatches:
        outputs = sum(len(o.result.outputs) for o in rebuilt.outcomes)
        print(f"mk: --check: rebuilt {len(rebuilt.outcomes)} actions; all {outputs} outputs are identical",
              file=sys.stderr)
    return bool(mismatches)


@contextmanager
def _events_file(path: Path | None) -> Iterator[TextIO | None]:
    if path is None:
        yield None
        return
    # Line-buffered: the events of finished actions survive a crash or kill of mk.
    with open(path, "w", encoding="utf-8", buffering=1) as f:
        yield f


@cli.command()
@click.argument("kind", type=click.Choice(["deps", "rdeps"]))
@click.argument("target")
@click.option("--output", type=click.Choice(["label", "dot"]), default="label", show_default=True)
def query(kind: str, target: str, output: str) -> None:
    """Print the dependencies (deps) or dependents (rdeps) of TARGET."""
    from mk.engine import query as q
    from mk.engine.analysis import Analyzer
    from mk.engine.loader import Loader

    workspace = _workspace()
    loader = Loader(workspace)
    analyzer = Analyzer(loader, workspace.settings.source_date_epoch)
    roots = loader.expand(target)
    if len(roots) != 1:
        raise MkError(f"query needs exactly one target; '{target}' matches {len(roots)}")
    root = roots[0]
    universe = [root] if kind == "deps" else loader.expand("//...")
    edges = q.dependency_edges(loader, analyzer, universe)
    nodes = q.deps(edges, root) if kind == "deps" else q.rdeps(edges, root)
    click.echo(q.to_dot(edges, nodes) if output == "dot" else "".join(f"{n}\n" for n in nodes), nl=False)


@cli.command()
@click.argument("target")
def lock(target: str) -> None:
    """Resolve a deb_packages TARGET against the archives and write its lockfile."""
    from mk.engine.loader import Loader
    from mk.rules.deb.lock import lock as write_lock

    workspace = _workspace()
    loader = Loader(workspace)
    labels = loader.expand(target)
    if len(labels) != 1:
        raise MkError(f"mk lock needs exactly one target; '{target}' matches {len(labels)}")
    found = loader.target(labels[0])
    assert found is not None
    report = write_lock(workspace, found, _cache(workspace).root)
    state = "written" if report.changed else "unchanged"
    click.echo(f"{os.path.relpath(report.path)}: {report.packages} packages ({state})")


@cli.command()
def clean() -> None:
    """Remove the workspace's outputs (mk-out/). The cache is left alone."""
    workspace = _workspace()
    shutil.rmtree(workspace.output_dir, ignore_errors=True)
    click.echo(f"removed {os.path.relpath(workspace.output_dir)}")


@cli.group()
def cache() -> None:
    """Look after the local cache (MK_CACHE_DIR)."""


def _optional_workspace() -> Workspace | None:
    try:
        return _workspace()
    except MkError:
        return None


@cache.command()
def stats() -> None:
    """Show what the cache holds."""
    from mk.cache import maintenance

    local = _cache(_optional_workspace())
    s = maintenance.stats(local)
    click.echo(f"cache: {local.root}")
    click.echo(f"blobs: {s.blobs} ({_human(s.blob_bytes)})")
    click.echo(f"action results: {s.actions} ({_human(s.action_bytes)})")
    click.echo(f"total: {_human(s.blob_bytes + s.action_bytes)}")


@cache.command()
@click.option("--max-size", required=True, help="Shrink the cache to at most this size, e.g. 500M or 2G.")
def gc(max_size: str) -> None:
    """Delete least recently used entries until the cache fits in --max-size."""
    from mk.cache import maintenance

    try:
        limit = maintenance.parse_size(max_size)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--max-size") from None
    report = maintenance.gc(_cache(_optional_workspace()), limit)
    freed, left = _human(report.freed_bytes), _human(report.remaining_bytes)
    click.echo(f"removed {report.removed_files} files, freed {freed}, {left} left")


@cache.command()
def verify() -> None:
    """Re-hash every blob; drop corrupt blobs and results that point at missing ones."""
    from mk.cache import maintenance

    report = maintenance.verify(_cache(_optional_workspace()))
    for digest in report.corrupt_blobs:
        click.echo(f"corrupt blob removed: {digest}")
    for key in report.broken_actions:
        click.echo(f"action result removed (blob missing): {key}")
    corrupt, dropped = len(report.corrupt_blobs), len(report.broken_actions)
    click.echo(f"checked {report.blobs_checked} blobs: {corrupt} corrupt, {dropped} action results dropped")
    if report.corrupt_blobs or report.broken_actions:
        sys.exit(EXIT_BUILD_FAILED)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{size} B"
