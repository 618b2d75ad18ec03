"""The `mk` command line."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import click

from mk.cache.fsutil import CacheFileError
from mk.cache.local import LocalCache
from mk.cache.units import human_size
from mk.engine.errors import MkError
from mk.engine.platforms import requested
from mk.engine.registry import load
from mk.engine.session import Session, cache_for
from mk.engine.workspace import Workspace, find_workspace
from mk.rules.families import registry as shipped_registry

if TYPE_CHECKING:
    from mk.cache.cas import ContentStore
    from mk.cache.remote import RemoteConfig
    from mk.cache.tree_diff import Change
    from mk.engine.build import BuildResult
    from mk.engine.registry import Runner
    from mk.engine.remote_config import ExecutorConfig
    from mk.engine.rule_api import Provider
    from mk.engine.scheduler import ScheduleResult
    from mk.engine.tree_view import BuiltTree

EXIT_BUILD_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
REGISTRY = shipped_registry()


def main() -> None:
    # SIGTERM is handled like Ctrl-C: stop running actions and clean up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    run_command()


def run_command() -> None:
    """One command, from sys.argv; the build server runs each of its clients' commands with it."""
    try:
        cli(standalone_mode=False, obj=REGISTRY, prog_name="mk")
    except (KeyboardInterrupt, click.exceptions.Abort):
        _die("mk: interrupted; nothing partial was kept", EXIT_INTERRUPTED)
    except click.ClickException as e:
        e.show()
        sys.exit(EXIT_USAGE)
    except MkError as e:
        _die(str(e), EXIT_USAGE)
    except CacheFileError as e:  # a full disk, or a cache file in the way: said with its path
        _die(f"error: {e}", EXIT_USAGE)


def _die(message: str, code: int) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(code)


class _FamilyCommands(click.Group):
    """The engine's commands plus those rule families contribute (`mk lock`), loaded when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *REGISTRY.commands()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in REGISTRY.commands():
            loaded: click.Command = load(REGISTRY.commands()[name])
            return loaded
        return command


@click.group(cls=_FamilyCommands)
def cli() -> None:
    """mk builds bootable Linux images reproducibly from BUILD files."""


@dataclass(frozen=True)
class BuildRequest:
    """What `mk build`, `mk image`, `mk run` and `mk watch` ask of a build."""

    targets: tuple[str, ...]
    jobs: int = os.cpu_count() or 1
    keep_going: bool = False
    json_events: Path | None = None
    check: bool = False
    no_remote_upload: bool = False
    groups: tuple[str, ...] = ()
    profile: Path | None = None
    sandbox_debug: bool = False
    remote_jobs: int | None = None
    remote_fallback: bool = False
    platform: tuple[str, ...] = ()


_JOBS = click.option("-j", "--jobs", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default=True,
                     help="Actions run in parallel.")


_BUILD_OPTIONS = (
    _JOBS,
    click.option("--keep-going", "-k", is_flag=True, help="Build as much as possible after a failure."),
    click.option("--json-events", type=click.Path(dir_okay=False, path_type=Path),
                 help="Write one JSON object per action to FILE."),
    click.option("--check", is_flag=True, help="Rebuild every action ignoring the cache and compare the bytes."),
    click.option("--no-remote-upload", is_flag=True, help="Only read the remote cache (as MK_REMOTE_UPLOAD=0)."),
    click.option("--profile", type=click.Path(dir_okay=False, path_type=Path),
                 help="Write a Chrome trace-event JSON of the build to FILE (opens in Perfetto)."),
    click.option("--sandbox-debug", is_flag=True,
                 help="Print each command's bubblewrap command line, and keep its sandbox in the cache."),
    click.option("--remote-jobs", type=click.IntRange(min=1),
                 help="Actions kept in flight on the remote executor, besides the -j run here (default 64)."),
    click.option("--platform", multiple=True, metavar="OS/ARCH",
                 help="The target platform, e.g. linux/arm64 (default: the host's); repeat it to build for several."),
    click.option("--remote-fallback", is_flag=True,
                 help="Run actions here when the remote executor cannot be reached or refuses them."),
)


def _build_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options of `mk build`, which `mk image` takes too."""
    for option in reversed(_BUILD_OPTIONS):
        command = option(command)
    return command


@cli.command()
@click.argument("targets", nargs=-1, required=True)
@_build_options
def build(targets: tuple[str, ...], **options: Any) -> None:
    """Build TARGETS and print the paths of their outputs."""
    _build_and_report(BuildRequest(targets, **options))


def _build_and_report(request: BuildRequest, quiet: bool = False) -> tuple[Session, BuildResult]:
    """Build, print the outputs and the summary line; exit unless the build succeeded. `quiet`: only
    the summary line, on stderr, for commands whose stdout is their own (`mk ls`, `mk diff`)."""
    report = sys.stderr if quiet else sys.stdout
    from mk.engine.build import BuildAborted, BuildOptions
    from mk.engine.report import Summary

    profiler = None
    if request.profile is not None:
        from mk.engine.profile import Profiler

        profiler = Profiler()
    started = time.perf_counter()
    differs = False
    with _events_file(request.json_events) as events:
        try:
            session = Session(REGISTRY)  # inside: a bad mk.toml still ends with the summary line
            remote = _remote(session.workspace, upload=False if request.no_remote_upload else None)
            executor = _executor(session.workspace, request.remote_jobs, request.remote_fallback)
            options = BuildOptions(jobs=request.jobs, keep_going=request.keep_going, events=events, remote=remote,
                                   output_groups=request.groups, profiler=profiler, isolated_loading=True,
                                   sandbox_debug=request.sandbox_debug, executor=executor,
                                   platforms=requested(request.platform, session.workspace.settings.platform))
            try:
                result = session.build(request.targets, options)
            finally:
                if request.profile is not None and profiler is not None:
                    profiler.write(request.profile)
            if request.check and not result.schedule.failures:
                reference = result
                forced = BuildOptions(jobs=request.jobs, force=True, events=events, output_groups=request.groups,
                                      platforms=options.platforms)
                result = session.build(request.targets, forced)
                differs = _report_check(session.cache, reference.schedule, result.schedule)
        except (MkError, CacheFileError) as e:
            print(str(e) if isinstance(e, MkError) else f"error: {e}", file=sys.stderr)
            nothing = Summary(0, 0, 0, 0, 0, time.perf_counter() - started)
            print((e.summary if isinstance(e, BuildAborted) else nothing).line(), file=report)
            sys.exit(EXIT_USAGE)
    if not quiet:
        prefix = os.path.relpath(session.workspace.root)
        sys.stdout.write("".join(f"{os.path.join(prefix, p) if prefix != '.' else p}\n" for p in result.outputs))
    for _action, error in result.schedule.failures:
        print(error if isinstance(error, MkError) else f"error: {error}", file=sys.stderr)
    if skipped := len(result.schedule.skipped):
        print(f"mk: {skipped} actions not run because something they need failed", file=sys.stderr)
    print(result.summary.line(), file=report)
    if result.schedule.failures or differs:
        sys.exit(EXIT_BUILD_FAILED)
    return session, result


@cli.command()
@click.argument("target")
@click.option("--format", "formats", multiple=True, metavar="FORMAT",
              help="An output format of the image besides its default outputs, e.g. tar or oci (repeatable); "
                   "an unknown one is an error that lists those the image has.")
@_build_options
def image(target: str, formats: tuple[str, ...], **options: Any) -> None:
    """Build the image TARGET into mk-out/<pkg>/<name>/ (--check also rebuilds and compares its formats)."""
    _build_and_report(BuildRequest((target,), groups=formats, **options))


_ONE_PLATFORM = click.option("--platform", "target_platform", metavar="OS/ARCH",
                             help="The platform to build the target for, e.g. linux/arm64 (default: the host's).")


class _WithRunnerOptions(click.Command):
    """A command that also takes the options of every registered runner (QEMU's --publish,
    --ssh-key, ...), loaded only when the command is used."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not getattr(self, "_runner_options", False):
            self._runner_options = True
            for runner in REGISTRY.runners():
                self.params.extend(runner.options)
        return super().get_params(ctx)


def _runner(result: BuildResult) -> tuple[Runner, Provider] | None:
    """The runner for the one target built, and the provider it starts; None for several targets."""
    if len(result.providers) != 1:
        return None
    (providers,) = result.providers.values()
    return REGISTRY.runner_for(providers.by_type)


@cli.command(cls=_WithRunnerOptions)
@click.argument("target")
@_ONE_PLATFORM
@click.pass_context
def run(ctx: click.Context, /, target: str, target_platform: str | None, **runner_options: object) -> None:
    """Build TARGET and start it (an image boots in QEMU, with the serial console on this terminal).

    mk says which accelerator QEMU runs with (KVM or TCG emulation) and why. Stop it with Ctrl-A X
    (QEMU's console), Ctrl-C, or poweroff inside the guest.
    """
    for runner in REGISTRY.runners():
        runner.check()  # fail before building when, say, QEMU is missing
    # A runner's --format (an image's) is an output group to build as well.
    group = runner_options.get("format")
    session, result = _build_and_report(BuildRequest((target,), groups=(str(group),) if group else (),
                                                     platform=(target_platform,) if target_platform else ()))
    found = _runner(result)
    if found is None:
        raise MkError(f"{target} cannot be run: it provides nothing a runner starts (an image target can)")
    runner, provider = found
    running = runner.start(provider, session.workspace.output_dir, session.cache.root, ctx.params, True)
    sys.exit(running.wait())


def _remote(workspace: Workspace, upload: bool | None) -> RemoteConfig | None:
    """The remote cache settings; nothing about remotes is even imported when none is set."""
    if not (os.environ.get("MK_REMOTE_CACHE", workspace.settings.remote_cache or "")).strip():
        return None
    from mk.engine.remote_config import resolve

    return resolve(workspace.settings, os.environ, upload)


def _executor(workspace: Workspace, jobs: int | None, fallback: bool) -> ExecutorConfig | None:
    """The remote executor settings; nothing about gRPC is imported when none is set."""
    if not (os.environ.get("MK_REMOTE_EXECUTOR", workspace.settings.remote_executor or "")).strip():
        return None
    from mk.engine.remote_config import resolve_executor

    return resolve_executor(workspace.settings, os.environ, jobs, fallback)


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
@click.argument("kind", type=click.Choice(["deps", "rdeps", "graph"]))
@click.argument("targets", nargs=-1, required=True)
@click.option("--output", type=click.Choice(["label", "json", "dot", "svg"]), default="label", show_default=True,
              help="label: one per line (graph: one edge per line); json: see README.md; svg needs graphviz's `dot`.")
@_ONE_PLATFORM
def query(kind: str, targets: tuple[str, ...], output: str, target_platform: str | None) -> None:
    """Print the dependencies (deps), dependents (rdeps) or dependency edges (graph) of TARGETS.

    Each of TARGETS is a label, a pattern (//..., //pkg:all, //pkg/...) or, for rdeps, a source
    file (//web:index.html, or a path such as web/index.html); from a folder of the workspace,
    paths and patterns are relative to it. `mk query rdeps FILE` lists every target that
    rebuilds when FILE changes."""
    from mk.engine import query as q

    session = Session(REGISTRY)
    loader, analyzer = session.analyzer()
    # As `mk build` would: the command line's platform, else the workspace's setting, else the host's.
    (platform,) = requested((target_platform,) if target_platform else (), session.workspace.settings.platform)
    answer = q.ask(loader, analyzer, kind, tuple(_from_here(session, t) for t in targets), platform)
    for file in answer.unused_files():
        print(f"mk query: no target uses {file}", file=sys.stderr)
    if output == "label":
        click.echo(q.to_labels(answer), nl=False)
    elif output == "json":
        click.echo(q.to_json(answer), nl=False)
    elif output == "dot":
        click.echo(q.to_dot(answer.edges(), answer.nodes), nl=False)
    else:
        sys.stdout.buffer.write(q.to_svg(q.to_dot(answer.edges(), answer.nodes)))


def _from_here(session: Session, text: str) -> str:
    """A query argument written in the current folder: a file there as a workspace path, anything
    else as a pattern made absolute (at the workspace root, both are unchanged)."""
    if not session.current_package:
        return text
    if Path(text).is_file():
        return os.path.relpath(Path(text).resolve(), session.workspace.root)
    return session.absolute(text)


@cli.command(cls=_WithRunnerOptions)
@click.argument("targets", nargs=-1, required=True)
@_JOBS
@click.option("--run", "run_it", is_flag=True,
              help="Start the target (boot the image) after each successful rebuild: a running VM soft-reboots "
                   "(its kernel stays) unless the kernel side changed.")
@click.pass_context
def watch(ctx: click.Context, /, targets: tuple[str, ...], jobs: int, run_it: bool, **runner_options: object) -> None:
    """Build TARGETS, then rebuild whenever a file they depend on changes (Ctrl-C stops)."""
    from mk.engine.registry import Running
    from mk.engine.watch import watch as run_watch

    session = Session(REGISTRY)
    running: Running | None = None
    booted: dict[str, str] = {}  # the digest of every file of the build the running VM was started from

    def restart(result: BuildResult) -> None:
        nonlocal running, booted
        found = _runner(result)
        if found is None:
            print("mk watch: --run needs exactly one target that can be run (an image); not starting", file=sys.stderr)
            return
        built = {path: file.digest for path, file in result.schedule.files.items()}
        runner, provider = found
        if running is not None:
            if built == booted:  # a file saved again unchanged, say: nothing to reboot for
                print("mk watch: the image did not change; the VM keeps running", file=sys.stderr, flush=True)
                return
            if (why := running.reload(provider)) is None:
                booted = built
                return
            print(f"mk watch: a full reboot: {why}", file=sys.stderr, flush=True)
            running.stop()
        booted = built
        print("mk watch: starting the image", file=sys.stderr, flush=True)
        running = runner.start(provider, session.workspace.output_dir, session.cache.root, ctx.params, False)

    if run_it:
        for runner in REGISTRY.runners():
            runner.check()  # fail now when, say, QEMU is missing
    try:
        run_watch(session, targets, jobs, after_success=restart if run_it else None)
    except KeyboardInterrupt:
        print("mk watch: stopped", file=sys.stderr)
    finally:
        if running is not None:
            running.stop()


@cli.command()
@click.argument("target")
def explain(target: str) -> None:
    """Say why each action of TARGET's closure ran in the last build that ran something."""
    from mk.engine import query as q
    from mk.engine.explain import ExplainLog
    from mk.engine.explain import explain as explain_lines

    session = Session(REGISTRY)
    loader, analyzer = session.analyzer()
    roots = loader.expand(session.absolute(target))
    edges = q.dependency_edges(loader, analyzer, roots)
    labels = {str(label) for label in q.deps(edges, roots)}
    lines = explain_lines(ExplainLog(session.cache.root, session.workspace.root).last_build(), labels)
    if not lines:
        click.echo(f"mk explain: no action of {target} ran in the last build")
    for line in lines:
        click.echo(line)


@cli.command()
@click.argument("target")
def log(target: str) -> None:
    """Print what each action of TARGET printed when it last ran (a failed run too), as the last
    build of TARGET in this workspace found it: run then, or taken from a cache."""
    from mk.cache.cas import CorruptBlobError, MissingBlobError
    from mk.engine.build_logs import BuildLogs

    session = Session(REGISTRY)
    label = str(session.one_target(session.loader(), target, "mk log"))
    runs = BuildLogs(session.cache.root, session.workspace.root).of(label)
    if not runs:
        raise MkError(f"mk log: no build of {label} is recorded in this workspace; build it first (mk build {label})")
    with _blob_store(session) as cas:
        for run in runs:
            click.echo(f"==> {run.mnemonic} {run.label} ({run.status}): {run.output}")
            try:
                text = cas.read_bytes(run.log).decode("utf-8", "replace")
            except (MissingBlobError, CorruptBlobError):
                text = "(this log is no longer in the cache: `mk cache gc` removed it)\n"
            click.echo(text, nl=bool(text) and not text.endswith("\n"))


_TREE_TARGETS = "a layer, rootfs, deb_packages, kernel or image"


@cli.command("ls")
@click.argument("target")
@click.argument("paths", nargs=-1)
@_ONE_PLATFORM
def ls(target: str, paths: tuple[str, ...], target_platform: str | None) -> None:
    """List the tree TARGET provides, like `tar tvf`: mode, owner uid/gid, size (or a device's
    major,minor), the start of the content digest, and the path.

    TARGET is a layer, rootfs, deb_packages, kernel (its modules) or image (its root filesystem),
    built first if needed. PATHS (e.g. /etc) list only those paths and what is under them."""
    from mk.engine import tree_view

    session, (built,) = _built_trees((target,), "mk ls", target_platform)
    with _blob_store(session) as cas:
        tree = built.read(cas, "mk ls")
    click.echo("".join(f"{line}\n" for line in tree_view.listing(built, tree, paths)), nl=False)


@cli.command()
@click.argument("targets", nargs=-1, required=True)
@_ONE_PLATFORM
def diff(targets: tuple[str, ...], target_platform: str | None) -> None:
    """Compare the trees of two targets (A B), or of one target between its last two builds (A).

    Lines say what was added (+), removed (-) and changed (~: content, mode, owner, link target,
    device), and diffoscope, when installed, shows how each changed file differs. With one
    target, the tree its build makes now is compared with the different tree an earlier build
    made (every build remembers the trees it made)."""
    from mk.cache import tree_diff
    from mk.engine import tree_view
    from mk.engine.tree_history import TreeHistory

    if len(targets) > 2:
        raise click.UsageError("mk diff takes two targets, or one to compare with its previous build")
    session, built = _built_trees(targets, "mk diff", target_platform)
    if len(built) == 1:
        now = dataclasses.replace(built[0], when="this build")
        built = [tree_view.previous(TreeHistory(session.cache.root, session.workspace.root), now), now]
    old, new = built
    with _blob_store(session) as cas:
        old_tree, new_tree = old.read(cas, "mk diff"), new.read(cas, "mk diff")
        changes = tree_diff.compare(old_tree, new_tree)
        click.echo(f"{old.header('---')}\n{new.header('+++')}")
        for line in tree_diff.lines(changes):
            click.echo(line)
        _diffoscope_changed(session, cas, changes)
    click.echo(f"mk diff: {tree_diff.summary(changes, old_tree, new_tree)}")


def _built_trees(targets: tuple[str, ...], command: str,
                 target_platform: str | None = None) -> tuple[Session, list[BuiltTree]]:
    """Build TARGETS (one target each, for `target_platform` if given) and say which tree each stands
    for; the build's report goes to stderr."""
    from mk.engine.session import exactly_one
    from mk.engine.tree_view import BuiltTree
    from mk.rules.trees import provided_tree

    request = BuildRequest(targets, platform=(target_platform,) if target_platform else ())
    session, result = _build_and_report(request, quiet=True)
    # The providers of the requested targets, in the order the targets were named; one target
    # named twice (`mk diff A A`) is there once.
    found = list(result.providers.items())
    if len(targets) == 1:
        found = [exactly_one(found, targets[0], command)]
    elif len(found) == 1:
        found = found * len(targets)
    elif len(found) != len(targets):
        raise MkError(f"{command} takes one target per argument; {' '.join(targets)} name {len(found)}")
    trees = []
    for label, providers in found:
        artifact = provided_tree(providers)
        if artifact is None:
            raise MkError(f"{command}: {label} ({providers.rule}) has no tree; {command} takes a target that "
                          f"provides one ({_TREE_TARGETS})")
        trees.append(BuiltTree(label, artifact.path, result.schedule.files[artifact.path].digest))
    return session, trees


@contextmanager
def _blob_store(session: Session) -> Iterator[ContentStore]:
    """The local content store; with a remote cache set, also reading what it lacks from there: a
    build that took a tree from the remote downloads neither it nor its files unless it needs them."""
    config = _remote(session.workspace, upload=False)
    if config is None:
        yield session.cache.cas
        return
    from mk.cache.remote import RemoteCache

    remote = RemoteCache(config, session.cache)
    try:
        yield session.cache.cas.with_fetcher(remote)
    finally:
        remote.close()


def _diffoscope_changed(session: Session, cas: ContentStore, changes: list[Change]) -> None:
    """diffoscope's report on each file whose content changed, or why there is none."""
    from mk.cache import diffoscope
    from mk.cache.tree_diff import content_changes

    changed = content_changes(changes)
    if not changed:
        return
    if not diffoscope.installed():
        print("mk diff: diffoscope is not installed, so changed files are compared by digest only "
              f"({diffoscope.INSTALL_HINT})", file=sys.stderr)
        return
    with session.cache.scratch_dir("diff") as scratch:
        for path, before, after in changed:
            report = diffoscope.compare(cas, before, after, path, scratch)
            if report is None:
                print(f"mk diff: /{path} is not compared: a version of it is not in the cache", file=sys.stderr)
            else:
                click.echo(report, nl=not report.endswith("\n"))


@cli.command()
@click.option("--remote", "url", envvar="MK_REMOTE_EXECUTOR", required=True, metavar="URL",
              help="The BuildGrid server: grpc://host:port, or grpcs://host:port for TLS (or MK_REMOTE_EXECUTOR).")
@click.option("--instance", envvar="MK_REMOTE_INSTANCE", default="", help="The instance name (or MK_REMOTE_INSTANCE).")
@click.option("--capacity", type=click.IntRange(min=1), default=1, show_default=True,
              help="Leases (actions) run at once.")
@click.option("--prefetch", type=click.IntRange(min=0), default=0, show_default=True,
              help="Leases taken beyond --capacity, each started as soon as a running one ends.")
def worker(url: str, instance: str, capacity: int, prefetch: int) -> None:
    """Run actions for a BuildGrid server (its Bots API) in mk's sandbox, until Ctrl-C.

    Inputs and toolchains are kept in the local cache (MK_CACHE_DIR), so a warm worker downloads
    nothing twice. MK_REMOTE_EXECUTOR_TOKEN and MK_REMOTE_EXECUTOR_CA are used as `mk build` uses
    them. A machine where mk's sandbox (bubblewrap) cannot run refuses to start."""
    from mk.cache.reapi.endpoint import Endpoint, EndpointError
    from mk.engine.worker import Worker, WorkerError

    try:
        endpoint = Endpoint.parse(url, instance, os.environ.get("MK_REMOTE_EXECUTOR_TOKEN") or None,
                                  os.environ.get("MK_REMOTE_EXECUTOR_CA") or None)
    except EndpointError as e:
        raise click.BadParameter(str(e), param_hint="--remote") from None
    try:
        Worker(endpoint, cache_for(_optional_workspace()), capacity, prefetch=prefetch).serve()
    except WorkerError as e:
        raise MkError(f"mk worker: {e}") from None


@cli.command()
def clean() -> None:
    """Remove the workspace's outputs (mk-out/). The cache is left alone."""
    workspace = _workspace()
    import shutil

    shutil.rmtree(workspace.output_dir, ignore_errors=True)
    click.echo(f"removed {os.path.relpath(workspace.output_dir)}")


def _workspace() -> Workspace:
    return find_workspace(Path.cwd(), REGISTRY.all_settings())


@cli.command()
def shutdown() -> None:
    """Stop the workspace's resident build server (it also stops by itself after server_idle_seconds)."""
    from mk.engine import resident

    workspace = _workspace()
    folder = resident.run_dir(cache_for(workspace).root, workspace.root)
    if resident.stop(folder):
        click.echo(f"mk shutdown: stopped the build server of {workspace.root}")
    else:
        click.echo(f"mk shutdown: no build server runs for {workspace.root}")


@cli.group()
def cache() -> None:
    """Look after the local cache (MK_CACHE_DIR), make signing keys, serve a remote cache."""


def _optional_workspace() -> Workspace | None:
    try:
        return _workspace()
    except MkError:
        return None


@cache.command()
def stats() -> None:
    """Show each part of the cache: its size on disk, its entries, what gc does with it."""
    from mk.cache import maintenance

    local = cache_for(_optional_workspace())
    s = maintenance.stats(local, REGISTRY.cache_parts())
    click.echo(f"cache: {local.root}")
    click.echo(f"{'size':>10} {'entries':>8}  part")
    for part in s.parts:
        click.echo(f"{human_size(part.size):>10} {part.entries:>8}  {part.shown:<16} {part.holds} "
                   f"[{part.policy.value}]")
    click.echo(f"{human_size(s.size):>10} {s.entries:>8}  total (the whole folder, as du counts it)")


@cache.command()
@click.option("--max-size", required=True, help="Shrink the cache to at most this size, e.g. 500M or 2G.")
def gc(max_size: str) -> None:
    """Evict least recently used entries until the cache folder fits in --max-size."""
    from mk.cache import maintenance

    try:
        limit = maintenance.parse_size(max_size)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--max-size") from None
    report = maintenance.gc(cache_for(_optional_workspace()), limit, REGISTRY.cache_parts())
    freed, left = human_size(report.freed_bytes), human_size(report.remaining_bytes)
    click.echo(f"removed {report.removed_files} files, freed {freed}, {left} left")
    if report.remaining_bytes > limit:
        alone = f", and leaves alone what mk does not write ({', '.join(report.not_mine)})" if report.not_mine else ""
        print(f"mk: warning: {left} is over the limit of {human_size(limit)}: gc keeps mk's small state "
              f"({', '.join(report.kept)}) and the folders{alone}", file=sys.stderr)


@cache.command()
def verify() -> None:
    """Re-hash every blob; drop corrupt blobs and results that point at missing ones."""
    from mk.cache import maintenance

    report = maintenance.verify(cache_for(_optional_workspace()))
    for digest in report.corrupt_blobs:
        click.echo(f"corrupt blob removed: {digest}")
    for key in report.broken_actions:
        click.echo(f"action result removed (blob missing): {key}")
    corrupt, dropped = len(report.corrupt_blobs), len(report.broken_actions)
    click.echo(f"checked {report.blobs_checked} blobs: {corrupt} corrupt, {dropped} action results dropped")
    if report.corrupt_blobs or report.broken_actions:
        sys.exit(EXIT_BUILD_FAILED)


@cache.command()
@click.argument("name", type=click.Path(dir_okay=False, path_type=Path))
def keygen(name: Path) -> None:
    """Write an ed25519 key pair: NAME.key (secret) and NAME.pub (the line MK_TRUSTED_KEYS takes)."""
    from mk.cache.signing import SigningKeyError, write_key_pair

    try:
        key_file, pub_file, public = write_key_pair(name)
    except (SigningKeyError, OSError) as e:
        raise MkError(f"mk cache keygen: {e}") from None
    click.echo(f"secret key: {key_file} (keep it secret: set MK_SIGNING_KEY to its path where results are uploaded)")
    click.echo(f"public key: {pub_file}; add this line to trusted_keys in mk.toml or to MK_TRUSTED_KEYS:")
    click.echo(public.line())


@cache.command()
@click.argument("storage", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8090, show_default=True,
              help="Port to listen on (0: any free port; the URL is printed).")
@click.option("--read-only", is_flag=True, help="Refuse uploads.")
@click.option("--token", envvar="MK_CACHE_SERVE_TOKEN", help="Require this bearer token (or basic-auth password); "
              "also read from MK_CACHE_SERVE_TOKEN, which keeps it out of `ps`.")
@click.option("--max-size", help="Evict least recently used entries beyond this size, e.g. 20G.")
def serve(storage: Path, host: str, port: int, read_only: bool, token: str | None, max_size: str | None) -> None:
    """Serve a remote cache from STORAGE over HTTP (GET/HEAD/PUT on /cas/DIGEST and /ac/KEY)."""
    from mk.cache import maintenance
    from mk.cache.server import ServerOptions, make_server

    try:
        limit = maintenance.parse_size(max_size) if max_size is not None else None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--max-size") from None
    options = ServerOptions(storage.resolve(), host, port, read_only, token or None, limit)
    try:
        server = make_server(options)
    except OSError as e:
        raise MkError(f"mk cache serve: cannot listen on {host}:{port}: {e.strerror or e}") from None
    mode = "read-only" if read_only else "read-write"
    extras = (", token required" if token else "") + (f", at most {human_size(limit)}" if limit else "")
    click.echo(f"mk cache serve: {server.url}/ ({mode}{extras}) storing in {options.storage}")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
