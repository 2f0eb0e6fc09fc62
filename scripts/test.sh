#!/usr/bin/env bash
# Set up the environment (with the dev extra) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
exec .venv/bin/python -m pytest tests "$@"
