"""`birdplane capacity`: a controlled capacity study on Ray Tune, beside the TPE sweep.

One variable at a time: a grid of widths x depths, crossed with seeds (and optionally with a few
values of one regulariser), every cell trained with one fixed recipe for the same number of
epochs, with no early stopping. Tune's ``grid_search`` enumerates the cells; resources, the MLflow
logger, the manifest and resume are the study runner's (``study.runner.run_study``).

Ray and MLflow are imported inside the functions that use them (see study/runner.py).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from study import preflight
from study.errors import UsageError
from study.runner import (
    Prepared,
    StudyOptions,
    StudySummary,
    check_options,
    check_study_path,
    run_study,
    trial_dirname,
    trial_resources,
    tuner_for,
)
from trainables.config import ConfigError, DataConfig, TrainConfig
from trainables.data import check_data
from trainables.model import count_params

SIZE_FIELDS = ("hidden_sizes",)
RUN_FIELDS = ("seed", "epochs", "threads", "device")  # set by the study, never by a recipe
DEFAULT_WIDTHS = (16, 64, 256, 1024)
DEFAULT_DEPTHS = (1, 2)
DEFAULT_SEEDS = 3
# 60 epochs of the chapter's recipe: its nets reach train_acc 0.99 from about [256] on, and their
# val loss has turned up well before (the chapter's overfitting signal), while the default grid
# still fits in about 15 minutes on 2 CPUs.
DEFAULT_EPOCHS = 60
SMOKE = {"widths": (16, 32), "depths": (1,), "seeds": 2, "epochs": 2}


@dataclass(frozen=True)
class Grid:
    """The capacity study's design: widths x depths x seeds (x the regulariser's values), each for
    ``epochs`` epochs."""

    widths: tuple[int, ...] = DEFAULT_WIDTHS
    depths: tuple[int, ...] = DEFAULT_DEPTHS
    seeds: int = DEFAULT_SEEDS
    epochs: int = DEFAULT_EPOCHS
    regulariser: str | None = None  # a TrainConfig field, e.g. augment, weight_decay, dropout
    values: tuple = ()  # its values, one capacity curve each

    def cells(self) -> list[str]:
        """Every width x depth, the largest first: the longest trials start first and do not leave
        CPUs idle at the end of the study."""
        sizes = [[w] * d for d in self.depths for w in self.widths]
        return [cell_label(h) for h in sorted(sizes, key=lambda h: -count_params(3072, h, 2))]

    def label(self) -> str:
        reg = f" x {self.regulariser}={','.join(map(str, self.values))}" if self.regulariser else ""
        return (
            f"widths {','.join(map(str, self.widths))} x depths {','.join(map(str, self.depths))} x "
            f"{self.seeds} seeds{reg}, {self.epochs} epochs"
        )

    def runs(self) -> int:
        return len(self.widths) * len(self.depths) * self.seeds * max(1, len(self.values))

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["widths"], out["depths"], out["values"] = list(self.widths), list(self.depths), list(self.values)
        return out


def cell_label(hidden) -> str:
    return "[" + ",".join(str(h) for h in hidden) + "]"


def parse_cell(label: str) -> list[int]:
    return [int(v) for v in label.strip("[]").split(",")]


def _ints(name: str, value) -> tuple[int, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        out = tuple(int(str(v).strip()) for v in items)
    except ValueError:
        raise UsageError(f"{name}: {value!r} is not a comma-separated list of positive integers") from None
    if not out or any(v < 1 for v in out) or len(set(out)) != len(out):
        raise UsageError(f"{name}: {value!r} must list distinct positive integers")
    return out


def _field_value(name: str, raw):
    """A regulariser value as its TrainConfig field's type ('0.05' -> 0.05 for weight_decay)."""
    kind = typing.get_type_hints(TrainConfig)[name]
    try:
        return kind(raw) if kind in (int, float) and isinstance(raw, str) else raw
    except ValueError:
        raise UsageError(f"--regulariser {name}: {raw!r} is not a {kind.__name__}") from None


def parse_regulariser(text: str) -> tuple[str, tuple]:
    """'augment=none,crop+flip' -> ('augment', ('none', 'crop+flip')), each value a valid config."""
    name, sep, values = text.partition("=")
    name = name.strip()
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - set(SIZE_FIELDS) - set(RUN_FIELDS)
    if not sep or name not in fields:
        raise UsageError(f"--regulariser {text!r}: expected FIELD=V1,V2 with FIELD one of {', '.join(sorted(fields))}")
    parsed = tuple(_field_value(name, v.strip()) for v in values.split(",") if v.strip())
    return name, parsed


def make_grid(
    widths=None,
    depths=None,
    seeds=None,
    epochs=None,
    regulariser: str | None = None,
    design_file: str | None = None,
    smoke: bool = False,
) -> Grid:
    """The design from a file (if any), overridden by flags; --smoke shrinks what was not given."""
    base: dict[str, Any] = dict(SMOKE) if smoke else {}
    if design_file:
        base.update(_read_mapping(design_file, "design", {"widths", "depths", "seeds", "epochs", "regulariser"}))
    for key, value in (("widths", widths), ("depths", depths), ("seeds", seeds), ("epochs", epochs)):
        if value is not None:
            base[key] = value
    reg = base.pop("regulariser", None)
    if regulariser:
        reg = regulariser
    name, values = None, ()
    if isinstance(reg, dict):
        if len(reg) != 1:
            raise UsageError("design: regulariser must name one field, e.g. {augment: [none, crop+flip]}")
        ((field, vals),) = reg.items()
        name, values = parse_regulariser(f"{field}=" + ",".join(map(str, vals if isinstance(vals, list) else [vals])))
    elif reg:
        name, values = parse_regulariser(str(reg))
    if name is not None and len(values) < 2:
        raise UsageError(f"--regulariser {name}: give at least two values to compare")
    if len(set(map(str, values))) != len(values):
        raise UsageError(f"--regulariser {name}: duplicate values")
    seeds_value, epochs_value = base.get("seeds", DEFAULT_SEEDS), base.get("epochs", DEFAULT_EPOCHS)
    for key, value in (("seeds", seeds_value), ("epochs", epochs_value)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"--{key} must be an integer >= 1, got {value!r}")
    return Grid(
        widths=_ints("--widths", base.get("widths", DEFAULT_WIDTHS)),
        depths=_ints("--depths", base.get("depths", DEFAULT_DEPTHS)),
        seeds=seeds_value,
        epochs=epochs_value,
        regulariser=name,
        values=values,
    )


def _read_mapping(path: str, what: str, allowed: set[str]) -> dict:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{what} file {path} does not exist")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise UsageError(f"{what} file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict) or any(not isinstance(k, str) for k in raw):
        raise UsageError(f"{what} file {path} must be a mapping of names")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise UsageError(f"{what} file {path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    return raw


# ---------------------------------------------------------------- the recipe: everything but size

RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in SIZE_FIELDS + RUN_FIELDS)


def chapter_recipe() -> dict:
    """The chapter's recipe: TrainConfig's defaults (tanh, nll, SGD lr 1e-2, batch 64, no augmentation)."""
    defaults = TrainConfig()
    return {name: getattr(defaults, name) for name in RECIPE_FIELDS}


def recipe_from_file(path: str) -> dict:
    raw = _read_mapping(path, "recipe", set(RECIPE_FIELDS) | set(SIZE_FIELDS) | set(RUN_FIELDS))
    fixed = sorted(set(raw) & (set(SIZE_FIELDS) | set(RUN_FIELDS)))
    if fixed:
        raise UsageError(f"recipe file {path}: {fixed[0]} is set by the study, not by the recipe")
    return {**chapter_recipe(), **raw}


def recipe_from_run(run_id: str, tracking_uri: str) -> dict:
    """A trial's non-size hyperparameters, from its config.json (the same source rerun uses)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from analysis.runs import read_json_artifact

    client = MlflowClient(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise UsageError(f"--from-run {run_id}: no such run at {tracking_uri}") from None
    resolved = read_json_artifact(client, run_id, "config.json")
    if not resolved or "train" not in resolved:
        raise UsageError(f"--from-run {run_id}: the run has no config.json with its training config")
    return {name: resolved["train"][name] for name in RECIPE_FIELDS if name in resolved["train"]}


def check_recipe(recipe: dict, design: Grid) -> None:
    """Every cell with every regulariser value must make a valid TrainConfig."""
    for value in design.values or (None,):
        values = {**recipe, **({design.regulariser: value} if design.regulariser else {})}
        try:
            TrainConfig.from_dict({**values, "hidden_sizes": [design.widths[0]], "epochs": design.epochs})
        except ConfigError as err:
            raise UsageError(f"recipe: {err}") from None


@dataclass(frozen=True)
class CapacitySpec:
    """What the parent run and the manifest record of a capacity study: its design and recipe."""

    design: Grid
    recipe: dict
    recipe_source: str

    def to_dict(self) -> dict:
        return {
            "design": self.design.to_dict(),
            "recipe": self.recipe,
            "recipe_source": self.recipe_source,
            "epochs": self.design.epochs,
        }


@dataclass(frozen=True)
class CapacityOptions(StudyOptions):
    """StudyOptions' ``seed`` is the first seed: cells use seed, seed + 1, ..."""

    design: Grid = Grid()
    recipe: str = "chapter"  # chapter, or a recipe YAML file
    from_run: str | None = None


CapacityPrepared = Prepared[CapacityOptions, CapacitySpec]


def prepare_capacity(opts: CapacityOptions, data: DataConfig) -> CapacityPrepared:
    """Every check that needs neither Ray nor training; raises UsageError with one line."""
    if opts.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {opts.seed}")
    check_options(opts)
    uri = preflight.resolve_tracking_uri(opts.tracking_uri)
    preflight.check_tracking_uri(uri)
    if opts.from_run:
        if opts.recipe != "chapter":
            raise UsageError("give either --recipe or --from-run, not both")
        recipe, source = recipe_from_run(opts.from_run, uri), f"run {opts.from_run}"
    elif opts.recipe == "chapter":
        recipe, source = chapter_recipe(), "chapter"
    else:
        recipe, source = recipe_from_file(opts.recipe), opts.recipe
    check_recipe(recipe, opts.design)
    if recipe.get("loss") == "bce" and len(data.classes) != 2:
        raise UsageError("recipe: loss bce needs exactly 2 classes")
    check_data(data)
    storage = check_study_path(opts.storage_path, opts.name, opts.resume, "capacity")
    spec = CapacitySpec(opts.design, recipe, source)
    return Prepared(
        opts, spec, data, uri, opts.experiment or opts.name, storage, opts.design.epochs, study_name=opts.name
    )


def design_points(spec: CapacitySpec, first_seed: int, threads: int, device: str) -> list[dict]:
    """Every run of the design, in the order they should start: largest cells first, and within a
    cell every regulariser value and seed, so no CPU idles behind one long run at the end. Each
    point is {'train': TrainConfig dict, 'tags': its MLflow tags, and the grid coordinates}."""
    from analysis import record  # imports MLflow

    design = spec.design
    points = []
    for cell in design.cells():
        for value in design.values or (None,):
            for seed in range(design.seeds):
                values = {
                    **spec.recipe,
                    "hidden_sizes": parse_cell(cell),
                    "seed": first_seed + seed,
                    "epochs": design.epochs,
                    "threads": threads,
                    "device": device,
                }
                if design.regulariser:
                    values[design.regulariser] = value
                points.append(
                    {
                        "cell": cell,
                        "seed": seed,
                        **({"regulariser": value} if design.regulariser else {}),
                        "train": TrainConfig.from_dict(values).to_dict(),
                        "tags": {
                            record.TAG_DESIGN: design.label(),
                            record.TAG_CELL: cell,
                            record.TAG_SEED: str(seed),
                            record.TAG_REGULARISER: f"{design.regulariser}={value}" if design.regulariser else "none",
                        },
                    }
                )
    return points


@dataclass(frozen=True)
class PointOf:
    """A trial's full config from its grid index (picklable: Tune and Ray keep it).

    The grid holds plain indices, not ``sample_from`` values: Tune fills those in only when a
    trial starts, and a trial created but not started before an interruption comes back from
    ``Tuner.restore`` without them.
    """

    points: tuple

    def __call__(self, config: dict) -> dict:
        if "point" not in config:  # already full (a sweep's config, or resolved before)
            return dict(config)
        return {**{k: v for k, v in config.items() if k != "point"}, **self.points[int(config["point"])]}


@dataclass(frozen=True)
class Capacity:
    """The capacity grid as a ``study.runner.Design``: every point of the grid, no searcher, no
    scheduler; the design and the recipe as artefacts; trials resolved from their grid index."""

    kind: str = "capacity"

    def build_tuner(self, prep: CapacityPrepared, data, callbacks: list, cluster: dict, resolve: PointOf):
        from ray import tune

        resources, _, concurrency = trial_resources(prep.options, cluster)
        # No scheduler and no searcher: every point of the grid trains the whole budget.
        tune_config = tune.TuneConfig(
            num_samples=1, max_concurrent_trials=concurrency, reuse_actors=True, trial_dirname_creator=trial_dirname
        )
        param_space = {"point": tune.grid_search(list(range(len(resolve.points))))}
        return tuner_for(prep, data, resources, callbacks, tune_config, param_space, resolve=resolve), concurrency

    def artifacts(self, prep: CapacityPrepared) -> dict:
        spec = prep.space
        return {"design.json": spec.design.to_dict(), "recipe.json": {**spec.recipe, "source": spec.recipe_source}}

    def resolver(self, prep: CapacityPrepared, cluster: dict) -> PointOf:
        opts = prep.options
        _, device, _ = trial_resources(opts, cluster)
        return PointOf(tuple(design_points(prep.space, opts.seed, opts.cpus_per_trial, device)))


def run_capacity(prep: CapacityPrepared) -> StudySummary:
    return run_study(prep, Capacity())


def checkpoint_sizes(prep: CapacityPrepared) -> list[int]:
    """Each run's checkpoint size in bytes (study.runner.checkpoint_bytes), for --check."""
    from study.runner import checkpoint_bytes

    recipe, design = prep.space.recipe, prep.space.design
    runs = design.seeds * max(1, len(design.values))
    optimizer, momentum = recipe.get("optimizer", "sgd"), recipe.get("momentum", 0.0)
    return [checkpoint_bytes(parse_cell(c), optimizer, momentum) for c in design.cells() for _ in range(runs)]
