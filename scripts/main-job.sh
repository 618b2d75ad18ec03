#!/usr/bin/env bash
# The main job: set up, then build the examples and show what was built.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/mk build //examples
