"""The frozen description of one training run, validated once when it is built."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ACTIVATIONS = ("tanh", "relu")
LOSSES = ("nll", "ce", "mse", "bce")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle")
AUGMENTATIONS = ("none", "crop", "flip", "crop+flip")
DEVICES = ("auto", "cpu", "cuda")
GRAPHS = ("auto", "off")


class ConfigError(ValueError):
    """A configuration value that cannot describe a run; the message names the key."""


def parse_hidden(text: str | int | list | tuple) -> tuple[int, ...]:
    """'1024,512,128' -> (1024, 512, 128); rejects empty items, zeros and non-integers."""
    if isinstance(text, int) and not isinstance(text, bool):
        items: list[Any] = [text]
    elif isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = str(text).split(",")
    sizes = []
    for item in items:
        token = str(item).strip()
        if not token.isdigit() or int(token) <= 0:
            raise ConfigError(f"hidden_sizes: {text!r} is not a comma-separated list of positive integers")
        sizes.append(int(token))
    if not sizes:
        raise ConfigError("hidden_sizes: at least one hidden layer is required")
    return tuple(sizes)


def _from_dict(cls, values: Mapping[str, Any], what: str):
    """Build a config from a plain mapping; a misspelled key is an error, not a silent default."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {what} key(s): {', '.join(unknown)}")
    return cls(**values)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: unknown value {value!r} (choose from {', '.join(allowed)})")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one run. The defaults are the chapter's recipe.

    Each field's metadata feeds `birdplane train`'s flag of the same name: ``help``, ``choices``
    (listed in the help; the check is ``__post_init__``'s) and ``flag`` where the flag is not
    the field's name.
    """

    hidden_sizes: tuple[int, ...] = field(
        default=(512,), metadata={"flag": "--hidden", "help": "hidden layer widths, e.g. 1024,512,128"}
    )
    activation: str = field(default="tanh", metadata={"choices": ACTIVATIONS})
    loss: str = field(default="nll", metadata={"choices": LOSSES})
    optimizer: str = field(default="sgd", metadata={"choices": OPTIMIZERS})
    lr: float = field(default=1e-2, metadata={"help": "learning rate, > 0"})
    momentum: float = field(default=0.0, metadata={"help": "SGD momentum, [0, 1)"})
    weight_decay: float = field(
        default=0.0, metadata={"help": "sgd, adam: L2 added to the gradient; adamw: decoupled decay"}
    )
    batch_size: int = field(default=64, metadata={"help": "training batch size"})
    epochs: int = field(default=100, metadata={"help": "epochs to train (0: evaluate the untrained net)"})
    augment: str = field(default="none", metadata={"choices": AUGMENTATIONS})
    dropout: float = field(
        default=0.0, metadata={"help": "dropout after each hidden activation, [0, 0.9); 0: no Dropout layer at all"}
    )
    schedule: str = field(
        default="constant", metadata={"choices": SCHEDULES, "help": "the learning rate per batch (cosine decays to 0)"}
    )
    warmup: float = field(
        default=0.0,
        metadata={"help": "share of the steps spent warming up (cosine), or onecycle's rising share (0: 0.3)"},
    )
    label_noise: float = field(
        default=0.0,
        metadata={
            "help": "share of the training labels flipped to another class, [0, 0.5); the flipped images are "
            "fixed by the data layer's own seed, the same for every run (val and test stay clean)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the weights, the batch order and augmentation"})
    device: str = field(default="auto", metadata={"choices": DEVICES})
    threads: int = field(
        default=0, metadata={"help": "torch threads (0: torch's default, all CPUs the process may use)"}
    )
    graphs: str = field(
        default="auto",
        metadata={
            "choices": GRAPHS,
            "help": "auto: CUDA-graphed steps on a GPU (eager elsewhere, said once); off: always eager",
        },
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", parse_hidden(self.hidden_sizes))
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("loss", self.loss, LOSSES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("augment", self.augment, AUGMENTATIONS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("device", self.device, DEVICES)
        _choice("graphs", self.graphs, GRAPHS)
        for name in ("lr", "momentum", "weight_decay", "dropout", "warmup", "label_noise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name}: {value!r} is not a finite number")
            object.__setattr__(self, name, float(value))
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
        if self.momentum < 0 or self.momentum >= 1:
            raise ConfigError(f"momentum: must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if not 0 <= self.dropout < 0.9:
            raise ConfigError(f"dropout: must be in [0, 0.9), got {self.dropout}")
        if not 0 <= self.label_noise < 0.5:
            raise ConfigError(f"label_noise: must be in [0, 0.5), got {self.label_noise}")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"warmup: must be in [0, 1), got {self.warmup}")
        for name, low in (("batch_size", 1), ("epochs", 0), ("seed", 0), ("threads", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name}: must be an integer >= {low}, got {value!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        return _from_dict(cls, values, "config")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        return out

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split; shared by every run of a study."""

    root: str = "./data"
    classes: tuple[str, ...] = ("airplane", "bird")
    val_split: str = "holdout"  # holdout: 10% of train, stratified; book: the official test split
    val_fraction: float = 0.1
    split_seed: int = 0
    download: bool = False
    cache_dir: str = ""  # "" -> $BIRDPLANE_CACHE or ~/.cache/birdplane
    subset: int = 0  # >0: keep this many training images per class (smoke runs)

    def __post_init__(self) -> None:
        classes = self.classes
        if isinstance(classes, str):
            classes = tuple(c.strip() for c in classes.split(","))
        classes = tuple(classes)
        if not classes or any(not c for c in classes):
            raise ConfigError(f"classes: {','.join(classes)!r} is not a comma-separated list of names")
        if len(set(classes)) != len(classes):
            raise ConfigError(f"classes: duplicate names in {','.join(classes)!r}")
        if len(classes) < 2:
            raise ConfigError("classes: at least two classes are needed")
        object.__setattr__(self, "classes", classes)
        _choice("val_split", self.val_split, ("holdout", "book"))
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction: must be in (0, 1), got {self.val_fraction}")
        if self.subset < 0:
            raise ConfigError(f"subset: must be >= 0, got {self.subset}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["classes"] = list(self.classes)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DataConfig:
        return _from_dict(cls, values, "data config")
