"""`--address`: a sweep attaches to an existing Ray cluster (started here on 127.0.0.1 in its
own session, and stopped by signalling that session only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.orchestrator.test_sweep_e2e import tiny_sweep
from tests.orchestrator.test_tracking_server import _free_port


def _session_alive(sid: int) -> bool:
    out = subprocess.run(["ps", "-eo", "sid="], capture_output=True, text=True).stdout
    return any(int(line) == sid for line in out.split())


@pytest.fixture
def ray_cluster(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={port}",
         "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats"],
        stdout=open(tmp_path / "ray.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True,
        # Token auth, as Ray clusters use by default; the driver below shares the token.
        env={**os.environ, "RAY_AUTH_MODE": "token"})
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.time() + 90
        while "Ray runtime started" not in (tmp_path / "ray.log").read_text():
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError((tmp_path / "ray.log").read_text()[-2000:])
            time.sleep(1)
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the cluster's own session, nothing else
        deadline = time.time() + 20
        while _session_alive(proc.pid) and time.time() < deadline:
            time.sleep(1)
        if _session_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_sweep_runs_on_an_existing_cluster(ray_cluster: str, tmp_path: Path) -> None:
    spec = tiny_sweep(tmp_path, tmp_path / "cache")
    # Its own process, as users run it (Ray keeps per-process auth state).
    ukd = Path(sys.executable).with_name("ukd")
    result = subprocess.run(
        [str(ukd), "sweep", str(spec), "--address", ray_cluster], capture_output=True,
        text=True, timeout=480, env={**os.environ, "RAY_AUTH_MODE": "token"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "2 finished now" in output
    manifest = json.loads((tmp_path / "out" / "sweep.json").read_text())
    parent = MlflowClient(manifest["tracking_uri"]).get_run(manifest["parent_run_id"])
    # Ray reports the cluster by the node's address; the port is the cluster's own, so the
    # sweep did not start a local Ray of its own.
    assert parent.data.tags["ukd.ray_address"].endswith(":" + ray_cluster.split(":")[1])
