"""The thin client finds the build server by the cache the build will use. It works that cache out
without the settings machinery (`mk.client._cache_root`), so it must agree with the session's own
answer (`mk.engine.session.cache_for`) in every case, or a client would start a second server on
another cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from mk.client import _cache_root
from mk.engine.session import cache_for
from mk.engine.workspace import find_workspace

CASES = {
    "MK_CACHE_DIR wins over the setting": ({"MK_CACHE_DIR": "env-cache"}, 'cache_dir = "ws-cache"\n'),
    "the workspace's setting": ({}, 'cache_dir = "ws-cache"\n'),
    "a setting in a nested folder": ({}, 'cache_dir = "build/caches/mk"\n'),
    "the name only in a comment": ({}, "# cache_dir is left to the default\n"),
    "XDG_CACHE_HOME without a setting": ({"XDG_CACHE_HOME": "xdg"}, ""),
    "the home folder without a setting": ({}, ""),
}


@pytest.mark.parametrize("env, mk_toml", CASES.values(), ids=CASES.keys())
def test_the_client_and_the_session_find_the_same_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], mk_toml: str
) -> None:
    for name in ("MK_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "default-home"))
    for name, folder in env.items():
        monkeypatch.setenv(name, str(tmp_path / folder))
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "mk.toml").write_text(mk_toml)

    from_client = Path(_cache_root(str(workspace), str(workspace / "mk.toml")))
    from_session = cache_for(find_workspace(workspace)).root

    assert from_client.resolve() == from_session
    assert from_session.is_relative_to(tmp_path)  # the case tested what it names, not a default
