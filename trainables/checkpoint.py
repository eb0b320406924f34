"""The state a run resumes from: one typed object, saved as plain tensors and numbers.

``fit`` hands a ``TrainState`` to its epoch callback; the Ray adapter saves it as a Tune
checkpoint, the MLflow logger reads the final one back to log the model. On disk it is a dict of
tensors, numbers, strings and lists, loadable with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

STATE_FILE = "state.pt"
DEFAULT_CHECKPOINT_EVERY = 1  # epochs between a trial's checkpoints (--checkpoint-every)
BEST_IS_MODEL = "best_is_model"  # saved in place of best_model when the last epoch is the best


@dataclass
class TrainState:
    epoch: int  # the last finished epoch (0: nothing trained yet)
    model: dict  # state_dict of the net after ``epoch``
    optimizer: dict
    sampler_rng: torch.Tensor  # generator state of the batch order
    augment_rng: torch.Tensor  # generator state of the augmentation
    history: list[dict]  # one metrics record per finished epoch
    config: dict  # TrainConfig.to_dict() of the run
    global_rng: torch.Tensor | None = None  # torch's default generator on the run's device (dropout masks)
    data: dict | None = None  # classes, mean, std: what `predict` needs besides the weights
    scheduler: dict | None = None  # the learning-rate schedule's state (None: constant rate)
    best_epoch: int = 0  # the epoch with the best val_acc so far (0: none)
    best_model: dict | None = None  # its weights

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, blob: dict) -> TrainState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in blob.items() if k in known})

    def save(self, path: str | Path) -> None:
        """The best weights are saved once: when the last epoch is the best, they are the model's."""
        blob = self.to_dict()
        if self.best_model is not None and self.best_epoch == self.epoch:
            blob["best_model"], blob[BEST_IS_MODEL] = None, True
        torch.save(blob, path)

    @classmethod
    def load(cls, path: str | Path) -> TrainState:
        blob = torch.load(path, weights_only=True, map_location="cpu")
        state = cls.from_dict(blob)
        if blob.get(BEST_IS_MODEL):
            state.best_model = state.model
        return state

    def with_data(self, data: dict) -> TrainState:
        return dataclasses.replace(self, data=data)
