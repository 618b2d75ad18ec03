"""BUILD.md is generated from the rule schemas; this fails when someone forgets to regenerate."""

from pathlib import Path

from mk import docgen
from mk.rules.families import registry

ROOT = Path(__file__).resolve().parent.parent


def test_build_md_is_up_to_date() -> None:
    on_disk = (ROOT / "BUILD.md").read_text(encoding="utf-8")
    assert on_disk == docgen.render(), "BUILD.md is stale: run `python -m mk.docgen > BUILD.md`"


def test_every_attribute_is_documented() -> None:
    for rule in registry().rules.values():
        assert rule.doc.strip(), rule.name
        for attr in rule.all_attrs():
            assert attr.doc.strip(), f"{rule.name}.{attr.name} has no doc"
            assert f"| `{attr.name}` |" in docgen.render_rule(rule)


def test_every_setting_is_documented() -> None:
    text = (ROOT / "BUILD.md").read_text(encoding="utf-8")
    for setting in registry().all_settings():
        shown = f"`{setting.key}`" if setting.key else f"`{setting.env.split(',')[0]}`" if setting.env else None
        assert shown is not None and shown in text, setting


def test_readme_explains_excludes_services_and_how_to_stop_a_vm() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for phrase in ("MAINTAINER_SCRIPT_DEPENDENCIES", "an excluded package is never installed", "`kmod`",
                   "restarts it whenever it exits", "goes to the console", "Stop a VM"):
        assert phrase in readme, phrase
