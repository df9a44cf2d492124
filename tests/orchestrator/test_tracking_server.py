"""`--tracking-uri`: a sweep logs to a real `mlflow server` on 127.0.0.1, and the report reads
it back by parent run id."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.orchestrator.test_sweep_e2e import tiny_sweep


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("server")
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"),
        start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError((root / "server.log").read_text()[-2000:])
            time.sleep(1)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group only
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_sweep_logs_to_server_and_report_reads_it(mlflow_server: str, tmp_path: Path) -> None:
    spec = tiny_sweep(tmp_path, tmp_path / "cache")
    result = CliRunner().invoke(app, ["sweep", str(spec), "--tracking-uri", mlflow_server])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert not (out / "mlflow.db").exists()  # nothing went to the embedded store
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["tracking_uri"] == mlflow_server
    client = MlflowClient(tracking_uri=mlflow_server)
    children = client.search_runs([manifest["experiment_id"]],
                                  f"tags.`mlflow.parentRunId` = '{manifest['parent_run_id']}' "
                                  "and tags.`ukd.kind` = 'trial'")
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    artifacts = {a.path for a in client.list_artifacts(children[0].info.run_id)}
    assert {"config.yaml", "student.pt"} <= artifacts

    report_dir = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", manifest["parent_run_id"], "--tracking-uri",
                                      mlflow_server, "--out", str(report_dir)])
    assert result.exit_code == 0, result.output
    assert "resnet20" in (report_dir / "comparison.md").read_text()
