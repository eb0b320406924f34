"""The thin Ray Tune adapters over trainables.fit and fit_population: report every epoch with a
checkpoint, resume.

The only module of `trainables` that imports Ray. A solo trial's config is ``{'train': TrainConfig
dict, ...search parameters}``; a population trial's is ``{'members': [such a config, ...]}`` and it
reports each member's record under ``members`` ({'0': record, ...}: every member's latest one, a
retired member's too). A sweep trial of several seeds (``sweep --seeds-per-trial``) is a solo
config with ``seeds: [s0, s1, ...]``: its seeds train as one population, and its report holds the
seeds' mean record (trainables.seeds) beside ``members``. The data arrive through
``tune.with_parameters`` (Ray's object store).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import math
import os
import re
import shutil
import tempfile

import ray
from ray import tune

from trainables.checkpoint import DEFAULT_CHECKPOINT_EVERY, STATE_FILE, TrainState
from trainables.config import TrainConfig
from trainables.data import StudyData
from trainables.loop import fit
from trainables.model import IN_FEATURES, count_params
from trainables.population import PopulationState, fit_population
from trainables.seeds import mean_record, seed_configs

log = logging.getLogger(__name__)
NO_SPACE = "No space left on device"  # strerror(ENOSPC), as OSError and pyarrow word it
POPULATION_FILE = "population.pt"  # a population trial's checkpoint (PopulationState), beside no state.pt
_CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")


class DiskFull(OSError):
    """ENOSPC while a trial wrote its checkpoint; the message names the folder and the bytes needed."""

    def __init__(self, path: str, needed: int):
        super().__init__(errno.ENOSPC, f"{NO_SPACE}: {path} needs {needed} bytes more for a checkpoint")
        self.path, self.needed = path, needed

    def __reduce__(self):
        return DiskFull, (self.path, self.needed)


def is_disk_full(err: BaseException | str | None) -> bool:
    """Whether ``err``, or anything it was raised from (a RayTaskError's cause too), is ENOSPC.
    ``err`` may also be the text of an error (Ray's ``Trial.get_error`` returns a str: a trial
    whose error could not be pickled, such as one killed by Ray's out-of-memory monitor)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or NO_SPACE in str(err):
            return True
        if not isinstance(err, BaseException):
            return False
        cause = getattr(err, "cause", None)  # a RayActorError's may be a protobuf message, not an error
        err = cause if isinstance(cause, BaseException) else (err.__cause__ or err.__context__)
    return False


def checkpoint_due(epoch: int, planned: int, every: int, diverged: bool) -> bool:
    """Checkpoint the first epoch, every ``every``-th after it, the planned last one and a diverged one:
    a resumed or retried trial repeats at most ``every - 1`` epochs (exactly, being seeded)."""
    return diverged or epoch >= planned or (epoch - 1) % max(1, every) == 0


def data_meta(data: StudyData) -> dict:
    """What `predict` needs besides the weights: class names and the training normalisation."""
    return {"classes": list(data.classes), "mean": list(data.mean), "std": list(data.std)}


def reportable(metrics: dict) -> dict:
    # A diverged net's loss is unbounded: report +inf rather than NaN, which searchers reject.
    return {k: (math.inf if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def _load(checkpoint: tune.Checkpoint) -> TrainState | PopulationState:
    with checkpoint.as_directory() as folder:
        population = os.path.join(folder, POPULATION_FILE)
        if os.path.exists(population):
            return PopulationState.load(population)
        return TrainState.load(os.path.join(folder, STATE_FILE))


def trial_checkpoints(folder: str, filesystem=None, below: int | None = None) -> list[tune.Checkpoint]:
    """The checkpoint folders (checkpoint_NNNNNN) of the trial folder ``folder``, newest first;
    with ``below``, only those of a lower index."""
    import pyarrow.fs

    if filesystem is None and "://" in folder:
        filesystem, folder = pyarrow.fs.FileSystem.from_uri(folder)
    filesystem = filesystem or pyarrow.fs.LocalFileSystem()
    try:
        infos = filesystem.get_file_info(pyarrow.fs.FileSelector(folder.rstrip("/")))
    except OSError:  # no such folder
        return []
    found = []
    for info in infos:
        m = _CHECKPOINT_DIR.match(info.base_name)
        if m and info.type == pyarrow.fs.FileType.Directory and (below is None or int(m[1]) < below):
            found.append((int(m[1]), info.path))
    return [tune.Checkpoint(p, filesystem=filesystem) for _, p in sorted(found, reverse=True)]


def _earlier_checkpoints(checkpoint: tune.Checkpoint) -> list[tune.Checkpoint]:
    parent, name = os.path.split(checkpoint.path.rstrip("/"))
    own = _CHECKPOINT_DIR.match(name)
    return trial_checkpoints(parent, checkpoint.filesystem, int(own[1]) if own else None)


def _other_checkpoints(checkpoint: tune.Checkpoint) -> list[tune.Checkpoint]:
    """The trial's checkpoints but ``checkpoint``, newest first (by index: Ray numbers them in order)."""
    parent, name = os.path.split(checkpoint.path.rstrip("/"))
    return [c for c in trial_checkpoints(parent, checkpoint.filesystem) if os.path.basename(c.path) != name]


def read_checkpoint(checkpoint: tune.Checkpoint | None) -> TrainState | PopulationState | None:
    """The state saved in ``checkpoint``; when that file is truncated or gone (a full disk, a
    crash, or an empty folder that study.disk put where a stale snapshot names a deleted
    checkpoint), the trial's newest other checkpoint that reads; None when none does (a trial
    then starts afresh, and being seeded replays the same epochs)."""
    if checkpoint is None:
        return None
    for candidate in (checkpoint, *_other_checkpoints(checkpoint)):
        try:
            return _load(candidate)
        except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, OSError
            log.warning("checkpoint %s cannot be read (%s: %s)", candidate.path, type(err).__name__, err)
    return None


def train_trial(
    config: dict,
    data: StudyData,
    resolve=None,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    finished: dict[str, dict] | None = None,
) -> None:
    """One trial. ``resolve`` maps the trial's config to the full one ({'train': ..., ...}) when the
    study's grid holds only an index into a list of prepared points (a capacity design).
    ``finished``: trials an earlier driver saw complete (a resume), by id, with their last result:
    such a trial reports that result once more and returns, untrained. A trial of several seeds
    (``seeds`` in its config) runs as ``train_population_trial``."""
    last = (finished or {}).get(tune.get_context().get_trial_id())
    if last is not None:
        tune.report(reportable(last))
        return
    config = resolve(config) if resolve is not None else config
    if config.get("seeds") is not None:
        train_population_trial(config, data, checkpoint_every=checkpoint_every)
        return
    train_config = TrainConfig.from_dict(config["train"])
    resume = read_checkpoint(tune.get_checkpoint())
    meta = data_meta(data)
    # Where this trial runs: the node, and the process (what a fault test may kill, and nothing else).
    where = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def report(metrics: dict, snapshot) -> None:
        metrics = {**reportable(metrics), **where}
        due = checkpoint_due(metrics["epoch"], train_config.epochs, checkpoint_every, metrics["status"] == "diverged")
        report_with_checkpoint(metrics, (lambda: snapshot().with_data(meta)) if due else None, STATE_FILE)

    fit(train_config, data, on_epoch_end=report, resume=resume)


def report_with_checkpoint(metrics: dict, state, file_name: str) -> None:
    """``tune.report(metrics)``, with a checkpoint of ``state()`` (a TrainState or PopulationState)
    when ``state`` is given; ENOSPC while Ray stores it raises DiskFull with the bytes it needed."""
    if state is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, file_name)
        state().save(path)
        size = os.path.getsize(path)
        try:
            tune.report({**metrics, "checkpoint_bytes": size}, checkpoint=tune.Checkpoint.from_directory(folder))
        except Exception as err:
            if is_disk_full(err):
                raise DiskFull(tune.get_context().get_trial_dir(), size) from None
            raise


def train_population_trial(
    config: dict,
    data: StudyData,
    resolve=None,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    finished: dict[str, dict] | None = None,
) -> None:
    """One trial that trains its members (``{'members': [{'train': ...}, ...]}``, after ``resolve``)
    as one population (trainables.population.fit_population), one checkpoint holding them all.
    Each report carries every member's latest record (with its param_count and status) under
    ``members``, keyed by the member's index as a string; ``finished`` as in ``train_trial``.
    A trial of several seeds (``{'train': ..., 'seeds': [...]}``) trains the recipe once per seed
    and reports, beside ``members``, their mean record (trainables.seeds.mean_record) as its own."""
    last = (finished or {}).get(tune.get_context().get_trial_id())
    if last is not None:
        tune.report(last)
        return
    config = resolve(config) if resolve is not None else config
    seeds = config.get("seeds")
    if seeds is not None:
        configs = seed_configs(TrainConfig.from_dict(config["train"]), seeds)
    else:
        configs = [TrainConfig.from_dict(point["train"]) for point in config["members"]]
    resume = read_checkpoint(tune.get_checkpoint())
    meta = data_meta(data)
    where = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    count = count_params(IN_FEATURES, list(configs[0].hidden_sizes), len(data.classes))
    latest = {}  # member index -> its last record: a retired member's stays in every later report
    for k, saved in enumerate(resume.members if isinstance(resume, PopulationState) else ()):
        if saved["status"] != "training" and saved["history"]:
            latest[str(k)] = reportable({**saved["history"][-1], "param_count": count, "status": saved["status"]})

    def report(members: dict[int, dict], snapshot) -> None:
        latest.update({str(k): reportable(record) for k, record in members.items()})
        epoch = max(record["epoch"] for record in members.values())
        ended = any(record["status"] != "completed" for record in members.values())
        due = checkpoint_due(epoch, configs[0].epochs, checkpoint_every, ended)
        metrics = {"epoch": epoch, "population": len(members), "members": dict(latest), **where}
        if seeds is not None:  # the trial's own record: its seeds' mean (every seed's latest record)
            metrics = {**reportable(mean_record(list(latest.values()))), **metrics}
        report_with_checkpoint(metrics, (lambda: snapshot().with_data(meta)) if due else None, POPULATION_FILE)

    fit_population(configs, data, on_epoch_end=report, resume=resume if isinstance(resume, PopulationState) else None)


def slim_finished(checkpoint: tune.Checkpoint | None) -> None:
    """A finished trial's checkpoints, once its MLflow run holds its model: the older ones are
    deleted, and the newest keeps the history, the config and one set of weights, the best
    epoch's (the optimizer state and the last epoch's weights go: nothing will resume the trial,
    a --resume skips it). Written all-or-nothing; a failure (a full disk) is logged and leaves the
    checkpoints as they were, never raised."""
    try:
        _slim(checkpoint)
    except Exception as err:
        log.warning("could not slim the finished trial's checkpoints (%s): %s", type(err).__name__, err)


def _slim(checkpoint: tune.Checkpoint | None) -> None:
    if checkpoint is None:
        return
    state = read_checkpoint(checkpoint)
    for older in _earlier_checkpoints(checkpoint):
        older.filesystem.delete_dir(older.path)
    if not isinstance(state, TrainState) or not state.optimizer:  # a population's newest is kept whole
        return
    best_is_last = state.best_model is None or state.best_epoch == state.epoch
    slim = dataclasses.replace(state, optimizer={}, scheduler=None, model=state.model if best_is_last else {})
    fs, path = checkpoint.filesystem, f"{checkpoint.path.rstrip('/')}/{STATE_FILE}"
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, STATE_FILE)
        slim.save(local)
        tmp = f"{path}.slim.tmp"
        try:
            with open(local, "rb") as src, fs.open_output_stream(tmp) as out:
                shutil.copyfileobj(src, out)
            fs.move(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                fs.delete_file(tmp)
            raise
