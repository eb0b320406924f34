"""The bottom of the training floor: augmentation, the batch order, evaluation sums and the one
training step, run eagerly by ``EagerSteps`` or replayed as CUDA graphs by ``GraphedSteps``
(trainables/graphed.py) behind one small interface, ``Steps``.

``fit`` (trainables/loop.py) sees only that interface: train an epoch, evaluate a split, both
answering with device tensors that it reads back in one host sync per epoch. A population of
same-shape nets trained by one batched step fits the same two methods, with one value per member.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from trainables.losses import ChapterLoss

EVAL_BATCH = 4096
CROP_PADDING = 4


# ---------------------------------------------------------------- augmentation, on the device in batches


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random HxW crop of the zero-padded batch (RandomCrop(H, padding) on each image)."""
    top = torch.randint(0, 2 * padding + 1, (x.shape[0],), generator=generator, device=x.device)
    left = torch.randint(0, 2 * padding + 1, (x.shape[0],), generator=generator, device=x.device)
    return crop_at(x, padding, top, left)


def crop_at(x: torch.Tensor, padding: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Each image's HxW crop of the zero-padded batch at (top, left); (padding, padding) is the image itself."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2."""
    return flip_where(x, torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5)


def flip_where(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """The images where ``flip`` (one bool per image) is true, mirrored left-right."""
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment(x: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    if "crop" in mode:
        x = random_crop(x, CROP_PADDING, generator)
    if "flip" in mode:
        x = random_flip(x, generator)
    return x


# ---------------------------------------------------------------- the batch order


class ShuffledBatchSampler(Sampler):
    """The batch order of every run: a new permutation each epoch, cut into batches of indices.
    Its generator's state is checkpointed, so a resumed run draws the orders it would have drawn."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = torch.randperm(self.n, generator=self.generator, device=self.generator.device)
        return iter(order.split(self.batch_size))


class BatchDataset(Dataset):
    """Indexed by a tensor of indices, answers with the whole batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


def make_loader(x: torch.Tensor, y: torch.Tensor, order: ShuffledBatchSampler) -> DataLoader:
    """The chapter's DataLoader over device-resident tensors, batches in ``order``: the sampler
    yields whole index tensors and the dataset answers with whole batches (no per-sample Python
    work, no per-batch host-to-device copy)."""
    return DataLoader(BatchDataset(x, y), sampler=order, batch_size=None)


# ---------------------------------------------------------------- evaluation

CALIBRATION_BINS = 15  # equal-width confidence bins of the expected calibration error (ECE)


@torch.inference_mode()
def evaluate_sums(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: ChapterLoss, chunk: int = EVAL_BATCH
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed loss, correct count, calibration sums) over the whole split in eval mode, as device
    tensors (no sync). The calibration sums are a [2, CALIBRATION_BINS] tensor: per confidence bin
    (the predicted class's probability), the summed confidence and the number of correct
    predictions; ECE = sum over bins of |correct - confidence| / n (``calibration_error``)."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    calibration = torch.zeros((2, CALIBRATION_BINS), device=x.device, dtype=torch.float64)
    for start in range(0, len(y), chunk):
        xb, yb = x[start : start + chunk], y[start : start + chunk]
        logits = model(xb)
        loss_sum += loss_fn(logits, yb).double() * len(yb)
        hits = loss_fn.predict(logits) == yb
        correct += hits.sum()
        confidence = loss_fn.probabilities(logits).max(dim=1).values.double()
        index = (confidence * CALIBRATION_BINS).long().clamp_(0, CALIBRATION_BINS - 1)  # a NaN (diverged) net: bin 0
        calibration[0].index_add_(0, index, confidence)
        calibration[1].index_add_(0, index, hits.double())
    return loss_sum, correct, calibration


def calibration_error(calibration: list[list[float]], n: int) -> float:
    """The expected calibration error from ``evaluate_sums``' calibration sums (as host lists)."""
    return sum(abs(hit - conf) for conf, hit in zip(*calibration, strict=True)) / max(n, 1)


# ---------------------------------------------------------------- the one training step


@dataclass(frozen=True, eq=False)
class TrainStep:
    """What an optimisation step works on, and the step itself: ``update`` is the device work
    (what a CUDA graph captures), ``after_update`` the schedule's step between updates."""

    model: nn.Module
    loss_fn: ChapterLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    augment: str  # "none", "crop", "flip" or "crop+flip"
    augment_gen: torch.Generator

    def update(self, xb: torch.Tensor, yb: torch.Tensor, loss_sum: torch.Tensor) -> None:
        """Augment, forward, loss, backward, optimizer step; adds the batch's summed loss to ``loss_sum``."""
        if self.augment != "none":
            xb = augment(xb, self.augment, self.augment_gen)
        loss = self.loss_fn(self.model(xb), yb)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        loss_sum.add_(loss.detach() * len(yb))

    def after_update(self) -> None:
        """The per-batch learning-rate schedule (host work: a graphed rate lives in a device tensor)."""
        if self.scheduler is not None:
            self.scheduler.step()


Batch = TypeVar("Batch")


def train_pass(
    step: TrainStep, batches: Iterable[Batch], apply: Callable[[Batch], None], loss_sum: torch.Tensor, n: int
) -> torch.Tensor:
    """One epoch: ``apply`` runs the step on each batch in order, the schedule steps after each.
    ``apply`` adds each batch's summed loss to ``loss_sum``; returns the mean over ``n`` samples."""
    step.model.train()
    loss_sum.zero_()
    for batch in batches:
        apply(batch)
        step.after_update()
    return loss_sum / max(n, 1)


# ---------------------------------------------------------------- the interface, and the eager steps


class Steps(Protocol):
    """How a run's steps execute; ``fit`` needs nothing else."""

    description: str  # "graphed (CUDA graphs)" or "eager (why not graphed)", reported as FitResult.steps

    def train_epoch(self) -> torch.Tensor:
        """One epoch in the next batch order; the mean training loss as a device tensor (no sync)."""

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``evaluate_sums`` over a split in eval mode, as device tensors (no sync)."""


class EagerSteps:
    """The step as Python launches it, batch by batch from the chapter's DataLoader."""

    def __init__(
        self, step: TrainStep, x: torch.Tensor, y: torch.Tensor, order: ShuffledBatchSampler, description: str = "eager"
    ):
        self.step, self.n, self.description = step, len(y), description
        self.loader = make_loader(x, y, order)
        self.loss_sum = torch.zeros((), device=x.device)

    def train_epoch(self) -> torch.Tensor:
        return train_pass(self.step, self.loader, self._update, self.loss_sum, self.n)

    def _update(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.step.update(*batch, self.loss_sum)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return evaluate_sums(self.step.model, x, y, self.step.loss_fn)
