"""Known answers for the capacity analysis: budgets, per-size aggregates, trends, memorisation."""
import math

import numpy as np
import pandas as pd
import pytest

from analysis.capacity import (budget_of, memorisation, per_size, readable, split_by_budget,
                               trend_with_interval)
from analysis.overfitting import capacity_frontier


def _trials(rows):
    frame = pd.DataFrame(rows)
    frame["gap"] = frame["train_acc"] - frame["val_acc"]
    frame["best_val_acc"] = frame.get("best_val_acc", frame["val_acc"])
    return frame


def test_a_trial_stopped_early_is_kept_off_the_frontier_it_would_change():
    trials = _trials([
        {"run_id": "a", "hidden_sizes": (16,), "param_count": 100, "val_acc": 0.70, "train_acc": 0.8, "epochs_run": 40},
        {"run_id": "b", "hidden_sizes": (64,), "param_count": 400, "val_acc": 0.75, "train_acc": 0.9, "epochs_run": 40},
        # Stopped at epoch 4, while its val_acc was still high by luck: it would top the frontier.
        {"run_id": "c", "hidden_sizes": (32,), "param_count": 200, "val_acc": 0.80, "train_acc": 0.8, "epochs_run": 4},
    ])
    assert list(capacity_frontier(trials)["run_id"]) == ["a", "c"]
    full, short = split_by_budget(trials, budget_of({"epochs": 40}))
    assert list(short["run_id"]) == ["c"]
    assert list(capacity_frontier(full)["run_id"]) == ["a", "b"]


def test_without_a_budget_every_trial_counts():
    trials = _trials([{"run_id": "a", "hidden_sizes": (8,), "param_count": 1, "val_acc": 0.5, "train_acc": 0.5,
                       "epochs_run": 3}])
    full, short = split_by_budget(trials, budget_of({"epochs": {"low": 1, "high": 9}}))
    assert len(full) == 1 and short.empty


def test_per_size_means_and_spreads_over_seeds_with_val_loss_and_onset_from_the_curves():
    trials = _trials([
        {"run_id": "a1", "hidden_sizes": (16,), "param_count": 100, "val_acc": 0.70, "train_acc": 0.80,
         "best_val_acc": 0.72, "epochs_run": 3},
        {"run_id": "a2", "hidden_sizes": (16,), "param_count": 100, "val_acc": 0.74, "train_acc": 0.84,
         "best_val_acc": 0.76, "epochs_run": 3},
        {"run_id": "b1", "hidden_sizes": (64,), "param_count": 400, "val_acc": 0.80, "train_acc": 1.00,
         "best_val_acc": 0.82, "epochs_run": 3},
    ])
    histories = pd.DataFrame({
        "run_id": ["a1"] * 3 + ["a2"] * 3 + ["b1"] * 3, "epoch": [1, 2, 3] * 3,
        "train_acc": [0.6, 0.7, 0.8, 0.6, 0.7, 0.84, 0.7, 0.9, 1.0],
        "val_acc": [0.6, 0.72, 0.70, 0.6, 0.76, 0.74, 0.7, 0.82, 0.80],
        "val_loss": [0.7, 0.5, 0.6, 0.7, 0.4, 0.5, 0.6, 0.3, 0.9]})
    table = per_size(trials, histories).set_index("hidden_sizes")
    small, large = table.loc["[16]"], table.loc["[64]"]
    assert small["seeds"] == 2 and small["final_val_acc"] == pytest.approx(0.72)
    assert small["final_val_acc_sd"] == pytest.approx(np.std([0.70, 0.74], ddof=1))
    assert small["best_val_acc"] == pytest.approx(0.74) and small["gap"] == pytest.approx(0.10)
    assert small["min_val_loss"] == pytest.approx(0.45) and small["final_val_loss"] == pytest.approx(0.55)
    assert small["val_loss_rise"] == pytest.approx(0.10)
    assert large["val_loss_rise"] == pytest.approx(0.6) and math.isnan(large["final_val_acc_sd"])
    assert small["onset"] == 2 and small["onset_seen"] == "2/2"  # val turns down for good after epoch 2
    assert list(table["param_count"]) == [100, 400]


def test_per_size_keeps_groups_apart():
    trials = _trials([
        {"run_id": "a", "hidden_sizes": (16,), "param_count": 100, "val_acc": 0.70, "train_acc": 0.9, "augment": "none"},
        {"run_id": "b", "hidden_sizes": (16,), "param_count": 100, "val_acc": 0.76, "train_acc": 0.8,
         "augment": "crop+flip"}])
    table = per_size(trials, group="augment")
    assert sorted(table["group"]) == ["crop+flip", "none"] and (table["seeds"] == 1).all()


def test_trend_recovers_a_known_slope_and_its_interval_narrows_with_agreeing_seeds():
    rng = np.random.default_rng(0)
    rows = []
    for p in (1e3, 1e4, 1e5, 1e6):
        for s in range(5):
            rows.append({"param_count": p, "gap": 0.05 * math.log10(p) + rng.normal(0, 0.01), "seed": s})
    trend = trend_with_interval(pd.DataFrame(rows), n_boot=500)
    assert trend["slope_per_decade"] == pytest.approx(0.05, abs=0.01)
    assert trend["low"] < trend["slope_per_decade"] < trend["high"] and trend["high"] - trend["low"] < 0.02
    exact = pd.DataFrame([{"param_count": p, "gap": 0.1 * math.log10(p)} for p in (1e3, 1e4, 1e5) for _ in range(3)])
    t = trend_with_interval(exact, n_boot=100)
    assert (t["low"], t["slope_per_decade"], t["high"]) == pytest.approx((0.1, 0.1, 0.1))
    assert trend_with_interval(exact.head(3))["slope_per_decade"] is None, "one size: no trend"
    single = trend_with_interval(exact.drop_duplicates("param_count"))
    assert single["slope_per_decade"] == pytest.approx(0.1) and single["low"] is None, "one seed a size: no interval"


def _curve(train, val):
    n = len(train)
    return pd.DataFrame({"hidden_sizes": [f"[{2 ** i}]" for i in range(n)], "param_count": [10 ** i for i in range(n)],
                         "train_acc": train, "final_val_acc": val})


def test_memorisation_point_val_peak_and_a_second_rise():
    result = memorisation(_curve([0.8, 0.95, 0.995, 1.0, 1.0, 1.0], [0.70, 0.78, 0.80, 0.76, 0.75, 0.79]))
    assert result["memorised_at"] == 100 and result["val_peak_at"] == 100
    assert result["peak_vs_memorisation"] == "at"
    assert result["second_rise"] and result["second_rise_at"] == 100_000 and result["beyond"] == "dips, then rises again"


def test_no_second_rise_when_validation_only_falls_and_no_memorisation_when_train_stays_low():
    falling = memorisation(_curve([0.9, 0.99, 1.0, 1.0], [0.80, 0.79, 0.78, 0.779]))
    assert falling["memorised_at"] == 10 and falling["val_peak_at"] == 1 and not falling["second_rise"]
    assert falling["peak_vs_memorisation"] == "below" and falling["beyond"] == "falls"
    rising = memorisation(_curve([0.9, 0.99, 1.0, 1.0], [0.78, 0.79, 0.80, 0.82]))
    assert rising["beyond"] == "keeps rising" and not rising["second_rise"], "a rise from the point itself is no dip"
    never = memorisation(_curve([0.7, 0.8, 0.9], [0.6, 0.7, 0.72]))
    assert never["memorised_at"] is None and never["val_peak_at"] == 100


def test_tables_are_written_for_people():
    table = pd.DataFrame({"param_count": [98370, 1574402], "val_acc": [0.83456, float("nan")], "onset": [12.0, None]})
    out = readable(table)
    assert list(out["param_count"]) == ["98,370", "1,574,402"]
    assert list(out["val_acc"]) == ["0.835", "—"] and list(out["onset"]) == ["12", "—"]
