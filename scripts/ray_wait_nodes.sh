#!/usr/bin/env bash
# Wait until the Ray cluster at ADDRESS has COUNT alive nodes (docs/CLUSTER.md): start
# `ukd sweep --address` once every node has joined, so that its shared-storage check covers
# them all. Usage: scripts/ray_wait_nodes.sh ADDRESS COUNT [TIMEOUT_S (default 300)]
# Python: $UKD_PYTHON, else this checkout's .venv, else python3 (it needs ray).
# Token authentication: RAY_AUTH_MODE / RAY_AUTH_TOKEN from the environment, as for ukd.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 ADDRESS COUNT [TIMEOUT_S]" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
python=${UKD_PYTHON:-$here/.venv/bin/python}
[ -x "$python" ] || python=python3
exec "$python" - "$1" "$2" "${3:-300}" <<'PY'
import sys
import time

import ray

address, count, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while True:  # the head may still be starting
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        break
    except ConnectionError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"no Ray cluster answers at {address} after {timeout:.0f}s: {exc}")
        time.sleep(2)
while (alive := sum(1 for n in ray.nodes() if n["Alive"])) < count:
    if time.monotonic() > deadline:
        sys.exit(f"{alive} of {count} Ray nodes alive at {address} after {timeout:.0f}s")
    time.sleep(2)
print(f"{alive} Ray nodes alive at {address}")
PY
