from typing import Any

from orchestrator.spec.grid import expand, flat_params, varying_axes
from orchestrator.spec.load import load_spec
from tests.orchestrator.specs import minimal_spec


def test_expansion_crosses_every_axis(write_spec: Any) -> None:
    trials = expand(load_spec(write_spec(minimal_spec())))
    # 1 teacher x 2 students x (coss x 2 lambdas + cos) x 2 seeds
    assert len(trials) == 2 * 3 * 2
    assert len({t.trial_id for t in trials}) == len(trials)
    lambdas = sorted(t.loss.yaml_params()["lambda"] for t in trials if t.loss.name == "coss")
    assert lambdas == [0.5] * 4 + [1.0] * 4
    assert all(t.loss.yaml_params()["scale"] > 0 for t in trials)  # defaults filled in
    assert {t.train.seed for t in trials} == {0, 1}


def test_expansion_is_deterministic_and_ids_are_content_hashes(write_spec: Any) -> None:
    spec = load_spec(write_spec(minimal_spec()))
    first, second = expand(spec), expand(spec)
    assert [t.to_dict() for t in first] == [t.to_dict() for t in second]
    bigger = minimal_spec()
    bigger["grid"]["seed"] = [0, 1, 2]
    grown = expand(load_spec(write_spec(bigger, "bigger.yaml")))
    assert {t.trial_id for t in first} < {t.trial_id for t in grown}


def test_pairs_instead_of_cross_product(write_spec: Any) -> None:
    data = minimal_spec()
    data["grid"].pop("teacher")
    data["grid"].pop("student")
    data["grid"]["pairs"] = [{"teacher": "t", "student": "resnet8x4"}]
    trials = expand(load_spec(write_spec(data)))
    assert {t.student.arch for t in trials} == {"resnet8x4"}


def test_flat_params_and_axes(write_spec: Any) -> None:
    trials = expand(load_spec(write_spec(minimal_spec())))
    flat = flat_params(trials[0])
    assert flat["teacher"] == "t" and flat["loss.name"] == "coss" and flat["seed"] == "0"
    assert set(varying_axes(trials)) == {"student", "loss.name", "loss.lambda", "seed"}


def test_parameters_of_other_objectives_are_not_axes(write_spec: Any) -> None:
    data = minimal_spec()
    data["grid"]["loss"] = [{"name": "coss", "neighbours": 3}, {"name": "cos", "neighbours": 0},
                            {"name": "kd"}]
    data["teachers"]["t"]["pretrain"]["recipe"] = "supervised"
    trials = expand(load_spec(write_spec(data)))
    assert "loss.neighbours" not in varying_axes(trials)
    assert "loss.tau" not in varying_axes(trials)
