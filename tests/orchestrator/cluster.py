"""A Ray cluster of several nodes and an MLflow server on this machine, for the cluster tests.

Everything the tests serve binds 127.0.0.1 inside a private network namespace the test makes
itself (`unshare --net`, as root; only `lo`, brought up): the fixed ports (Ray's GCS on 6379,
MLflow on 5000) are always free there, and nothing can collide with another test, sweep or
user of this machine. Processes join the namespace with `nsenter --net`, which execs the
command in place (same pid). Every process is started in a session of its own and stopped by
signalling that session only (:class:`tests.orchestrator.sweeps.Session`).

Nodes are separate `ray start` processes (separate raylets) joined to one head; a worker may
run in a mount namespace of its own (`unshare -m`) with a private tmpfs over a directory, so
that node sees a different directory at the same path than the driver does.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.orchestrator.sweeps import Session

RAY_PORT = 6379  # fixed: the namespace is private
MLFLOW_PORT = 5000
BIN = Path(sys.executable).parent


def skip_without_namespaces() -> None:
    """The cluster tests need root and util-linux's unshare / nsenter (CI has both: there a
    missing one is a failure, UKD_REQUIRE_NAMESPACES=1, set by .ci/run)."""
    missing = [tool for tool in ("unshare", "nsenter", "ip") if shutil.which(tool) is None]
    problem = (f"needs {', '.join(missing)}" if missing else
               "needs root (network and mount namespaces)" if os.geteuid() != 0 else "")
    if not problem:
        return
    if os.environ.get("UKD_REQUIRE_NAMESPACES", "").strip() not in ("", "0"):
        pytest.fail(f"UKD_REQUIRE_NAMESPACES is set but the cluster test {problem}",
                    pytrace=False)
    pytest.skip(f"the cluster test {problem}")


@dataclass
class NetNamespace:
    """A private network namespace, held by a sleeping process in a session of its own."""

    logs: Path
    holder: subprocess.Popen[bytes] | None = None
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c",
             "ip link set lo up && echo up && exec sleep infinity"],
            stdout=subprocess.PIPE, start_new_session=True)
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()
        if line.strip() != b"up":
            raise RuntimeError(f"could not make a network namespace: {line!r}")

    def prefix(self) -> list[str]:
        """The command prefix that runs a command inside the namespace (same pid)."""
        assert self.holder is not None
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "--"]

    def popen(self, argv: list[str], log: str, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        """``argv`` in the namespace, in a new session, output to ``logs/<log>``."""
        proc = subprocess.Popen([*self.prefix(), *argv], stdout=(self.logs / log).open("wb"),
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
        self.started.append(proc)
        return proc

    def run(self, argv: list[str], timeout: float, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix(), *argv], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})

    def python(self, code: str, *args: str, timeout: float = 180,
               env: dict[str, str] | None = None) -> str:
        """Run ``code`` with this venv's Python in the namespace; its stdout."""
        result = self.run([sys.executable, "-c", code, *args], timeout, env)
        if result.returncode != 0:
            raise AssertionError(f"in the namespace: {result.stdout}{result.stderr}"[-3000:])
        return result.stdout

    def close(self) -> None:
        """Stop every session started here (SIGTERM, then SIGKILL), then the holder."""
        for proc in reversed(self.started):
            Session(proc.pid).stop(grace=30)
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        if self.holder is not None:
            self.holder.kill()  # the holder this class started
            self.holder.wait(timeout=30)


WAIT_NODES = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
want, deadline = int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while len(alive := [n for n in ray.nodes() if n["Alive"]]) < want:
    if time.monotonic() > deadline:
        sys.exit(f"{len(alive)} of {want} nodes alive")
    time.sleep(0.5)
print(json.dumps([{**n["Resources"], "node_id": n["NodeID"]} for n in alive]))
"""

WAIT_IDLE = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[2])
def held():
    total, free = ray.cluster_resources(), ray.available_resources()
    return {k: v - free.get(k, 0.0) for k, v in total.items()
            if k not in ("memory", "object_store_memory") and v - free.get(k, 0.0) > 1e-6}
while (busy := held()) and time.monotonic() < deadline:
    time.sleep(0.5)
print(json.dumps(busy))
"""

WAIT_HTTP = """
import sys, time, urllib.request
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=5) as reply:
            if reply.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit(f"no answer from {sys.argv[1]}")
    time.sleep(0.5)
"""


@dataclass
class RayCluster:
    """A head and worker nodes (`ray start --block`, each its own session) with token
    authentication (a fresh token, handed to every node and driver through RAY_AUTH_TOKEN:
    nothing is read from or written to ~/.ray)."""

    ns: NetNamespace
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ukdray-")))
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{RAY_PORT}"

    @property
    def env(self) -> dict[str, str]:
        """What a driver of this cluster needs in its environment."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                "RAY_USAGE_STATS_ENABLED": "0"}

    def _start(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        proc = self.ns.popen(argv, log, self.env)
        self.nodes.append(proc)
        return proc

    def start_head(self, num_cpus: int = 0, timeout: float = 120) -> None:
        """The head (GCS on 127.0.0.1:6379). ``num_cpus=0``: no trial or stage can run
        there, so they all run on the workers."""
        # A short temp dir: Ray's socket paths must stay under the 107-byte limit.
        self._start([str(BIN / "ray"), "start", "--head", "--block", f"--port={RAY_PORT}",
                     "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--num-gpus=0",
                     "--include-dashboard=false", "--disable-usage-stats",
                     f"--temp-dir={self.temp_dir}"], "head.log")
        self.wait_nodes(1, timeout)

    def add_worker(self, num_cpus: int, resources: dict[str, float], private: Path | None = None,
                   timeout: float = 120) -> Session:
        """A worker node (its own raylet) with custom ``resources``; ``private``: a
        directory this node sees as an empty private tmpfs (its own mount namespace)."""
        ray_start = [str(BIN / "ray"), "start", f"--address={self.address}", "--block",
                     "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--num-gpus=0",
                     f"--resources={json.dumps(resources)}", "--disable-usage-stats"]
        if private is not None:
            private.mkdir(parents=True, exist_ok=True)
            argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                    'mount -t tmpfs ukd-private "$0" && exec "$@"', str(private), *ray_start]
        else:
            argv = ray_start
        before = len(self.nodes)
        proc = self._start(argv, f"worker{before}.log")
        self.wait_nodes(before + 1, timeout)
        return Session(proc.pid)

    def wait_nodes(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """Until ``count`` nodes are alive in the GCS; their resources (and ``node_id``)."""
        out = self.ns.python(WAIT_NODES, self.address, str(count), str(timeout),
                             timeout=timeout + 60, env=self.env)
        return list(json.loads(out.strip().splitlines()[-1]))

    def wait_idle(self, timeout: float) -> dict[str, float]:
        """Until no resource of the cluster is held (no trial, stage or placement group of
        any driver is left); what is still held when ``timeout`` runs out."""
        out = self.ns.python(WAIT_IDLE, self.address, str(timeout), timeout=timeout + 60,
                             env=self.env)
        return dict(json.loads(out.strip().splitlines()[-1]))

    def sessions(self) -> list[Session]:
        return [Session(p.pid) for p in self.nodes]

    def stop(self) -> None:
        for proc in reversed(self.nodes):  # workers first, the head last
            Session(proc.pid).stop(grace=30)
            proc.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@dataclass
class MlflowServer:
    """`mlflow server` on 127.0.0.1:5000 in the namespace, proxying artifacts to
    ``root/artifacts`` (or not serving them: ``serve_artifacts=False``)."""

    ns: NetNamespace
    root: Path
    port: int = MLFLOW_PORT
    serve_artifacts: bool = True
    proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend(self) -> str:
        """The server's own store, which this test reads directly (the server is only
        reachable inside the namespace)."""
        return f"sqlite:///{self.root / 'server.db'}"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
                "--backend-store-uri", self.backend, "--workers", "1"]
        argv += (["--artifacts-destination", str(self.artifacts)] if self.serve_artifacts
                 else ["--no-serve-artifacts"])
        self.proc = self.ns.popen(argv, f"mlflow-{self.port}.log")

    def wait(self, timeout: float = 180) -> None:
        """Until the server answers its health check (inside the namespace)."""
        self.ns.python(WAIT_HTTP, f"{self.uri}/health", str(timeout), timeout=timeout + 30)
