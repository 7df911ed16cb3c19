#!/usr/bin/env bash
# Install audiogw with its test dependencies in .venv, check the built wheel in a
# fresh venv, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
# The wheel must carry every subpackage under the audiogw namespace (no top-level
# `supervisor`, `worker` or `shared`): build it, install it alone, import everything.
rm -rf dist .wheel-venv
.venv/bin/python -m build -q --wheel --outdir dist . >/dev/null
python3 -m venv .wheel-venv
.wheel-venv/bin/pip install -q dist/*.whl
(cd /tmp && "$OLDPWD/.wheel-venv/bin/python" -m audiogw.shared.selfcheck)
.wheel-venv/bin/audiogw --help >/dev/null
.wheel-venv/bin/python -m audiogw.worker --help >/dev/null
rm -rf .wheel-venv
.venv/bin/python -m pytest -q -p no:cacheprovider tests
