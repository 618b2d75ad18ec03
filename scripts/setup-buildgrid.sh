#!/usr/bin/env bash
# Installs BuildGrid 0.4.4 (the newest release that installs on Python 3.11), the REAPI server the
# remote-execution tests run against, in its own venv: .venv-buildgrid. It pulls in SQLAlchemy,
# boto3 and more, which mk itself does not need, so it stays out of mk's venv. Its scheduler needs
# PostgreSQL (scripts/setup.sh installs Debian's). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [[ -x .venv-buildgrid/bin/bgd ]] && .venv-buildgrid/bin/python -c "import psycopg2" 2>/dev/null; then
    exit 0
fi
if ! "$python" -m venv .venv-buildgrid; then
    echo "setup-buildgrid: cannot make a venv with $python; BuildGrid is not installed" >&2
    exit 1
fi
if ! .venv-buildgrid/bin/python -m pip install -q --disable-pip-version-check "buildgrid==0.4.4" \
        "psycopg2-binary>=2.9"; then
    echo "setup-buildgrid: pip could not install buildgrid==0.4.4 into .venv-buildgrid; the tests that run" \
         "against BuildGrid cannot run" >&2
    exit 1
fi
echo "setup-buildgrid: BuildGrid $(.venv-buildgrid/bin/pip show buildgrid 2>/dev/null | sed -n 's/^Version: //p') in .venv-buildgrid"
