"""`--tracking-uri`: a sweep logs to a real `mlflow server` on 127.0.0.1 that proxies
artifacts (--artifacts-destination): every artifact -- the sweep's spec and trial list, the
trials' configs and weights, a failed trial's failure report, the report folder -- goes
through the server, and no path of the driver's disk is recorded; the report reads the sweep
back from the server by its parent run id. A server that does not serve artifacts is refused
before anything is written. The servers and the sweep run in a private network namespace
(fixed ports, nothing to collide with: tests/orchestrator/cluster.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.orchestrator.cluster import MlflowServer, NetNamespace, skip_without_namespaces
from tests.orchestrator.sweeps import (
    UKD,
    Finished,
    Session,
    shared_cache,
    start_ukd,
    tiny_spec,
    tree,
    write_spec,
)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    skip_without_namespaces()
    root = tmp_path_factory.mktemp("server")
    ns = NetNamespace(root / "logs")
    proxy = MlflowServer(ns, root / "proxy")
    plain = MlflowServer(ns, root / "plain", port=5001, serve_artifacts=False)
    try:
        proxy.start()
        plain.start()
        proxy.wait()
        plain.wait()
        yield {"ns": ns, "proxy": proxy, "plain": plain}
    finally:
        ns.close()


@pytest.fixture(scope="module")
def server_sweep(servers: dict[str, Any],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two trials through the proxying server (one finishes, one fails: lr 1e6 makes its
    loss non-finite), then `ukd report` by parent run id."""
    tmp = tmp_path_factory.mktemp("server-sweep")
    ns: NetNamespace = servers["ns"]
    server: MlflowServer = servers["proxy"]
    spec = tiny_spec(tmp, shared_cache(tmp_path_factory), name="server",
                     grid={"lr": [0.05, 1.0e6]})
    path = write_spec(tmp / "server.yaml", spec)
    log = tmp / "sweep.log"
    proc = start_ukd(["sweep", str(path), "--tracking-uri", server.uri], log, cwd=tmp,
                     prefix=ns.prefix())
    try:
        proc.wait(timeout=480)
        manifest = json.loads((tmp / "out" / "sweep.json").read_text())
        report = ns.run([UKD, "report", manifest["parent_run_id"], "--tracking-uri",
                         server.uri, "--out", str(tmp / "report")], timeout=300)
        yield {"tmp": tmp, "out": tmp / "out", "manifest": manifest, "server": server,
               "result": Finished(proc.returncode, log.read_text()), "report": report}
    finally:
        if proc.poll() is None:
            proc.kill()  # the ukd process this test started
            proc.wait(timeout=30)
        Session(proc.pid).kill_all()


def _stored(server: MlflowServer, experiment_id: str, run_id: str) -> set[str]:
    """The artifacts of a run as they lie in the server's --artifacts-destination."""
    root = server.artifacts / experiment_id / run_id / "artifacts"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_sweep_logs_to_server_and_report_reads_it(server_sweep: dict[str, Any]) -> None:
    result: Finished = server_sweep["result"]
    assert result.returncode == 1, result.output  # the lr 1e6 trial failed
    assert "2 trials: 1 finished now, 0 already finished, 1 failed" in result.output
    out, manifest = server_sweep["out"], server_sweep["manifest"]
    server: MlflowServer = server_sweep["server"]
    assert not (out / "mlflow.db").exists()  # nothing went to the embedded store
    assert manifest["tracking_uri"] == server.uri
    client = MlflowClient(tracking_uri=server.backend)  # the server's store, read directly
    children = client.search_runs([manifest["experiment_id"]],
                                  f"tags.`mlflow.parentRunId` = '{manifest['parent_run_id']}' "
                                  "and tags.`ukd.kind` = 'trial'")
    assert sorted(r.info.status for r in children) == ["FAILED", "FINISHED"]
    report = server_sweep["report"]
    assert report.returncode == 0, report.stdout + report.stderr
    assert "resnet20" in (server_sweep["tmp"] / "report" / "comparison.md").read_text()


def test_every_artifact_is_on_the_server_none_on_the_drivers_disk(
        server_sweep: dict[str, Any]) -> None:
    manifest, server = server_sweep["manifest"], server_sweep["server"]
    exp = manifest["experiment_id"]
    client = MlflowClient(tracking_uri=server.backend)
    parent = client.get_run(manifest["parent_run_id"])
    runs = client.search_runs([exp], "")  # the sweep, its trials (and a teacher trained now)
    assert {r.data.tags.get("ukd.kind") for r in runs} >= {"sweep", "trial"}
    for run in runs:  # artifact locations are the server's proxy, never a local path
        assert run.info.artifact_uri == f"mlflow-artifacts:/{exp}/{run.info.run_id}/artifacts"
    assert {"spec.yaml", "trials.yaml", "report/comparison.md", "report/index.html"} <= \
        _stored(server, exp, parent.info.run_id)
    for run in runs:
        if run.data.tags.get("ukd.kind") != "trial":
            continue
        stored = _stored(server, exp, run.info.run_id)
        if run.info.status == "FINISHED":
            assert {"config.yaml", "student.pt"} <= stored
        else:
            assert "failure.json" in stored and "non-finite loss" in (
                server.artifacts / exp / run.info.run_id / "artifacts" / "failure.json"
            ).read_text()
    tmp = server_sweep["tmp"]
    assert not (server_sweep["out"] / "artifacts").exists()
    assert not list(tmp.rglob("mlruns"))  # MLflow's local default, relative to the cwd


def test_a_server_that_does_not_serve_artifacts_is_refused(
        servers: dict[str, Any], tmp_path: Path) -> None:
    plain: MlflowServer = servers["plain"]
    spec = write_spec(tmp_path / "plain.yaml", tiny_spec(tmp_path, tmp_path / "cache",
                                                         name="plain"))
    before = tree(tmp_path)
    result = servers["ns"].run([UKD, "sweep", str(spec), "--tracking-uri", plain.uri],
                               timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and result.stdout == "", result.stdout + result.stderr
    assert lines[0].startswith(f"error: --tracking-uri {plain.uri}: the MLflow server does "
                               "not serve artifacts (--no-serve-artifacts)"), lines[0]
    assert "allowed: a server started with --artifacts-destination" in lines[0]
    assert tree(tmp_path) == before
    assert MlflowClient(tracking_uri=plain.backend).get_experiment_by_name("ukd/plain") is None
