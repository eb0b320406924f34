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
    assert seen == {
        "schedule": {"constant", "cosine", "onecycle"},
        "augment": {"none", "flip", "crop", "crop+flip"},
        "optimizer": {"sgd", "adam", "adamw"},
    }


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


def _space(**changes):
    from study.space import space_from_mapping

    return space_from_mapping({k: v for k, v in {**BASE, **changes}.items() if v is not None}, "test")


EXACT = [
    (
        {"colour": "red"},
        "search space: unknown key 'colour' (known: activation, augment, batch_size, depth, dropout, "
        "epochs, loss, lr, momentum, optimizer, schedule, warmup, weight_decay, width)",
    ),
    ({"depth": None}, "search space: missing key 'depth'"),
    ({"loss": {"choices": "nll"}}, "search space: loss: choices must be a non-empty list"),
    ({"loss": {"low": 1, "high": 2}}, "search space: loss: give a value or {choices: [...]}"),
    ({"lr": {"low": 0.1}}, "search space: lr: expected {low, high[, log, or_zero]} or {choices}, got keys ['low']"),
    ({"lr": {"low": 0.1, "high": 0.1}}, "search space: lr: low (0.1) must be < high (0.1)"),
    ({"lr": {"low": 0.0, "high": 0.1}}, "search space: lr: low must be > 0, got 0.0"),
    ({"batch_size": {"low": 0, "high": 4}}, "search space: batch_size: low must be > 0, got 0"),
    ({"dropout": {"low": -0.1, "high": 0.1, "log": True}}, "search space: dropout: low must be > 0, got -0.1"),
    ({"lr": {"low": 1e-3, "high": 0.1, "log": "yes"}}, "search space: lr: log and or_zero must be true or false"),
    ({"epochs": {"low": 1, "high": 3, "or_zero": True}}, "search space: epochs: or_zero is for real-valued ranges"),
    ({"epochs": 2.0}, "search space: epochs: 2.0 is not an integer"),
    ({"lr": True}, "search space: lr: True is not a number"),
    ({"loss": "hinge"}, "search space: loss: unknown value 'hinge' (choose from nll, ce, mse, bce)"),
    ({"depth": 0}, "search space: depth: must be >= 1"),
    ({"depth": {"choices": [0, 1]}}, "search space: depth: must be >= 1"),
    ({"momentum": {"low": 0.5, "high": 1.0}}, "search space: momentum: must be in [0, 1), got 1.0"),
    ({"dropout": {"choices": [0.1, 0.95]}}, "search space: dropout: must be in [0, 0.9), got 0.95"),  # not a corner
    (
        {"optimizer": {"choices": ["sgd", "x"]}},
        "search space: optimizer: unknown value 'x' (choose from sgd, adam, adamw)",
    ),
    ({"epochs": 2**31}, "search space: epochs: 2147483648 is not a finite integer below 2**31"),
    ({"lr": float("inf")}, "search space: lr: inf is not a finite number"),
]


@pytest.mark.parametrize("changes,message", EXACT, ids=[str(i) for i in range(len(EXACT))])
def test_a_bad_dimension_is_refused_with_one_exact_message(changes, message):
    with pytest.raises(UsageError) as refused:
        _space(**changes)
    assert str(refused.value) == message


@pytest.mark.parametrize(
    "name,value", [("epochs", 2**31), ("width", -(2**31)), ("lr", float("nan")), ("lr", float("inf"))]
)
def test_numbers_beyond_2_31_or_not_finite_are_refused(name, value):
    with pytest.raises(UsageError, match=f"search space: {name}: .* is not a finite"):
        _space(**{name: value})


def test_integers_just_inside_2_31_are_accepted():
    assert _space(epochs=2**31 - 1).dimensions["epochs"].fixed == 2**31 - 1


def test_a_non_string_key_is_refused():
    from study.space import space_from_mapping

    with pytest.raises(UsageError, match="search space: key 1 is not a dimension name"):
        space_from_mapping({1: 2, **BASE}, "t")


def test_a_space_round_trips_through_its_recorded_mapping():
    space = _space(
        lr={"low": 1e-3, "high": 0.1, "log": True},
        loss={"choices": ["nll", "ce"]},
        weight_decay={"low": 1e-5, "high": 1e-2, "log": True, "or_zero": True},
        dropout=0.2,
    )
    assert space.to_dict() == {
        **BASE,
        "depth": {"low": 1, "high": 3, "log": False},
        "lr": {"low": 1e-3, "high": 0.1, "log": True},
        "loss": {"choices": ["nll", "ce"]},
        "weight_decay": {"low": 1e-5, "high": 1e-2, "log": True, "or_zero": True},
        "dropout": 0.2,
    }
    from study.space import space_from_mapping

    assert space_from_mapping(space.to_dict(), "again").dimensions == space.dimensions


def test_the_optuna_distributions_match_what_the_space_suggests():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = _space(
        lr={"low": 1e-3, "high": 0.1, "log": True},
        loss={"choices": ["nll", "ce"]},
        dropout={"low": 0.0, "high": 0.5},
        weight_decay={"low": 1e-5, "high": 1e-2, "log": True, "or_zero": True},
        momentum=0.9,
    )
    assert space.optuna_distributions() == {
        "depth": IntDistribution(1, 3),
        "width_0": IntDistribution(32, 256, log=True),
        "width_1": IntDistribution(32, 256, log=True),
        "width_2": IntDistribution(32, 256, log=True),
        "lr": FloatDistribution(1e-3, 0.1, log=True),
        "loss": CategoricalDistribution(["nll", "ce"]),
        "dropout": FloatDistribution(0.0, 0.5),
        "weight_decay": FloatDistribution(1e-5, 1e-2, log=True),
        "weight_decay_on": CategoricalDistribution([True, False]),
    }


@pytest.mark.parametrize("depth,expected", [(2, 2), ({"choices": [1, 4, 2]}, 4), ({"low": 1, "high": 5}, 5)])
def test_the_deepest_net_of_the_space(depth, expected):
    assert _space(depth=depth).max_depth() == expected


def test_with_fixed_pins_a_dimension_and_keeps_the_rest():
    space = _space(lr={"low": 1e-3, "high": 0.1, "log": True})
    pinned = space.with_fixed(lr=0.01, depth=1)
    assert pinned.dimensions["lr"].fixed == 0.01 and pinned.dimensions["depth"].fixed == 1
    assert pinned.dimensions["width"] == space.dimensions["width"] and pinned.source == space.source
    assert space.dimensions["lr"].fixed is None, "the original is unchanged"


def test_random_search_samples_build_the_same_kind_of_config(tmp_path):
    from types import SimpleNamespace

    from study.space import TrainFromSample

    space = _space(
        lr={"low": 1e-3, "high": 0.1, "log": True},
        weight_decay={"low": 1e-5, "high": 1e-2, "log": True, "or_zero": True},
    )
    param_space = space.tune_param_space(seed=7, threads=2, device="cpu")
    assert {
        "depth",
        "width_0",
        "width_1",
        "width_2",
        "lr",
        "weight_decay",
        "weight_decay_on",
        "epochs",
        "seed",
        "train",
    } == set(param_space)
    sample = {
        "depth": 2,
        "width_0": 40,
        "width_1": 50,
        "width_2": 60,
        "lr": 0.02,
        "weight_decay": 1e-3,
        "weight_decay_on": False,
        "epochs": 2,
        "seed": 5,
    }
    train = TrainFromSample(space, 7, 2, "cpu")(SimpleNamespace(config=sample))
    assert (train["hidden_sizes"], train["lr"], train["weight_decay"], train["seed"], train["threads"]) == (
        [40, 50],
        0.02,
        0.0,
        12,
        2,
    )
    sample["weight_decay_on"] = True
    assert TrainFromSample(space, 7, 2, "cpu")(SimpleNamespace(config=sample))["weight_decay"] == 1e-3


def test_integer_ranges_are_suggested_as_integers_on_their_scale():
    space = _space(batch_size={"low": 16, "high": 128, "log": True})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(10):
        trial = study.ask()
        train = space.define_by_run(seed=0)(trial)["train"]
        assert isinstance(train["batch_size"], int) and 16 <= train["batch_size"] <= 128
        assert trial.distributions["batch_size"] == optuna.distributions.IntDistribution(16, 128, log=True)
        study.tell(trial, 0.5)


def test_a_trial_of_k_seeds_lists_k_seeds_no_other_trial_shares_and_trains_the_first():
    from types import SimpleNamespace

    from study.space import SeedsFromSample

    space = _space(lr={"low": 1e-3, "high": 0.1, "log": True})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for number in range(5):
        trial = study.ask()
        assert trial.number == number
        config = space.define_by_run(seed=100, seeds_per_trial=3)(trial)
        assert config["seeds"] == [100 + 3 * number + k for k in range(3)]
        assert config["train"]["seed"] == config["seeds"][0]
        seen += config["seeds"]
        study.tell(trial, 0.5)
    assert len(set(seen)) == len(seen) == 15
    one = space.define_by_run(seed=100)(study.ask())
    assert "seeds" not in one and one["train"]["seed"] == 105, "one seed a trial: as before"
    # Ray's random search: K seeds in a row from the trial's drawn seed (its train config's).
    assert SeedsFromSample(7, 3)(SimpleNamespace(config={"seed": 5})) == [12, 13, 14]
    assert "seeds" in space.tune_param_space(seed=7, seeds_per_trial=2)
    assert "seeds" not in space.tune_param_space(seed=7)


def test_a_log_range_is_sampled_on_a_log_scale_and_a_linear_one_is_not():
    """Optuna's distributions as the define-by-run space asks for them (mutation survivors: log dropped)."""
    space = _space(lr={"low": 1e-4, "high": 1e-1, "log": True}, dropout={"low": 0.0, "high": 0.5})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    space.define_by_run(seed=0)(trial)
    assert trial.distributions["lr"].log is True and trial.distributions["dropout"].log is False
    assert (trial.distributions["lr"].low, trial.distributions["lr"].high) == (1e-4, 1e-1)


def test_two_seeds_a_trial_are_listed_too():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert _space().define_by_run(seed=10, seeds_per_trial=2)(study.ask())["seeds"] == [10, 11]


def test_ray_s_random_search_draws_each_range_as_the_space_says():
    """tune_param_space's domains: bounds, log scale, integers inclusive of high."""
    from ray.tune.search.sample import Float, Integer

    space = _space(
        lr={"low": 1e-4, "high": 1e-1, "log": True},
        dropout={"low": 0.0, "high": 0.5},
        batch_size={"low": 16, "high": 64, "log": True},
        loss={"choices": ["nll", "mse"]},
        width={"low": 8, "high": 32},
    )
    domains = space.tune_param_space(seed=0)
    lr, dropout, batch, width = domains["lr"], domains["dropout"], domains["batch_size"], domains["width_0"]
    assert domains["loss"].categories == ["nll", "mse"]
    assert isinstance(lr, Float) and (lr.lower, lr.upper) == (1e-4, 1e-1) and type(lr.sampler).__name__ == "_LogUniform"
    assert isinstance(dropout, Float) and (dropout.lower, dropout.upper) == (0.0, 0.5)
    assert type(dropout.sampler).__name__ == "_Uniform"
    assert isinstance(batch, Integer) and (batch.lower, batch.upper) == (16, 65)
    assert type(batch.sampler).__name__ == "_LogUniform"
    assert (
        isinstance(width, Integer)
        and (width.lower, width.upper) == (8, 33)
        and type(width.sampler).__name__ == "_Uniform"
    )
    choice = space.tune_param_space(seed=0)["loss"] if "loss" in space.dimensions else None
    assert choice is None or sorted(choice.categories) == sorted(space.dimensions["loss"].choices)


@pytest.mark.parametrize(
    "changes",
    [
        {"width": {"low": 1.5, "high": 10}},
        {"width": {"low": 1, "high": 10.5}},
        {"depth": {"low": 1, "high": 2.5}},
    ],
)
def test_an_integer_range_with_a_fractional_end_is_refused(changes):
    with pytest.raises(UsageError, match="is not an integer"):
        _space(**changes)


def test_fixing_a_dimension_checks_its_value_as_the_space_file_would():
    with pytest.raises(UsageError, match="epochs: 2.5 is not an integer"):
        _space().with_fixed(epochs=2.5)
    assert _space().with_fixed(epochs=3).dimensions["epochs"].name == "epochs"


def test_spaces_with_width_choices_or_a_single_choice_load():
    assert _space(width={"choices": [16, 32]}).dimensions["width"].choices == (16, 32)
    assert _space(loss={"choices": ["nll"]}).dimensions["loss"].choices == ("nll",)


def test_an_extension_may_keep_a_range_s_ends_or_widen_them():
    from study.space import check_extension

    old = _space(lr={"low": 1e-3, "high": 1e-1, "log": True})
    check_extension(old, _space(lr={"low": 1e-3, "high": 1.0, "log": True}))  # same low, wider high
    check_extension(old, _space(lr={"low": 1e-4, "high": 1e-1, "log": True}))  # wider low, same high
    with pytest.raises(UsageError, match=r"changes lr from \[0.001, 0.1\] log to \[0.01, 0.1\] log"):
        check_extension(old, _space(lr={"low": 1e-2, "high": 1e-1, "log": True}))


def test_ray_s_random_search_resolves_the_assembled_space_into_valid_trials():
    """The whole param space through Ray's own variant generator (what BasicVariantGenerator runs):
    each variant's train config keeps the first depth widths, the sweep seed plus the drawn one,
    the switched-off optional dimension at 0, and K seeds in a row from its own."""
    import numpy as np
    from ray.tune.search.variant_generator import generate_variants

    space = _space(
        lr={"low": 1e-3, "high": 0.1, "log": True},
        weight_decay={"low": 1e-5, "high": 1e-2, "log": True, "or_zero": True},
    )
    param_space = space.tune_param_space(seed=7, threads=2, device="cpu", seeds_per_trial=3)
    switched = set()
    depths = set()
    for i in range(24):
        ((_, config),) = list(generate_variants(param_space, random_state=np.random.RandomState(i)))
        train = TrainConfig.from_dict(config["train"])
        depth = int(config["depth"])
        depths.add(depth)
        assert list(train.hidden_sizes) == [config[f"width_{i}"] for i in range(depth)], config
        assert train.seed == 7 + config["seed"] and (train.threads, train.device) == (2, "cpu")
        assert train.lr == config["lr"]
        on = config["weight_decay_on"]
        switched.add(on)
        assert train.weight_decay == (config["weight_decay"] if on else 0.0)
        assert config["seeds"] == [train.seed, train.seed + 1, train.seed + 2]
    assert switched == {True, False}, "the optional dimension is drawn both on and off"
    assert len(depths) > 1, depths


def test_a_space_file_that_is_not_yaml_is_refused_with_the_parser_s_first_line(tmp_path):
    import yaml

    from study.space import load_space

    path = tmp_path / "bad.yaml"
    path.write_text("depth: [1, 2\nlr: 0.1\n")
    with pytest.raises(yaml.YAMLError) as parsed:
        yaml.safe_load(path.read_text())
    lines = str(parsed.value).splitlines()
    assert len(lines) > 1, "the parser's error has several lines: the message keeps the first"
    with pytest.raises(UsageError) as refused:
        load_space(path)
    assert str(refused.value) == f"search space file {path} is not valid YAML: {lines[0]}"


@pytest.mark.parametrize(
    "name,old,new,shown",
    [
        ("loss", {"choices": ["nll", "ce"]}, {"choices": ["nll"]}, "choices ['nll', 'ce'] to choices ['nll']"),
        ("dropout", {"low": 0.0, "high": 0.5}, {"low": 0.1, "high": 0.5}, "[0.0, 0.5] to [0.1, 0.5]"),
        (
            "weight_decay",
            {"low": 1e-5, "high": 1e-2, "log": True, "or_zero": True},
            {"low": 1e-4, "high": 1e-2, "log": True, "or_zero": True},
            "[1e-05, 0.01] log or 0 to [0.0001, 0.01] log or 0",
        ),
        ("momentum", 0.9, 0.8, "0.9 to 0.8"),
    ],
)
def test_an_extension_that_narrows_or_changes_a_dimension_is_refused_showing_both(name, old, new, shown):
    from study.space import check_extension

    with pytest.raises(UsageError) as refused:
        check_extension(_space(**{name: old}), _space(**{name: new}))
    assert str(refused.value) == (
        f"--extend: the new search space changes {name} from {shown}: the earlier trials would not be "
        "valid points of it (only numeric ranges may widen)"
    )
