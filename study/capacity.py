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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from study import preflight
from study.errors import UsageError
from study.namelock import study_claimed
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
# From below the interpolation threshold (n x classes = 18,000 parameters: width ~6 at depth 1)
# to well past it: widths 1..256 x depths 1, 2 are 3 k to 853 k parameters. Wider nets (1024) are
# where the chapter's question was already answered (the old default grid) and cost most of its time.
DEFAULT_WIDTHS = (1, 2, 4, 8, 16, 64, 256)
DEFAULT_DEPTHS = (1, 2)
# 5 seeds: a minimum detectable difference of 0.016 at 80% power for a seed sd of 0.008 (3: 0.024),
# printed with every report (analysis/power.py).
DEFAULT_SEEDS = 5
# 60 epochs of the chapter's recipe: its nets reach train_acc 0.99 from about [256] on, and their
# val loss has turned up well before (the chapter's overfitting signal), while the default grid
# (70 runs, 14 populations) fits in the 30 minutes the 2-CPU machine allows.
DEFAULT_EPOCHS = 60
SMOKE = {"widths": (16, 32), "depths": (1,), "seeds": 2, "epochs": 2}
# A design over this many runs is refused unless --large says it is meant (a GPU or a cluster):
# at the default 60 epochs it is days of this 2-CPU machine (see cost_estimate).
LARGE_RUNS = 1000
# One Ray trial per population by default (--no-population: one per point); the measurement that
# chose it: docs/benchmarks.md, benchmarks/population.py --capacity.
DEFAULT_POPULATION = True
DESIGN_KEYS = {"widths", "depths", "seeds", "epochs", "regulariser", "tune"}


@dataclass(frozen=True)
class Grid:
    """The capacity study's design: widths x depths x seeds (x the regulariser's values), each for
    ``epochs`` epochs."""

    widths: tuple[int, ...] = DEFAULT_WIDTHS
    depths: tuple[int, ...] = DEFAULT_DEPTHS
    seeds: int = DEFAULT_SEEDS
    epochs: int = DEFAULT_EPOCHS
    regulariser: str | None = None  # a TrainConfig field, e.g. augment, weight_decay, dropout, label_noise
    values: tuple = ()  # its values, one capacity curve each
    tune: str | None = None  # a nuisance TrainConfig field (lr) every cell trains at each of ...
    tune_values: tuple = ()  # ... these values; per size the best on val's selection half is kept

    def cells(self) -> list[str]:
        """Every width x depth, the largest first: the longest trials start first and do not leave
        CPUs idle at the end of the study."""
        sizes = [[w] * d for d in self.depths for w in self.widths]
        return [cell_label(h) for h in sorted(sizes, key=lambda h: -count_params(3072, h, 2))]

    def label(self) -> str:
        reg = f" x {self.regulariser}={','.join(map(str, self.values))}" if self.regulariser else ""
        if self.tune:
            reg += f" x tuned {self.tune}={','.join(map(str, self.tune_values))}"
        return (
            f"widths {','.join(map(str, self.widths))} x depths {','.join(map(str, self.depths))} x "
            f"{self.seeds} seeds{reg}, {self.epochs} epochs"
        )

    def runs(self) -> int:
        return (
            len(self.widths) * len(self.depths) * self.seeds * max(1, len(self.values)) * max(1, len(self.tune_values))
        )

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["widths"], out["depths"], out["values"] = list(self.widths), list(self.depths), list(self.values)
        out["tune_values"] = list(self.tune_values)
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


def _field_value(name: str, raw, flag: str = "--regulariser"):
    """A regulariser value as its TrainConfig field's type ('0.05' -> 0.05 for weight_decay)."""
    kind = typing.get_type_hints(TrainConfig)[name]
    try:
        return kind(raw) if kind in (int, float) and isinstance(raw, str) else raw
    except ValueError:
        raise UsageError(f"{flag} {name}: {raw!r} is not a {kind.__name__}") from None


def parse_regulariser(text: str, flag: str = "--regulariser") -> tuple[str, tuple]:
    """'augment=none,crop+flip' -> ('augment', ('none', 'crop+flip')), each value a valid config."""
    name, sep, values = text.partition("=")
    name = name.strip()
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - set(SIZE_FIELDS) - set(RUN_FIELDS)
    if flag == "--tune" and name in set(SIZE_FIELDS) | set(RUN_FIELDS):
        what = "the size the study varies" if name in SIZE_FIELDS else "set by the study for every run"
        raise UsageError(f"--tune {name}: {what}, not a nuisance hyperparameter (tune e.g. lr or weight_decay)")
    if not sep or name not in fields:
        raise UsageError(f"{flag} {text!r}: expected FIELD=V1,V2 with FIELD one of {', '.join(sorted(fields))}")
    parsed = tuple(_field_value(name, v.strip(), flag) for v in values.split(",") if v.strip())
    return name, parsed


def _axis(raw, flag: str) -> tuple[str | None, tuple]:
    """A design axis from a flag ('lr=0.01,0.1') or a design file ({lr: [0.01, 0.1]}): at least two
    distinct values."""
    name, values = None, ()
    if isinstance(raw, dict):
        if len(raw) != 1:
            raise UsageError(f"design: {flag.lstrip('-')} must name one field, e.g. {{lr: [0.01, 0.1]}}")
        ((field, vals),) = raw.items()
        vals = vals if isinstance(vals, list) else [vals]
        name, values = parse_regulariser(f"{field}=" + ",".join(map(str, vals)), flag)
    elif raw:
        name, values = parse_regulariser(str(raw), flag)
    if name is not None and len(values) < 2:
        raise UsageError(f"{flag} {name}: give at least two values to compare (got {len(values)})")
    if len(set(map(str, values))) != len(values):
        raise UsageError(f"{flag} {name}: duplicate values")
    return name, values


def make_grid(
    widths=None,
    depths=None,
    seeds=None,
    epochs=None,
    regulariser: str | None = None,
    design_file: str | None = None,
    smoke: bool = False,
    tune: str | None = None,
) -> Grid:
    """The design from a file (if any), overridden by flags; --smoke shrinks what was not given."""
    base: dict[str, Any] = dict(SMOKE) if smoke else {}
    if design_file:
        base.update(_read_mapping(design_file, "design", DESIGN_KEYS))
    for key, value in (("widths", widths), ("depths", depths), ("seeds", seeds), ("epochs", epochs)):
        if value is not None:
            base[key] = value
    name, values = _axis(regulariser or base.pop("regulariser", None), "--regulariser")
    tuned, tune_values = _axis(tune or base.pop("tune", None), "--tune")
    if tuned is not None and tuned == name:
        raise UsageError(f"--tune {tuned}: it is already the regulariser axis; tune another field")
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
        tune=tuned,
        tune_values=tune_values,
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

    try:  # asked to read a run, not to create a store: MlflowClient would create it, migrations and all
        preflight.check_store_exists(tracking_uri)
    except UsageError as err:
        raise UsageError(f"--from-run {run_id}: {err}") from None
    client = MlflowClient(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise UsageError(f"--from-run {run_id}: no such run at {tracking_uri}") from None
    resolved = read_json_artifact(client, run_id, "config.json")
    if not resolved or "train" not in resolved:
        raise UsageError(f"--from-run {run_id}: the run has no config.json with its training config")
    return {name: resolved["train"][name] for name in RECIPE_FIELDS if name in resolved["train"]}


def axis_values(design: Grid, value, tuned) -> dict:
    """The recipe fields one run of the design sets: its regulariser value and its tuned value."""
    out = {design.regulariser: value} if design.regulariser else {}
    return {**out, **({design.tune: tuned} if design.tune else {})}


def check_recipe(recipe: dict, design: Grid) -> None:
    """Every cell with every regulariser value and tuned value must make a valid TrainConfig."""
    for value in design.values or (None,):
        for tuned in design.tune_values or (None,):
            values = {**recipe, **axis_values(design, value, tuned)}
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


def spec_from_dict(blob: dict) -> CapacitySpec:
    """``CapacitySpec.to_dict()`` read back (the manifest's space of a capacity study)."""
    grid = dict(blob["design"])
    for key in ("widths", "depths", "values"):
        grid[key] = tuple(grid.get(key) or ())
    return CapacitySpec(Grid(**grid), dict(blob["recipe"]), blob.get("recipe_source", ""))


@dataclass(frozen=True)
class CapacityOptions(StudyOptions):
    """StudyOptions' ``seed`` is the first seed: cells use seed, seed + 1, ..."""

    design: Grid = Grid()
    recipe: str = "chapter"  # chapter, or a recipe YAML file
    from_run: str | None = None
    label_noise: float | None = None  # --label-noise: the recipe's share of flipped training labels
    large: bool = False  # --large: a design over LARGE_RUNS runs is meant
    # --population/--no-population: one Ray trial per population (the design points that share
    # trainables.population.SHARED_FIELDS) or one per point; None: the study's own on --resume
    # (its manifest), else DEFAULT_POPULATION.
    population: bool | None = None


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
    if opts.label_noise is not None:
        if not 0 <= opts.label_noise < 0.5:
            raise UsageError(f"--label-noise must be in [0, 0.5), got {opts.label_noise}")
        if opts.design.regulariser == "label_noise" or opts.design.tune == "label_noise":
            raise UsageError("--label-noise: label_noise is already an axis of the design; give one or the other")
        recipe = {**recipe, "label_noise": opts.label_noise}
        source += f", label_noise {opts.label_noise}"
    check_recipe(recipe, opts.design)
    if opts.design.runs() > LARGE_RUNS and not opts.large:
        cost = cost_estimate(opts.design, data)
        raise UsageError(
            f"the design has {opts.design.runs():,} runs, over the {LARGE_RUNS:,}-run limit for this machine "
            f"(estimated {cost['cpu_hours']:,.0f} CPU-hours here, {cost['gpu_hours']:,.1f} GPU-hours); "
            "pass --large to run it (a GPU or a cluster)"
        )
    if recipe.get("loss") == "bce" and len(data.classes) != 2:
        raise UsageError("recipe: loss bce needs exactly 2 classes")
    check_data(data)
    storage = check_study_path(opts.storage_path, opts.name, opts.resume, "capacity")
    opts = dataclasses.replace(opts, population=population_mode(opts, storage))
    spec = CapacitySpec(opts.design, recipe, source)
    return Prepared(
        opts, spec, data, uri, opts.experiment or opts.name, storage, opts.design.epochs, study_name=opts.name
    )


def population_mode(opts: CapacityOptions, storage: str) -> bool:
    """Whether the study trains populations: on --resume what its manifest says (a study made before
    the flag existed trained one trial per point), and a flag that says otherwise is refused;
    else the flag, or DEFAULT_POPULATION."""
    if not opts.resume:
        return DEFAULT_POPULATION if opts.population is None else opts.population
    from study import manifest

    recorded = bool(manifest.read(manifest.experiment_path(storage, opts.name)).options.get("population", False))
    if opts.population is not None and opts.population != recorded:
        was = "--population" if recorded else "--no-population"
        raise UsageError(f"--resume: study {opts.name!r} was started with {was}; resume it so (or without the flag)")
    return recorded


def populations(points: Sequence[dict]) -> list[tuple[int, ...]]:
    """The design's points grouped into populations: those whose training configs agree on every
    field a population shares (trainables.population.SHARED_FIELDS: the cell, and e.g. label_noise),
    each group in the points' order, the groups in the order of their first point (largest cells
    first)."""
    from trainables.population import SHARED_FIELDS

    groups: dict[tuple, list[int]] = {}
    for i, point in enumerate(points):
        key = tuple(repr(point["train"][name]) for name in SHARED_FIELDS)
        groups.setdefault(key, []).append(i)
    return [tuple(g) for g in groups.values()]


def design_points(spec: CapacitySpec, first_seed: int, threads: int, device: str) -> list[dict]:
    """Every run of the design, in the order they should start: largest cells first, and within a
    cell every regulariser value and seed, so no CPU idles behind one long run at the end. Each
    point is {'train': TrainConfig dict, 'tags': its MLflow tags, and the grid coordinates}."""
    from analysis import record  # imports MLflow

    design = spec.design
    points = []
    for cell in design.cells():
        for value in design.values or (None,):
            for tuned in design.tune_values or (None,):
                for seed in range(design.seeds):
                    values = {
                        **spec.recipe,
                        "hidden_sizes": parse_cell(cell),
                        "seed": first_seed + seed,
                        "epochs": design.epochs,
                        "threads": threads,
                        "device": device,
                        **axis_values(design, value, tuned),
                    }
                    points.append(
                        {
                            "cell": cell,
                            "seed": seed,
                            **({"regulariser": value} if design.regulariser else {}),
                            **({"tune": tuned} if design.tune else {}),
                            "train": TrainConfig.from_dict(values).to_dict(),
                            "tags": {
                                record.TAG_DESIGN: design.label(),
                                record.TAG_CELL: cell,
                                record.TAG_SEED: str(seed),
                                record.TAG_REGULARISER: f"{design.regulariser}={value}"
                                if design.regulariser
                                else "none",
                                record.TAG_TUNE: f"{design.tune}={tuned}" if design.tune else "none",
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
class PopulationOf:
    """A population trial's full config from its grid index: ``{'members': [point, ...]}``, the
    points of ``groups[index]`` (see ``populations``); picklable, as PointOf."""

    points: tuple
    groups: tuple

    def __call__(self, config: dict) -> dict:
        if "population" not in config:  # already full
            return dict(config)
        rest = {k: v for k, v in config.items() if k != "population"}
        return {**rest, "members": [self.points[i] for i in self.groups[int(config["population"])]]}


def resolver_of(points: list[dict], population: bool) -> PointOf | PopulationOf:
    return PopulationOf(tuple(points), tuple(populations(points))) if population else PointOf(tuple(points))


@dataclass(frozen=True)
class Capacity:
    """The capacity grid as a ``study.runner.Design``: every point of the grid, no searcher, no
    scheduler; the design and the recipe as artefacts; trials resolved from their grid index."""

    kind: str = "capacity"

    def build_tuner(self, prep: CapacityPrepared, data, callbacks: list, cluster: dict, resolve):
        from ray import tune

        from trainables.tune_adapter import train_population_trial, train_trial

        resources, _, concurrency = trial_resources(prep.options, cluster)
        # No scheduler and no searcher: every point (or population) of the grid trains the whole budget.
        tune_config = tune.TuneConfig(
            num_samples=1, max_concurrent_trials=concurrency, reuse_actors=True, trial_dirname_creator=trial_dirname
        )
        if isinstance(resolve, PopulationOf):
            param_space = {"population": tune.grid_search(list(range(len(resolve.groups))))}
            trainable = train_population_trial
        else:
            param_space, trainable = {"point": tune.grid_search(list(range(len(resolve.points))))}, train_trial
        tuner = tuner_for(prep, data, resources, callbacks, tune_config, param_space, resolve, trainable)
        return tuner, concurrency

    def artifacts(self, prep: CapacityPrepared) -> dict:
        spec = prep.space
        return {"design.json": spec.design.to_dict(), "recipe.json": {**spec.recipe, "source": spec.recipe_source}}

    def resolver(self, prep: CapacityPrepared, cluster: dict) -> PointOf | PopulationOf:
        opts = prep.options
        _, device, _ = trial_resources(opts, cluster)
        return resolver_of(design_points(prep.space, opts.seed, opts.cpus_per_trial, device), bool(opts.population))


def resolver_from_manifest(record) -> PointOf | PopulationOf:
    """The resolver the study's driver used, rebuilt from birdplane's manifest (``sync``): the same
    points (and populations), so a replayed run gets the same params, tags, name and config.json as
    a live one."""
    options = record.options
    device = options.get("trial_device") or "cpu"  # recorded by run_study; older studies ran on CPUs
    points = design_points(spec_from_dict(record.space), int(options["seed"]), int(options["cpus_per_trial"]), device)
    return resolver_of(points, bool(options.get("population", False)))


def run_capacity(prep: CapacityPrepared) -> StudySummary:
    with study_claimed(prep, "capacity"):
        summary = run_study(prep, Capacity())
    if prep.space.design.tune and not summary.undelivered:
        tag_selection(summary.tracking_uri, summary.experiment, summary.parent_run_id)
    return summary


def tag_selection(tracking_uri: str, experiment: str, parent_run_id: str) -> dict[str, bool]:
    """Tag every finished trial of a tuned study with whether its value was kept for its size
    (analysis.tuning.choose, on val's selection half); returns {run_id: selected}. Repeatable: a
    resumed study tags again with what its finished runs say then."""
    from mlflow import MlflowClient

    from analysis.record import ROLE_TRIAL, TAG_PARENT, TAG_ROLE, TAG_SELECTED
    from analysis.runs import find_experiment, finished, load_histories, search_runs, trials_frame
    from analysis.tuning import SELECT_METRIC, choose, selected_runs
    from study.records import set_tags

    client = MlflowClient(tracking_uri)
    runs = search_runs(
        client,
        find_experiment(client, experiment),
        f"tags.`{TAG_PARENT}` = '{parent_run_id}' and tags.`{TAG_ROLE}` = '{ROLE_TRIAL}'",
    )
    trials = finished(trials_frame(runs))
    if trials.empty:
        return {}
    chosen = selected_runs(trials, choose(trials, load_histories(client, trials["run_id"], (SELECT_METRIC,))))
    out = {run_id: run_id in chosen for run_id in trials["run_id"]}
    for run_id, selected in out.items():
        set_tags(client, run_id, {TAG_SELECTED: "true" if selected else "false"})
    return out


# ---------------------------------------------------------------- what a design costs

# Measured on this machine (2-core AMD EPYC, torch 2.14.1, 1 thread, batch 64, 2 epochs of widths
# 1..4096 at depth 1 while the machine was shared, load ~5; benchmarks/capacity_cost.py): a fixed
# cost per training step (Python, the optimizer, the evaluations' share) of ~2 ms, and a rate for
# the multiply-adds of 58 GFLOP/s up to ~4M parameters, ~30 GFLOP/s beyond (the weights leave
# the cache: width 4096 took 32 s an epoch). 2 trials run side by side on the 2 CPUs.
CPU_STEP_SECONDS = 2.0e-3
CPU_FLOPS = 58e9
CPU_FLOPS_LARGE = 30e9
CPU_CACHE_PARAMS = 4_000_000
# An H100 (measured 2026-11-27, NOTES.md; no GPU was lent to this task to measure again): a step is
# launch-bound at ~1.4 ms for 64 samples up to width ~1k, and 8 runs at once each took 5.15 s
# where one alone took 4.41 s (6.8 runs' worth of launches in parallel). The arithmetic itself is
# shared, at an assumed 20 TFLOP/s (FP32; the GPU's peak is higher, these small GEMMs reach less).
GPU_STEP_SECONDS = 1.4e-3
GPU_FLOPS = 20e12
GPU_PARALLEL_RUNS = 8 * 4.41 / 5.15
CIFAR_TRAIN_PER_CLASS = 5000


def cost_model_text() -> str:
    return (
        f"model: {CPU_STEP_SECONDS * 1e3:.1f} ms a step + FLOPs at {CPU_FLOPS / 1e9:.0f} GFLOP/s a CPU here "
        f"({CPU_FLOPS_LARGE / 1e9:.0f} above {CPU_CACHE_PARAMS / 1e6:.0f}M parameters); "
        f"{GPU_STEP_SECONDS * 1e3:.1f} ms a step + FLOPs at {GPU_FLOPS / 1e12:.0f} TFLOP/s, "
        f"launches of {GPU_PARALLEL_RUNS:.1f} runs in parallel on a GPU"
    )


def run_flops(hidden: list[int], n_train: int, n_val: int, n_classes: int = 2) -> float:
    """Multiply-adds x 2 of one epoch: training (forward + backward ~ 3 forwards) and the
    evaluations of the whole training split, val and val's two halves."""
    forward = 2 * count_params(3072, hidden, n_classes)
    return forward * (3 * n_train + n_train + 2 * n_val)


def cost_estimate(design: Grid, data: DataConfig, batch_size: int = 64) -> dict:
    """CPU-hours on this machine and GPU-hours on an H100 for the whole design (the model above;
    CIFAR-10's 5,000 training images a class unless the data are a subset)."""
    per_class = data.subset or CIFAR_TRAIN_PER_CLASS
    total = per_class * len(data.classes)
    n_val = 0 if data.val_split == "book" else int(round(data.val_fraction * total))
    n_train = total - n_val
    n_val = n_val or 1000 * len(data.classes)  # book: the official test split
    steps = -(-n_train // batch_size)
    repeats = design.runs() // (len(design.widths) * len(design.depths))
    cpu = launches = arithmetic = 0.0
    for cell in design.cells():
        flops = run_flops(parse_cell(cell), n_train, n_val, len(data.classes))
        rate = CPU_FLOPS if count_params(3072, parse_cell(cell), 2) <= CPU_CACHE_PARAMS else CPU_FLOPS_LARGE
        cpu += design.epochs * (steps * CPU_STEP_SECONDS + flops / rate)
        launches += design.epochs * steps * GPU_STEP_SECONDS
        arithmetic += design.epochs * flops / GPU_FLOPS
    cpu_hours = cpu * repeats / 3600
    gpu_hours = (launches / GPU_PARALLEL_RUNS + arithmetic) * repeats / 3600
    return {
        "runs": design.runs(),
        "cpu_hours": cpu_hours,
        "wall_hours_here": cpu_hours / 2,  # 2 one-CPU trials at a time
        "gpu_hours": gpu_hours,
        "n_train": n_train,
    }


def checkpoint_sizes(prep: CapacityPrepared) -> list[int]:
    """Each run's checkpoint size in bytes (study.runner.checkpoint_bytes), for --check."""
    from study.runner import checkpoint_bytes

    recipe, design = prep.space.recipe, prep.space.design
    runs = design.runs() // len(design.cells())  # seeds x regulariser values x tuned values a cell
    optimizer, momentum = recipe.get("optimizer", "sgd"), recipe.get("momentum", 0.0)
    return [checkpoint_bytes(parse_cell(c), optimizer, momentum) for c in design.cells() for _ in range(runs)]
