"""What the Debian family adds to mk besides its rule: `mk lock`, and the "debian" download source."""

from __future__ import annotations

import os
from collections.abc import Callable

import click

from mk.engine.session import Session
from mk.engine.workspace import Settings


@click.command()
@click.argument("target")
@click.pass_obj
def lock(registry: object, target: str) -> None:
    """Resolve a deb_packages TARGET against the archives and write its lockfile."""
    from mk.engine.registry import Registry
    from mk.rules.deb.lock import lock as write_lock

    assert isinstance(registry, Registry)
    session = Session(registry)
    report = write_lock(session.workspace, session.target(target, "mk lock"), session.cache.root)
    state = "written" if report.changed else "unchanged"
    click.echo(f"{os.path.relpath(report.path)}: {report.packages} packages ({state})")


def debian_source(settings: Settings) -> Callable[[str], str]:
    """Base URLs of the Debian archives ("main", "security"), found when a download needs one."""
    from mk.rules.deb.mirrors import find_mirrors

    def text(key: str) -> str | None:
        value = settings.get(key)
        return None if value is None else str(value)

    return find_mirrors(text("debian_mirror"), text("debian_security_mirror")).base
