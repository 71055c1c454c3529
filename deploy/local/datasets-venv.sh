#!/usr/bin/env bash
# The Python environment of the training-data test (tests/suite/training.rs): Hugging Face
# `datasets` (PyPI, pinned) in a venv under ~/.cache/likerate, installed once. Prints the venv's
# python on stdout; everything else goes to stderr.
#   deploy/local/datasets-venv.sh            # installs if needed, prints the interpreter
# The test runs deploy/local/check-training-data.py with that interpreter.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/lib.sh"
VERSION=5.2.0
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/likerate/datasets-venv"
if ! "$VENV/bin/python" -c "import datasets, sys; sys.exit(datasets.__version__ != '$VERSION')" 2>/dev/null; then
  say "installing datasets $VERSION into $VENV (once)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "datasets==$VERSION" >&2
fi
echo "$VENV/bin/python"
