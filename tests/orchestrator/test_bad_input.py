"""Bad input through the real CLI: one line naming the file (or option), the YAML path and
what is allowed; exit code 2; Ray not started; nothing written (no output directory, no
mlflow.db, no cache directory; the spec's defaults point into the test's directory)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import ray
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.orchestrator.sweeps import run_ukd, tiny_spec, tree, write_spec

Mutate = Callable[[dict[str, Any], Path], Any]


def _set(dotted: str, value: Any) -> Mutate:
    def mutate(spec: dict[str, Any], tmp: Path) -> None:
        *parents, last = dotted.split(".")
        node = spec
        for key in parents:
            node = node[key]
        node[last] = value(tmp) if callable(value) else value

    return mutate


def _cifar(corrupt: bool) -> Mutate:
    def mutate(spec: dict[str, Any], tmp: Path) -> None:
        root = tmp / "data"
        root.mkdir()
        if corrupt:  # the folder is there, its files are not CIFAR
            folder = root / "cifar-10-batches-py"
            folder.mkdir()
            for name in ("data_batch_1", "test_batch", "batches.meta"):
                (folder / name).write_bytes(b"junk")
        spec["dataset"] = {"name": "cifar10", "root": str(root), "labels": False}

    return mutate


def _transfer(name: str, files: tuple[str, ...]) -> Mutate:
    """An RGB dataset (CIFAR-10, checked later by the preflight) and a transfer dataset
    whose folder holds only ``files``."""

    def mutate(spec: dict[str, Any], tmp: Path) -> None:
        spec["dataset"] = {"name": "cifar10", "root": str(tmp / "data"), "labels": False}
        root = tmp / "downstream"
        for rel in files:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if rel.endswith("/"):
                path.mkdir(exist_ok=True)
            else:
                path.write_bytes(b"")
        spec["eval"] = {"transfer": [{"name": name, "root": str(root)}]}

    return mutate


def _teacher_checkpoint(content: bytes | None) -> Mutate:
    def mutate(spec: dict[str, Any], tmp: Path) -> None:
        path = tmp / "teacher.pt"
        if content is not None:
            path.write_bytes(content)
        spec["teachers"]["t"] = {"arch": "resnet20", "source": "checkpoint",
                                 "checkpoint": str(path)}

    return mutate


def _under_a_file(key: str) -> Mutate:
    def mutate(spec: dict[str, Any], tmp: Path) -> None:
        (tmp / "a_file").write_text("not a directory")
        spec[key] = str(tmp / "a_file" / "sub")

    return mutate


@contextmanager
def _refusing_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections for as long as the block runs: this
    socket holds it (bound, never listening), so nothing else can listen there meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


# id -> (change to the valid tiny spec, raw text instead of the spec, extra CLI args,
#        fragments the one line must hold; "{spec}" stands for the spec file's path)
CASES: dict[str, tuple[Mutate | None, bytes | None, list[str], list[str]]] = {
    "malformed_yaml": (None, b"name: x\ngrid: [unclosed\n", [],
                       ["{spec}", "malformed YAML: line 3, column 1"]),
    "binary_garbage": (None, bytes(range(256)) * 8, [], ["{spec}", "cannot read the file"]),
    "nul_character": (None, b"name: x\x00\n", [], ["{spec}", "malformed YAML"]),
    "empty_file": (None, b"", [], ["{spec}", "expected a mapping with keys name"]),
    "top_level_list": (None, b"- a\n- b\n", [], ["{spec}", "expected a mapping"]),
    "unknown_key": (_set("extra", 1), None, [],
                    ["{spec} at `extra`", "unknown key 'extra'", "allowed: name,"]),
    "unknown_nested_key": (_set("train.epoch", 3), None, [],
                           ["{spec} at `train.epoch`", "allowed: epochs,"]),
    "unknown_model": (_set("grid.student", ["resnet9000"]), None, [],
                      ["{spec} at `grid.student[0]`", "'resnet9000'", "allowed:", "resnet20"]),
    "unknown_teacher_arch": (_set("teachers.t.arch", "nope"), None, [],
                             ["{spec} at `teachers.t.arch`", "allowed:", "wrn_16_2"]),
    "unknown_objective": (_set("grid.loss", [{"name": "nope"}]), None, [],
                          ["{spec} at `grid.loss[0].name`", "allowed:", "coss"]),
    "unknown_loss_param": (_set("grid.loss", [{"name": "cosine", "lambda": 1.0}]), None, [],
                           ["{spec} at `grid.loss[0].lambda`", "allowed: name, weight"]),
    "unknown_dataset": (_set("dataset.name", "mnist"), None, [],
                        ["{spec} at `dataset.name`", "allowed: cifar10, cifar100, digits"]),
    "unknown_teacher_label": (_set("grid.teacher", "zz"), None, [],
                              ["{spec} at `grid.teacher[0]`", "allowed: t"]),
    "wrong_type_int": (_set("train.epochs", "three"), None, [],
                       ["{spec} at `train.epochs`", "expected int, got str"]),
    "wrong_type_float_in_axis": (_set("grid.lr", ["fast"]), None, [],
                                 ["{spec} at `grid.lr[0]`", "expected float"]),
    "wrong_type_bool": (_set("dataset.labels", "maybe"), None, [],
                        ["{spec} at `dataset.labels`", "expected bool"]),
    "empty_axis": (_set("grid.seed", []), None, [],
                   ["{spec} at `grid.seed`", "at least one value"]),
    "empty_loss_axis": (_set("grid.loss", []), None, [],
                        ["{spec} at `grid.loss`", "at least one value"]),
    "duplicate_axis_value": (_set("grid.seed", [0, 0]), None, [], ["{spec} at `grid.seed`"]),
    "zero_epochs": (_set("train.epochs", 0), None, [], ["{spec} at `train.epochs`", "> 0"]),
    "negative_batch": (_set("train.batch_size", -4), None, [],
                       ["{spec} at `train.batch_size`", "> 0"]),
    "zero_batch_in_axis": (_set("grid.batch_size", [0]), None, [],
                           ["{spec} at `grid.batch_size[0]`", "> 0"]),
    "zero_pretrain_epochs": (_set("teachers.t.pretrain.epochs", 0), None, [],
                             ["{spec} at `teachers.t.pretrain`", "epochs >= 1"]),
    "negative_cpu": (_set("resources.cpu", -1), None, [], ["{spec} at `resources.cpu`", "> 0"]),
    "zero_knn_k": (_set("knn.k", [0]), None, [], ["{spec} at `knn.k`", "positive"]),
    "labels_on_unlabelled_data": (_set("grid.loss", [{"name": "sskd"}]), None, [],
                                  ["{spec} at `grid.loss[0]`", "needs class labels"]),
    "batch_too_small": (lambda s, t: (_set("grid.loss", [{"name": "coss"}])(s, t),
                                      _set("train.batch_size", 8)(s, t)), None, [],
                        ["{spec} at `train.batch_size`", "batch size 8 is too small for coss",
                         "needs at least 16"]),
    "missing_teacher_checkpoint": (_teacher_checkpoint(None), None, [],
                                   ["{spec} at `teachers.t.checkpoint`", "no such file"]),
    "unreadable_teacher_checkpoint": (_teacher_checkpoint(b"garbage" * 8), None, [],
                                      ["{spec} at `teachers.t.checkpoint`", "cannot read"]),
    "cifar_root_without_files": (_cifar(corrupt=False), None, [],
                                 ["{spec} at `dataset.root`", "cifar-10-batches-py"]),
    "cifar_root_with_damaged_files": (_cifar(corrupt=True), None, [],
                                      ["{spec} at `dataset.root`", "corrupted"]),
    "transfer_stl10_without_unlabeled": (
        _transfer("stl10", tuple(f"stl10_binary/{f}" for f in (
            "train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"))), None, [],
        ["{spec} at `eval.transfer.datasets[0].root`", "stl10_binary lacks unlabeled_X.bin",
         "whole extracted stl10_binary.tar.gz"]),
    "transfer_caltech_flat": (
        _transfer("caltech101", ("caltech101/image_0001.jpg",)), None, [],
        ["{spec} at `eval.transfer.datasets[0].root`",
         "caltech101 lacks 101_ObjectCategories/BACKGROUND_Google",
         "101_ObjectCategories/<class>/image_NNNN.jpg"]),
    "output_under_a_file": (_under_a_file("output_dir"), None, [],
                            ["{spec} at `output_dir`", "is not a directory", "allowed:"]),
    "output_in_proc": (_set("output_dir", "/proc/ukd-out"), None, [],
                       ["{spec} at `output_dir`", "cannot create anything in /proc"]),
    "cache_under_a_file": (_under_a_file("cache_dir"), None, [],
                           ["{spec} at `cache_dir`", "is not a directory"]),
    "output_option_is_a_file": (lambda s, t: (t / "a_file").write_text("x"), None,
                                ["--output", "{tmp}/a_file"], ["--output", "not a directory"]),
    "tracking_uri_scheme": (None, None, ["--tracking-uri", "bogus://x"],
                            ["--tracking-uri bogus://x", "unsupported scheme", "allowed:"]),
    "tracking_server_down": (None, None, ["--tracking-uri", "http://127.0.0.1:{port}"],
                             ["--tracking-uri http://127.0.0.1:", "no MLflow server answers"]),
    "resume_without_sweep": (None, None, ["--resume"], ["--resume", "holds no sweep"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_nothing_written(
        case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mutate, text, args, fragments = CASES[case]
    monkeypatch.chdir(tmp_path)  # relative defaults (runs/...) would land here
    spec = tiny_spec(tmp_path, tmp_path / "cache")
    if mutate is not None:
        mutate(spec, tmp_path)
    path = tmp_path / "spec.yaml"
    if text is not None:
        path.write_bytes(text)
    else:
        write_spec(path, spec)
    before = tree(tmp_path)
    with _refusing_port() as port:
        args = [a.format(tmp=tmp_path, port=port) for a in args]
        result = CliRunner().invoke(app, ["sweep", str(path), *args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment.format(spec=path) in lines[0], (fragment, lines[0])
    assert tree(tmp_path) == before  # no output dir, mlflow.db or cache
    assert not ray.is_initialized()


def test_spec_that_is_a_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["sweep", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path}: is a directory; expected a sweep " \
                                    "spec YAML file"
    assert tree(tmp_path) == []


def test_missing_spec_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["sweep", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path / 'nope.yaml'}: no such file"


def test_real_process_reports_on_stderr_and_writes_nothing(tmp_path: Path) -> None:
    """The installed `ukd` in its own process: spec defaults (runs/<name>, runs/.cache) are
    relative to its working directory, the dataset is missing."""
    spec = tiny_spec(tmp_path, tmp_path / "unused")
    del spec["output_dir"], spec["cache_dir"]
    spec["dataset"] = {"name": "cifar100", "root": str(tmp_path / "nowhere")}
    path = write_spec(tmp_path / "spec.yaml", spec)
    before = tree(tmp_path)
    result = run_ukd(["sweep", str(path)], cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path} at `dataset.root`: cifar100 is not in ")
    assert tree(tmp_path) == before  # no runs/, no mlflow.db, no cache
