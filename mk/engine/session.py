"""A session: one workspace, its settings, its cache and the registry of rule families.

The command line, `mk lock`, `mk query`, `mk explain`, `--check` and `mk image` all go through
it to load, analyse, expand patterns and build, so that each does those things the same way.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from mk.cache.local import LocalCache, default_cache_dir
from mk.engine.errors import MkError
from mk.engine.labels import Label, Pattern
from mk.engine.registry import Registry
from mk.engine.workspace import Workspace, find_workspace

if TYPE_CHECKING:
    from mk.engine.analysis import Analyzer
    from mk.engine.build import BuildOptions, BuildResult
    from mk.engine.loader import Loader
    from mk.engine.targets import Target

T = TypeVar("T")


class Session:
    def __init__(self, registry: Registry, start: Path | None = None) -> None:
        self.registry = registry
        start = (start or Path.cwd()).resolve()
        self.workspace: Workspace = find_workspace(start, registry.all_settings())
        # The package of the folder mk runs in: patterns written there are relative to it.
        here = os.path.relpath(start, self.workspace.root)
        self.current_package = "" if here == "." else here

    def absolute(self, pattern: str) -> str:
        """`pattern` as the command line gave it, made absolute (see `Pattern.absolute`)."""
        return Pattern.absolute(pattern, self.current_package)

    @functools.cached_property
    def cache(self) -> LocalCache:
        return cache_for(self.workspace)

    def loader(self) -> Loader:
        from mk.engine.loader import Loader  # Starlark only when BUILD files are read

        # `mk build` bounds memory too, in a child process (see `isolated`); here, time only.
        return Loader(self.workspace, self.registry.rules, self.workspace.settings.load_seconds)

    def analyzer(self) -> tuple[Loader, Analyzer]:
        from mk.engine.analysis import Analyzer

        loader = self.loader()
        return loader, Analyzer(loader, self.workspace.settings.source_date_epoch)

    def one_target(self, loader: Loader, pattern: str, command: str) -> Label:
        """The single label `pattern` names; an error naming `command` if it names several."""
        return exactly_one(loader.expand(self.absolute(pattern)), pattern, command)

    def target(self, pattern: str, command: str) -> Target:
        loader = self.loader()
        found = loader.target(self.one_target(loader, pattern, command))
        assert found is not None
        return found

    def build(self, patterns: tuple[str, ...], options: BuildOptions) -> BuildResult:
        from mk.engine.build import build

        return build(self.workspace, self.cache, [self.absolute(p) for p in patterns], options, self.registry)


def exactly_one(found: Sequence[T], pattern: str, command: str) -> T:
    """The one thing (label, target) `pattern` named; an error naming `command` for more or fewer."""
    if len(found) != 1:
        raise MkError(f"{command} needs exactly one target; '{pattern}' matches {len(found)}")
    return found[0]


def cache_for(workspace: Workspace | None) -> LocalCache:
    """MK_CACHE_DIR, else the workspace's `cache_dir` setting, else the user's cache folder."""
    if "MK_CACHE_DIR" not in os.environ and workspace and workspace.settings.cache_dir:
        return LocalCache(workspace.root / workspace.settings.cache_dir)
    return LocalCache(default_cache_dir())
