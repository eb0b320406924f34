"""trainables/steps.py's evaluation sums, and the per-epoch calibration and eval-mode train loss
that fit() records from them (the statistics issue: a val loss that rises while accuracy stays
flat is overconfidence, so the loop logs the ECE; train loss is also measured in eval mode)."""

import pytest
import torch

from analysis.statistics import ece
from trainables.config import TrainConfig
from trainables.loop import evaluate, fit, normalise
from trainables.losses import ChapterLoss, output_units
from trainables.model import build_model
from trainables.steps import CALIBRATION_BINS, calibration_error, evaluate_sums

FAST = {"hidden_sizes": (32,), "batch_size": 16, "epochs": 3, "lr": 0.05, "threads": 1}


@pytest.mark.parametrize("loss", ["nll", "bce"])
def test_calibration_sums_give_the_reference_ece(loss):
    torch.manual_seed(0)
    model = build_model(12, (8,), output_units(loss, 2), "tanh")
    x, y = torch.randn(300, 12), torch.randint(0, 2, (300,))
    loss_fn = ChapterLoss(loss, 2)
    _, correct, calibration = evaluate_sums(model, x, y, loss_fn, chunk=64)  # several chunks
    with torch.no_grad():
        logits = model(x)
    confidence = loss_fn.probabilities(logits).max(dim=1).values
    hits = loss_fn.predict(logits) == y
    assert calibration.shape == (2, CALIBRATION_BINS)
    assert calibration[1].sum().item() == correct.item() == hits.sum().item()
    assert calibration_error(calibration.tolist(), len(y)) == pytest.approx(
        ece(confidence.tolist(), hits.tolist()), abs=1e-9
    )


def test_fit_records_the_val_ece_and_the_eval_mode_train_loss_of_each_epoch(tiny_data):
    config = TrainConfig(**FAST, dropout=0.5)  # dropout: train-mode and eval-mode losses differ
    result = fit(config, tiny_data)
    last = result.history[-1]
    model, loss_fn = result.model, ChapterLoss(config.loss, len(tiny_data.classes))
    device = next(model.parameters()).device
    train_x = normalise(tiny_data.train.x, tiny_data.mean, tiny_data.std, device)
    val_x = normalise(tiny_data.val.x, tiny_data.mean, tiny_data.std, device)
    assert last["train_eval_loss"] == pytest.approx(evaluate(model, train_x, tiny_data.train.y, loss_fn)["loss"])
    assert last["train_eval_loss"] != pytest.approx(last["train_loss"], abs=1e-6)
    model.eval()
    with torch.no_grad():
        logits = model(val_x)
    confidence = loss_fn.probabilities(logits).max(dim=1).values
    hits = loss_fn.predict(logits) == tiny_data.val.y
    assert last["val_ece"] == pytest.approx(ece(confidence.tolist(), hits.tolist()), abs=1e-9)
    assert all(0 <= r["val_ece"] <= 1 for r in result.history)
