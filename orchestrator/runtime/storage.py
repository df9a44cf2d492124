"""Shared storage on a Ray cluster, checked before anything runs or is written.

The teacher stage writes a teacher's weights and neighbour graphs into ``cache_dir`` on
whichever node runs it; the trials write their checkpoints, final metrics and failure.json
into ``<output>/trials/<id>/`` on theirs; the driver reads both back (and uploads them to
MLflow). So every node must see the output directory, the cache directory and the dataset
root as the very directories the driver sees, and be able to write there: a shared
filesystem mounted at the same path on every node.

With a cluster (``--address``) the driver writes a probe file holding a random token into
each directory (the deepest part of the path that exists yet: a new output directory is
checked where it will be created), and one tiny Ray task per alive node
(:func:`orchestrator.runtime.ray_runtime.run_on_each_node`) reads every probe back and creates and
removes an entry beside it. A dataset root the sweep only reads (``download: false``) gets no
probe: the node compares its listing with the driver's. The probes are removed whatever
happens. The first problem found is one :class:`UserInputError` line naming the node, the
directory and what is needed.

No Ray here (the node runner is passed in): the node side, :func:`probe_paths`, is a plain
function of the standard library.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import UserInputError

if TYPE_CHECKING:
    from orchestrator.spec.load import SweepSpec

PROBE_PREFIX = ".ukd-storage-probe-"
NODE_TIMEOUT_S = 180.0  # a node that has not run its probe task by then is reported

NEEDED = ("allowed: a directory on a filesystem every node mounts at the same path (NFS, "
          "Lustre, GPFS, CephFS, a Kubernetes ReadWriteMany volume) for output_dir, cache_dir "
          "and dataset.root, or a sweep on one machine without --address (docs/CLUSTER.md)")


@dataclass(frozen=True)
class Probe:
    """One directory to check: what it is, the path as the spec names it, the deepest part
    of it that exists (where the probe is), and either a probe file (``name``, its content
    ``token``) or, for a directory the driver may not write (a read-only dataset), the
    fingerprint of its listing (``name`` empty, ``token`` the fingerprint)."""

    what: str  # "output directory", "cache directory", "dataset root"
    path: str
    probed: str
    name: str
    token: str
    writable: bool = True


def existing_part(path: Path) -> Path:
    """The deepest directory of ``path`` that exists (``path`` itself when it does)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


LISTING_ROWS = 1000  # a flat folder of a million images is compared by its first names


def listing(directory: str) -> str:
    """The directory's entries, each with its size (files) or its number of entries
    (folders): the same directory shows the same listing. One directory read per folder."""
    rows: list[str] = []
    try:
        with os.scandir(directory) as top:
            entries = sorted((e for e in top if not e.name.startswith(PROBE_PREFIX)),
                             key=lambda e: e.name)
        for entry in entries[:LISTING_ROWS]:
            if entry.is_dir():
                rows.append(f"{entry.name}/ {len(os.listdir(entry.path))}")
            else:
                rows.append(f"{entry.name} {entry.stat().st_size}")
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    return "\n".join([f"{len(entries)} entries", *rows])


def shared_directories(spec: SweepSpec) -> list[tuple[str, Path, bool]]:
    """The directories every node must share with the driver, and whether nodes write
    there (a dataset root only when the stage may download into it)."""
    dirs = [("output directory", spec.output_dir, True),
            ("cache directory", spec.cache_dir, True)]
    if spec.dataset.root:
        dirs.append(("dataset root", Path(spec.dataset.root).expanduser().resolve(),
                     bool(spec.dataset.download)))
    return dirs


def probe_paths(probes: Sequence[Probe]) -> list[str]:
    """Runs on a node: each probe file must be there with the driver's token (or the
    directory show the driver's listing), and the directory be writable where nodes write.
    Returns one problem per failing directory (empty: all fine)."""
    problems: list[str] = []
    for probe in probes:
        different = f"does not see the {probe.what} {probe.path} as the driver does"
        if not probe.name:
            if listing(probe.probed) != probe.token:
                problems.append(f"{different} (its files in {probe.probed} differ from the "
                                "driver's)")
                continue
        else:
            try:
                with open(os.path.join(probe.probed, probe.name), encoding="utf-8") as handle:
                    seen = handle.read()
            except FileNotFoundError:
                problems.append(f"{different} (the probe file the driver wrote in "
                                f"{probe.probed} is not there)")
                continue
            except OSError as exc:
                problems.append(f"cannot read the {probe.what} {probe.path} ({probe.probed}: "
                                f"{exc.strerror or exc})")
                continue
            if seen != probe.token:
                problems.append(f"{different} (the probe file in {probe.probed} holds "
                                "another token)")
                continue
        if probe.writable:
            try:
                os.rmdir(tempfile.mkdtemp(prefix=".ukd-probe-", dir=probe.probed))
            except OSError as exc:
                problems.append(f"cannot write the {probe.what} {probe.path} "
                                f"({probe.probed}: {exc.strerror or exc})")
    return problems


NodeRunner = Callable[..., list[tuple[Any, Any]]]  # (fn, *args, timeout=) -> [(node, value)]


def check_shared_storage(spec: SweepSpec, run_on_each_node: NodeRunner,
                         timeout: float = NODE_TIMEOUT_S) -> int:
    """From every alive node of the connected cluster: the output directory, the cache
    directory and the dataset root are the driver's, and writable. Returns how many nodes
    were checked; raises :class:`UserInputError` (one line) on the first problem. Nothing is
    left behind (the probe files are removed)."""
    probes: list[Probe] = []
    written: list[Path] = []
    try:
        for what, path, writable in shared_directories(spec):
            probed = existing_part(path)
            if not writable:  # read-only for the sweep: compared by its listing
                probes.append(Probe(what, str(path), str(probed), "", listing(str(probed)),
                                    writable=False))
                continue
            probe = Probe(what, str(path), str(probed), f"{PROBE_PREFIX}{secrets.token_hex(8)}",
                          secrets.token_hex(16))
            target = probed / probe.name
            target.write_text(probe.token, encoding="utf-8")  # preflight: writable here
            written.append(target)
            probes.append(probe)
        results = run_on_each_node(probe_paths, probes, timeout=timeout)
    finally:
        for target in written:
            target.unlink(missing_ok=True)
    for node, value in results:
        if isinstance(value, BaseException):
            raise UserInputError(_node_failed(node, value, timeout))
        if value:
            raise UserInputError(f"shared storage: {node} {value[0]}; {NEEDED}")
    return len(results)


def _node_failed(node: Any, error: BaseException, timeout: float) -> str:
    if isinstance(error, TimeoutError):
        return (f"shared storage: {node} did not run the storage check within {timeout:.0f}s "
                "(is the node busy or unreachable?); every node must answer before a sweep "
                "starts: check it with `ray status`, or remove it from the cluster")
    cause = getattr(error, "cause", None) or error
    text = " ".join(str(cause).split())[:300]
    if isinstance(cause, ModuleNotFoundError | ImportError):
        return (f"shared storage: {node} cannot import ukd ({type(cause).__name__}: {text}); "
                "every node needs ukd installed in the Python environment its Ray uses")
    return f"shared storage: {node} failed the storage check ({type(cause).__name__}: {text})"
