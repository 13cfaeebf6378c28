#!/usr/bin/env bash
# A cached venv with only the dependencies of the core plus one extra (no edgeship itself: run the
# code from the checkout with PYTHONPATH). Rebuilt only when those requirements change.
#   bash scripts/edge-venv.sh .venv-legacy edge-legacy    # tflite-runtime 2.14 + numpy<2 (make test)
#   PYTHONPATH=$PWD .venv-legacy/bin/python -m edgeship agent --help
set -euo pipefail
VENV=${1:?usage: edge-venv.sh VENV EXTRA}
EXTRA=${2:?usage: edge-venv.sh VENV EXTRA}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
cd "$(dirname "$0")/.."
reqs=$("$PYTHON" - "$EXTRA" <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"][sys.argv[1]]))
PY
)
want=$(printf '%s\n%s\n' "$("$PYTHON" -V)" "$reqs" | sha256sum | cut -d' ' -f1)
if [ -f "$VENV/.requirements.sha256" ] && [ "$(cat "$VENV/.requirements.sha256")" = "$want" ]; then
  exit 0
fi
echo "[edge-venv] building $VENV ($EXTRA)" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
mapfile -t args <<<"$reqs"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${args[@]}" >&2
"$VENV/bin/python" -m pip check >&2
echo "$want" > "$VENV/.requirements.sha256"
