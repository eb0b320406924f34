import pytest

from trainables.config import ConfigError, DataConfig, TrainConfig, parse_hidden


def test_defaults_are_the_chapter_recipe():
    c = TrainConfig()
    assert (c.hidden_sizes, c.activation, c.loss, c.optimizer, c.lr, c.batch_size, c.epochs) == (
        (512,), "tanh", "nll", "sgd", 1e-2, 64, 100)


@pytest.mark.parametrize("text,expected", [("1024,512,128", (1024, 512, 128)), ("512", (512,)), ([64, 32], (64, 32))])
def test_hidden_sizes_parse(text, expected):
    assert parse_hidden(text) == expected


@pytest.mark.parametrize("text", ["512,,3", "0", "", "a,b", "-5", "3.5", "512,"])
def test_malformed_hidden_sizes_are_rejected(text):
    with pytest.raises(ConfigError, match="hidden_sizes"):
        TrainConfig(hidden_sizes=text)


@pytest.mark.parametrize("key,value", [("lr", 0.0), ("lr", -1e-3), ("batch_size", 0), ("loss", "hinge"),
                                       ("activation", "gelu"), ("optimizer", "lbfgs"), ("augment", "rotate"),
                                       ("epochs", -1), ("momentum", 1.0), ("weight_decay", -0.1),
                                       ("lr", float("nan")), ("device", "tpu")])
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
