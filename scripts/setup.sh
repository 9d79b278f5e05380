#!/usr/bin/env bash
# Create .venv and install scalelab into it (editable).
#   bash scripts/setup.sh          the package and its dependencies: what scripts/quickstart.sh needs
#   bash scripts/setup.sh dev      also the dev extra (pytest, ruff, transformers, torch): scripts/test.sh
#   bash scripts/setup.sh cuda     any extras of pyproject.toml, comma-separated (dev,cuda)
# Any Python 3.11 to 3.13 does (3.11 preferred; PYTHON=/path/to/python picks one). Idempotent: the
# stamp .venv/.scalelab-installed records pyproject.toml's hash and the extras installed, and pip
# runs again only when pyproject.toml changed or an extra is asked for that is not installed yet.
set -euo pipefail
cd "$(dirname "$0")/.."

in_range() {  # a working interpreter of Python 3.11-3.13 (a pyenv shim of an unselected version fails)
  "$1" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null
}

find_python() {
  local root candidate
  root=${PYENV_ROOT:-$HOME/.pyenv}
  for candidate in python3.11 python3.12 python3.13 python3 \
      "$root"/versions/3.11.*/bin/python3 "$root"/versions/3.12.*/bin/python3 "$root"/versions/3.13.*/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 && in_range "$candidate"; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

requested=$(echo "${1:-}" | tr ',' '\n' | sed '/^$/d' | sort -u | paste -sd, -)
known=$(awk '/^\[project.optional-dependencies\]/ {s = 1; next} /^\[/ {s = 0} s && /^[A-Za-z0-9_-]+ = / {print $1}' pyproject.toml)
for extra in ${requested//,/ }; do
  grep -qx -- "$extra" <<<"$known" || { echo "usage: bash scripts/setup.sh [EXTRA[,EXTRA...]]: no extra '$extra'" \
    "(pyproject.toml has: $(echo $known))" >&2; exit 2; }
done
stamp=.venv/.scalelab-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
{ read -r have have_extras < "$stamp"; } 2>/dev/null || { have=; have_extras=; }

if ! { [ -x .venv/bin/python ] && in_range .venv/bin/python; }; then
  PY=${PYTHON:-$(find_python)} || { echo "scalelab needs Python 3.11, 3.12 or 3.13 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
  in_range "$PY" || { echo "$PY is not Python 3.11-3.13" >&2; exit 1; }
  echo "[setup] creating .venv with $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
  "$PY" -m venv --clear .venv
  have=; have_extras=
fi

# what the venv should hold: what it has (a dev venv stays dev) and what is asked for
extras=$(printf '%s\n' "${have_extras//,/$'\n'}" "${requested//,/$'\n'}" | sed '/^$/d;/^-$/d' | sort -u | paste -sd, -)
venv_python="$PWD/.venv/bin/python"
# install when pyproject changed, an extra is missing, or the package or its Hydra plugin is not importable
if [ "$have" != "$want" ] || [ "${have_extras:--}" != "${extras:--}" ] \
   || ! (cd / && "$venv_python" -c 'import scalelab, hydra_plugins.scalelab_sweepers' 2>/dev/null); then
  echo "[setup] installing scalelab${extras:+[$extras]} and its dependencies into .venv (a minute or two)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
  echo "$want ${extras:--}" > "$stamp"
fi
