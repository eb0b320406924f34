"""The chapter's four classification losses over one shared logits model, and their predictions."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainables.config import ConfigError


def output_units(loss: str, n_classes: int) -> int:
    if loss == "bce":
        if n_classes != 2:
            raise ConfigError(f"loss: bce needs exactly 2 classes, got {n_classes}")
        return 1
    return n_classes


class ChapterLoss(nn.Module):
    """Maps (logits, labels) to a mean loss, the way the chapter composes each option.

    nll: LogSoftmax then NLLLoss (the chapter's model); ce: CrossEntropyLoss on logits;
    mse: MSE between softmax probabilities and one-hot targets; bce: one logit, BCEWithLogitsLoss.
    """

    def __init__(self, name: str, n_classes: int):
        super().__init__()
        output_units(name, n_classes)
        self.name = name
        self.n_classes = n_classes
        self.log_softmax = nn.LogSoftmax(dim=1)
        self.nll = nn.NLLLoss()
        self.ce = nn.CrossEntropyLoss()
        self.mse = nn.MSELoss()
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.name == "nll":
            return self.nll(self.log_softmax(logits), labels)
        if self.name == "ce":
            return self.ce(logits, labels)
        if self.name == "mse":
            target = F.one_hot(labels, self.n_classes).to(logits.dtype)
            return self.mse(torch.softmax(logits, dim=1), target)
        return self.bce(logits[:, 0], labels.to(logits.dtype))

    def per_member(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each member's mean loss, as ``forward`` gives it on that member's batch: logits
        [K, B, units] and labels [K, B] -> [K] (a population of K nets, trainables/population.py)."""
        k, b, units = logits.shape
        flat, targets = logits.reshape(k * b, units), labels.expand(k, b).reshape(k * b)
        if self.name == "nll":
            per_sample = -self.log_softmax(flat).gather(1, targets[:, None])[:, 0]
        elif self.name == "ce":
            per_sample = F.cross_entropy(flat, targets, reduction="none")
        elif self.name == "mse":
            target = F.one_hot(targets, self.n_classes).to(flat.dtype)
            per_sample = (torch.softmax(flat, dim=1) - target).square().mean(dim=1)
        else:
            per_sample = F.binary_cross_entropy_with_logits(flat[:, 0], targets.to(flat.dtype), reduction="none")
        return per_sample.view(k, b).mean(dim=1)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        if self.name == "bce":
            return (logits[:, 0] > 0).long()  # sigmoid(z) > 0.5  <=>  z > 0
        return logits.argmax(dim=1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        if self.name == "bce":
            p1 = torch.sigmoid(logits[:, 0])
            return torch.stack([1 - p1, p1], dim=1)
        return torch.softmax(logits, dim=1)
