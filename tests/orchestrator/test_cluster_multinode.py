"""A sweep on a Ray cluster of two nodes (the teacher stage and the trials ask for a custom
resource only the worker has, so they run there; separate raylets, token authentication),
logging to an
MLflow server that proxies artifacts, all on 127.0.0.1 in a private network namespace
(tests/orchestrator/cluster.py). The driver is killed (SIGKILL) once one trial has finished
and the other is held after an epoch checkpoint; the killed sweep's processes on the cluster
exit and its resources are released; `ukd sweep --resume` finishes it through the same
cluster; every artifact is on the server, none on the driver's disk (`ukd report` through the
server: tests/orchestrator/test_tracking_server.py)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient

from common import faults
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from tests.orchestrator.cluster import (
    MlflowServer,
    NetNamespace,
    RayCluster,
    skip_without_namespaces,
)
from tests.orchestrator.sweeps import (
    Session,
    Store,
    shared_cache,
    start_ukd,
    tiny_spec,
    wait_exit,
    wait_for,
    wait_gone,
    write_spec,
)

LONG = 5  # epochs of the trial that is mid-training when the driver is killed
HELD = 2  # the epoch after whose checkpoint it is held and killed


@pytest.fixture(scope="module")
def cluster_sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    skip_without_namespaces()
    tmp = tmp_path_factory.mktemp("multinode")
    ns = NetNamespace(tmp / "logs")
    cluster = RayCluster(ns)
    server = MlflowServer(ns, tmp / "server")
    procs = []
    try:
        server.start()  # starts while the nodes do
        cluster.start_head(num_cpus=1)
        worker = cluster.add_worker(2, {"ukd_worker": 2})
        nodes = cluster.wait_nodes(2, 60)
        server.wait()

        # One trial at a time, in grid order: the long one starts after the short one
        # finished, so "one finished, one mid-training" comes without a race between them.
        spec = tiny_spec(tmp, shared_cache(tmp_path_factory), name="multinode",
                         grid={"epochs": [1, LONG]},
                         resources={"max_concurrent": 1, "custom": {"ukd_worker": 1}})
        path = write_spec(tmp / "multinode.yaml", spec)
        trials = expand(load_spec(path))
        short = next(t for t in trials if t.train.epochs == 1)
        long = next(t for t in trials if t.train.epochs == LONG)
        short_dir, long_dir = Path(short.runtime.trial_dir), Path(long.runtime.trial_dir)

        args = ["sweep", str(path), "--address", cluster.address, "--tracking-uri", server.uri]
        idle = worker.identities()  # the worker node's own processes, before any sweep
        log1 = tmp / "killed.log"
        # The long trial is held right after its epoch-2 checkpoint (common/faults.py; the
        # driver forwards the setting to the cluster's nodes): the short one has finished.
        marker = tmp / "fault.marker"
        proc = start_ukd(args, log1, prefix=ns.prefix(),
                         env={**cluster.env, faults.FAULT_ENV: f"{faults.EPOCH_SAVED}@{HELD}",
                              faults.MARKER_ENV: str(marker)})
        procs.append(proc)
        driver = Session(proc.pid)
        wait_for(marker.is_file, 480, "the long trial held after an epoch checkpoint",
                 proc, log1)
        assert (short_dir / "student.pt").is_file() and not (long_dir / "student.pt").exists()
        started_by_sweep = worker.identities() - idle  # its trials' workers, on the worker
        os.kill(proc.pid, signal.SIGKILL)  # the ukd process this test started, nothing else
        proc.wait(timeout=30)
        killed_at_ms = int(time.time() * 1000)
        driver_left = driver.wait_empty(120)
        sweep_left = wait_gone(started_by_sweep, 120)
        held = cluster.wait_idle(120)
        # Nothing of the killed sweep writes any more: the checkpoint's epoch (where the
        # trial was held) is where the resume must start.
        checkpoint_epoch = int(torch.load(long_dir / "checkpoint.pt", weights_only=False)["epoch"])
        client = MlflowClient(tracking_uri=server.backend)  # the server's store, read directly
        store = Store(client, Store.of(tmp / "out").manifest)
        before = {r.data.tags["ukd.trial_id"]: (r.info.run_id, r.info.status)
                  for r in store.runs()}

        log2 = tmp / "resumed.log"
        proc2 = start_ukd([*args, "--resume"], log2, prefix=ns.prefix(), env=cluster.env)
        procs.append(proc2)
        rc = wait_exit(proc2, 480, log2)
        yield {"tmp": tmp, "out": tmp / "out", "nodes": nodes, "short": short, "long": long,
               "killed_output": log1.read_text(), "driver_left": driver_left,
               "started_by_sweep": started_by_sweep, "sweep_left": sweep_left, "held": held,
               "before": before, "killed_at_ms": killed_at_ms, "rc": rc,
               "checkpoint_epoch": checkpoint_epoch,
               "output": log2.read_text(), "store": store, "server": server}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # the ukd processes this test started
                p.wait(timeout=30)
            Session(p.pid).kill_all()
        cluster.stop()
        ns.close()


def test_every_node_was_checked_and_only_the_worker_can_run_work(
        cluster_sweep: dict[str, Any]) -> None:
    nodes = cluster_sweep["nodes"]
    assert sorted(n.get("CPU", 0.0) for n in nodes) == [1.0, 2.0]  # the head could run work
    worker = next(n["node_id"] for n in nodes if n.get("ukd_worker") == 2.0)
    runs = cluster_sweep["store"].runs()
    # ... but every trial asked for the worker's custom resource, so it ran there
    assert runs and all(r.data.tags.get("ukd.node_id") == worker for r in runs), [
        r.data.tags.get("ukd.node_id") for r in runs]
    assert "checked from 2 node(s)" in cluster_sweep["killed_output"]
    assert "checked from 2 node(s)" in cluster_sweep["output"]


def test_kill_left_one_finished_and_one_running_run(cluster_sweep: dict[str, Any]) -> None:
    before = cluster_sweep["before"]
    assert before[cluster_sweep["short"].trial_id][1] == "FINISHED"
    assert before[cluster_sweep["long"].trial_id][1] == "RUNNING"  # left by the dead driver
    assert len(before) == 2


def test_no_process_of_the_killed_sweep_survives(cluster_sweep: dict[str, Any]) -> None:
    """The driver's own processes, and every process the sweep made the worker node start
    (its trials' workers, found by the node's session, whatever Ray names them), exit; no
    resource of the cluster stays held."""
    assert cluster_sweep["driver_left"] == {}
    assert cluster_sweep["started_by_sweep"]  # the trials ran there while it was killed
    assert cluster_sweep["sweep_left"] == set()
    assert cluster_sweep["held"] == {}


def test_resume_through_the_cluster_finishes_every_trial(cluster_sweep: dict[str, Any]) -> None:
    result = cluster_sweep
    assert result["rc"] == 0, result["output"][-3000:]
    assert "2 trials: 1 finished now, 1 already finished, 0 failed" in result["output"]
    store: Store = result["store"]
    runs = {r.data.tags["ukd.trial_id"]: r for r in store.runs()}
    assert sorted(runs) == sorted(t.trial_id for t in (result["short"], result["long"]))
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert store.parent().info.status == "FINISHED"
    for trial_id, (run_id, _) in result["before"].items():
        assert runs[trial_id].info.run_id == run_id  # the interrupted run was reused
    long = runs[result["long"].trial_id]
    resumed_from = int(long.data.tags["ukd.resumed_from_epoch"])
    assert resumed_from == result["checkpoint_epoch"] == HELD
    assert store.steps(long, "loss/total") == list(range(1, LONG + 1))
    after_kill = {m.step for m in store.history(long, "loss/total")
                  if m.timestamp > result["killed_at_ms"]}
    assert set(range(resumed_from + 1, LONG + 1)) <= after_kill


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_every_artifact_went_through_the_server(cluster_sweep: dict[str, Any]) -> None:
    store: Store = cluster_sweep["store"]
    server: MlflowServer = cluster_sweep["server"]
    exp = store.manifest["experiment_id"]
    parent = store.parent()
    runs = [parent, *store.runs()]
    for run in runs:  # no path of the driver's disk: the server's proxy
        assert run.info.artifact_uri == f"mlflow-artifacts:/{exp}/{run.info.run_id}/artifacts"
    assert {"spec.yaml", "trials.yaml"} <= _files(
        server.artifacts / exp / parent.info.run_id / "artifacts")
    for run in store.runs():
        assert {"config.yaml", "student.pt"} <= _files(
            server.artifacts / exp / run.info.run_id / "artifacts")
    out = cluster_sweep["out"]
    assert not (out / "mlflow.db").exists() and not (out / "artifacts").exists()
    assert not list(out.rglob("mlruns")) and not (Path.cwd() / "mlruns").exists()
