"""The thin Ray Tune adapter over trainables.fit: report every epoch with a checkpoint, resume.

The only module of `trainables` that imports Ray. The trial's config is ``{'train': TrainConfig
dict, ...search parameters}``; the data arrive through ``tune.with_parameters`` (Ray's object store).
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

log = logging.getLogger(__name__)
NO_SPACE = "No space left on device"  # strerror(ENOSPC), as OSError and pyarrow word it
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


def _load(checkpoint: tune.Checkpoint) -> TrainState:
    with checkpoint.as_directory() as folder:
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


def read_checkpoint(checkpoint: tune.Checkpoint | None) -> TrainState | None:
    """The state saved in ``checkpoint``; when that file is truncated or gone (a full disk, a
    crash), the newest earlier checkpoint of the trial that reads; None when none does (a trial
    then starts afresh, and being seeded replays the same epochs)."""
    if checkpoint is None:
        return None
    for candidate in (checkpoint, *_earlier_checkpoints(checkpoint)):
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
    such a trial reports that result once more and returns, untrained."""
    last = (finished or {}).get(tune.get_context().get_trial_id())
    if last is not None:
        tune.report(reportable(last))
        return
    config = resolve(config) if resolve is not None else config
    train_config = TrainConfig.from_dict(config["train"])
    resume = read_checkpoint(tune.get_checkpoint())
    meta = data_meta(data)
    # Where this trial runs: the node, and the process (what a fault test may kill, and nothing else).
    where = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def report(metrics: dict, snapshot) -> None:
        metrics = {**reportable(metrics), **where}
        if not checkpoint_due(metrics["epoch"], train_config.epochs, checkpoint_every, metrics["status"] == "diverged"):
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, STATE_FILE)
            snapshot().with_data(meta).save(path)
            size = os.path.getsize(path)
            try:
                tune.report({**metrics, "checkpoint_bytes": size}, checkpoint=tune.Checkpoint.from_directory(folder))
            except Exception as err:
                if is_disk_full(err):
                    raise DiskFull(tune.get_context().get_trial_dir(), size) from None
                raise

    fit(train_config, data, on_epoch_end=report, resume=resume)


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
    if state is None or not state.optimizer:
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
