#!/usr/bin/env bash
# The test suite: unit, lab integration and fault tests. Installs what it needs.
# Usage (as root): scripts/test.sh [pytest args]      (CI runs exactly this)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PYINFRA_PROGRESS=off
# lint first (configured in pyproject.toml [tool.ruff]); a finding fails the run, as a test would
.venv/bin/ruff check --quiet . || { echo "test.sh: ruff check found problems (fix them, or run .venv/bin/ruff check --fix .)" >&2; exit 1; }
set +e
.venv/bin/pytest -p no:cacheprovider "${@:-tests}"
rc=$?
set -e
if (( rc == 5 )); then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit $rc
