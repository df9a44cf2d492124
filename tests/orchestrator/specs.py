from typing import Any


def minimal_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "tiny",
        "dataset": {"name": "digits"},
        "teachers": {"t": {"arch": "resnet20", "source": "pretrain",
                           "pretrain": {"recipe": "simclr", "epochs": 1}}},
        "grid": {"teacher": "t", "student": ["resnet8x4", "wrn_16_2"],
                 "loss": [{"name": "coss", "lambda": [0.5, 1.0]}, "cos"],
                 "seed": [0, 1]},
        "train": {"epochs": 1, "batch_size": 32},
    }
    spec.update(overrides)
    return spec
