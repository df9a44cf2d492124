"""The Ray runtime of a sweep: a fresh local Ray of this process, or an existing cluster.

The only module that touches Ray's private settings (``ray._private``): the local node's
address and the dashboard's dependencies. Ray is pinned below its next major version in
pyproject.toml because of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from common import faults
from orchestrator.errors import UserInputError

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a local Ray node on 127.0.0.1 only
AUTH_MODE_ENV = "RAY_AUTH_MODE"
CLIENT_SCHEME = "ray://"
_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"  # its token WARNING
# What the local Ray's worker processes import as they start, before any task or actor is
# sent to them: torch and the engine take seconds to import, and the node starts its workers
# (one per CPU) as it starts, so they import while the driver sets up MLflow and the stages,
# not when the first trial arrives (Ray's preload_python_modules).
WORKER_PRELOAD = ("orchestrator.stages.trials", "orchestrator.stages.references")
# Resources every node reports: the rest (custom resources) tell nodes apart in messages.
_STANDARD = ("CPU", "GPU", "memory", "object_store_memory")


def cluster_address(address: str | None) -> str | None:
    """The cluster a sweep attaches to (--address, else RAY_ADDRESS), None for a local Ray."""
    target = address or os.environ.get("RAY_ADDRESS") or None
    return None if target in (None, "local") else target


def check_address(address: str | None) -> None:
    """Ray Client addresses (ray://) are refused: the sweep's driver (Tune's loop and the
    MLflow callback) must run on a node of the cluster, beside its raylet."""
    target = cluster_address(address)
    if target and target.startswith(CLIENT_SCHEME):
        option = "--address" if address else "RAY_ADDRESS"
        raise UserInputError(
            f"{option} {target}: Ray Client (ray://) is not supported; allowed: the cluster's "
            "GCS address HOST:6379 (or auto), with ukd run on a node of the cluster (e.g. the "
            "head: docs/CLUSTER.md)")


def check_dashboard(address: str | None) -> None:
    """``--dashboard`` can be served: a local Ray, and Ray's dashboard packages installed."""
    if address or os.environ.get("RAY_ADDRESS"):
        raise UserInputError("--dashboard starts the dashboard of the local Ray only; a "
                             "cluster (--address / RAY_ADDRESS) serves its own")
    from ray._private.utils import get_dashboard_dependency_error

    missing = get_dashboard_dependency_error()
    if missing is not None:
        raise UserInputError(f"--dashboard: the Ray dashboard needs ray[default] ({missing}); "
                             "allowed: pip install 'ray[default]', or run without --dashboard")


def _quiet() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_RESULT_BUFFER_LENGTH", "1")
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # failure.json has the trace
    # Tune's result analysis looks for the per-trial JSON/CSV loggers disabled above and
    # warns once per trial; MLflow holds the results.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # On SIGINT/SIGTERM Tune suggests Tuner.restore(...); continuing is `ukd sweep` again.
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)


@contextlib.contextmanager
def _keep_signal_handlers() -> Iterator[None]:
    """ray.init installs Ray's own handler for SIGTERM (it logs a stack trace and aborts the
    driver) over a Python handler the driver had set -- orchestrator/runtime/driver.py makes SIGTERM
    and SIGHUP stop the sweep like Ctrl+C -- while Python still reports its own: the Python
    handlers are put back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM,
                                                     signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            if callable(handler):
                signal.signal(sig, handler)


def init_ray(address: str | None, dashboard: bool = False) -> bool:
    """Start a local Ray of this process or attach to a cluster; True if this call connected
    (False: Ray was already initialised by the caller). Python's signal handlers survive it.

    The local Ray's servers (GCS, raylet, the dashboard when asked for) listen on 127.0.0.1
    only, unless the user sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1. Its processes share the
    driver's fate: when the driver dies, even by SIGKILL, its GCS and raylet die with it and
    the workers and agents exit on their own shortly after (tests/orchestrator/test_resume.py).
    """
    with _keep_signal_handlers():
        return _init_ray(address, dashboard)


def _init_ray(address: str | None, dashboard: bool) -> bool:
    import ray

    _quiet()
    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        try:
            # Trials on the cluster's nodes do not inherit this environment: the crash
            # tests' fault settings (common/faults.py) go with the job, nothing otherwise.
            fault_env = faults.forwarded()
            ray.init(address=target, logging_level=logging.WARNING, log_to_driver=False,
                     runtime_env={"env_vars": fault_env} if fault_env else None)
        except ConnectionError as exc:
            raise UserInputError(
                f"cannot attach to the Ray cluster at {target}: {exc}. If the cluster uses "
                "token authentication, set RAY_AUTH_MODE=token (and RAY_AUTH_TOKEN or "
                "~/.ray/auth_token) before running ukd") from None
        return True
    # address="local": always a fresh local instance, never another sweep's Ray (plain
    # ray.init() would attach to the newest Ray found on this machine).
    from ray._private import ray_constants

    # Ray binds its gRPC servers to every interface unless the node's address is 127.0.0.1,
    # which it picks only while this setting (read at import) is off; the started processes
    # are given the address, so the setting is restored afterwards.
    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = os.environ.get(LOCAL_ONLY_ENV, "0").lower() in (
        "1", "true")
    # Ray's processes join this process's group, the terminal's foreground group: a closed
    # terminal would send them SIGHUP too, and they would die under the sweep before it stops
    # its trials (it does on SIGHUP, like Ctrl+C). They inherit "ignore SIGHUP" (and still
    # end with this process: Ray's fate sharing).
    main = threading.current_thread() is threading.main_thread()
    hangup = signal.signal(signal.SIGHUP, signal.SIG_IGN) if main else None
    # A new local Ray turns token authentication on when RAY_AUTH_MODE is unset (Ray 2.59+)
    # and says so in a WARNING on the console: nothing for the user to act on for a Ray that
    # listens on 127.0.0.1 and ends with the sweep, so that one logger is silenced while the
    # local Ray starts (Ray's choice stands; docs/CLUSTER.md: tokens on a cluster).
    auth_log = logging.getLogger(_AUTH_LOGGER)
    auth_level = auth_log.level
    auth_log.setLevel(logging.ERROR)
    try:
        ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 logging_level=logging.WARNING, log_to_driver=False,
                 _system_config={"preload_python_modules": list(WORKER_PRELOAD)})
    finally:
        auth_log.setLevel(auth_level)
        ray_constants.ENABLE_RAY_CLUSTER = before
        if main:
            signal.signal(signal.SIGHUP, signal.SIG_DFL if hangup is None else hangup)
    return True


def dashboard_url() -> str:
    from ray._private.worker import get_dashboard_url

    return f"http://{get_dashboard_url()}"


@contextlib.contextmanager
def ray_session(address: str | None, dashboard: bool = False) -> Iterator[bool]:
    """Ray for the length of the block; shut down (a local Ray) or disconnected (a cluster)
    afterwards if this block connected it.

    A local ray.init() turns on token auth for the rest of this process (RAY_AUTH_MODE); it
    is put back after the shutdown, or a later sweep of this process could not attach to a
    cluster that runs without tokens.
    """
    import ray

    auth_mode = os.environ.get(AUTH_MODE_ENV)
    started = False
    try:
        started = init_ray(address, dashboard)
        yield started
    finally:
        if started:
            _stop_local_monitor(address)
            ray.shutdown()
            if auth_mode is None:
                os.environ.pop(AUTH_MODE_ENV, None)
            else:
                os.environ[AUTH_MODE_ENV] = auth_mode


def _stop_local_monitor(address: str | None) -> None:
    """End the autoscaler monitor of the local Ray this process started: it has nothing to
    scale on one machine and keeps no state, and it answers ray.shutdown()'s SIGTERM only
    when Ray gives up and kills it, one second later (a second of every sweep's end)."""
    if address or os.environ.get("RAY_ADDRESS"):
        return
    from ray._private import ray_constants, worker

    node = worker._global_node
    infos: list[Any] = ([] if node is None else
                        node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []))
    for info in infos:
        if info.process.poll() is None:
            info.process.kill()
            info.process.wait()


@contextlib.contextmanager
def cluster_session(address: str | None) -> Iterator[bool]:
    """Attached to the cluster (--address / RAY_ADDRESS) for the block, yielding True; no
    cluster: nothing happens and it yields False (the sweep starts its local Ray later).
    A :func:`ray_session` inside the block reuses this connection."""
    if cluster_address(address) is None:
        yield False
        return
    with ray_session(address):
        yield True


@dataclass(frozen=True)
class NodeInfo:
    """An alive node of the connected cluster, as Ray reports it."""

    node_id: str
    address: str
    hostname: str
    resources: tuple[tuple[str, float], ...]

    def __str__(self) -> str:
        shown = [f"{k} {v:g}" for k, v in self.resources if k in ("CPU", "GPU")]
        shown += [f"{k} {v:g}" for k, v in self.resources
                  if k not in _STANDARD and not k.startswith(("node:", "accelerator_type"))]
        host = f", {self.hostname}" if self.hostname and self.hostname != self.address else ""
        return (f"node {self.node_id[:8]} ({self.address}{host}"
                f"{'; ' + ', '.join(shown) if shown else ''})")


def alive_nodes() -> list[NodeInfo]:
    """The alive nodes of the cluster this process is connected to."""
    import ray

    return [NodeInfo(str(n["NodeID"]), str(n.get("NodeManagerAddress", "")),
                     str(n.get("NodeManagerHostname", "")),
                     tuple(sorted((str(k), float(v)) for k, v in n.get("Resources", {}).items())))
            for n in ray.nodes() if n.get("Alive")]


def run_on_each_node(fn: Callable[..., Any], *args: Any, timeout: float
                     ) -> list[tuple[NodeInfo, Any]]:
    """``fn(*args)`` as a tiny task (no CPU) pinned to each alive node; per node its value,
    or the exception it raised, or a TimeoutError when it had not run within ``timeout``
    seconds. ``fn`` must be importable on the nodes (a module-level function)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task: Any = ray.remote(num_cpus=0, max_retries=0)(fn)
    pending = [(node, task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        node.node_id, soft=False)).remote(*args)) for node in alive_nodes()]
    if not pending:
        return []
    ready, _ = ray.wait([ref for _, ref in pending], num_returns=len(pending), timeout=timeout)
    done = set(ready)
    results: list[tuple[NodeInfo, Any]] = []
    for node, ref in pending:
        if ref not in done:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            results.append((node, TimeoutError(f"{node} did not answer within {timeout:.0f}s")))
            continue
        try:
            results.append((node, ray.get(ref)))
        except Exception as exc:  # the node's error, reported by the caller
            results.append((node, exc))
    return results


def cluster_nodes(address: str | None) -> list[dict[str, float]] | None:
    """Per-node resources (``{"CPU": 16.0, "GPU": 4.0, ...}``) of the cluster at --address /
    RAY_ADDRESS, connecting for the call; None without a cluster (a local Ray: the machine
    itself, orchestrator.runtime.gpu.local_nodes). For ``ukd sweep --dry-run``."""
    check_address(address)
    if cluster_address(address) is None:
        return None
    with ray_session(address):
        return [dict(n.resources) for n in alive_nodes()]
