"""Shared storage, checked from every node before a cluster sweep writes anything
(orchestrator/runtime/storage.py): first with the node runner stood in for (a node that sees another
directory, a stale token, an unwritable directory, a dataset that differs, a node that does
not answer or lacks ukd), then for real: a two-node Ray cluster whose worker runs in its own
mount namespace with a private tmpfs over the directory that holds the output and cache
directories."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import UserInputError
from orchestrator.runtime import storage
from orchestrator.runtime.storage import check_shared_storage
from orchestrator.spec.load import SweepSpec, load_spec
from tests.orchestrator.cluster import NetNamespace, RayCluster, skip_without_namespaces
from tests.orchestrator.sweeps import start_ukd, tiny_spec, tree, write_spec

Runner = Callable[..., list[tuple[Any, Any]]]


def _spec(tmp: Path, **overrides: Any) -> SweepSpec:
    shared = tmp / "shared"  # does not exist yet: checked where it will be created
    spec = tiny_spec(tmp, shared / "cache", output_dir=str(shared / "out"), **overrides)
    return load_spec(write_spec(tmp / "spec.yaml", spec))


def _nodes(worker: Callable[[], None] | None = None) -> Runner:
    """Two nodes that run the probe in this process; ``worker`` changes what the second
    one sees first (and is undone by the caller's tmp_path)."""
    def run(fn: Callable[..., Any], *args: Any, timeout: float) -> list[tuple[Any, Any]]:
        head = fn(*args)
        if worker is not None:
            worker()
        return [("node aaaa (head)", head), ("node bbbb (worker)", fn(*args))]

    return run


def _probes(directory: Path) -> list[Path]:
    return list(directory.glob(f"{storage.PROBE_PREFIX}*"))


def test_same_view_on_every_node_passes_and_leaves_nothing(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    before = tree(tmp_path)
    assert check_shared_storage(spec, _nodes()) == 2
    assert tree(tmp_path) == before


def _refused(spec: SweepSpec, runner: Runner) -> str:
    with pytest.raises(UserInputError) as caught:
        check_shared_storage(spec, runner)
    line = str(caught.value)
    assert "\n" not in line
    return line


def test_a_node_that_sees_another_directory_is_named(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    before = tree(tmp_path)

    def hide() -> None:  # as if the worker's /.../shared were another filesystem
        for probe in _probes(tmp_path):
            probe.unlink()

    line = _refused(spec, _nodes(hide))
    assert line.startswith(f"shared storage: node bbbb (worker) does not see the output "
                           f"directory {tmp_path / 'shared' / 'out'} as the driver does (the "
                           f"probe file the driver wrote in {tmp_path} is not there)"), line
    assert "allowed: a directory on a filesystem every node mounts at the same path" in line
    assert "without --address" in line
    assert tree(tmp_path) == before


def test_a_stale_token_is_not_the_same_directory(tmp_path: Path) -> None:
    spec = _spec(tmp_path)

    def overwrite() -> None:
        for probe in _probes(tmp_path):
            probe.write_text("another sweep")

    assert "holds another token" in _refused(spec, _nodes(overwrite))
    assert _probes(tmp_path) == []


def test_an_unwritable_directory_on_a_node(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(tmp_path)
    real = tempfile.mkdtemp

    def read_only() -> None:
        def refuse(*args: Any, **kwargs: Any) -> str:
            raise PermissionError(13, "Read-only file system")

        monkeypatch.setattr(storage.tempfile, "mkdtemp", refuse)

    line = _refused(spec, _nodes(read_only))
    monkeypatch.setattr(storage.tempfile, "mkdtemp", real)
    assert line.startswith("shared storage: node bbbb (worker) cannot write the output "
                           f"directory {tmp_path / 'shared' / 'out'} ({tmp_path}: Read-only "
                           "file system)"), line


def test_a_read_only_dataset_root_is_compared_not_written(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "cifar-10-batches-py").mkdir(parents=True)
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x" * 10)
    spec = _spec(tmp_path, dataset={"name": "cifar10", "root": str(root), "labels": False})
    before = tree(root)
    assert check_shared_storage(spec, _nodes()) == 2
    assert tree(root) == before  # no probe written into the dataset

    def other_copy() -> None:  # the node's copy lacks a file
        (root / "cifar-10-batches-py" / "data_batch_1").unlink()

    line = _refused(spec, _nodes(other_copy))
    assert f"does not see the dataset root {root} as the driver does (its files" in line


@pytest.mark.parametrize(("error", "fragment"), [
    (TimeoutError("late"), "did not run the storage check within 180s"),
    (ModuleNotFoundError("No module named 'orchestrator'"),
     "cannot import ukd (ModuleNotFoundError: No module named 'orchestrator'); every node "
     "needs ukd installed"),
])
def test_a_node_that_fails_the_task(tmp_path: Path, error: BaseException, fragment: str) -> None:
    spec = _spec(tmp_path)

    def run(fn: Callable[..., Any], *args: Any, timeout: float) -> list[tuple[Any, Any]]:
        return [("node aaaa (head)", fn(*args)), ("node bbbb (worker)", error)]

    line = _refused(spec, run)
    assert line.startswith("shared storage: node bbbb (worker) ") and fragment in line, line
    assert _probes(tmp_path) == []


# ----------------------------------------------------------------------------- a real cluster


@pytest.fixture(scope="module")
def private_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A head and a worker node whose mount namespace has a private tmpfs over ``shared``."""
    skip_without_namespaces()
    tmp = tmp_path_factory.mktemp("storage")
    shared = tmp / "shared"
    shared.mkdir()
    ns = NetNamespace(tmp / "logs")
    cluster = RayCluster(ns)
    try:
        cluster.start_head(num_cpus=1)
        cluster.add_worker(1, {"ukd_private": 1}, private=shared)
        yield {"tmp": tmp, "shared": shared, "cluster": cluster, "ns": ns}
    finally:
        cluster.stop()
        ns.close()


def test_sweep_refuses_a_node_without_the_drivers_directories(
        private_worker: dict[str, Any]) -> None:
    tmp, shared = private_worker["tmp"], private_worker["shared"]
    cluster: RayCluster = private_worker["cluster"]
    spec = tiny_spec(tmp, shared / "cache", output_dir=str(shared / "out"))
    path = write_spec(tmp / "sweep.yaml", spec)
    before = tree(tmp)
    log = tmp / "ukd.log"
    proc = start_ukd(["sweep", str(path), "--address", cluster.address], log,
                     prefix=private_worker["ns"].prefix(), env=cluster.env)
    rc = proc.wait(timeout=300)
    output = log.read_text()
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert rc == 2, output
    assert len(errors) == 1, output
    line = errors[0]
    # The worker (named by its custom resource), the directory, and what is needed.
    assert line.startswith("error: shared storage: node "), line
    assert "ukd_private 1" in line, line
    assert (f"does not see the output directory {shared / 'out'} as the driver does (the "
            f"probe file the driver wrote in {shared} is not there)") in line, line
    assert "allowed: a directory on a filesystem every node mounts at the same path" in line
    assert sorted(set(tree(tmp)) - {"ukd.log"}) == before  # nothing written, no probe left
