#!/usr/bin/env bash
# Set up .venv and run the main demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -c "import ts_neuralode; print('ts_neuralode', ts_neuralode.__version__, 'installed')"
