#!/usr/bin/env bash
# One command on a fresh machine: a virtual environment, the CPU build of torch, marginface, then the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[all]"
marginface demo "$@"
