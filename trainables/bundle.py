"""A trained model on disk: weights, the run's TrainConfig and the training normalisation.

The weights are those of the best-val epoch (chosen on validation only); the last epoch's weights
travel beside them when they differ. Saved with torch.save and read back with
``weights_only=True``: only tensors, numbers, strings, lists and dicts, never pickled objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainables.config import TrainConfig
from trainables.losses import ChapterLoss, output_units
from trainables.model import IN_FEATURES, build_model


@dataclass
class ModelBundle:
    model: nn.Module
    config: TrainConfig
    classes: list[str]
    mean: list[float]
    std: list[float]
    epoch: int | None = None  # the epoch whose weights these are

    @property
    def loss(self) -> ChapterLoss:
        return ChapterLoss(self.config.loss, len(self.classes))


def build_model_for(config: TrainConfig, n_classes: int) -> nn.Module:
    """The untrained net ``config`` describes, for images of ``n_classes`` classes."""
    return build_model(
        IN_FEATURES, config.hidden_sizes, output_units(config.loss, n_classes), config.activation, config.dropout
    )


def save_bundle(
    path: str | Path,
    state_dict: dict,
    config: dict,
    data_meta: dict,
    epoch: int | None = None,
    last_state: dict | None = None,
    last_epoch: int | None = None,
) -> None:
    """``state_dict``: the weights to use (the best epoch's); ``last_state``: the last epoch's, if other."""
    payload = {"model": state_dict, "config": config, "data": data_meta, "epoch": epoch}
    if last_state is not None:
        payload["last"] = {"model": last_state, "epoch": last_epoch}
    torch.save(payload, path)


def bundle_args(
    config: dict, data_meta: dict, last_state: dict, last_epoch: int, best_state: dict | None, best_epoch: int
) -> dict:
    """save_bundle's arguments for a run that ended at ``last_epoch``: the best epoch's weights
    first, the last epoch's beside them (when no epoch had a finite val_acc, the last ones; when
    the last ones are not kept, as in a finished trial's slimmed checkpoint, the best ones alone)."""
    if best_state is not None and not last_state:
        return {"state_dict": best_state, "config": config, "data_meta": data_meta, "epoch": best_epoch}
    if best_state is None or best_epoch == last_epoch:
        return {"state_dict": last_state, "config": config, "data_meta": data_meta, "epoch": last_epoch}
    return {
        "state_dict": best_state,
        "config": config,
        "data_meta": data_meta,
        "epoch": best_epoch,
        "last_state": last_state,
        "last_epoch": last_epoch,
    }


def load_bundle(path: str | Path, weights: str = "best") -> ModelBundle:
    """The model with the best epoch's weights, or with ``weights="last"`` the last epoch's."""
    blob = torch.load(path, weights_only=True, map_location="cpu")
    config = TrainConfig.from_dict(blob["config"])
    meta = blob["data"]
    model = build_model_for(config, len(meta["classes"]))
    chosen = (
        blob.get("last")
        if weights == "last" and blob.get("last")
        else {"model": blob["model"], "epoch": blob.get("epoch")}
    )
    model.load_state_dict(chosen["model"])
    model.eval()
    return ModelBundle(model, config, list(meta["classes"]), list(meta["mean"]), list(meta["std"]), chosen["epoch"])
