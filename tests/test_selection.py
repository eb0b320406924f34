"""One best-epoch rule: the highest finite val_acc, the earliest epoch among ties, everywhere."""

from __future__ import annotations

import math

import pandas as pd
from torch import nn

from analysis.overfitting import overfitting_summary
from analysis.record import best_of
from trainables.loop import FitResult
from trainables.selection import best_record, improves

NAN = float("nan")
# Ties at 0.8 (epochs 2 and 4), a NaN epoch that must not win, records out of epoch order.
HISTORY = [
    {"epoch": 3, "val_acc": 0.7, "train_acc": 0.8},
    {"epoch": 1, "val_acc": 0.6, "train_acc": 0.6},
    {"epoch": 4, "val_acc": 0.8, "train_acc": 0.95},
    {"epoch": 2, "val_acc": 0.8, "train_acc": 0.7},
    {"epoch": 5, "val_acc": NAN, "train_acc": 0.99},
]


def test_the_best_epoch_is_the_earliest_of_the_highest_finite_val_acc():
    assert best_record(HISTORY)["epoch"] == 2


def test_no_best_epoch_without_a_finite_val_acc():
    assert (
        best_record(
            [
                {"epoch": 1, "val_acc": NAN},
                {"epoch": 2, "val_acc": math.inf},
                {"epoch": 3, "val_acc": None},
                {"epoch": 4},
            ]
        )
        is None
    )
    assert best_record([]) is None


def test_an_epoch_must_beat_the_best_not_match_it():
    assert improves(0.5, -math.inf) and improves(0.81, 0.8)
    assert not improves(0.8, 0.8) and not improves(NAN, -math.inf) and not improves(True, -math.inf)


def test_the_mlflow_summary_and_the_analysis_agree_with_the_rule():
    assert best_of(HISTORY) == {"best_val_acc": 0.8, "best_epoch": 2}
    assert best_of([{"epoch": 1, "val_acc": NAN}]) == {}
    curves = pd.DataFrame([{**r, "run_id": "a"} for r in HISTORY if not math.isnan(r["val_acc"])])
    summary = overfitting_summary(pd.DataFrame({"run_id": ["a"], "param_count": [1], "trial_id": ["t"]}), curves)
    assert int(summary.loc[0, "best_epoch"]) == 2


def test_a_fit_summary_reports_the_epoch_the_rule_picks():
    ordered = sorted(HISTORY, key=lambda r: r["epoch"])
    history = [{**r, "train_loss": 0.0, "val_loss": 0.0, "gap": 0.0, "epoch_seconds": 0.0} for r in ordered]
    summary = FitResult(history, "completed", 0, nn.Linear(1, 1)).summary()
    assert (summary["best_epoch"], summary["best_val_acc"]) == (2, 0.8)
