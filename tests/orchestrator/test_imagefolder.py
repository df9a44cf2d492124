"""Image folders: layout and decoding conventions, memory and stream storage giving the same
batches and trials, batches independent of workers and prefetch depth, bounded read-ahead,
resume of a streamed trial, corrupt files named, preflight refusals, ``ukd data check``.

Generated data only (tests/orchestrator/imagefolders.py); engine level, no Ray (the sweep
over a folder is in test_imagefolder_sweep.py).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from models.augment import AUGMENT_PRESETS
from orchestrator.cli import app
from orchestrator.data.batches import BatchStream
from orchestrator.data.datasets import DatasetBundle, load_dataset
from orchestrator.data.folders import FolderImages, scan
from orchestrator.data.imagefiles import UnreadableImageError
from orchestrator.engine import member as member_module
from orchestrator.errors import TrialFailure
from orchestrator.spec.config import DatasetConfig, TrialConfig
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from orchestrator.stages.teachers import ensure_teacher
from orchestrator.stages.trials import run_trial
from tests.orchestrator.imagefolders import digits_folder, make_folder
from tests.orchestrator.specs import minimal_spec


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("digits") / "folder", every=3)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("mixed") / "folder")


def _data(root: Path, storage: str, workers: int = 0, prefetch: int = 2,
          size: int = 16) -> DatasetBundle:
    return load_dataset(DatasetConfig(name="imagefolder", root=str(root), image_size=size,
                                      storage=storage, workers=workers, prefetch=prefetch))


def _stream(bundle: DatasetBundle, augment: str, views: int = 2, batch: int = 64
            ) -> BatchStream:
    return BatchStream(bundle.training_images, bundle.train.labels, bundle.mean, bundle.std,
                       AUGMENT_PRESETS[augment], seed=3, batch_size=batch, num_views=views)


def _batches(stream: BatchStream, epoch: int, steps: int) -> list[list[torch.Tensor]]:
    out = []
    for batch in stream.epoch(epoch):
        if batch.step >= steps:
            break
        out.append([*batch.views(2), batch.rotated(), batch.fetcher()(batch.indices[:5])])
    return out


# ----------------------------------------------------------------------------- conventions


def test_folder_conventions(mixed_dir: Path) -> None:
    """Every colour mode becomes RGB at image_size, other files are ignored, extensions in
    any case count, classes are the sorted folder names, the val labels map onto them."""
    index = scan(str(mixed_dir))
    assert index.classes == ("class_0", "class_1", "class_2")
    assert len(index.train_files) == 3 * 40 and len(index.val_files) == 3 * 12
    assert any(f.endswith(".JPG") for f in index.train_files)
    assert not any(f.endswith(".txt") for f in index.train_files)
    bundle = _data(mixed_dir, "memory", size=24)
    assert bundle.train.images.shape == (120, 3, 24, 24)
    assert bundle.training_images.shape == (120, 3, 24, 24)
    assert bundle.num_classes == 3 and bundle.train.labels.tolist() == list(index.train_labels)
    assert bundle.test.labels.tolist() == list(index.val_labels)


def test_labels_are_for_evaluation_unless_asked(mixed_dir: Path, tmp_path: Path) -> None:
    from orchestrator.data.datasets import uses_labels

    assert not uses_labels(DatasetConfig(name="imagefolder", root=str(mixed_dir)))
    assert uses_labels(DatasetConfig(name="imagefolder", root=str(mixed_dir), labels=True))
    assert uses_labels(DatasetConfig(name="digits"))


# ----------------------------------------------------------------------------- same batches


@pytest.mark.parametrize("augment", ["ssl_light", "mocov2"])
def test_memory_and_stream_give_the_same_batches(digits_dir: Path, augment: str) -> None:
    """The digits' own images as PNG: every view, SSKD's rotated copies and an extra fetch
    are equal tensor for tensor read from memory or streamed (``mocov2``: the crops are
    made per image at decode time in the stream, per sample of the stored batch in memory)."""
    memory = _stream(_data(digits_dir, "memory"), augment)
    streamed = _stream(_data(digits_dir, "stream", workers=2), augment)
    images: Any = streamed.images
    assert isinstance(images, FolderImages)
    for a, b in zip(_batches(memory, 1, 4), _batches(streamed, 1, 4), strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


@pytest.mark.parametrize("augment", ["ssl_light", "mocov2"])
def test_workers_and_prefetch_do_not_change_a_batch(mixed_dir: Path, augment: str) -> None:
    """Mixed sizes and modes (so decode-time crops come from the files' full sizes)."""
    runs = [_batches(_stream(_data(mixed_dir, "stream", workers=w, prefetch=p, size=24),
                             augment, batch=32), 0, 3)
            for w, p in ((0, 1), (2, 3), (1, 2))]
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            for x, y in zip(a, b, strict=True):
                assert torch.equal(x, y)


def test_read_ahead_does_not_grow_with_the_folder(tmp_path: Path) -> None:
    """Host memory of a stream: at most ``prefetch`` batches decoded ahead, the same for a
    folder four times larger (the split itself is never decoded as a whole)."""
    peaks = []
    for i, per_class in enumerate((20, 80)):
        root = make_folder(tmp_path / f"f{i}", train=per_class, val=4, seed=i)
        for augment in ("ssl_light", "mocov2"):
            stream = _stream(_data(root, "stream", workers=1, prefetch=2), augment, batch=16)
            steps = sum(1 for batch in stream.epoch(0) if batch.views(2))
            assert steps == 3 * per_class // 16
            images: Any = stream.images  # a FolderImages standing in for the tensor
            assert isinstance(images, FolderImages)
            peaks.append(images.peak_pending_images)
    assert peaks == [2 * 16] * 4


# ----------------------------------------------------------------------------- trials


def _trials(root: Path, tmp: Path, cache: Path, storage: str, epochs: int = 2, **train: Any
            ) -> list[TrialConfig]:
    data = minimal_spec(
        output_dir=str(tmp / "out"), cache_dir=str(cache),
        dataset={"name": "imagefolder", "root": str(root), "image_size": 16,
                 "storage": storage, "workers": 1},
        train={"epochs": epochs, "batch_size": 128, "augment": "ssl_light", **train},
        knn={"k": [10]})
    data["grid"] = {"teacher": "t", "student": "resnet8x4",
                    "loss": [{"name": "cos", "neighbours": 3, "epoch_anchors": 0.25}]}
    data["teachers"]["t"]["pretrain"]["batch_size"] = 256
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    trials = expand(load_spec(path))
    first = trials[0]
    report = ensure_teacher(first.teacher, first.dataset, first.eval.knn,
                            first.runtime.cache_dir, graph_sizes=(31,))
    return [t.with_report(report) for t in trials]


def _scores(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.endswith("_time_s")}


@pytest.fixture(scope="module")
def trial_runs(digits_dir: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> dict[str, Any]:
    """A CoS trial (CoSS neighbour batches) on the digits folder from memory and streamed
    (one teacher: storage is not part of its key)."""
    out = {}
    for storage in ("memory", "stream"):
        tmp = tmp_path_factory.mktemp(storage)
        (trial,) = _trials(digits_dir, tmp, cache, storage)
        out[storage] = (trial, run_trial(trial))
    return out


def test_memory_and_stream_give_the_same_trial(trial_runs: dict[str, Any]) -> None:
    (memory_trial, memory), (stream_trial, stream) = trial_runs["memory"], trial_runs["stream"]
    assert memory_trial.trial_id == stream_trial.trial_id  # storage decides no result
    assert memory["knn/top1_k10"] > 20.0  # it learnt something from the folder
    assert _scores(memory) == _scores(stream)


def test_streamed_trial_killed_mid_epoch_resumes(trial_runs: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """Killed in the second epoch (after the first epoch's checkpoint), run again: the
    result equals the uninterrupted run's."""
    trial, uninterrupted = trial_runs["stream"]
    trial = dataclasses.replace(trial, runtime=dataclasses.replace(
        trial.runtime, trial_dir=str(tmp_path / trial.trial_id)))
    real_step = member_module.Member.step

    class Killed(BaseException):
        pass

    def step(self: Any, batch: Any, teacher: Any) -> None:
        if batch.epoch == 1 and batch.step == 2:
            raise Killed
        real_step(self, batch, teacher)

    with monkeypatch.context() as mp:
        mp.setattr(member_module.Member, "step", step)
        with pytest.raises(Killed):
            run_trial(trial)
    reports: list[dict[str, Any]] = []
    resumed = run_trial(trial, reports.append)
    assert reports[0]["resumed_from_epoch"] == 1
    assert _scores(resumed) == _scores(uninterrupted)


def test_a_corrupt_file_fails_the_trial_naming_it(trial_runs: dict[str, Any],
                                                  digits_dir: Path, cache: Path,
                                                  tmp_path: Path) -> None:
    """The teacher stage is cached (it read the folder whole before the file broke)."""
    (trial,) = _trials(digits_dir, tmp_path, cache, "stream", epochs=1)
    bad = Path(scan(str(digits_dir)).train_files[100])
    good = bad.read_bytes()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    try:
        with pytest.raises(TrialFailure) as failed:
            run_trial(trial)
    finally:
        bad.write_bytes(good)
    assert str(bad) in failed.value.reason and "cannot decode" in failed.value.reason


def test_a_corrupt_file_fails_the_stage_naming_it(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "folder", classes=2, train=8, val=2)
    bad = Path(scan(str(root)).train_files[3])
    bad.write_text("not an image")
    with pytest.raises(UnreadableImageError, match=str(bad)):
        _trials(root, tmp_path, tmp_path / "cache", "stream", epochs=1)


# ----------------------------------------------------------------------------- refusals


def _refusal(tmp_path: Path, root: Path, name: str = "imagefolder") -> str:
    spec = minimal_spec(output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                        dataset={"name": name, "root": str(root), "image_size": 16})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["sweep", str(path)])
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture
def small_dir(tmp_path: Path) -> Iterator[Path]:
    yield make_folder(tmp_path / "data", classes=2, train=2, val=1)


def test_preflight_refuses_a_broken_layout(small_dir: Path, tmp_path: Path) -> None:
    assert "is not a folder" in _refusal(tmp_path, tmp_path / "nowhere")
    shutil.rmtree(small_dir / "val" / "class_1")
    (small_dir / "val" / "class_9").mkdir()
    (small_dir / "val" / "class_9" / "a.png").write_bytes(
        (small_dir / "val" / "class_0").iterdir().__next__().read_bytes())
    assert f"{small_dir / 'val' / 'class_9'} is a class that" in _refusal(tmp_path, small_dir)
    (small_dir / "train" / "class_5").mkdir()
    (small_dir / "train" / "class_5" / "readme.txt").write_text("no images")
    assert f"{small_dir / 'train' / 'class_5'} holds no image files" in \
        _refusal(tmp_path, small_dir)
    shutil.rmtree(small_dir / "train" / "class_5")
    shutil.rmtree(small_dir / "val")
    assert f"{small_dir / 'val'} is missing" in _refusal(tmp_path, small_dir)


def test_preflight_refuses_imagenet_without_its_classes(small_dir: Path,
                                                        tmp_path: Path) -> None:
    line = _refusal(tmp_path, small_dir, "imagenet")
    assert "ImageNet needs the 1,000" in line and str(small_dir / "train") in line


def test_data_check_lists_unreadable_files(small_dir: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "check", str(small_dir), "--workers", "2"])
    assert ok.exit_code == 0, ok.output
    assert "6 images, 0 unreadable" in ok.output
    bad = small_dir / "train" / "class_1" / "broken.jpeg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    failed = runner.invoke(app, ["data", "check", str(small_dir), "--workers", "0"])
    assert failed.exit_code == 1
    assert f"unreadable: {bad}" in failed.output and "7 images, 1 unreadable" in failed.output


def test_batched_decode_path_equals_the_worker_path_on_cpu(mixed_dir: Path) -> None:
    """``dataset.decode: gpu`` decodes a batch with one ``decode_jpeg(list, device=...)``
    call and cuts every view with the batched resize; no GPU here, so the same code runs on
    the CPU and must give what the decode workers give at full scale, within one grey level
    (float32 products against the uint8 resize), for JPEG, PNG, CMYK, palette and RGBA
    files alike; and the same whether the files were read ahead or not."""
    from orchestrator.data.folders import (
        decode_views,
        decode_views_on,
        plan_views_many,
        read_files,
    )

    files = scan(str(mixed_dir)).train_files[:10]
    seeds = [[11 * i + k for k in range(2)] for i in range(len(files))]
    cfg = AUGMENT_PRESETS["mocov2"]
    batched = decode_views_on(files, seeds, cfg, 20, "cpu")
    ahead = decode_views_on(files, seeds, cfg, 20, "cpu", read_files(files),
                            plan_views_many(files, seeds, cfg))
    assert torch.equal(ahead, batched)
    for i, path in enumerate(files):
        alone = torch.from_numpy(decode_views(path, seeds[i], cfg, 20, draft=False))
        assert (batched[i].int() - alone.int()).abs().max() <= 1


def test_jpeg_frame_reads_the_frame_header(tmp_path: Path) -> None:
    """Grey, RGB (baseline and progressive) and CMYK JPEGs give 1, 3, 3 and 4 components and
    their size (the GPU decode takes 1 and 3); a PNG, an empty file and a cut header give
    None."""
    from PIL import Image

    from orchestrator.data.imagefiles import jpeg_frame, read_file

    rgb = Image.new("RGB", (40, 30), (200, 30, 90))
    cases: dict[str, tuple[Image.Image, dict[str, Any], int | None]] = {
        "grey.jpg": (rgb.convert("L"), {}, 1), "rgb.jpg": (rgb, {}, 3),
        "progressive.jpg": (rgb, {"progressive": True}, 3),
        "cmyk.jpg": (rgb.convert("CMYK"), {}, 4), "rgb.png": (rgb, {}, None)}
    for name, (image, options, want) in cases.items():
        image.save(tmp_path / name, **options)
        frame = jpeg_frame(memoryview(read_file(str(tmp_path / name)).data))
        assert frame == (None if want is None else (want, 30, 40)), name
    data = read_file(str(tmp_path / "rgb.jpg"))
    assert jpeg_frame(memoryview(data[:0].data)) is None
    assert jpeg_frame(memoryview(data[:30].data)) is None


def test_gpu_decode_read_ahead_gives_the_batched_decode(mixed_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU decode's read-ahead (views drawn by the workers, files read by a thread)
    gives what one :func:`decode_views_on` call gives, batch for batch, whatever the
    workers; run here on the CPU with the GPU route forced."""
    from orchestrator.data.folders import FolderImages, as_tensor, decode_views_on

    monkeypatch.setattr(FolderImages, "_on_gpu", property(lambda self: True))
    cfg = AUGMENT_PRESETS["mocov2"]
    for workers in (0, 2):
        bundle = _data(mixed_dir, "stream", workers=workers)
        images: Any = bundle.training_images  # a FolderImages standing in for the tensor
        assert isinstance(images, FolderImages)
        stream = BatchStream(as_tensor(images), None, bundle.mean, bundle.std, cfg, seed=3,
                             batch_size=8, num_views=2)
        for batch in stream.epoch(1):
            got = batch.geometric(2)
            paths = [images.files[i] for i in batch.indices.tolist()]
            seeds = stream.view_seeds(1, batch.step, len(paths), 2)
            want = decode_views_on(paths, seeds, cfg, images.decode.crop, "cpu")
            assert torch.equal(got, want)
        assert images.peak_pending_images == 16  # two batches were read ahead


def test_gpu_decode_runs_ahead_in_the_finisher_thread(mixed_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-ahead batch of the GPU route is decoded and cropped by the finisher thread
    (on CUDA it overlaps the trial's work on the batch before), not by the thread that reads
    it; with ``finish_ahead`` off, by the reader; the batches are the same either way."""
    import threading

    from orchestrator.data import folders

    monkeypatch.setattr(FolderImages, "_on_gpu", property(lambda self: True))
    decoded_by: list[int] = []
    real = folders.decode_views_on

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        decoded_by.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(folders, "decode_views_on", spy)
    got = {}
    for ahead in (True, False):
        images: Any = _data(mixed_dir, "stream").training_images
        images.finish_ahead = ahead
        stream = BatchStream(images, None, torch.zeros(3), torch.ones(3),
                             AUGMENT_PRESETS["mocov2"], seed=3, batch_size=8, num_views=2)
        decoded_by.clear()
        got[ahead] = [batch.geometric(2) for batch in stream.epoch(1)]
        assert len(decoded_by) == len(got[ahead]) > 1
        here = threading.get_ident()
        assert all((thread != here) == ahead for thread in decoded_by)
    assert all(torch.equal(a, b) for a, b in zip(got[True], got[False], strict=True))


def test_gpu_share_splits_each_batch_between_nvjpeg_and_the_workers(
        mixed_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``gpu_share``: each batch's first images take the GPU route (one batched decode), the
    others the workers' (the CPU route's decode), in batch order -- whatever the workers,
    and made ahead or when read; run here on the CPU with the GPU route forced."""
    from orchestrator.data.folders import decode_views_many, decode_views_on

    monkeypatch.setattr(FolderImages, "_on_gpu", property(lambda self: True))
    cfg = AUGMENT_PRESETS["mocov2"]
    share, batch_size = 0.4, 10  # 4 images of each full batch on the GPU route
    got: dict[tuple[int, bool], list[torch.Tensor]] = {}
    for workers, ahead in ((0, True), (2, True), (2, False)):
        streamed: Any = _data(mixed_dir, "stream", workers=workers).training_images
        images = dataclasses.replace(streamed, gpu_share=share, finish_ahead=ahead)
        stream = BatchStream(images, None, torch.zeros(3), torch.ones(3), cfg, seed=3,
                             batch_size=batch_size, num_views=2)
        got[workers, ahead] = []
        for batch in stream.epoch(1):
            views = batch.geometric(2)
            paths = [images.files[i] for i in batch.indices.tolist()]
            seeds = stream.view_seeds(1, batch.step, len(paths), 2)
            k = round(len(paths) * share)
            head = decode_views_on(paths[:k], seeds[:k], cfg, images.decode.crop, "cpu")
            tail = decode_views_many(paths[k:], seeds[k:], cfg, images.decode.crop,
                                     images.decode.draft)
            assert torch.equal(views, torch.cat([head, torch.from_numpy(tail)]))
            got[workers, ahead].append(views)
    first, *others = got.values()
    assert len(first) > 1 and all(
        all(torch.equal(a, b) for a, b in zip(first, other, strict=True)) for other in others)


def test_plan_views_finds_a_frame_header_behind_large_metadata(tmp_path: Path) -> None:
    """A JPEG whose frame header sits behind more metadata than the header read (a 100 KB
    ICC profile) is still routed to the batched decode, its crops drawn on its real size."""
    from PIL import Image

    from orchestrator.data.folders import _HEADER_BYTES, _geometry, plan_views

    path = tmp_path / "icc.jpg"
    Image.new("RGB", (50, 40), (10, 200, 30)).save(path, icc_profile=b"\0" * 100_000)
    assert path.stat().st_size > _HEADER_BYTES
    cfg = AUGMENT_PRESETS["mocov2"]
    plan = plan_views(str(path), [5, 6], cfg)
    assert plan.batched
    assert list(zip(plan.boxes, plan.flips, strict=True)) == [_geometry(40, 50, cfg, s)
                                                              for s in (5, 6)]
