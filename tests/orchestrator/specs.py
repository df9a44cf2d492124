from typing import Any


def minimal_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "tiny",
        "dataset": {"name": "digits"},
        "teachers": {"t": {"arch": "resnet20", "source": "pretrain",
                           "pretrain": {"recipe": "simclr", "epochs": 1}}},
        "grid": {"teacher": "t", "student": ["resnet8x4", "wrn_16_2"],
                 # epoch_anchors 1/16: an epoch of N images (the official epoch shows 16 N)
                 "loss": [{"name": "coss", "lambda": [0.5, 1.0], "epoch_anchors": 0.0625},
                          {"name": "cos", "epoch_anchors": 0.0625}],
                 "seed": [0, 1]},
        "train": {"epochs": 1, "batch_size": 32},
    }
    spec.update(overrides)
    return spec
