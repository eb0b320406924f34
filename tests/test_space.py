import optuna
import pytest
import yaml

from study.errors import UsageError
from study.space import DEFAULT_SPACE, load_space
from trainables.config import TrainConfig


def write(tmp_path, data) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


BASE = {"depth": {"low": 1, "high": 3}, "width": {"low": 32, "high": 256, "log": True}, "epochs": 2}


def test_default_space_has_the_issue_dimensions():
    space = load_space()
    dims = space.dimensions
    assert (dims["depth"].low, dims["depth"].high) == (1, 4)
    assert (dims["width"].low, dims["width"].high, dims["width"].log) == (32, 4096, True)
    assert dims["batch_size"].choices == (16, 32, 64, 128, 256, 512)
    assert (dims["lr"].low, dims["lr"].high, dims["lr"].log) == (1e-4, 3e-1, True)
    assert set(dims["loss"].choices) == {"nll", "ce", "mse", "bce"}
    assert space.source == str(DEFAULT_SPACE)


def test_define_by_run_suggests_one_width_per_layer_and_builds_a_valid_config(tmp_path):
    space = load_space(write(tmp_path, {**BASE, "lr": {"low": 1e-3, "high": 1e-1, "log": True}, "loss": "ce"}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    depths = set()
    for _ in range(20):
        trial = study.ask()
        train = space.define_by_run(seed=10)(trial)["train"]
        config = TrainConfig.from_dict(train)
        depth = trial.params["depth"]
        depths.add(depth)
        assert len(config.hidden_sizes) == depth
        assert sorted(k for k in trial.params if k.startswith("width_")) == [f"width_{i}" for i in range(depth)]
        assert config.seed == 10 + trial.number and config.loss == "ce" and config.epochs == 2
        study.tell(trial, 0.5)
    assert depths == {1, 2, 3}


BAD = [
    ({**BASE, "colour": "red"}, "colour"),
    ({**BASE, "loss": {"choices": []}}, "loss"),
    ({**BASE, "lr": {"low": 0.1, "high": 0.01}}, "lr"),
    ({**BASE, "lr": {"low": 0.0, "high": 0.1, "log": True}}, "lr"),
    ({**BASE, "lr": {"low": -1e-3, "high": 0.1}}, "lr"),
    ({**BASE, "loss": {"choices": ["nll", "hinge"]}}, "loss"),
    ({**BASE, "loss": "hinge"}, "loss"),
    ({**BASE, "batch_size": {"choices": [32, "big"]}}, "batch_size"),
    ({**BASE, "width": {"low": 0, "high": 64}}, "width"),
    ({"width": {"low": 32, "high": 64}}, "depth"),
    ({**BASE, "momentum": 1.5}, "momentum"),
    ({**BASE, "depth": {"low": 1, "high": 3, "step": 2}}, "depth"),
    ("depth: [1, 2\n", "YAML"),
    ("- just\n- a list\n", "mapping"),
]


@pytest.mark.parametrize("data,needle", BAD)
def test_invalid_space_files_name_the_problem(tmp_path, data, needle):
    with pytest.raises(UsageError, match=needle) as info:
        load_space(write(tmp_path, data))
    assert "\n" not in str(info.value)


def test_missing_space_file(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_space(tmp_path / "nope.yaml")


def test_space_file_is_parsed_safely(tmp_path):
    evil = "depth: !!python/object/apply:os.system ['echo pwned']\nwidth: {low: 32, high: 64}\n"
    with pytest.raises(UsageError, match="YAML"):
        load_space(write(tmp_path, evil))
