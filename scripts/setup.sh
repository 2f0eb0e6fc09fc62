#!/usr/bin/env bash
# Set up (or reuse) the project's virtual environment in .venv and install ts_neuralode into it.
#   bash scripts/setup.sh          runtime only
#   bash scripts/setup.sh dev      + pytest, torchdiffeq, torchode (tests and benchmarks)
# torch: an existing torch in the venv is kept. Otherwise TORCH_SPEC is installed (default torch==2.13.0;
# on a GPU machine choose your build, e.g. TORCH_SPEC="torch==2.13.0" with --index-url for your CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if ! python -c "import torch" >/dev/null 2>&1; then
    echo "setup: installing ${TORCH_SPEC:-torch==2.13.0}" >&2
    # shellcheck disable=SC2086
    python -m pip install -q ${TORCH_PIP_ARGS:-} "${TORCH_SPEC:-torch==2.13.0}"
fi
extras=""
[ "${1:-}" = "dev" ] && extras="[dev]"
python -m pip install -q -e ".$extras" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
