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


def test_default_space_has_the_chapter_axes_and_the_generalisation_levers():
    space = load_space()
    dims = space.dimensions
    assert (dims["depth"].low, dims["depth"].high) == (1, 3)
    assert (dims["width"].low, dims["width"].high, dims["width"].log) == (64, 2048, True)
    assert dims["batch_size"].choices == (32, 64, 128, 256)
    assert (dims["lr"].low, dims["lr"].high, dims["lr"].log) == (1e-4, 1e-1, True)
    assert set(dims["loss"].choices) == {"nll", "ce", "mse", "bce"}
    assert set(dims["optimizer"].choices) == {"sgd", "adam", "adamw"}
    wd = dims["weight_decay"]
    assert (wd.low, wd.high, wd.log, wd.or_zero) == (1e-5, 1e-1, True, True)
    assert (dims["dropout"].low, dims["dropout"].high) == (0.0, 0.5)
    assert set(dims["augment"].choices) == {"none", "flip", "crop", "crop+flip"}
    assert set(dims["schedule"].choices) == {"constant", "cosine", "onecycle"}
    assert dims["epochs"].fixed == 40
    assert space.source == str(DEFAULT_SPACE)


def test_or_zero_reaches_zero_and_the_log_range_and_every_lever_builds_a_config():
    space = load_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    decays, seen = set(), {"schedule": set(), "augment": set(), "optimizer": set()}
    for _ in range(60):
        trial = study.ask()
        config = TrainConfig.from_dict(space.define_by_run(seed=0)(trial)["train"])
        decays.add(config.weight_decay == 0.0)
        assert config.weight_decay == 0.0 or 1e-5 <= config.weight_decay <= 1e-1
        assert ("weight_decay" in trial.params) == trial.params["weight_decay_on"]
        for key in seen:
            seen[key].add(getattr(config, key))
        study.tell(trial, 0.5)
    assert decays == {True, False}
    assert seen == {"schedule": {"constant", "cosine", "onecycle"}, "augment": {"none", "flip", "crop", "crop+flip"},
                    "optimizer": {"sgd", "adam", "adamw"}}


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
    ({**BASE, "dropout": 1.0}, "dropout"),
    ({**BASE, "dropout": {"low": 0.0, "high": 0.95}}, "dropout"),
    ({**BASE, "schedule": "linear"}, "schedule"),
    ({**BASE, "weight_decay": -0.1}, "weight_decay"),
    ({**BASE, "weight_decay": {"low": 1e-5, "high": 0.1, "log": True, "or_zero": "yes"}}, "or_zero"),
    ({**BASE, "width": {"low": 8, "high": 64, "or_zero": True}}, "or_zero"),
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
