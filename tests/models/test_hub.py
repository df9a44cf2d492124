"""torchvision pretrained weights: spec parsing, cache hits, and the offline error (no network)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torchvision import models as tvm

from models import hub
from models.hub import (
    WeightsUnavailableError,
    fetch_weights,
    parse_hub_spec,
    pretrained_backbone,
    pretrained_teacher,
    resolve_weights,
)

RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision ResNet18_Weights.IMAGENET1K_V1


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache, and any download attempt fails as if offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url: str, dst: Path) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(hub, "_download", offline)
    return tmp_path


def test_parse_and_resolve() -> None:
    assert parse_hub_spec("torchvision:resnet50:IMAGENET1K_V2") == ("resnet50", "IMAGENET1K_V2")
    assert parse_hub_spec("torchvision:resnet50") == ("resnet50", "DEFAULT")
    for bad in ("resnet50", "timm:resnet50", "torchvision::X", "torchvision:a:b:c"):
        with pytest.raises(ValueError, match="bad weights spec"):
            parse_hub_spec(bad)
    hw = resolve_weights("resnet50")  # DEFAULT resolves to the enum member's own name
    assert hw.weights == "IMAGENET1K_V2" and hw.num_classes == 1000
    assert hw.file_name == "resnet50-11ad3fa6.pth"
    with pytest.raises(ValueError, match=r"unknown weights 'V9'.*IMAGENET1K_V1"):
        resolve_weights("resnet50", "V9")
    with pytest.raises(ValueError, match="imagenet family only"):
        resolve_weights("resnet20")


def test_offline_error_names_file_and_folder(torch_home: Path) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        pretrained_backbone("resnet18", "IMAGENET1K_V1")
    msg = str(info.value)
    folder = torch_home / "hub" / "checkpoints"
    assert f"'{RESNET18_FILE}'" in msg and f"'{folder}'" in msg
    assert "URLError" in msg and "https://download.pytorch.org/models/" in msg


def test_cache_hit_needs_no_network(torch_home: Path) -> None:
    torch.manual_seed(0)
    tv = tvm.resnet18().eval()
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(tv.state_dict(), folder / RESNET18_FILE)
    assert fetch_weights("resnet18", "IMAGENET1K_V1") == folder / RESNET18_FILE

    x = torch.randn(2, 3, 64, 64)
    with_fc = pretrained_backbone("resnet18", "IMAGENET1K_V1", num_classes=1000).eval()
    with torch.no_grad():
        torch.testing.assert_close(with_fc.forward_logits(with_fc(x)), tv(x))
    teacher = pretrained_teacher("torchvision:resnet18:IMAGENET1K_V1")
    assert not teacher.has_classifier and teacher.feature_dim == 512
    with pytest.raises(ValueError, match="1000 classes"):
        pretrained_backbone("resnet18", "IMAGENET1K_V1", num_classes=10)


def test_corrupt_cache_file(torch_home: Path) -> None:
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / RESNET18_FILE).write_bytes(b"partial download")
    with pytest.raises(
        WeightsUnavailableError, match=re.escape(f"delete '{folder / RESNET18_FILE}'")
    ):
        pretrained_backbone("resnet18", "IMAGENET1K_V1")


def test_download_checks_the_hash_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls: list[tuple[str, str, str | None]] = []

    def fake(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append((url, dst, hash_prefix))
        torch.save(tvm.resnet18().state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake)
    path = fetch_weights("resnet18", "IMAGENET1K_V1")
    assert calls == [(resolve_weights("resnet18", "IMAGENET1K_V1").url, str(path), "f37072fd")]
    fetch_weights("resnet18", "IMAGENET1K_V1")
    assert len(calls) == 1  # second call is a cache hit
