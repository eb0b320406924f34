"""The thin Ray Tune adapter over trainables.fit: report every epoch with a checkpoint, resume.

The only module of `trainables` that imports Ray. The trial's config is ``{'train': TrainConfig
dict, ...search parameters}``; the data arrive through ``tune.with_parameters`` (Ray's object store).
"""
from __future__ import annotations

import math
import os
import tempfile

import torch
import ray
from ray import tune

from trainables.config import TrainConfig
from trainables.data import StudyData
from trainables.loop import fit

STATE_FILE = "state.pt"


def data_meta(data: StudyData) -> dict:
    """What `predict` needs besides the weights: class names and the training normalisation."""
    return {"classes": list(data.classes), "mean": list(data.mean), "std": list(data.std)}


def reportable(metrics: dict) -> dict:
    # A diverged net's loss is unbounded: report +inf rather than NaN, which searchers reject.
    return {k: (math.inf if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def train_trial(config: dict, data: StudyData) -> None:
    train_config = TrainConfig.from_dict(config["train"])
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = torch.load(os.path.join(folder, STATE_FILE), weights_only=True, map_location="cpu")
    meta = data_meta(data)
    node_id = ray.get_runtime_context().get_node_id()

    def report(metrics: dict, snapshot) -> None:
        with tempfile.TemporaryDirectory() as folder:
            torch.save({**snapshot(), "data": meta}, os.path.join(folder, STATE_FILE))
            tune.report({**reportable(metrics), "node_id": node_id},
                        checkpoint=tune.Checkpoint.from_directory(folder))

    fit(train_config, data, on_epoch_end=report, resume=resume)
