"""`--address`: a sweep attaches to an existing one-node Ray cluster with token
authentication (`ray start --head` on 127.0.0.1:6379 in a private network namespace, stopped
by signalling its own session only: tests/orchestrator/cluster.py); a Ray Client address
(ray://) is refused. Several nodes: test_cluster_multinode.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.orchestrator.cluster import NetNamespace, RayCluster, skip_without_namespaces
from tests.orchestrator.sweeps import UKD, tree
from tests.orchestrator.test_sweep_e2e import tiny_sweep


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    skip_without_namespaces()
    ns = NetNamespace(tmp_path_factory.mktemp("cluster") / "logs")
    cluster = RayCluster(ns)
    try:
        cluster.start_head(num_cpus=2)
        yield cluster
    finally:
        cluster.stop()
        ns.close()


def test_sweep_runs_on_an_existing_cluster(ray_cluster: RayCluster, tmp_path: Path) -> None:
    spec = tiny_sweep(tmp_path, tmp_path / "cache")
    # Its own process, as users run it (Ray keeps per-process auth state); the cluster's
    # token reaches it through RAY_AUTH_TOKEN, and the cluster through RAY_ADDRESS, as in a
    # KubeRay pod (which sets both) or a Ray job.
    result = ray_cluster.ns.run([UKD, "sweep", str(spec)], timeout=480,
                                env={**ray_cluster.env, "RAY_ADDRESS": ray_cluster.address})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "2 finished now" in output and "checked from 1 node(s)" in output
    manifest = json.loads((tmp_path / "out" / "sweep.json").read_text())
    parent = MlflowClient(manifest["tracking_uri"]).get_run(manifest["parent_run_id"])
    # Ray reports the cluster by the node's address; the port is the cluster's own, so the
    # sweep did not start a local Ray of its own.
    assert parent.data.tags["ukd.ray_address"] == ray_cluster.address


def test_a_wrong_token_is_one_line_naming_the_cluster(ray_cluster: RayCluster,
                                                       tmp_path: Path) -> None:
    spec = tiny_sweep(tmp_path, tmp_path / "cache")
    before = tree(tmp_path)
    result = ray_cluster.ns.run([UKD, "sweep", str(spec), "--address", ray_cluster.address],
                                timeout=300, env={**ray_cluster.env, "RAY_AUTH_TOKEN": "0" * 32})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(errors) == 1 and errors[0].startswith(
        f"error: cannot attach to the Ray cluster at {ray_cluster.address}"), result.stderr
    assert "RAY_AUTH_TOKEN" in errors[0]
    assert tree(tmp_path) == before


def test_ray_client_addresses_are_refused(tmp_path: Path) -> None:
    spec = tiny_sweep(tmp_path, tmp_path / "cache")
    before = tree(tmp_path)
    result = CliRunner().invoke(app, ["sweep", str(spec), "--address", "ray://127.0.0.1:10001"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --address ray://127.0.0.1:10001: Ray Client "
                                    "(ray://) is not supported; allowed: the cluster's GCS "
                                    "address HOST:6379"), result.output
    assert tree(tmp_path) == before
