#!/usr/bin/env bash
# Create .venv (Python 3.11) and install scalelab with its dev extras. Idempotent: reinstalls only
# when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY=$candidate; break
    fi
  done
fi
[ -n "$PY" ] || { echo "scalelab needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.scalelab-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
venv_python="$PWD/.venv/bin/python"
# reinstall when pyproject changed, or when the package or its Hydra plugin is not importable
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] \
   || ! (cd / && "$venv_python" -c 'import scalelab, hydra_plugins.scalelab_sweepers' 2>/dev/null); then
  echo "[setup] installing scalelab and its dependencies into .venv (about a minute)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi
