"""Decode workers write their chunks into one shared batch (orchestrator.data.sharedbatch):
the same batches as decoding in this process or sending the chunks through the pool's
pipe, and the parent's copy when a worker cannot open the batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.augment import AUGMENT_PRESETS
from orchestrator.data import sharedbatch
from orchestrator.data.batches import BatchStream
from orchestrator.data.datasets import load_dataset
from orchestrator.data.sharedbatch import SharedBatch, rows_into
from orchestrator.spec.config import DatasetConfig
from tests.orchestrator.imagefolders import make_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("shared") / "folder", train=12, val=4)


def _epoch(root: Path, workers: int) -> list[torch.Tensor]:
    bundle = load_dataset(DatasetConfig(name="imagefolder", root=str(root), image_size=16,
                                        storage="stream", workers=workers, prefetch=2))
    stream = BatchStream(bundle.training_images, None, bundle.mean, bundle.std,
                         AUGMENT_PRESETS["mocov2"], seed=5, batch_size=16, num_views=2)
    out = [torch.stack(batch.views(2)) for batch in stream.epoch(0)]
    out.append(bundle.training_images[torch.arange(7)])  # the evaluation transform's rows
    return out


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_shared_pipe_and_in_process_batches_are_equal(folder: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    shared = _epoch(folder, workers=2)
    _same(shared, _epoch(folder, workers=0))
    monkeypatch.setattr(sharedbatch.SharedBatch, "create", staticmethod(lambda shape: None))
    _same(shared, _epoch(folder, workers=2))  # the pipe


def test_a_worker_that_cannot_open_the_batch_sends_its_rows(folder: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    shared = _epoch(folder, workers=2)
    real = sharedbatch.SharedBatch.__init__

    def unreachable(self: SharedBatch, shape: tuple[int, ...]) -> None:
        real(self, shape)
        self.path = "/proc/0/fd/0"  # no such process: every worker falls back

    monkeypatch.setattr(sharedbatch.SharedBatch, "__init__", unreachable)
    _same(shared, _epoch(folder, workers=2))


def test_rows_land_at_their_offsets_and_the_file_is_closed() -> None:
    batch = SharedBatch.create((5, 2, 3))
    assert batch is not None and batch.path.startswith("/proc/")
    rows = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert rows_into(batch.path, 1, batch.row_bytes, lambda: rows) is None
    batch.fill(3, rows + 100)
    out = batch.array()
    assert out.flags.writeable and out.shape == (5, 2, 3)
    assert np.array_equal(out[0], np.zeros((2, 3), np.uint8))
    assert np.array_equal(out[1:3], rows) and np.array_equal(out[3:5], rows + 100)
    assert batch._fd is None  # the mapping holds the memory, not a descriptor
    with pytest.raises(AssertionError, match="already mapped"):
        batch.fill(0, rows)
    assert SharedBatch.create((0, 3)) is None
