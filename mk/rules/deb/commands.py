"""What the Debian family adds to mk besides its rule: `mk lock`, and the "debian" download source."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mk.engine.errors import MkError
from mk.engine.platforms import ARCHITECTURES, requested
from mk.engine.session import Session
from mk.engine.workspace import Settings

if TYPE_CHECKING:
    from mk.engine.targets import Target
    from mk.rules.deb.lock import LockReport, Mode

# `mk lock --check`: a security update is pending (errors exit 2, as everywhere in mk).
EXIT_SECURITY_UPDATES = 1


@click.command()
@click.argument("targets", nargs=-1, required=True)
@click.option("--update", is_flag=True, help="Move every package to the newest version the suites have.")
@click.option("--security-only", is_flag=True,
              help="With --update or --check: only security updates (newer versions in -security suites).")
@click.option("--check", is_flag=True,
              help="Write nothing; say which locked packages have newer versions, and exit 1 when any of them "
                   "is a security update.")
@click.option("--platform", "platforms", multiple=True, metavar="OS/ARCH",
              help="Resolve for this target platform's architecture, into its own lockfile (default: the host's, "
                   "and every other architecture the target already has a lockfile for); repeat it to lock several.")
@click.pass_obj
def lock(registry: object, targets: tuple[str, ...], update: bool, security_only: bool, check: bool,
         platforms: tuple[str, ...]) -> None:
    """Resolve deb_packages and deb_source TARGETS against the archives and write their lockfiles,
    printing what changed. Without --update, the versions already locked stay where the archive
    still has them. TARGETS may be patterns (//..., //pkg:all): their deb_packages and deb_source
    targets are locked."""
    from mk.engine.registry import Registry
    from mk.rules.deb.lock import lock as write_lock
    from mk.rules.deb.lock import lockfile

    assert isinstance(registry, Registry)
    if security_only and not (update or check):
        raise click.UsageError("--security-only goes with --update or --check")
    if update and check:
        raise click.UsageError("--check writes nothing; give it without --update")
    mode: Mode = "security" if security_only else "update" if update or check else "keep"
    session = Session(registry)
    pending = 0
    wanted = [p.arch for p in requested(platforms, session.workspace.settings.platform)]
    done: set[Path] = set()
    found = _deb_targets(session, targets)
    # Unless told which, every lockfile a target has: a check or an update that left out another
    # architecture's lockfile would keep quiet about its security updates.
    for target, arch in ((t, a) for t in found for a in (wanted if platforms else _locked(session, t, wanted))):
        path = lockfile(session.workspace, target, arch)
        if path in done:  # a set with an architecture of its own, or a source: one lockfile, resolved once
            continue
        done.add(path)
        report = write_lock(session.workspace, target, session.cache.root, mode, check, arch)
        click.echo(_summary(report, check))
        for change in report.changes:
            click.echo(f"  {change.line()}")
        for note in report.notes:
            print(f"mk lock: note: {note}", file=sys.stderr)
        pending += report.security_updates
    if check and pending:
        sys.exit(EXIT_SECURITY_UPDATES)


def _locked(session: Session, target: Target, wanted: list[str]) -> list[str]:
    """`wanted`, then the other architectures `target` has a lockfile for."""
    from mk.rules.deb.rule import lock_path

    folder = session.workspace.root / target.label.package
    others = [a for a in ARCHITECTURES if a not in wanted
              and (folder / lock_path(target.label.name, dict(target.attrs), a)).is_file()]
    return [*wanted, *others]


def _deb_targets(session: Session, patterns: tuple[str, ...]) -> list[Target]:
    """The targets named, each once: a label names its target (which must be deb_packages or
    deb_source), a pattern its deb_packages and deb_source targets."""
    from mk.engine.labels import Pattern
    from mk.rules.deb.lock import LOCKED_RULES, require_lockable

    loader = session.loader()
    found: dict[str, Target] = {}
    for text in patterns:
        absolute = session.absolute(text)
        named = Pattern.parse(absolute).name is not None
        for label in loader.expand(absolute):
            target = loader.target(label)
            assert target is not None
            if named:  # before anything looks for its lockfiles
                require_lockable(target)
            if target.rule.name in LOCKED_RULES:
                found.setdefault(str(label), target)
    if not found:
        raise MkError(f"no deb_packages or deb_source target in {' '.join(patterns)}")
    return list(found.values())


def _summary(report: LockReport, check: bool) -> str:
    shown = os.path.relpath(report.path)
    packages = _count(report.packages, report.unit)
    if not check:
        return f"{shown}: {packages} ({'written' if report.changed else 'unchanged'})"
    stale = "; its package list changed since it was written: run `mk lock`" if report.stale else ""
    if not report.changes:
        return f"{shown}: up to date ({packages}){stale}"
    return (f"{shown}: {_count(len(report.changes), 'change')} ({_count(report.security_updates, 'security update')}); "
            f"nothing written{stale}")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def debian_source(settings: Settings) -> Callable[[str], tuple[str, ...]]:
    """Base URLs of the Debian archives, their snapshots and extra mirrors (see `Mirrors.urls`),
    found when a download needs one."""
    from mk.rules.deb.mirrors import mirrors_from

    return mirrors_from(settings).urls
