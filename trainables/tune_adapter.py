"""The thin Ray Tune adapter over trainables.fit: report every epoch with a checkpoint, resume.

The only module of `trainables` that imports Ray. The trial's config is ``{'train': TrainConfig
dict, ...search parameters}``; the data arrive through ``tune.with_parameters`` (Ray's object store).
"""

from __future__ import annotations

import math
import os
import tempfile

import ray
from ray import tune

from trainables.checkpoint import STATE_FILE, TrainState
from trainables.config import TrainConfig
from trainables.data import StudyData
from trainables.loop import fit


def data_meta(data: StudyData) -> dict:
    """What `predict` needs besides the weights: class names and the training normalisation."""
    return {"classes": list(data.classes), "mean": list(data.mean), "std": list(data.std)}


def reportable(metrics: dict) -> dict:
    # A diverged net's loss is unbounded: report +inf rather than NaN, which searchers reject.
    return {k: (math.inf if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def read_checkpoint(checkpoint: tune.Checkpoint | None) -> TrainState | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return TrainState.load(os.path.join(folder, STATE_FILE))


def train_trial(config: dict, data: StudyData, resolve=None) -> None:
    """One trial. ``resolve`` maps the trial's config to the full one ({'train': ..., ...}) when the
    study's grid holds only an index into a list of prepared points (a capacity design)."""
    config = resolve(config) if resolve is not None else config
    train_config = TrainConfig.from_dict(config["train"])
    resume = read_checkpoint(tune.get_checkpoint())
    meta = data_meta(data)
    # Where this trial runs: the node, and the process (what a fault test may kill, and nothing else).
    where = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def report(metrics: dict, snapshot) -> None:
        with tempfile.TemporaryDirectory() as folder:
            snapshot().with_data(meta).save(os.path.join(folder, STATE_FILE))
            tune.report({**reportable(metrics), **where}, checkpoint=tune.Checkpoint.from_directory(folder))

    fit(train_config, data, on_epoch_end=report, resume=resume)
