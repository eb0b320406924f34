"""Search spaces as data: a YAML file, validated before Ray starts, turned into Optuna suggestions.

A dimension is a fixed value, ``{choices: [...]}`` or ``{low, high, log}``. ``depth`` and ``width``
make the hidden sizes: ``width_0 .. width_{depth-1}`` are suggested only for the layers that exist
(a define-by-run space). ``or_zero: true`` on a range makes 0 reachable too (a log range cannot
hold it): ``NAME_on`` decides whether the value is 0 or drawn from the range, so the searcher
learns both whether and how much (e.g. weight decay). Every other dimension is a field of
``TrainConfig``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from study.errors import UsageError
from trainables.config import ACTIVATIONS, AUGMENTATIONS, LOSSES, OPTIMIZERS, SCHEDULES, ConfigError, TrainConfig

DEFAULT_SPACE = Path(__file__).parent / "spaces" / "default.yaml"
CHOICES = {
    "loss": LOSSES,
    "activation": ACTIVATIONS,
    "optimizer": OPTIMIZERS,
    "augment": AUGMENTATIONS,
    "schedule": SCHEDULES,
}
INTEGER = {"depth", "width", "batch_size", "epochs"}
FLOAT = {"lr", "momentum", "weight_decay", "dropout", "warmup"}
KNOWN = INTEGER | FLOAT | set(CHOICES)
REQUIRED = {"depth", "width"}


@dataclass(frozen=True)
class Dimension:
    name: str
    fixed: Any = None
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    or_zero: bool = False

    def suggest(self, trial, name: str | None = None):
        name = name or self.name
        if self.fixed is not None:
            return self.fixed
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        if self.or_zero and not trial.suggest_categorical(f"{name}_on", [True, False]):
            return 0.0
        if self.name in INTEGER:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)


def _check_value(name: str, value: Any) -> Any:
    if name in CHOICES:
        if value not in CHOICES[name]:
            raise UsageError(f"search space: {name}: unknown value {value!r} (choose from {', '.join(CHOICES[name])})")
        return value
    numeric = (int,) if name in INTEGER else (int, float)
    kind, noun = ("an integer", "integer") if name in INTEGER else ("a number", "number")
    if isinstance(value, bool) or not isinstance(value, numeric):
        raise UsageError(f"search space: {name}: {value!r} is not {kind}")
    if not math.isfinite(value) or (name in INTEGER and abs(value) >= 2**31):
        raise UsageError(
            f"search space: {name}: {value!r} is not a finite {noun}" + (" below 2**31" if name in INTEGER else "")
        )
    return value


def _dimension(name: str, spec: Any) -> Dimension:
    if not isinstance(spec, dict):
        return Dimension(name, fixed=_check_value(name, spec))
    keys = set(spec)
    if keys == {"choices"}:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UsageError(f"search space: {name}: choices must be a non-empty list")
        return Dimension(name, choices=tuple(_check_value(name, c) for c in choices))
    if name in CHOICES:
        raise UsageError(f"search space: {name}: give a value or {{choices: [...]}}")
    if not {"low", "high"} <= keys or keys - {"low", "high", "log", "or_zero"}:
        raise UsageError(
            f"search space: {name}: expected {{low, high[, log, or_zero]}} or {{choices}}, "
            f"got keys {sorted(map(str, keys))}"
        )
    low, high = _check_value(name, spec["low"]), _check_value(name, spec["high"])
    log, or_zero = spec.get("log", False), spec.get("or_zero", False)
    if not isinstance(log, bool) or not isinstance(or_zero, bool):
        raise UsageError(f"search space: {name}: log and or_zero must be true or false")
    if or_zero and name in INTEGER:
        raise UsageError(f"search space: {name}: or_zero is for real-valued ranges")
    if low >= high:
        raise UsageError(f"search space: {name}: low ({low}) must be < high ({high})")
    if (log or name in ("lr", "width", "depth", "batch_size")) and low <= 0:
        raise UsageError(f"search space: {name}: low must be > 0, got {low}")
    return Dimension(name, low=low, high=high, log=log, or_zero=or_zero)


@dataclass(frozen=True)
class SearchSpace:
    dimensions: dict[str, Dimension]
    source: str

    def with_fixed(self, **values: Any) -> SearchSpace:
        dims = dict(self.dimensions)
        for name, value in values.items():
            dims[name] = _dimension(name, value)
        return SearchSpace(dims, self.source)

    def define_by_run(
        self, seed: int = 0, threads: int = 1, device: str = "cpu", seeds_per_trial: int = 1
    ) -> DefineByRun:
        return DefineByRun(self, seed, threads, device, seeds_per_trial)

    def tune_param_space(self, seed: int = 0, threads: int = 1, device: str = "cpu", seeds_per_trial: int = 1) -> dict:
        """The same space for Ray's own random search (BasicVariantGenerator): a width per possible
        layer is drawn and ``train`` keeps the first ``depth`` of them; with several seeds per
        trial, ``seeds`` lists them from the trial's drawn seed on."""
        from ray import tune

        space: dict = {}
        for name, dim in self.dimensions.items():
            names = [f"width_{i}" for i in range(self.max_depth())] if name == "width" else [name]
            for key in names:
                space[key] = dim.fixed if dim.fixed is not None else _tune_domain(dim)
            if dim.or_zero:
                space[f"{name}_on"] = tune.choice([True, False])
        space["seed"] = tune.randint(0, 2**31 - 1)
        space["train"] = tune.sample_from(TrainFromSample(self, seed, threads, device))
        if seeds_per_trial > 1:
            space["seeds"] = tune.sample_from(SeedsFromSample(seed, seeds_per_trial))
        return space

    def optuna_distributions(self) -> dict:
        """Every Optuna parameter the define-by-run space can suggest, with its distribution (what
        ``Dimension.suggest`` asks for): depth, width_0..width_{max-1}, the other searched
        dimensions, and NAME_on for an or_zero dimension."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        out = {}
        for name, d in self.dimensions.items():
            if d.fixed is not None:
                continue
            for key in [f"width_{i}" for i in range(self.max_depth())] if name == "width" else [name]:
                if d.choices is not None:
                    out[key] = CategoricalDistribution(list(d.choices))
                elif name in INTEGER:
                    out[key] = IntDistribution(int(d.low), int(d.high), log=d.log)
                else:
                    out[key] = FloatDistribution(float(d.low), float(d.high), log=d.log)
            if d.or_zero:
                out[f"{name}_on"] = CategoricalDistribution([True, False])
        return out

    def max_depth(self) -> int:
        d = self.dimensions["depth"]
        return int(d.fixed if d.fixed is not None else max(d.choices) if d.choices else d.high)

    def to_dict(self) -> dict:
        out = {}
        for name, d in self.dimensions.items():
            if d.fixed is not None:
                out[name] = d.fixed
            elif d.choices is not None:
                out[name] = {"choices": list(d.choices)}
            else:
                out[name] = {"low": d.low, "high": d.high, "log": d.log, **({"or_zero": True} if d.or_zero else {})}
        return out


@dataclass(frozen=True)
class DefineByRun:
    """What OptunaSearch calls per trial (a picklable object: Tune saves the searcher with it).

    Returns the whole TrainConfig as ``{'train': {...}}``; the trial's seed is ``seed + trial.number``.
    With K seeds per trial the trial's seeds are ``seed + K * trial.number + k`` for k < K (no two
    trials share one), listed as ``seeds``, and ``train`` holds the first.
    """

    space: SearchSpace
    seed: int
    threads: int
    device: str
    seeds_per_trial: int = 1

    def __call__(self, trial) -> dict:
        dims = self.space.dimensions
        depth = dims["depth"].suggest(trial)
        hidden = [dims["width"].suggest(trial, f"width_{i}") for i in range(depth)]
        first = self.seed + self.seeds_per_trial * trial.number
        values = {
            "hidden_sizes": hidden,
            "seed": first,
            "threads": self.threads,
            "device": self.device,
        }
        for name, dim in dims.items():
            if name not in ("depth", "width"):
                values[name] = dim.suggest(trial)
        config = {"train": TrainConfig.from_dict(values).to_dict()}
        if self.seeds_per_trial > 1:
            config["seeds"] = [first + k for k in range(self.seeds_per_trial)]
        return config


def _tune_domain(dim: Dimension):
    from ray import tune

    if dim.choices is not None:
        return tune.choice(list(dim.choices))
    if dim.name in INTEGER:
        return (tune.lograndint if dim.log else tune.randint)(int(dim.low), int(dim.high) + 1)
    return (tune.loguniform if dim.log else tune.uniform)(float(dim.low), float(dim.high))


@dataclass(frozen=True)
class TrainFromSample:
    """Builds the TrainConfig dict from a random-search sample (Ray's ``sample_from``)."""

    space: SearchSpace
    seed: int
    threads: int
    device: str

    def __call__(self, spec) -> dict:
        c = spec.config
        depth = int(c["depth"])
        values = {
            "hidden_sizes": [int(c[f"width_{i}"]) for i in range(depth)],
            "seed": self.seed + int(c["seed"]),
            "threads": self.threads,
            "device": self.device,
        }
        for name, dim in self.space.dimensions.items():
            if name not in ("depth", "width"):
                values[name] = 0.0 if dim.or_zero and not c[f"{name}_on"] else c[name]
        return TrainConfig.from_dict(values).to_dict()


@dataclass(frozen=True)
class SeedsFromSample:
    """A random-search trial's seeds (Ray's ``sample_from``): K in a row from its drawn seed."""

    seed: int
    seeds_per_trial: int

    def __call__(self, spec) -> list[int]:
        first = self.seed + int(spec.config["seed"])
        return [first + k for k in range(self.seeds_per_trial)]


def load_space(path: str | Path | None = None) -> SearchSpace:
    """Read and validate a space file; every problem is a UsageError naming the key."""
    path = Path(path) if path else DEFAULT_SPACE
    if not path.is_file():
        raise UsageError(f"search space file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UsageError(f"search space file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"search space file {path} must be a mapping of dimension names")
    return space_from_mapping(raw, str(path))


def space_from_mapping(raw: dict, origin: str) -> SearchSpace:
    """A validated space from its mapping (a space file's YAML, or a study's recorded ``to_dict()``)."""
    odd = [k for k in raw if not isinstance(k, str)]
    if odd:
        raise UsageError(f"search space: key {odd[0]!r} is not a dimension name")
    unknown = sorted(set(raw) - KNOWN)
    if unknown:
        raise UsageError(f"search space: unknown key {unknown[0]!r} (known: {', '.join(sorted(KNOWN))})")
    missing = sorted(REQUIRED - set(raw))
    if missing:
        raise UsageError(f"search space: missing key {missing[0]!r}")
    dims = {name: _dimension(name, spec) for name, spec in raw.items()}
    depth = dims["depth"]
    if (depth.fixed if depth.fixed is not None else depth.low or min(depth.choices or [1])) < 1:
        raise UsageError("search space: depth: must be >= 1")
    # Both corners of the space must be valid TrainConfigs (e.g. momentum in [0, 1), dropout < 0.9).
    for corner in ("low", "high"):
        probe = {
            n: (d.fixed if d.fixed is not None else d.choices[0] if d.choices else getattr(d, corner))
            for n, d in dims.items()
            if n not in ("depth", "width")
        }
        try:
            TrainConfig.from_dict(probe)
        except ConfigError as err:
            raise UsageError(f"search space: {err}") from None
    for name, d in dims.items():  # and every choice
        for choice in d.choices or ():
            if name not in ("depth", "width", "epochs", "batch_size"):
                try:
                    TrainConfig.from_dict({name: choice})
                except ConfigError as err:
                    raise UsageError(f"search space: {err}") from None
    return SearchSpace(dims, origin)


def check_extension(old: SearchSpace, new: SearchSpace) -> None:
    """Refuse a space under which a study's earlier trials would not be valid points: the same
    dimensions, fixed values and choices (Optuna cannot change a categorical's choices); numeric
    ranges may only widen."""

    def show(d: Dimension) -> str:
        return (
            repr(d.fixed)
            if d.fixed is not None
            else f"choices {list(d.choices)}"
            if d.choices is not None
            else f"[{d.low}, {d.high}]{' log' if d.log else ''}{' or 0' if d.or_zero else ''}"
        )

    for name in sorted(set(old.dimensions) | set(new.dimensions)):
        if name not in new.dimensions or name not in old.dimensions:
            change = "drops" if name not in new.dimensions else "adds"
            raise UsageError(
                f"--extend: the new search space {change} {name!r}: the earlier trials were not drawn from it"
            )
        a, b = old.dimensions[name], new.dimensions[name]
        numeric = lambda d: d.fixed is None and d.choices is None  # noqa: E731
        ok = (a == b) or (
            numeric(a)
            and numeric(b)
            and a.log == b.log
            and a.or_zero == b.or_zero
            and b.low <= a.low
            and b.high >= a.high
        )
        if not ok:
            raise UsageError(
                f"--extend: the new search space changes {name} from {show(a)} to {show(b)}: the earlier "
                "trials would not be valid points of it (only numeric ranges may widen)"
            )
