"""Helpers for the reliability tests: tiny specs, the real `ukd` CLI in a subprocess, the
processes it starts, and the MLflow store it writes.

`start_ukd` puts each `ukd` process in a session of its own: every process it starts (Ray's
GCS, raylet, agents and workers, whatever they are named and whoever they are reparented to)
keeps that session id, so "no process of the sweep is left" is a question about the session,
and the teardown signals nothing outside it. The in-process Ray test tracks the test's own
descendants instead (matched by pid *and* start time, so a recycled pid is never touched).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

UKD = str(Path(sys.executable).with_name("ukd"))


def tiny_spec(tmp: Path, cache: Path, name: str = "tiny", **overrides: Any) -> dict[str, Any]:
    """Digits, a resnet20 teacher pretrained for one epoch (cached across a module through
    ``cache``), resnet20 students, the plain cosine objective, short trials."""
    spec: dict[str, Any] = {
        "name": name,
        "output_dir": str(tmp / "out"),
        "cache_dir": str(cache),
        "dataset": {"name": "digits", "labels": False},
        "teachers": {"t": {"arch": "resnet20", "source": "pretrain",
                           "pretrain": {"recipe": "simclr", "epochs": 1, "batch_size": 256}}},
        "grid": {"teacher": "t", "student": "resnet20", "loss": [{"name": "cosine"}],
                 "seed": [0]},
        "train": {"epochs": 2, "batch_size": 256, "augment": "ssl_light"},
        "knn": {"k": [10]},
        "resources": {"cpu": 1, "max_concurrent": 2, "threads": 1, "stage_cpu": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def start_ukd(args: list[str], log: Path, cwd: Path | None = None,
              prefix: list[str] | None = None, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
    """`ukd` in a new session (its pid is the session id; see :class:`Session`). ``prefix``:
    a command that execs it in place (e.g. `nsenter` into a network namespace, which keeps
    the pid); ``env``: added to the environment."""
    return subprocess.Popen([*(prefix or []), UKD, *args], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, cwd=cwd,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            start_new_session=True)


@dataclass
class Terminal:
    """`ukd` in a pseudo-terminal that is its controlling terminal, as in a terminal window
    or a tmux pane. Its output is drained into ``log`` by a thread; :meth:`hang_up` closes
    the terminal like a closed window or a killed tmux session: the kernel sends SIGHUP to
    the session's foreground processes, and later writes to the terminal fail."""

    proc: subprocess.Popen[bytes]
    master: int
    log: Path
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with self.log.open("ab") as out:
            while not self._stop.is_set():
                ready, _, _ = select.select([self.master], [], [], 0.2)
                if not ready:
                    continue
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: the other side is gone
                    return
                if not data:
                    return
                out.write(data)
                out.flush()

    def hang_up(self) -> None:
        """Close the terminal (once; again: nothing)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        os.close(self.master)


def start_in_terminal(args: list[str], log: Path) -> Terminal:
    """`ukd` as the leader of a new session whose controlling terminal is a new pty
    (util-linux `setsid --ctty`, which execs `ukd` in place: the pid is ukd's and the
    session's, see :class:`Session`)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    proc = subprocess.Popen(["setsid", "--ctty", UKD, *args], stdin=slave, stdout=slave,
                            stderr=slave, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    os.close(slave)
    log.write_bytes(b"")
    return Terminal(proc, master, log)


def run_ukd(args: list[str], cwd: Path | None = None, timeout: float = 600
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([UKD, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


# ----------------------------------------------------------------------------- processes


def _stat_table() -> dict[int, list[str]]:
    """pid -> the fields of /proc/<pid>/stat after "pid (comm)" (state, ppid, pgrp, session,
    ..., start time at index 19)."""
    table: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        table[int(entry)] = stat[stat.rindex(")") + 2:].split()
    return table


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, start time in clock ticks), from /proc."""
    return {pid: (int(f[1]), int(f[19])) for pid, f in _stat_table().items()}


@dataclass
class Session:
    """The processes of one `ukd` started by :func:`start_ukd` (session id = its pid)."""

    sid: int
    seen: dict[int, str] = field(default_factory=dict)  # pid -> command line, from sample()

    def members(self) -> dict[int, str]:
        """Live (not zombie) processes of the session: pid -> command line."""
        return {pid: cmdline(pid) for pid, f in _stat_table().items()
                if int(f[3]) == self.sid and f[0] != "Z"}

    def identities(self) -> set[tuple[int, int]]:
        """(pid, start time) of every live process of the session: a pid recycled later
        names another process."""
        return {(pid, int(f[19])) for pid, f in _stat_table().items()
                if int(f[3]) == self.sid and f[0] != "Z"}

    def sample(self) -> dict[int, str]:
        now = self.members()
        self.seen.update(now)
        return now

    def wait_empty(self, timeout: float) -> dict[int, str]:
        """Wait (polling, up to ``timeout`` s) until no process of the session is alive;
        returns what is left. A bound, not a measurement: Ray's agents give up on a dead
        GCS after about a minute."""
        deadline = time.monotonic() + timeout
        while (left := self.members()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left

    def stop(self, grace: float = 30) -> None:
        """Teardown: SIGTERM the session's leader (e.g. `ray start --block`, which then stops
        its node's processes in order), then every process still there, SIGKILL what is
        left after ``grace`` seconds (never anything outside the session)."""
        leader = [self.sid] if self.sid in self.members() else []
        for targets in (leader, list(self.members())):
            for pid in targets:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            if not self.wait_empty(grace):
                return
        self.kill_all()

    def kill_all(self) -> None:
        """Teardown: SIGKILL every process left in the session (never anything else)."""
        for pid in self.members():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def ignores(pid: int, signum: int) -> bool | None:
    """Whether the process ignores the signal (its SigIgn mask); None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(mask, 16) >> (signum - 1) & 1)


def wait_gone(identities: set[tuple[int, int]], timeout: float) -> set[tuple[int, int]]:
    """Wait (polling, up to ``timeout`` s) until none of these processes (pid, start time)
    is alive; returns those that still are."""
    deadline = time.monotonic() + timeout
    while True:
        table = _stat_table()
        left = {(pid, started) for pid, started in identities
                if pid in table and int(table[pid][19]) == started and table[pid][0] != "Z"}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.5)


def start_time(pid: int) -> int | None:
    return _proc_table().get(pid, (0, None))[1]


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root``: pid -> start time."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found[child] = table[child][1]
                stack.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
    except OSError:
        return "?"


@dataclass
class ProcessWatcher:
    """Records every descendant a process ever had (sampled twice a second)."""

    root: int
    seen: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _before: set[tuple[int, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        # Children the root had before (e.g. multiprocessing's resource tracker in the test
        # process) are not what the test watches.
        self._before = set(descendants(self.root).items())
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def sample(self) -> None:
        for pid, started in descendants(self.root).items():
            if pid not in self.seen and (pid, started) not in self._before:
                self.seen[pid] = started
                self.names[pid] = cmdline(pid)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def alive(self) -> dict[int, str]:
        table = _proc_table()
        return {pid: self.names.get(pid, "?") for pid, started in self.seen.items()
                if pid in table and table[pid][1] == started and not _zombie(pid)}

    def wait_gone(self, timeout: float) -> dict[int, str]:
        deadline = time.monotonic() + timeout
        while (left := self.alive()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left

    def kill_leftovers(self) -> None:
        """Teardown: SIGKILL what is left of this process's descendants (never anything else)."""
        self.stop()
        for pid in self.alive():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2:].split()[0] == "Z"


def listening_sockets(pids: Iterable[int]) -> list[tuple[str, str]]:
    """(local address, process) of every listening TCP socket the given pids hold."""
    wanted = set(pids)
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 6:
            continue
        for chunk in parts[5].split("),("):
            if "pid=" not in chunk:
                continue
            pid = int(chunk.split("pid=")[1].split(",")[0])
            if pid in wanted:
                found.append((parts[3], chunk.split('"')[1] if '"' in chunk else str(pid)))
    return found


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"ukd ended (rc {proc.returncode}) before {what}:\n"
                                 + (log.read_text()[-3000:] if log else ""))
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n"
                                 + (log.read_text()[-3000:] if log else ""))
        time.sleep(0.1)


def wait_exit(proc: subprocess.Popen[bytes], timeout: float, log: Path) -> int:
    """``ukd``'s exit code; if it has not exited within ``timeout``, its threads' stacks
    (SIGUSR1: faulthandler, orchestrator/cli.py) and the log's tail in the failure."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)  # the dump is written at once; this only bounds it
        raise AssertionError(f"ukd (pid {proc.pid}) had not exited {timeout:.0f}s later; "
                             f"its stacks and output:\n{log.read_text(errors='replace')[-8000:]}"
                             ) from None


# ----------------------------------------------------------------------------- MLflow


@dataclass
class Store:
    client: MlflowClient
    manifest: dict[str, Any]

    @classmethod
    def of(cls, out: Path) -> Store:
        manifest = json.loads((out / "sweep.json").read_text())
        return cls(MlflowClient(tracking_uri=manifest["tracking_uri"]), manifest)

    def runs(self, kind: str = "trial") -> list[Run]:
        found: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.manifest["experiment_id"]], f"tags.`ukd.kind` = '{kind}'",
                max_results=1000, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return found

    def parent(self) -> Run:
        return self.client.get_run(self.manifest["parent_run_id"])

    def steps(self, run: Run, key: str) -> list[int]:
        return sorted(m.step for m in self.client.get_metric_history(run.info.run_id, key))

    def history(self, run: Run, key: str) -> list[Any]:
        return list(self.client.get_metric_history(run.info.run_id, key))


def tree(path: Path) -> list[str]:
    """Every path under ``path`` (relative), for nothing-was-written checks."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


_CACHE: list[Path] = []


def shared_cache(factory: Any) -> Path:
    """One teacher cache for every reliability test of a session (the 1-epoch teacher is
    trained once, under the stage's file lock)."""
    if not _CACHE:
        _CACHE.append(factory.mktemp("ukd-cache"))
    return _CACHE[0]


@dataclass
class Finished:
    """A ukd process that ended: its exit code and its output (stdout and stderr)."""

    returncode: int
    output: str
