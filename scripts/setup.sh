#!/usr/bin/env bash
# Creates .venv and installs autodim with its test extras.
# A torch already importable by python3 (e.g. a CUDA build) is kept: the venv sees the
# system site-packages. With no torch anywhere, the CPU build 2.13.0 is installed first,
# because an unbounded `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv --system-site-packages .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.autodim-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && python -c "import autodim, torch" 2>/dev/null; then
  exit 0
fi
python -m pip install --quiet --upgrade pip 2>/dev/null || true
if ! python -c "import torch" 2>/dev/null; then
  echo "setup: no torch found; installing torch==2.13.0 (CPU build)" >&2
  python -m pip install --quiet "torch==2.13.0"
fi
python -m pip install --quiet -e ".[dev,postgres,fuxictr,static]"
touch "$stamp"
