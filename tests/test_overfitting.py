"""Known answers on synthetic curves and tables."""

import math

import pandas as pd
import pytest

from analysis.overfitting import (
    capacity_frontier,
    compare_by,
    edge_flags,
    gap_trend,
    importances,
    overfitting_onset,
    overfitting_summary,
    pareto_front,
)
from analysis.record import PARAM_TYPES, cast_params


def test_onset_is_where_val_turns_down_for_good_while_train_keeps_rising():
    train = [0.60, 0.70, 0.80, 0.85, 0.90, 0.95, 0.99]
    val = [0.60, 0.68, 0.75, 0.74, 0.76, 0.73, 0.72]
    # epoch 3 (0.75) is beaten later (0.76 at epoch 5); from epoch 5 on val never returns.
    assert overfitting_onset(train, val) == 5


def test_no_onset_while_validation_still_improves():
    assert overfitting_onset([0.6, 0.7, 0.8, 0.9], [0.6, 0.65, 0.7, 0.75]) is None


def test_no_onset_when_train_falls_with_val():
    # Both fall after epoch 2: that is instability, not overfitting.
    assert overfitting_onset([0.6, 0.8, 0.7, 0.65], [0.6, 0.75, 0.7, 0.6]) is None


def test_onset_uses_the_given_epoch_numbers_and_tolerance():
    train, val = [0.7, 0.8, 0.9, 0.95], [0.70, 0.80, 0.795, 0.79]
    assert overfitting_onset(train, val, epochs=[10, 20, 30, 40]) == 20
    assert overfitting_onset(train, val, tol=0.02) is None  # drops of 0.005-0.01 are within tolerance


def test_single_epoch_and_mismatched_curves():
    assert overfitting_onset([0.9], [0.8]) is None
    with pytest.raises(ValueError, match="same length"):
        overfitting_onset([0.9, 0.8], [0.8])


TRIALS = pd.DataFrame(
    {
        "run_id": list("abcdef"),
        "trial_id": list("ABCDEF"),
        "param_count": [100, 200, 300, 400, 1000, 1000],
        "val_acc": [0.70, 0.68, 0.75, 0.74, 0.80, 0.79],
        "train_acc": [0.72, 0.75, 0.85, 0.90, 0.99, 0.98],
        "loss": ["nll", "mse", "nll", "ce", "ce", "mse"],
        "depth": [1, 1, 2, 2, 3, 3],
        "batch_size": [16, 512, 512, 512, 512, 64],
        "lr": [1e-4, 1e-3, 0.29, 0.3, 0.25, 0.01],
    }
)
TRIALS["gap"] = TRIALS["train_acc"] - TRIALS["val_acc"]


def test_capacity_frontier_is_the_running_best_by_size():
    front = capacity_frontier(TRIALS)
    assert list(zip(front["param_count"], front["val_acc"], strict=False)) == [(100, 0.70), (300, 0.75), (1000, 0.80)]


def test_pareto_front_excludes_dominated_trials():
    front = pareto_front(TRIALS)
    assert list(front["run_id"]) == ["a", "c", "e"]


def test_compare_by_loss_counts_and_ranks():
    table = compare_by(TRIALS, "loss")
    assert table.loc["mse", "trials"] == 2 and table.loc["ce", "best"] == 0.80
    assert list(table.index)[0] == "ce"


def test_gap_grows_with_parameters_in_this_table():
    trend = gap_trend(TRIALS)
    assert trend["slope_per_decade"] > 0 and trend["correlation"] > 0.9


def test_edges_flag_ranges_where_the_best_trials_pile_up():
    space = {
        "lr": {"low": 1e-4, "high": 0.3, "log": True},
        "batch_size": {"choices": [16, 64, 512]},
        "depth": {"low": 1, "high": 4},
        "loss": {"choices": ["nll", "ce", "mse"]},
        "epochs": 10,
    }
    flags = edge_flags(TRIALS, space, top=3).set_index("dimension")
    assert flags.loc["lr", "edge"] == "high"  # 0.3, 0.29, 0.25: all in the top 10% of the log range
    assert flags.loc["batch_size", "edge"] == "high"
    assert not flags.loc["depth", "at_edge"]  # 3, 2, 2 inside 1..4
    assert "loss" not in flags.index and "epochs" not in flags.index


def test_overfitting_summary_per_trial():
    histories = pd.DataFrame(
        {
            "run_id": ["a"] * 4 + ["b"] * 3,
            "epoch": [1, 2, 3, 4, 1, 2, 3],
            "train_acc": [0.6, 0.8, 0.9, 0.95, 0.6, 0.7, 0.8],
            "val_acc": [0.6, 0.75, 0.7, 0.65, 0.6, 0.65, 0.7],
        }
    )
    summary = overfitting_summary(TRIALS, histories).set_index("run_id")
    assert summary.loc["a", "onset"] == 2 and summary.loc["a", "best_epoch"] == 2
    assert math.isnan(summary.loc["b", "onset"])  # no onset: the column holds NaN
    assert summary.loc["a", "final_gap"] == pytest.approx(0.30)


def test_importances_rank_the_hyperparameter_that_drives_the_metric():
    import numpy as np

    rng = np.random.default_rng(0)
    n = 40
    frame = pd.DataFrame({"lr": 10 ** rng.uniform(-4, -0.5, n), "depth": rng.integers(1, 5, n)})
    frame["val_acc"] = 0.5 + 0.1 * np.log10(frame["lr"]) + 0.001 * frame["depth"]
    space = {"lr": {"low": 1e-4, "high": 0.316, "log": True}, "depth": {"low": 1, "high": 4}}
    result = importances(frame, space)
    assert list(result)[0] == "lr" and result["lr"] > 0.8


def test_parameter_types_come_from_train_config():
    import dataclasses

    from trainables.config import TrainConfig

    assert {f.name for f in dataclasses.fields(TrainConfig)} | {"depth"} == set(PARAM_TYPES)
    assert (PARAM_TYPES["lr"], PARAM_TYPES["batch_size"], PARAM_TYPES["loss"], PARAM_TYPES["hidden_sizes"]) == (
        float,
        int,
        str,
        tuple,
    )


def test_params_are_cast_once():
    out = cast_params(
        {"hidden_sizes": "1024,512,128", "lr": "0.01", "batch_size": "64", "loss": "nll", "search.width_0": "1024"}
    )
    assert out == {
        "hidden_sizes": (1024, 512, 128),
        "depth": 3,
        "max_width": 1024,
        "lr": 0.01,
        "batch_size": 64,
        "loss": "nll",
        "width_0": 1024,
    }
