"""Safety: YAML is loaded safely, checkpoints with weights_only=True, no config string is
evaluated or imported, and what ukd serves (the local Ray) listens on 127.0.0.1 only."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

import pytest
import ray
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.orchestrator.sweeps import (
    ProcessWatcher,
    listening_sockets,
    tiny_spec,
    tree,
    write_spec,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "losses", "models", "reports")

# Calls that run code or unpickle objects: never on anything a user or a file supplies.
FORBIDDEN_CALLS = {
    "eval", "exec", "compile", "__import__", "yaml.load", "yaml.unsafe_load", "yaml.full_load",
    "yaml.load_all", "yaml.unsafe_load_all", "pickle.load", "pickle.loads", "cloudpickle.load",
    "cloudpickle.loads", "dill.load", "dill.loads", "marshal.load", "marshal.loads",
    "importlib.import_module", "pd.read_pickle", "pandas.read_pickle", "os.system",
    "torch.hub.load", "runpy.run_path", "runpy.run_module",
}
FORBIDDEN_IMPORTS = {("torch", "load"), ("yaml", "load"), ("pickle", "load"),
                     ("pickle", "loads"), ("importlib", "import_module")}


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return "?"


def _sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 20
    return files


def _scan() -> tuple[list[str], int]:
    problems: list[str] = []
    torch_loads = 0
    for path in _sources():
        tree_ = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree_):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    if (node.module, alias.name) in FORBIDDEN_IMPORTS:
                        problems.append(f"{where}: from {node.module} import {alias.name}")
            if not isinstance(node, ast.Call):
                continue
            name = _name(node.func)
            if name in FORBIDDEN_CALLS:
                problems.append(f"{where}: {name}(...)")
            keywords = {k.arg: k.value for k in node.keywords}
            if name == "torch.load":
                torch_loads += 1
                value = keywords.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if name.endswith("np.load") or name.endswith("numpy.load"):
                value = keywords.get("allow_pickle")
                if value is not None and not (isinstance(value, ast.Constant)
                                              and value.value is False):
                    problems.append(f"{where}: {name}(allow_pickle=...)")
            if name.startswith("subprocess.") and "shell" in keywords:
                problems.append(f"{where}: {name}(shell=...)")
    return problems, torch_loads


def test_sources_never_evaluate_import_or_unpickle_untrusted_input() -> None:
    problems, torch_loads = _scan()
    assert problems == []
    assert torch_loads >= 2  # the scan sees the real loads (checkpoints, neighbour graphs)


def test_scan_catches_what_it_forbids(tmp_path: Path) -> None:
    bad = ("import torch, yaml\nfrom pickle import loads\n"
           "torch.load('x')\ntorch.load('x', weights_only=False)\nyaml.load(s)\neval('1')\n")
    found = []
    for node in ast.walk(ast.parse(bad)):
        if isinstance(node, ast.Call):
            name = _name(node.func)
            weights = {k.arg: k.value for k in node.keywords}.get("weights_only")
            if name in FORBIDDEN_CALLS or (name == "torch.load" and not (
                    isinstance(weights, ast.Constant) and weights.value is True)):
                found.append(name)
    assert found == ["torch.load", "torch.load", "yaml.load", "eval"]


def test_yaml_tags_are_not_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    result = CliRunner().invoke(app, ["sweep", str(spec)])
    assert result.exit_code == 2 and "malformed YAML" in result.output, result.output
    assert not marker.exists()


@pytest.mark.parametrize(("key", "value", "path"), [
    ("student", "os.system", "`grid.student[0]`"),
    ("loss", [{"name": "builtins.eval"}], "`grid.loss[0].name`"),
])
def test_names_resolve_through_the_registries_only(tmp_path: Path, key: str, value: object,
                                                   path: str) -> None:
    spec = tiny_spec(tmp_path, tmp_path / "cache")
    spec["grid"][key] = value
    result = CliRunner().invoke(app, ["sweep", str(write_spec(tmp_path / "s.yaml", spec))])
    assert result.exit_code == 2 and path in result.output and "allowed:" in result.output


def test_local_ray_listens_on_localhost_only() -> None:
    from orchestrator.runtime.ray_runtime import init_ray as _init_ray

    assert not ray.is_initialized()
    watcher = ProcessWatcher(os.getpid())
    auth_mode = os.environ.get("RAY_AUTH_MODE")  # a local ray.init() sets it (run_sweep resets)
    try:
        assert _init_ray(None) is True

        @ray.remote
        def ping() -> int:
            return os.getpid()

        worker = ray.get(ping.remote(), timeout=120)
        watcher.sample()  # the worker stays in Ray's pool: still alive here
        assert worker in watcher.seen
        sockets = listening_sockets(watcher.seen)
        # The scan sees Ray's servers: the GCS's own port (whatever its process is named).
        gcs_port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[-1]
        assert any(a.rsplit(":", 1)[-1] == gcs_port for a, _ in sockets), (gcs_port, sockets)
        for address, owner in sockets:
            host = address.rsplit(":", 1)[0]
            assert host in ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"), (address, owner)
    finally:
        ray.shutdown()
        watcher.stop()
        if auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = auth_mode
    try:
        assert watcher.wait_gone(60) == {}
    finally:
        watcher.kill_leftovers()


def test_a_local_session_ends_its_monitor_and_leaves_no_process() -> None:
    """ray_session's end kills the local Ray's autoscaler monitor itself (Ray's shutdown
    would wait a second for it to ignore SIGTERM), and every process of that Ray ends."""
    from ray._private import ray_constants, worker

    from orchestrator.runtime.ray_runtime import ray_session

    assert not ray.is_initialized()
    watcher = ProcessWatcher(os.getpid())
    try:
        with ray_session(None) as started:
            assert started
            node: Any = worker._global_node
            assert node is not None
            monitor = node.all_processes[ray_constants.PROCESS_TYPE_MONITOR][0].process
            assert monitor.poll() is None
            watcher.sample()
        assert monitor.poll() is not None and not ray.is_initialized()
    finally:
        watcher.stop()
    try:
        assert watcher.wait_gone(60) == {}
    finally:
        watcher.kill_leftovers()


def test_dashboard_flag(tmp_path: Path) -> None:
    from ray._private.utils import get_dashboard_dependency_error

    if get_dashboard_dependency_error() is None:
        pytest.skip("ray[default] is installed: --dashboard would start a sweep")
    spec = write_spec(tmp_path / "s.yaml", tiny_spec(tmp_path, tmp_path / "cache"))
    before = tree(tmp_path)
    result = CliRunner().invoke(app, ["sweep", str(spec), "--dashboard"])
    assert result.exit_code == 2, result.output
    assert "--dashboard: the Ray dashboard needs ray[default]" in result.output
    assert tree(tmp_path) == before
