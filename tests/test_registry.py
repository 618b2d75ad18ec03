"""Rule families plug into the engine through the registry, which refuses two claims on one name."""

from __future__ import annotations

import pytest

from mk.engine.registry import Family, Registry, RegistryError
from mk.engine.workspace import Setting
from mk.rules.families import registry


def test_the_shipped_families_register_every_rule_once() -> None:
    assert sorted(registry().rules) == ["cpio", "deb_packages", "deb_source", "filegroup", "genrule", "http_archive",
                                        "image", "kernel", "kernel_build", "layer", "oci_image", "oci_index", "package",
                                        "rootfs", "service", "tar", "write_file"]


def test_two_families_may_not_register_one_setting() -> None:
    setting = Setting("mirror", "string", "A mirror.")
    with pytest.raises(RegistryError, match=r"^two rule families register the setting mirror$"):
        Registry((Family("a", settings=(setting,)), Family("b", settings=(setting,))))


def test_a_family_may_not_take_an_engine_setting() -> None:
    with pytest.raises(RegistryError, match=r"^two rule families register the setting cache_dir$"):
        Registry((Family("a", settings=(Setting("cache_dir", "string", "Mine."),)),))


def test_a_family_may_not_take_a_cache_folder_the_cache_or_another_family_writes() -> None:
    from mk.cache.parts import CachePart, Policy

    with pytest.raises(RegistryError, match=r"^two rule families register the cache folder cas$"):
        Registry((Family("a", cache_parts=(CachePart("cas", "Mine.", Policy.KEPT),)),))
    part = CachePart("downloads", "Downloads.", Policy.EVICTABLE)
    with pytest.raises(RegistryError, match=r"^two rule families register the cache folder downloads$"):
        Registry((Family("a", cache_parts=(part,)), Family("b", cache_parts=(part,))))


def test_two_families_may_not_register_one_rule() -> None:
    twice = Registry((Family("a", rules=("mk.rules.layer:RULE",)), Family("b", rules=("mk.rules.layer:RULE",))))
    with pytest.raises(RegistryError, match=r"^two rule families register the rule layer$"):
        _ = twice.rules


def test_a_download_source_is_resolved_by_the_family_that_offers_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from mk.engine.workspace import Settings

    for name in ("MK_DEBIAN_MIRROR", "MK_DEBIAN_SECURITY_MIRROR", "MK_DEBIAN_SNAPSHOT", "MK_DEBIAN_EXTRA_MIRRORS"):
        monkeypatch.delenv(name, raising=False)
    lookup = registry().source_urls(Settings(extra={
        "debian_mirror": "http://mirror.invalid/debian", "debian_snapshot": "http://snapshot.invalid/",
        "debian_extra_mirrors": ["http://extra.invalid/debian", "file:///srv/repo"]}))
    assert lookup("debian:debian") == ("http://mirror.invalid/debian",)
    assert lookup("debian:debian-security") == ("http://mirror.invalid/debian-security",)
    assert lookup("debian:snapshot/debian-security") == ("http://snapshot.invalid/archive/debian-security",)
    assert lookup("debian:extra/debian-security") == ("http://extra.invalid/debian-security", "file:///srv/repo")
    assert registry().source_urls(Settings())("debian:snapshot/debian") == ()
    with pytest.raises(RegistryError, match=r"^no rule family resolves the download source 'npm'$"):
        lookup("npm:main")
