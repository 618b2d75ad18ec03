"""The architecture is enforced: import-linter's contracts (cache <- engine <- rules <- cli, and no
import loops inside a layer) hold, and they do fail when the engine imports a rule family."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mk

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", **({"PYTHONPATH": str(pythonpath)} if pythonpath else {})}
    return subprocess.run([LINT_IMPORTS, str(ROOT / "pyproject.toml"), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_import_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_the_engine_importing_a_rule_family_breaks_the_layers(tmp_path: Path) -> None:
    shutil.copytree(Path(mk.__file__).parent, tmp_path / "mk", ignore=shutil.ignore_patterns("__pycache__"))
    build = tmp_path / "mk" / "engine" / "build.py"
    build.write_text(build.read_text(encoding="utf-8") + "\nimport mk.rules.layer  # noqa: E402\n", encoding="utf-8")
    result = lint_imports(tmp_path, pythonpath=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Contracts: 1 kept, 1 broken." in result.stdout
    assert "mk.engine is not allowed to import mk.rules:\n\n- mk.engine.build -> mk.rules.layer (l." in result.stdout
