"""The resolver, on hand-made indices: every kind of relation, and every way it can fail."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mk.engine.errors import MkError
from mk.rules.deb.index import Candidate
from mk.rules.deb.mirrors import SECURITY, apt_sources, find_mirrors
from mk.rules.deb.resolve import Resolver


def pkg(name: str, version: str = "1.0", depends: str = "", provides: str = "", pre: str = "",
        arch: str = "amd64", suite: str = "bookworm") -> Candidate:
    return Candidate(name, version, arch, "debian", suite, f"pool/{name}_{version}.deb", "0" * 64, 1, name,
                     depends, pre, provides, "")


def resolve(index: list[Candidate], wanted: list[str], excludes: tuple[str, ...] = ()) -> dict[str, str]:
    return {c.name: c.version for c in Resolver(index, "amd64", excludes).resolve(wanted)}


def test_depends_and_pre_depends_are_followed() -> None:
    index = [pkg("a", depends="b", pre="c"), pkg("b", depends="d"), pkg("c"), pkg("d"), pkg("unrelated")]
    assert resolve(index, ["a"]) == {"a": "1.0", "b": "1.0", "c": "1.0", "d": "1.0"}


def test_alternatives_take_the_first_available_or_one_already_chosen() -> None:
    index = [pkg("a", depends="missing | c | b"), pkg("b"), pkg("c")]
    assert resolve(index, ["a"]) == {"a": "1.0", "c": "1.0"}
    index = [pkg("a", depends="c | b"), pkg("b"), pkg("c"), pkg("top", depends="b, a")]
    assert set(resolve(index, ["top"])) == {"top", "a", "b"}  # b was needed anyway, so c is not pulled


def test_versions_use_debian_comparison_and_the_newest_suite_wins() -> None:
    index = [pkg("a", depends="b (>= 1:1.0~rc1)"), pkg("b", "1:0.9"), pkg("b", "1:1.0~rc1", suite="bookworm-security"),
             pkg("b", "2.0")]
    assert resolve(index, ["a"])["b"] == "1:1.0~rc1"  # 2.0 < 1:0.9 because of the epoch
    index = [pkg("a"), pkg("a", "1.0+deb12u1", suite="bookworm-security")]
    assert resolve(index, ["a"]) == {"a": "1.0+deb12u1"}
    assert resolve(index, ["a=1.0"]) == {"a": "1.0"}


def test_virtual_packages_through_provides() -> None:
    index = [pkg("a", depends="mail-transport-agent"), pkg("postfix", provides="mail-transport-agent"),
             pkg("exim4", provides="mail-transport-agent")]
    assert set(resolve(index, ["a"])) == {"a", "exim4"}  # providers are tried in name order
    index = [pkg("a", depends="libfoo (>= 2)"), pkg("foo-compat", provides="libfoo (= 2.1)")]
    assert set(resolve(index, ["a"])) == {"a", "foo-compat"}


def test_arch_qualifiers_and_arch_all() -> None:
    index = [pkg("a", depends="perl:any, data"), pkg("perl"), pkg("data", arch="all"), pkg("arm", arch="arm64")]
    assert set(resolve(index, ["a"])) == {"a", "perl", "data"}
    with pytest.raises(MkError, match="package 'arm' is not in the indices"):
        resolve(index, ["arm"])


def test_excludes_cut_the_closure() -> None:
    index = [pkg("a", depends="perl, b"), pkg("perl", depends="perl-base"), pkg("perl-base"), pkg("b")]
    assert set(resolve(index, ["a"], excludes=("perl",))) == {"a", "b"}
    with pytest.raises(MkError, match="package 'perl' is both requested and excluded"):
        resolve(index, ["perl"], excludes=("perl",))


def test_cycles_between_packages_terminate() -> None:
    index = [pkg("a", depends="b"), pkg("b", depends="c"), pkg("c", depends="a")]
    assert set(resolve(index, ["a"])) == {"a", "b", "c"}


def test_unsatisfiable_names_the_package_and_the_missing_dependency() -> None:
    index = [pkg("a", "2.0", depends="b (>= 3) | c")]
    with pytest.raises(MkError) as error:
        resolve(index, ["a"])
    assert str(error.value) == (
        "error: cannot install a 2.0: it depends on 'b (>= 3) | c', which no package in the suites provides "
        "for architecture amd64 (add it to 'excludes' if the image does not need it)"
    )
    with pytest.raises(MkError,
                       match=r"package 'helo' is not in the indices for architecture amd64 \(did you mean 'hello'\?\)"):
        resolve([pkg("hello")], ["helo"])
    with pytest.raises(MkError) as error:
        resolve([pkg("hello"), pkg("hello", "1.0+deb12u1", suite="bookworm-security"),
                 pkg("hello", "1.0+deb12u1", suite="bookworm-updates")], ["hello=9"])
    assert error.value.message == ("version 9 of 'hello' is not in the indices; "
                                   "available: 1.0+deb12u1 (bookworm-security, bookworm-updates), 1.0 (bookworm)")


def test_conflicting_versions_are_reported() -> None:
    index = [pkg("a", depends="b (= 1.0)"), pkg("c", depends="b (>= 2.0)"), pkg("b", "1.0"), pkg("b", "2.0"),
             pkg("top", depends="a, c")]
    with pytest.raises(MkError, match=re.escape("a needs b 1.0, but b 2.0 was already chosen; pin one version")):
        resolve(index, ["top"])


def test_mirrors_come_from_env_then_settings_then_apt_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n")
    assert apt_sources(apt) == {"debian": "http://mirror.invalid/debian",
                                "debian-security": "http://mirror.invalid/debian-security"}
    (apt / "sources.list").write_text("deb [arch=amd64] http://other.invalid/debian bookworm main\n")
    monkeypatch.delenv("MK_DEBIAN_MIRROR", raising=False)
    monkeypatch.delenv("MK_DEBIAN_SECURITY_MIRROR", raising=False)
    assert find_mirrors(None, None, apt).base(SECURITY) == "http://mirror.invalid/debian-security"
    assert find_mirrors("file:///srv/repo", None, apt).base(SECURITY) == "file:///srv/repo"
    assert find_mirrors("http://m.invalid/debian/", None, apt).base(SECURITY) == "http://m.invalid/debian-security"
    monkeypatch.setenv("MK_DEBIAN_MIRROR", "http://env.invalid/debian")
    assert find_mirrors("file:///srv/repo", None, apt).base("debian") == "http://env.invalid/debian"
    with pytest.raises(MkError, match="no mirror for the 'debian' archive"):
        monkeypatch.delenv("MK_DEBIAN_MIRROR")
        find_mirrors(None, None, tmp_path / "nothing").base("debian")
