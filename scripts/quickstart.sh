#!/usr/bin/env bash
# Fresh machine -> finished offline sweep + report: venv (if none), install, sweep, report.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
.venv/bin/ukd sweep experiments/quickstart.yaml "$@"
.venv/bin/ukd report runs/quickstart
# The linear probe's table beside kNN's (report-linear/, also the parent run's artifacts).
.venv/bin/ukd report runs/quickstart --metric linear/top1 --out runs/quickstart/report-linear
