#!/usr/bin/env bash
# The whole test suite: set up, lint, type-check, check the import layers, then every test (including the
# marked ones).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check mk tests bench
.venv/bin/mypy --strict mk tests bench
.venv/bin/lint-imports --no-cache
status=0
.venv/bin/pytest -q -p no:cacheprovider "$@" || status=$?
if [[ $status == 5 ]]; then
    echo "test.sh: pytest collected no tests; that is a failure, not a pass" >&2
fi
exit $status
