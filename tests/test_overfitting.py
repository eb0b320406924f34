"""Known answers on synthetic curves and tables."""

import math

import pandas as pd
import pytest

from analysis.overfitting import (
    capacity_frontier,
    compare_by,
    edge_flags,
    importance_distributions,
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


# ---------------------------------------------------------------- exact answers (mutation survivors)
NAN = float("nan")


def test_compare_by_gives_count_mean_median_and_best_per_value_dropping_incomplete_rows():
    frame = pd.DataFrame(
        {
            "loss": ["nll", "nll", "nll", "ce", None, "ce", "nll"],
            "val_acc": [0.5, 0.6, 0.9, 0.8, 0.99, NAN, 0.55],
            "lr": [0.1, NAN, 0.1, 0.1, 0.1, 0.1, 0.1],  # a gap elsewhere keeps the row
        }
    )
    table = compare_by(frame, "loss")
    assert list(table.columns) == ["trials", "mean", "median", "best"] and list(table.index) == ["nll", "ce"]
    assert table.loc["nll"].tolist() == pytest.approx([4, (0.5 + 0.6 + 0.9 + 0.55) / 4, 0.575, 0.9])
    assert table.loc["ce"].tolist() == pytest.approx([1, 0.8, 0.8, 0.8]), "the row without val_acc counts not"
    for missing in (("colour", "val_acc"), ("loss", "test_acc")):  # no such column, or no such metric
        empty = compare_by(frame, *missing)
        assert empty.empty and list(empty.columns) == ["trials", "mean", "median", "best"]


EDGE_SPACE = {
    "depth": 2,  # fixed: no range, no row
    "momentum": {"low": 0.0, "high": 0.99},  # searched, but no trial column
    "warmup": {"low": 0.0, "high": 0.5},  # a column without a value among the best
    "loss": {"choices": ["nll", "ce"]},  # choices that are not numbers have no edges
    "lr": {"low": 1e-4, "high": 1e-1, "log": True},
    "dropout": {"low": 0.0, "high": 0.5},
    "weight_decay": {"low": 1e-5, "high": 1e-1, "log": True, "or_zero": True},
    "width": {"low": 8, "high": 1024, "log": True},
    "batch_size": {"choices": [32, 64, 128]},
    "epochs": {"choices": [10, 20]},
}
EDGE_TRIALS = pd.DataFrame(
    {
        "val_acc": [0.90, 0.89, 0.88, 0.87, 0.86, 0.85, NAN],
        "warmup": [NAN] * 7,
        "loss": ["nll", "ce", "nll", "ce", "nll", "nll", "nll"],
        "lr": [0.08, 0.06, 0.07, 1e-3, 1e-3, 1.5e-4, 0.09],
        "dropout": [0.05, 0.02, 0.30, 0.45, 0.25, 0.01, 0.49],
        "weight_decay": [0.0, 0.0, 2e-5, 0.05, 1e-3, 1e-5, 0.09],
        "width_0": [1000, 900, 800, 16, 64, 8, 1024],
        "width_1": [8, NAN, 9, NAN, 10, 8, 1024],
        "batch_size": [128, 128, 32, 64, 32, 32, 128],
        "epochs": [20, 20, 10, 20, 10, 10, 20],
    }
)


def test_edge_flags_name_each_searched_range_and_where_a_majority_of_the_best_sit():
    flags = edge_flags(EDGE_TRIALS, EDGE_SPACE, top=4)  # the 4 best: 0.90 ... 0.87
    assert list(flags.columns) == ["dimension", "low", "high", "best_values", "at_edge", "edge"]
    got = {
        r.dimension: (r.low, r.high, r.best_values, r.at_edge, r.edge if isinstance(r.edge, str) else None)
        for r in flags.itertuples()
    }
    assert list(got) == ["lr", "dropout", "weight_decay", "width_0", "width_1", "batch_size", "epochs"]
    # lr: 0.08, 0.06, 0.07 within 10% of the log range's span of 0.1 (a factor of 2), 1e-3 not.
    assert got["lr"] == (1e-4, 1e-1, [0.08, 0.06, 0.07, 1e-3], True, "high")
    # dropout: 0.05 and 0.02 near 0 (within 0.05), 0.45 near 0.5: 2 of 4 is no majority.
    assert got["dropout"] == (0.0, 0.5, [0.05, 0.02, 0.30, 0.45], False, None)
    # or_zero's zeros sit on no edge; 2e-5 is near the low end, 0.05 near the high one.
    assert got["weight_decay"] == (1e-5, 1e-1, [2e-5, 0.05], False, None)
    assert got["width_0"] == (8, 1024, [1000, 900, 800, 16], True, "high")
    # width_1: both layers that exist are at the low end, but 2 of the 4 best is no majority.
    assert got["width_1"] == (8, 1024, [8.0, 9.0], False, None)
    assert got["batch_size"] == (32, 128, [128, 128, 32, 64], False, None)
    assert got["epochs"] == (10, 20, [20, 20, 10, 20], True, "high")  # two choices: the last is an edge


def test_edge_flags_use_the_five_best_by_default_and_a_range_s_margin_inclusively():
    five = pd.DataFrame({"val_acc": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], "dropout": [0.5, 0.5, 0.5, 0.1, 0.2, 0.2]})
    flags = edge_flags(five, {"dropout": {"low": 0.0, "high": 0.5}})
    assert flags["edge"].tolist() == ["high"], "3 of the 5 best at 0.5 (3 of 6 would not be a majority)"
    space = {"dropout": {"low": 0.0, "high": 1.0}}
    for values, edge in (([0.25, 0.25, 0.6], "low"), ([0.75, 0.75, 0.6], "high"), ([0.3, 0.7, 0.6], None)):
        frame = pd.DataFrame({"val_acc": [0.9, 0.8, 0.7], "dropout": values})
        assert edge_flags(frame, space, margin=0.25)["edge"].tolist() == [edge], values  # 0.25 of the span: at it
    empty = edge_flags(five, {"depth": 2})
    assert empty.empty and list(empty.columns) == ["dimension", "low", "high", "best_values", "at_edge", "edge"]
    by_other = edge_flags(
        five.assign(score=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), {"dropout": {"low": 0.0, "high": 0.5}}, "score"
    )
    assert by_other["best_values"].tolist() == [[0.2, 0.2, 0.1, 0.5, 0.5]], "ranked by the metric asked for"


def test_pareto_front_keeps_equal_trials_drops_ties_beaten_on_the_other_axis_and_skips_gaps():
    frame = pd.DataFrame(
        {
            "run_id": list("abcdef"),
            "val_acc": [0.8, 0.8, 0.7, 0.8, 0.9, NAN],
            "param_count": [100, 200, 50, 100, 400, 10],
            "lr": [0.1, 0.1, NAN, 0.1, 0.1, 0.1],  # a gap elsewhere keeps the row
        }
    )
    front = pareto_front(frame)
    assert list(front.columns) == ["run_id", "val_acc", "param_count", "lr"], "no index column"
    assert list(front["run_id"]) == ["c", "a", "d", "e"]  # b: as accurate as a, but larger
    assert list(front.index) == [0, 1, 2, 3]


def test_capacity_frontier_keeps_the_first_of_equal_bests_and_skips_gaps():
    frame = pd.DataFrame(
        {
            "param_count": [100, 200, 300, 50],
            "val_acc": [0.7, 0.7, 0.8, NAN],
            "lr": [0.1, 0.1, NAN, 0.1],  # a gap elsewhere keeps the row
        }
    )
    front = capacity_frontier(frame)
    assert list(front.columns) == ["param_count", "val_acc", "lr"] and list(front.index) == [0, 1]
    assert list(zip(front["param_count"], front["val_acc"], strict=True)) == [(100, 0.7), (300, 0.8)]


def test_onset_boundaries_the_last_epoch_and_equal_values():
    # Val falls after epoch 3 of 4 and train rises: the onset can be the second-to-last epoch.
    assert overfitting_onset([0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 0.7, 0.65]) == 3
    # Val back at exactly its level, or train exactly at its level, is no onset.
    assert overfitting_onset([0.5, 0.6, 0.7], [0.5, 0.7, 0.7]) is None
    assert overfitting_onset([0.5, 0.6, 0.6], [0.5, 0.7, 0.6]) is None
    # A dip in train two epochs later counts against the onset (the suffix minimum, not the next epoch).
    assert overfitting_onset([0.5, 0.6, 0.7, 0.55], [0.5, 0.8, 0.7, 0.6]) is None
    with pytest.raises(ValueError, match="^train_acc and val_acc must have the same length$"):
        overfitting_onset([0.9, 0.8], [0.8])


def test_overfitting_summary_has_one_row_a_trial_with_every_column():
    import numpy as np

    epochs = list(range(1, 61))
    val_loss = np.concatenate([np.linspace(0.7, 0.4, 20), np.linspace(0.4, 0.8, 40)]).tolist()  # onset 21
    histories = pd.DataFrame(
        {
            "run_id": ["a"] * 60 + ["b"] * 3 + ["c"] * 2,
            "epoch": epochs + [1, 2, 3] + [1, 2],
            "train_acc": [0.5 + 0.008 * e for e in epochs] + [0.6, NAN, 0.8] + [NAN, NAN],
            "val_acc": [0.6 + 0.01 * min(e, 20) - 0.002 * max(e - 20, 0) for e in epochs]
            + [0.6, 0.9, 0.7]
            + [0.5, 0.6],
            "val_loss": val_loss + [0.5, 0.4, NAN] + [0.5, 0.5],
        }
    )
    trials = pd.DataFrame({"run_id": ["b", "a"], "param_count": [20, 10], "trial_id": ["B", "A"], "lr": [0.1, 0.2]})
    summary = overfitting_summary(trials, histories)
    assert list(summary.columns) == [
        *("run_id", "best_epoch", "best_val_acc", "final_gap", "onset", "val_loss_onset", "epochs"),
        *("param_count", "trial_id"),
    ]
    a, b = (summary.set_index("run_id").loc[k] for k in ("a", "b"))
    assert len(summary) == 2, "c has no epoch with both accuracies"
    assert (a["best_epoch"], a["epochs"], a["param_count"], a["trial_id"]) == (20, 60, 10, "A")
    assert a["best_val_acc"] == pytest.approx(0.8)
    assert a["final_gap"] == pytest.approx(0.98 - 0.72) and a["onset"] == 20
    assert a["val_loss_onset"] == 21, "analysis.statistics.loss_onset of its val loss"
    # b's epoch 2 lacks train_acc: dropped, so its best epoch is 3 and its epochs 3; its val_loss has a gap.
    assert (b["best_epoch"], b["best_val_acc"], b["epochs"], b["trial_id"]) == (3, 0.7, 3, "B")
    assert b["final_gap"] == pytest.approx(0.1) and math.isnan(b["val_loss_onset"])
    late = histories[histories["run_id"] == "a"].assign(epoch=[e * 10 for e in epochs])  # epochs numbered 10, 20, ...
    numbered = overfitting_summary(trials, late).loc[0]
    assert (numbered["onset"], numbered["val_loss_onset"]) == (200, 210), "the curve's own epoch numbers"


def test_importances_cover_every_complete_searched_column_of_each_kind():
    import numpy as np

    rng = np.random.default_rng(1)
    n = 40
    frame = pd.DataFrame(
        {
            "loss": rng.choice(["nll", "ce"], n),
            "width_0": rng.integers(8, 1025, n),
            "weight_decay": np.where(rng.random(n) < 0.3, 0.0, 10 ** rng.uniform(-5, -1, n)),
            "batch_size": rng.choice([32, 64], n),
            "dropout": np.where(np.arange(n) == 3, NAN, rng.uniform(0, 0.5, n)),  # a gap: left out
        }
    )
    frame["val_acc"] = 0.5 + 0.3 * (frame["loss"] == "ce") + 1e-5 * frame["width_0"]
    space = {
        "depth": 1,  # fixed
        "momentum": {"low": 0.0, "high": 0.99},  # not a column
        "loss": {"choices": ["nll", "ce"]},
        "width": {"low": 8, "high": 1024, "log": True},
        "weight_decay": {"low": 1e-5, "high": 1e-1, "log": True, "or_zero": True},
        "batch_size": {"choices": [32, 64]},
        "dropout": {"low": 0.0, "high": 0.5},
    }
    result = importances(frame, space)
    assert set(result) == {"loss", "width_0", "weight_decay", "batch_size"}
    assert list(result)[0] == "loss" and result["loss"] > 0.8
    assert importances(frame.iloc[:1], space) == {} and importances(frame, {"depth": 1}) == {}
    assert importances(frame, space) == importances(frame, space, seed=0) != importances(frame, space, seed=1)
    assert set(importances(frame.iloc[:2], space)) == {"loss", "width_0", "weight_decay", "batch_size", "dropout"}


def test_importance_distributions_are_the_search_s_own_per_kind_of_dimension():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = {
        "depth": {"low": 1, "high": 3},
        "width": {"low": 8, "high": 1024, "log": True},
        "batch_size": {"low": 16, "high": 256, "log": True},
        "epochs": {"low": 5, "high": 40},
        "lr": {"low": 1e-4, "high": 1e-1, "log": True},
        "dropout": {"low": 0.0, "high": 0.5},
        "weight_decay": {"low": 1e-5, "high": 1e-1, "log": True, "or_zero": True},
        "loss": {"choices": ["nll", "ce"]},
    }
    trials = pd.DataFrame({k: [1] for k in ("depth", "width_0", "batch_size", "epochs", "lr", "dropout")})
    trials = trials.assign(weight_decay=[0.0], loss=["ce"])
    assert importance_distributions(trials, space) == {
        "depth": IntDistribution(1, 3),
        "width_0": IntDistribution(8, 1024, log=True),
        "batch_size": IntDistribution(16, 256, log=True),
        "epochs": IntDistribution(5, 40),
        "lr": FloatDistribution(1e-4, 1e-1, log=True),
        "dropout": FloatDistribution(0.0, 0.5),
        "weight_decay": FloatDistribution(0.0, 1e-1),
        "loss": CategoricalDistribution(["nll", "ce"]),
    }


def test_edge_flags_keep_a_linear_range_s_zeros_and_scale_the_margin_by_the_span():
    space = {"dropout": {"low": 0.0, "high": 0.5}, "lr": {"low": 1e-4, "high": 1e-1, "log": True}}
    frame = pd.DataFrame({"val_acc": [0.9, 0.8, 0.7], "dropout": [0.0, 0.0, 0.3], "lr": [1.5e-4, 1.9e-4, 0.01]})
    flags = edge_flags(frame, space).set_index("dimension")
    assert flags.loc["dropout", "best_values"] == [0.0, 0.0, 0.3] and flags.loc["dropout", "edge"] == "low"
    assert flags.loc["lr", "edge"] == "low", "within a factor of 2 of 1e-4: 10% of the log span"
    near = pd.DataFrame({"val_acc": [0.9, 0.8, 0.7], "dropout": [0.1, 0.15, 0.3], "lr": [0.01] * 3})
    assert not edge_flags(near, space).set_index("dimension").loc["dropout", "at_edge"], "0.1 is 20% of 0.5 away"


def test_overfitting_summary_skips_runs_without_accuracies_wherever_they_sort_and_keeps_unknown_runs():
    histories = pd.DataFrame(
        {
            "run_id": ["0", "0", "x", "x"],
            "epoch": [1, 2, 1, 2],
            "train_acc": [NAN, NAN, 0.6, 0.7],
            "val_acc": [0.5, 0.6, 0.6, 0.65],
        }
    )
    summary = overfitting_summary(TRIALS, histories)
    assert summary["run_id"].tolist() == ["x"] and math.isnan(summary.loc[0, "param_count"]), "x: no such trial"
    empty = overfitting_summary(TRIALS, histories.iloc[:2])
    assert empty.empty and "param_count" in empty.columns and "best_val_acc" in empty.columns
