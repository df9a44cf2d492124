"""Teacher files, third-party checkpoint loading and its error messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torchvision import models as tvm

from models import build_model
from models.base import Backbone
from models.checkpoint_format import CheckpointError, load_teacher, read_checkpoint, save_teacher
from models.heads import mlp_dims, mlp_head, ssl_head_from_state
from models.weights import build_teacher_from_checkpoint, load_backbone_weights


def _trained_like(name: str, num_classes: int | None = None, in_channels: int = 3) -> Backbone:
    """A model with non-default weights and BatchNorm statistics."""
    torch.manual_seed(1)
    model = build_model(name, num_classes, in_channels)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.train()
        model(torch.randn(8, in_channels, 16, 16))
    return model.eval()


def _same_outputs(a: Backbone, b: Backbone, x: Tensor) -> None:
    a.eval()
    b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
        if a.classifier is not None:
            torch.testing.assert_close(a.forward_logits(a(x)), b.forward_logits(b(x)))


X = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- teacher files


def test_teacher_round_trip(tmp_path: Path) -> None:
    backbone = _trained_like("resnet20", num_classes=10)
    head = mlp_head(64, 64, 32)
    path = save_teacher(tmp_path / "t" / "teacher.pt", backbone, head, {"recipe": "simclr"})
    assert [p.name for p in path.parent.iterdir()] == ["teacher.pt"]  # no temp file left

    teacher, meta = load_teacher(path)
    assert meta["recipe"] == "simclr" and meta["arch"] == "resnet20"
    assert meta["num_classes"] == 10 and meta["ssl_head_dims"] == [64, 64, 32]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        feats = backbone(X)
        torch.testing.assert_close(teacher.features(X), feats, rtol=0, atol=0)
        torch.testing.assert_close(teacher.embedding(feats), head(feats), rtol=0, atol=0)
        torch.testing.assert_close(teacher.logits(feats), backbone.forward_logits(feats))
    assert teacher.embedding_dim == 32


def test_teacher_without_head_and_grayscale(tmp_path: Path) -> None:
    backbone = _trained_like("wrn_16_2", in_channels=1)
    save_teacher(tmp_path / "t.pt", backbone, None, {})
    teacher, meta = load_teacher(tmp_path / "t.pt")
    assert teacher.ssl_head is None and meta["in_channels"] == 1 and meta["num_classes"] is None
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(teacher.features(x), backbone(x), rtol=0, atol=0)


def test_save_teacher_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="JSON"):
        save_teacher(tmp_path / "t.pt", build_model("resnet20"), None, {"x": object()})
    from models.cifar import CifarResNet

    unnamed = CifarResNet(20, (16, 16, 32, 64), None, 3)  # not built through the registry
    with pytest.raises(ValueError, match="build_model"):
        save_teacher(tmp_path / "t.pt", unnamed, None, {})
    with pytest.raises(ValueError, match="alternating Linear and ReLU"):
        head = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.Linear(64, 8))
        save_teacher(tmp_path / "t.pt", build_model("resnet20"), head, {})
    assert not list(tmp_path.iterdir())


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "teacher.pt"
    save_teacher(path, build_model("resnet20"), None, {"v": 1})

    def broken_save(obj: object, f: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_teacher(path, build_model("resnet20"), None, {"v": 2})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["teacher.pt"]
    assert load_teacher(path)[1]["v"] == 1  # the old file is intact


def test_load_teacher_rejects_other_files(tmp_path: Path) -> None:
    torch.save(build_model("resnet20").state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a ukd teacher file"):
        load_teacher(tmp_path / "plain.pt")


# ----------------------------------------------------------------------------- unreadable files


def test_missing_corrupt_and_unsafe_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=re.escape(f"not found: {missing}")):
        load_backbone_weights(build_model("resnet20"), missing)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=re.escape(f"cannot read checkpoint {garbage}")):
        load_backbone_weights(build_model("resnet20"), garbage)

    good = tmp_path / "good.pt"
    torch.save(build_model("resnet20").state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(truncated))):
        read_checkpoint(truncated)
    with pytest.raises(CheckpointError, match=re.escape(str(truncated))):
        load_teacher(truncated)

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": build_model("resnet20")}, unsafe)  # a pickled module, not weights
    with pytest.raises(CheckpointError, match="re-save it"):
        read_checkpoint(unsafe)


# ----------------------------------------------------------------------------- user checkpoints


def _wrap(state: dict[str, Tensor], prefix: str, nest: str | None) -> dict[str, object]:
    wrapped = {prefix + k: v for k, v in state.items()}
    return {nest: wrapped, "epoch": 100} if nest else dict(wrapped)


@pytest.mark.parametrize(
    ("prefix", "nest"),
    [
        ("", None),
        ("module.", "state_dict"),
        ("backbone.", "model"),
        ("encoder.", "net"),
        ("model.", None),
        ("student.", "state_dict"),
        ("_orig_mod.", None),
        ("module.backbone.", "model_state_dict"),
    ],
)
def test_prefixes_and_nesting_are_stripped(tmp_path: Path, prefix: str, nest: str | None) -> None:
    source = _trained_like("resnet8x4")
    path = tmp_path / "ckpt.pt"
    torch.save(_wrap(source.state_dict(), prefix, nest), path)
    target = build_model("resnet8x4")
    report = load_backbone_weights(target, path)
    assert "".join(report.stripped_prefixes) == prefix
    _same_outputs(source, target, X)


def test_moco_checkpoint_keeps_query_encoder_and_head(tmp_path: Path) -> None:
    """MoCo-v2 layout: module.encoder_q.* (fc replaced by the MLP head), encoder_k, queue."""
    source = _trained_like("resnet20")
    head = mlp_head(64, 64, 128)
    state: dict[str, Tensor] = {}
    for enc in ("encoder_q", "encoder_k"):
        for k, v in source.state_dict().items():
            state[f"module.{enc}.{k}"] = v if enc == "encoder_q" else torch.zeros_like(v)
        for k, v in head.state_dict().items():
            state[f"module.{enc}.fc.{k}"] = v
    state["module.queue"] = torch.randn(128, 4096)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    path = tmp_path / "moco.pth.tar"
    torch.save({"arch": "resnet20", "state_dict": state, "optimizer": {}}, path)

    target = build_model("resnet20")
    report = load_backbone_weights(target, path)
    assert report.stripped_prefixes == ("module.", "encoder_q.")
    assert "module.queue" in report.dropped and "module.encoder_q.fc.0.weight" in report.dropped
    assert not report.classifier_loaded
    _same_outputs(source, target, X)
    rebuilt = ssl_head_from_state(report.extras)
    assert rebuilt is not None and mlp_dims(rebuilt) == [64, 64, 128]

    teacher = build_teacher_from_checkpoint("resnet20", path, None, 3, with_ssl_head=True)
    with torch.no_grad():
        feats = source(X)
        torch.testing.assert_close(teacher.embedding(feats), head(feats))


def test_reference_classifier_names_map_onto_ours(tmp_path: Path) -> None:
    """RepDistiller saves {"model": state} with fc / linear / classifier.0 classifiers."""
    for name, ref_key in (
        ("resnet8x4", "fc"),
        ("ShuffleV2", "linear"),
        ("MobileNetV2", "classifier.0"),
        ("vgg8", "classifier"),
    ):
        source = _trained_like(name, num_classes=100)
        state = {
            (ref_key + k[len("classifier") :] if k.startswith("classifier.") else k): v
            for k, v in source.state_dict().items()
        }
        torch.save(
            {"model": state, "epoch": 240, "accuracy": torch.tensor(79.4)}, tmp_path / f"{name}.pth"
        )
        teacher = build_teacher_from_checkpoint(name, tmp_path / f"{name}.pth", 100, 3)
        with torch.no_grad():
            torch.testing.assert_close(
                teacher.logits(teacher.features(X)), source.forward_logits(source(X))
            )


def test_classifier_handling() -> None:
    source = _trained_like("resnet20", num_classes=100)
    # Model without a classifier: the checkpoint's classifier is an extra.
    bare = build_model("resnet20")
    report = load_backbone_weights(bare, source.state_dict())
    assert "classifier.weight" in report.dropped and not report.classifier_loaded
    # Wrong number of classes: missing unless allowed.
    ten = build_model("resnet20", num_classes=10)
    with pytest.raises(CheckpointError, match=r"missing keys \(2\): classifier.weight"):
        load_backbone_weights(ten, source.state_dict())
    report = load_backbone_weights(ten, source.state_dict(), allow_missing_classifier=True)
    assert not report.classifier_loaded


def test_teacher_with_classes_needs_a_classifier(tmp_path: Path) -> None:
    torch.save(_trained_like("resnet20").state_dict(), tmp_path / "ssl.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \(2\): classifier"):
        build_teacher_from_checkpoint("resnet20", tmp_path / "ssl.pt", 10, 3)
    assert not build_teacher_from_checkpoint(
        "resnet20", tmp_path / "ssl.pt", None, 3
    ).has_classifier
    with pytest.raises(CheckpointError, match="no Linear/ReLU projection head"):
        build_teacher_from_checkpoint("resnet20", tmp_path / "ssl.pt", None, 3, with_ssl_head=True)


def test_mismatched_architecture_lists_keys() -> None:
    source = build_model("resnet20").state_dict()
    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(build_model("wrn_16_2"), source)
    msg = str(info.value)
    assert "does not fit model 'wrn_16_2'" in msg
    assert "missing keys" in msg and "block1.layer.0.bn1.weight" in msg
    assert "unexpected keys" in msg and "layer1.0.conv1.weight" in msg
    assert "more)" in msg  # long lists are cut at ten entries

    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): layer1\.3\."):
        load_backbone_weights(build_model("resnet32"), source)

    shapes = "shape mismatches (1): conv1.weight: checkpoint [16, 3, 3, 3] vs model [16, 1, 3, 3]"
    with pytest.raises(CheckpointError, match=re.escape(shapes)):
        load_backbone_weights(build_model("resnet20", in_channels=1), source)


def test_num_batches_tracked_may_be_absent() -> None:
    source = _trained_like("resnet20")
    state = {k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    target = build_model("resnet20")
    load_backbone_weights(target, {"state_dict": state})
    _same_outputs(source, target, X)


def test_teacher_file_through_build_teacher(tmp_path: Path) -> None:
    backbone = _trained_like("resnet20", num_classes=10)
    save_teacher(tmp_path / "t.pt", backbone, mlp_head(64, 64, 16), {})
    teacher = build_teacher_from_checkpoint(
        "resnet20", tmp_path / "t.pt", 10, 3, with_ssl_head=True
    )
    assert teacher.embedding_dim == 16
    with pytest.raises(CheckpointError, match="holds a resnet20 teacher"):
        build_teacher_from_checkpoint("resnet32", tmp_path / "t.pt", 10, 3)


@pytest.mark.parametrize(
    ("name", "classes"),
    [("resnet18", 1000), ("efficientnet_b0", 1000), ("mobilenet_v3_large", None)],
)
def test_torchvision_state_dicts_load(name: str, classes: int | None) -> None:
    torch.manual_seed(0)
    tv = tvm.get_model(name, weights=None).eval()
    ours = build_model(name, classes)
    report = load_backbone_weights(ours, tv.state_dict())
    assert report.stripped_prefixes == ()
    assert report.classifier_loaded == (classes is not None)
    x = torch.randn(2, 3, 64, 64)
    ours.eval()
    with torch.no_grad():
        if classes is not None:
            torch.testing.assert_close(ours.forward_logits(ours(x)), tv(x))
        else:
            pooled = torch.flatten(tv.avgpool(tv.features(x)), 1)
            torch.testing.assert_close(ours(x), pooled)
