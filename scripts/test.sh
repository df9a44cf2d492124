#!/usr/bin/env bash
# Fresh machine -> test suite: venv (if none), install with the test extra, headless
# Chromium for the HTML report test, then pytest (arguments are passed on, e.g. -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
bash scripts/install_chromium.sh
export UKD_REQUIRE_BROWSER=1
.venv/bin/python -m pytest "$@"
