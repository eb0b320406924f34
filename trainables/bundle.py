"""A trained model on disk: weights, the run's TrainConfig and the training normalisation.

Saved with torch.save and read back with ``weights_only=True``: only tensors, numbers, strings,
lists and dicts, never arbitrary pickled objects.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainables.config import TrainConfig
from trainables.losses import ChapterLoss, output_units
from trainables.model import build_model


@dataclass
class ModelBundle:
    model: nn.Module
    config: TrainConfig
    classes: list[str]
    mean: list[float]
    std: list[float]

    @property
    def loss(self) -> ChapterLoss:
        return ChapterLoss(self.config.loss, len(self.classes))


def bundle_payload(state_dict: dict, config: dict, data_meta: dict) -> dict:
    return {"model": state_dict, "config": config, "data": data_meta}


def save_bundle(path: str | Path, state_dict: dict, config: dict, data_meta: dict) -> None:
    torch.save(bundle_payload(state_dict, config, data_meta), path)


def load_bundle(path: str | Path) -> ModelBundle:
    blob = torch.load(path, weights_only=True, map_location="cpu")
    config = TrainConfig.from_dict(blob["config"])
    meta = blob["data"]
    model = build_model(3 * 32 * 32, config.hidden_sizes, output_units(config.loss, len(meta["classes"])),
                        config.activation)
    model.load_state_dict(blob["model"])
    model.eval()
    return ModelBundle(model, config, list(meta["classes"]), list(meta["mean"]), list(meta["std"]))
