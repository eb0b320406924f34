import pytest

from trainables.config import ConfigError, DataConfig, TrainConfig, parse_hidden


def test_defaults_are_the_chapter_recipe():
    c = TrainConfig()
    assert (c.hidden_sizes, c.activation, c.loss, c.optimizer, c.lr, c.batch_size, c.epochs) == (
        (512,),
        "tanh",
        "nll",
        "sgd",
        1e-2,
        64,
        100,
    )


@pytest.mark.parametrize(
    "text,expected",
    [
        ("1024,512,128", (1024, 512, 128)),
        ("512", (512,)),
        ([64, 32], (64, 32)),
        ("1", (1,)),
        (1, (1,)),
        ("1,2", (1, 2)),
    ],
)
def test_hidden_sizes_parse(text, expected):
    assert parse_hidden(text) == expected


@pytest.mark.parametrize("text", ["512,,3", "0", "", "a,b", "-5", "3.5", "512,"])
def test_malformed_hidden_sizes_are_rejected(text):
    with pytest.raises(ConfigError, match="hidden_sizes"):
        TrainConfig(hidden_sizes=text)


@pytest.mark.parametrize(
    "key,value",
    [
        ("lr", 0.0),
        ("lr", -1e-3),
        ("batch_size", 0),
        ("loss", "hinge"),
        ("activation", "gelu"),
        ("optimizer", "lbfgs"),
        ("augment", "rotate"),
        ("epochs", -1),
        ("momentum", 1.0),
        ("weight_decay", -0.1),
        ("lr", float("nan")),
        ("device", "tpu"),
    ],
)
def test_bad_values_name_their_key(key, value):
    with pytest.raises(ConfigError, match=key):
        TrainConfig(**{key: value})


@pytest.mark.parametrize("p", [0.9, 0.95, 0.999, 1.0, -0.01])
def test_dropout_of_0_9_or_more_or_below_0_is_refused(p):
    with pytest.raises(ConfigError, match=r"dropout: must be in \[0, 0.9\)"):
        TrainConfig(dropout=p)


@pytest.mark.parametrize("p", [0.0, 0.5, 0.89])
def test_dropout_below_0_9_is_accepted(p):
    assert TrainConfig(dropout=p).dropout == p


def test_from_dict_rejects_misspelled_keys():
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_config_is_frozen_and_round_trips():
    import dataclasses

    c = TrainConfig(hidden_sizes=(64, 32), lr=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError, match="lr"):
        c.lr = 1.0  # type: ignore[misc]
    assert TrainConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("classes", ["airplane", "airplane,,bird", "bird,bird"])
def test_data_config_rejects_bad_class_lists(classes):
    with pytest.raises(ConfigError, match="classes"):
        DataConfig(classes=classes)


# Exact refusals: the key, the bound and the value given, in one message (boundaries included).
REFUSALS = [
    ({"lr": 0.0}, "lr: must be > 0, got 0.0"),
    ({"lr": True}, "lr: True is not a finite number"),
    ({"lr": "0.1"}, "lr: '0.1' is not a finite number"),
    ({"lr": float("inf")}, "lr: inf is not a finite number"),
    ({"momentum": -0.1}, "momentum: must be in [0, 1), got -0.1"),
    ({"momentum": 1}, "momentum: must be in [0, 1), got 1.0"),
    ({"weight_decay": -0.01}, "weight_decay: must be >= 0, got -0.01"),
    ({"dropout": -0.1}, "dropout: must be in [0, 0.9), got -0.1"),
    ({"warmup": 1.0}, "warmup: must be in [0, 1), got 1.0"),
    ({"warmup": -0.1}, "warmup: must be in [0, 1), got -0.1"),
    ({"batch_size": 0}, "batch_size: must be an integer >= 1, got 0"),
    ({"batch_size": True}, "batch_size: must be an integer >= 1, got True"),
    ({"batch_size": 16.0}, "batch_size: must be an integer >= 1, got 16.0"),
    ({"epochs": -1}, "epochs: must be an integer >= 0, got -1"),
    ({"seed": -1}, "seed: must be an integer >= 0, got -1"),
    ({"threads": -1}, "threads: must be an integer >= 0, got -1"),
    ({"activation": "gelu"}, "activation: unknown value 'gelu' (choose from tanh, relu)"),
    ({"loss": "hinge"}, "loss: unknown value 'hinge' (choose from nll, ce, mse, bce)"),
    ({"optimizer": "lbfgs"}, "optimizer: unknown value 'lbfgs' (choose from sgd, adam, adamw)"),
    ({"augment": "rotate"}, "augment: unknown value 'rotate' (choose from none, crop, flip, crop+flip)"),
    ({"schedule": "linear"}, "schedule: unknown value 'linear' (choose from constant, cosine, onecycle)"),
    ({"device": "tpu"}, "device: unknown value 'tpu' (choose from auto, cpu, cuda)"),
    ({"graphs": "on"}, "graphs: unknown value 'on' (choose from auto, off)"),
    ({"hidden_sizes": "512,,3"}, "hidden_sizes: '512,,3' is not a comma-separated list of positive integers"),
    ({"hidden_sizes": []}, "hidden_sizes: at least one hidden layer is required"),
    ({"hidden_sizes": True}, "hidden_sizes: True is not a comma-separated list of positive integers"),
]


@pytest.mark.parametrize(
    "changes,message", REFUSALS, ids=[m.split(":")[0] + "-" + str(i) for i, (_, m) in enumerate(REFUSALS)]
)
def test_a_bad_value_is_refused_with_its_key_bound_and_value(changes, message):
    with pytest.raises(ConfigError) as refused:
        TrainConfig(**changes)
    assert str(refused.value) == message


def test_the_lowest_and_highest_allowed_values_are_accepted_and_numbers_become_floats():
    low = TrainConfig(
        lr=1e-12,
        momentum=0,
        weight_decay=0,
        dropout=0,
        warmup=0,
        batch_size=1,
        epochs=0,
        seed=0,
        threads=0,
        hidden_sizes=7,
    )
    assert (low.momentum, low.weight_decay, low.dropout, low.warmup, low.hidden_sizes) == (0.0, 0.0, 0.0, 0.0, (7,))
    assert all(type(getattr(low, k)) is float for k in ("lr", "momentum", "weight_decay", "dropout", "warmup"))
    high = TrainConfig(lr=10, momentum=0.999, dropout=0.899, warmup=0.999)
    assert (high.lr, high.momentum, high.dropout, high.warmup) == (10.0, 0.999, 0.899, 0.999)
    assert type(high.lr) is float


def test_unknown_keys_are_named_sorted_in_one_message():
    with pytest.raises(ConfigError) as refused:
        TrainConfig.from_dict({"zeta": 1, "alpha": 2, "lr": 0.1})
    assert str(refused.value) == "unknown config key(s): alpha, zeta"
    with pytest.raises(ConfigError) as refused:
        DataConfig.from_dict({"rooot": "x"})
    assert str(refused.value) == "unknown data config key(s): rooot"


def test_replace_builds_a_validated_copy():
    c = TrainConfig(lr=0.1)
    assert c.replace(epochs=3) == TrainConfig(lr=0.1, epochs=3) and c.epochs == 100
    with pytest.raises(ConfigError, match="epochs"):
        c.replace(epochs=-1)


def test_data_config_defaults_and_a_class_string_split_on_commas():
    d = DataConfig(classes=" airplane , bird,cat")
    assert d.classes == ("airplane", "bird", "cat")
    assert DataConfig().to_dict() == {
        "root": "./data",
        "classes": ["airplane", "bird"],
        "val_split": "holdout",
        "val_fraction": 0.1,
        "split_seed": 0,
        "download": False,
        "cache_dir": "",
        "subset": 0,
    }
    assert DataConfig.from_dict(d.to_dict()) == d


DATA_REFUSALS = [
    ({"classes": "airplane"}, "classes: at least two classes are needed"),
    ({"classes": "bird,bird"}, "classes: duplicate names in 'bird,bird'"),
    ({"classes": "airplane,,bird"}, "classes: 'airplane,,bird' is not a comma-separated list of names"),
    ({"classes": ()}, "classes: '' is not a comma-separated list of names"),
    ({"val_split": "random"}, "val_split: unknown value 'random' (choose from holdout, book)"),
    ({"val_fraction": 0.0}, "val_fraction: must be in (0, 1), got 0.0"),
    ({"val_fraction": 1.0}, "val_fraction: must be in (0, 1), got 1.0"),
    ({"subset": -1}, "subset: must be >= 0, got -1"),
]


@pytest.mark.parametrize(
    "changes,message", DATA_REFUSALS, ids=[m.split(":")[0] + "-" + str(i) for i, (_, m) in enumerate(DATA_REFUSALS)]
)
def test_a_bad_data_config_is_refused_with_its_key_and_value(changes, message):
    with pytest.raises(ConfigError) as refused:
        DataConfig(**changes)
    assert str(refused.value) == message


def test_the_edges_of_the_data_config_are_accepted():
    assert DataConfig(val_fraction=0.001, subset=0).val_fraction == 0.001
    assert DataConfig(val_fraction=0.999, subset=1).subset == 1


def test_the_book_mode_and_train_defaults_are_still_the_chapters():
    c = TrainConfig()
    assert (
        c.optimizer,
        c.lr,
        c.momentum,
        c.weight_decay,
        c.batch_size,
        c.epochs,
        c.augment,
        c.dropout,
        c.schedule,
    ) == ("sgd", 1e-2, 0.0, 0.0, 64, 100, "none", 0.0, "constant")
