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
rm -rf build dist .wheel-venv  # a stale build/ would put removed modules in the wheel
.venv/bin/python -m build -q --wheel --outdir dist . >/dev/null
python3 -m venv .wheel-venv
.wheel-venv/bin/pip install -q dist/*.whl
(cd /tmp && "$OLDPWD/.wheel-venv/bin/python" -m audiogw.shared.selfcheck)
.wheel-venv/bin/audiogw --help >/dev/null
.wheel-venv/bin/python -m audiogw.worker --help >/dev/null
# README "Run it" from the wheel alone, in a folder of its own: init, start, ctl, stop.
SMOKE=$(mktemp -d)
(cd "$SMOKE" && "$OLDPWD/.wheel-venv/bin/audiogw" init gw >/dev/null)
"$PWD/.wheel-venv/bin/audiogw-supervisor" start --config "$SMOKE/gw/audiogw.toml" >"$SMOKE/supervisor.log" 2>&1 &
SMOKE_PID=$!
for _ in $(seq 100); do
  (cd "$SMOKE" && "$OLDPWD/.wheel-venv/bin/audiogw" ctl --config gw/audiogw.toml list >/dev/null 2>&1) && break
  sleep 0.1
done
(cd "$SMOKE" && "$OLDPWD/.wheel-venv/bin/audiogw" ctl --config gw/audiogw.toml list) \
  || { cat "$SMOKE/supervisor.log" >&2; kill "$SMOKE_PID"; exit 1; }
(cd "$SMOKE" && "$OLDPWD/.wheel-venv/bin/audiogw" ctl --config gw/audiogw.toml stop --drain 0 >/dev/null)
wait "$SMOKE_PID"
rm -rf .wheel-venv "$SMOKE"
# A real Asterisk for the tests through it (tests/test_asterisk_*.py): $AUDIOGW_ASTERISK if
# set, else built once (cached) from the shared folder beside this clone. Where there is one,
# or in CI, those tests must run: AUDIOGW_REQUIRE_ASTERISK=1 turns their skip into a failure.
ASTERISK_BUILD="$(pwd)/../shared/asterisk/build.sh"
if [ -n "${AUDIOGW_ASTERISK:-}" ]; then
  export AUDIOGW_REQUIRE_ASTERISK=1
elif [ -f "$ASTERISK_BUILD" ]; then
  echo "== Asterisk: bash $ASTERISK_BUILD" >&2
  AUDIOGW_ASTERISK=$(bash "$ASTERISK_BUILD" | tail -1)
  export AUDIOGW_ASTERISK AUDIOGW_REQUIRE_ASTERISK=1
  echo "== Asterisk: $AUDIOGW_ASTERISK" >&2
elif [ "${CI:-}" = "true" ]; then
  echo "== Asterisk: $ASTERISK_BUILD is missing in CI: the Asterisk tests will fail" >&2
  export AUDIOGW_REQUIRE_ASTERISK=1
else
  echo "== Asterisk: no $ASTERISK_BUILD and no AUDIOGW_ASTERISK: the tests through a real Asterisk skip" >&2
fi
.venv/bin/python -m pytest -q -p no:cacheprovider tests
