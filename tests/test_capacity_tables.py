"""Known answers for the capacity tables: budgets, per-run curve summaries, per-size rows, curves,
trends, comparisons and the readable form. Expected numbers are hand arithmetic or closed forms
(t with 1 or 2 df, F with 2 numerator df), never the code under test."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis.capacity import (
    CURVE_COLUMNS,
    SIZE_COLUMNS,
    comparisons,
    curve_summary,
    curve_trend,
    curves,
    epochs_of,
    fmt_count,
    per_size,
    readable,
    split_by_epochs,
)

NAN = math.nan
Z975 = 1.959963984540054  # the normal 97.5% quantile: a t interval with infinite df


def t1(p):
    """The t quantile with 1 df (Cauchy): tan(pi (p - 1/2))."""
    return math.tan(math.pi * (p - 0.5))


def t2(p):
    """The t quantile with 2 df in closed form: (2p - 1) / sqrt(2 p (1 - p))."""
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def _check(actual, expected, what=""):
    """Every key of ``expected`` and no other, in order; floats approx, NaN only where NaN is expected."""
    assert list(actual) == list(expected), f"{what}: keys {list(actual)} != {list(expected)}"
    for key, want in expected.items():
        got = actual[key]
        if isinstance(want, float) and math.isnan(want):
            assert isinstance(got, float) and math.isnan(got), f"{what}{key}: {got!r} should be missing (NaN)"
        elif isinstance(want, float):
            assert got == pytest.approx(want), f"{what}{key}: {got!r} != {want!r}"
        else:
            assert got == want, f"{what}{key}: {got!r} != {want!r}"


def _trials(rows):
    frame = pd.DataFrame(rows)
    frame["gap"] = frame["train_acc"] - frame["val_acc"]
    if "best_val_acc" not in frame:
        frame["best_val_acc"] = frame["val_acc"]
    return frame


# ---------------------------------------------------------------- the budget and who ran it


def test_the_budget_is_the_spaces_fixed_integer_or_float_epochs_and_nothing_else():
    assert epochs_of({"epochs": 40}) == 40
    forty = epochs_of({"epochs": 40.0})
    assert forty == 40 and type(forty) is int, "a float budget is read as whole epochs"
    assert epochs_of({"epochs": True}) is None, "a bool is not a number of epochs"
    assert epochs_of({"epochs": {"low": 1, "high": 9}}) is None, "a searched epochs has no single budget"
    assert epochs_of({"lr": 0.1}) is None and epochs_of({}) is None
    assert epochs_of(None) is None, "no space at all: no budget"


def _budget_trials():
    # A non-default index: the split must renumber its rows 0..n-1 without keeping the old labels.
    return pd.DataFrame(
        {"run_id": ["at", "short", "unknown", "over"], "epochs_run": [40.0, 39.0, NAN, 41.0], "val_acc": [0.5] * 4},
        index=[10, 11, 12, 13],
    )


def test_a_run_at_exactly_the_budget_is_full_and_both_parts_are_renumbered_with_the_same_columns():
    full, short = split_by_epochs(_budget_trials(), 40)
    assert full.to_dict("list") == {"run_id": ["at", "over"], "epochs_run": [40.0, 41.0], "val_acc": [0.5, 0.5]}
    assert list(full.index) == [0, 1]
    assert list(short.columns) == ["run_id", "epochs_run", "val_acc"] and list(short.index) == [0, 1]
    assert list(short["run_id"]) == ["short", "unknown"] and short["epochs_run"].iloc[0] == 39.0
    assert math.isnan(short["epochs_run"].iloc[1])


def test_a_missing_epochs_run_counts_as_zero_epochs():
    full, short = split_by_epochs(_budget_trials(), 1)
    assert list(full["run_id"]) == ["at", "short", "over"] and list(short["run_id"]) == ["unknown"]
    full, short = split_by_epochs(_budget_trials(), 0)
    assert list(full["run_id"]) == ["at", "short", "unknown", "over"] and short.empty, "0 epochs reach a 0 budget"
    assert list(full.index) == [0, 1, 2, 3] and list(full.columns) == ["run_id", "epochs_run", "val_acc"]


def test_without_a_budget_or_an_epochs_run_column_every_trial_counts_as_full():
    trials = pd.DataFrame({"run_id": ["a", "b"], "val_acc": [0.5, 0.6]})
    for budget in (40, None):
        full, short = split_by_epochs(trials, budget)
        assert full.to_dict("list") == {"run_id": ["a", "b"], "val_acc": [0.5, 0.6]}
        assert short.empty and list(short.columns) == ["run_id", "val_acc"]
    empty = pd.DataFrame(columns=["run_id", "epochs_run"])
    full, short = split_by_epochs(empty, 40)
    assert full.empty and short.empty and list(short.columns) == ["run_id", "epochs_run"]


# ---------------------------------------------------------------- one row per run from its curve


def _plateau_then_rise(level, plateau, rise):
    """A noiseless val loss: ``plateau`` epochs at ``level``, then +0.01 an epoch for ``rise`` epochs.
    Its noise unit is 0, so the onset is the centre of the last 5-epoch window wholly on the plateau:
    the (plateau - 2)th epoch."""
    return list(np.concatenate([np.full(plateau, level), level + 0.01 * np.arange(1, rise + 1)]))


def test_curve_summary_gives_each_runs_minimum_final_loss_and_tail_means_from_epoch_order():
    # Run "b" is listed first and its epochs out of order; one epoch of "a" has no val_acc (the loss still counts).
    histories = pd.DataFrame(
        {
            "run_id": ["b", "b", "b", "a", "a", "a", "a"],
            "epoch": [3, 1, 2, 1, 2, 3, 4],
            "val_loss": [0.75, 1.0, 0.5, 0.9, 0.25, 0.5, 0.625],
            "val_acc": [0.5, 0.25, 0.375, 0.5, NAN, 0.75, 0.625],
            "train_acc": [1.0, 0.5, 0.75, 0.5, 0.75, 1.0, 1.0],
            "gap": [0.5, 0.25, 0.375, 0.0, 0.25, 0.25, 0.375],
            "val_ece": [0.125, 0.25, 0.5, 0.0625, 0.0625, 0.125, 0.25],
        }
    )
    table = curve_summary(histories, tail=2)
    assert list(table.columns) == CURVE_COLUMNS and list(table.index) == [0, 1]
    # a: val_loss min 0.25 (epoch 2, whose val_acc is missing), last 2 epochs 0.5, 0.625; val_acc's last two present
    # values 0.75, 0.625. b by epoch: losses 1.0, 0.5, 0.75; accuracies 0.375, 0.5 at epochs 2-3.
    _check(
        table.iloc[0].to_dict(),
        {
            "run_id": "a",
            "min_val_loss": 0.25,
            "final_val_loss": 0.5625,
            "onset": None,
            "final_val_acc": 0.6875,
            "final_train_acc": 1.0,
            "final_gap": 0.3125,
            "final_train_eval_loss": NAN,
            "final_val_ece": 0.1875,
        },
        "run a: ",
    )
    _check(
        table.iloc[1].to_dict(),
        {
            "run_id": "b",
            "min_val_loss": 0.5,
            "final_val_loss": 0.625,
            "onset": None,
            "final_val_acc": 0.4375,
            "final_train_acc": 0.875,
            "final_gap": 0.4375,
            "final_train_eval_loss": NAN,
            "final_val_ece": 0.3125,
        },
        "run b: ",
    )


def test_curve_summary_of_a_run_without_val_loss_has_no_losses_and_no_onset():
    histories = pd.DataFrame(
        {"run_id": ["a", "a"], "epoch": [1, 2], "val_acc": [0.5, 0.75], "train_acc": [0.75, 1.0], "gap": [0.25, 0.25]}
    )
    _check(
        curve_summary(histories).iloc[0].to_dict(),
        {
            "run_id": "a",
            "min_val_loss": NAN,
            "final_val_loss": NAN,
            "onset": None,
            "final_val_acc": 0.625,
            "final_train_acc": 0.875,
            "final_gap": 0.25,
            "final_train_eval_loss": NAN,
            "final_val_ece": NAN,
        },
    )
    # A val_loss column with no value for the run: the same.
    row = curve_summary(histories.assign(val_loss=NAN)).iloc[0]
    assert math.isnan(row["min_val_loss"]) and math.isnan(row["final_val_loss"]) and row["onset"] is None


def test_curve_summary_reads_the_onset_on_the_runs_own_epoch_numbers():
    loss = _plateau_then_rise(0.5, plateau=40, rise=20)  # the onset is the 38th logged epoch
    histories = pd.DataFrame(
        {"run_id": "a", "epoch": range(11, 71), "val_loss": loss, "val_acc": 0.5, "train_acc": 1.0, "gap": 0.5}
    )
    row = curve_summary(histories).iloc[0]
    assert row["onset"] == 48, "the 38th logged epoch is epoch 48 when logging starts at 11"
    assert row["min_val_loss"] == 0.5 and row["final_val_loss"] == pytest.approx(0.5 + 0.18)


def test_curve_summary_of_no_curves_is_an_empty_table_with_its_columns():
    table = curve_summary(pd.DataFrame(columns=["run_id", "epoch", "val_loss", "val_acc"]))
    assert table.empty and list(table.columns) == CURVE_COLUMNS


# ---------------------------------------------------------------- one row per size


def test_per_size_of_no_trials_is_an_empty_table_with_every_column():
    table = per_size(pd.DataFrame(columns=["run_id", "hidden_sizes", "param_count", "val_acc"]))
    assert table.empty and list(table.columns) == list(SIZE_COLUMNS)


def _no_curve_row(**values):
    row = dict.fromkeys(SIZE_COLUMNS, NAN)
    row.update(values)
    return row


def test_per_size_without_curves_gives_every_column_sorted_by_depth_then_params_in_group_all():
    trials = _trials(
        [
            {"run_id": "w", "hidden_sizes": (64,), "param_count": 400, "val_acc": 0.5, "train_acc": 1.0},
            {"run_id": "d", "hidden_sizes": (8, 8), "param_count": 50, "val_acc": 0.25, "train_acc": 0.5},
            {
                "run_id": "s1",
                "hidden_sizes": (16,),
                "param_count": 100,
                "val_acc": 0.75,
                "train_acc": 1.0,
                "best_val_acc": 0.875,
            },
            {
                "run_id": "s2",
                "hidden_sizes": (16,),
                "param_count": 100,
                "val_acc": 0.5,
                "train_acc": 0.75,
                "best_val_acc": 0.625,
            },
        ]
    )
    trials.loc[[0, 1], "best_val_acc"] = [0.5, 0.25]
    # "regulariser" is not a column: one group, "all". No n_val: plain t intervals with seeds - 1 df.
    table = per_size(trials.set_index(pd.Index([7, 5, 3, 1])), group="regulariser")
    assert list(table.columns) == list(SIZE_COLUMNS) and list(table.index) == [0, 1, 2]
    assert all(table[c].dtype == np.int64 for c in ("depth", "param_count", "seeds"))
    sd = 0.25 / math.sqrt(2)  # two seeds 0.25 apart
    half = t1(0.975) * sd / math.sqrt(2)
    _check(
        table.iloc[0].to_dict(),
        _no_curve_row(
            group="all",
            depth=1,
            hidden_sizes="[16]",
            param_count=100,
            seeds=2,
            best_val_acc=0.75,
            best_val_acc_sd=sd,
            final_val_acc=0.625,
            final_val_acc_sd=sd,
            final_val_acc_low=0.625 - half,
            final_val_acc_high=0.625 + half,
            train_acc=0.875,
            train_acc_sd=sd,
            gap=0.25,
            gap_sd=0.0,
            gap_low=0.25,  # the seeds' gaps agree: a zero-width interval
            gap_high=0.25,
            onset_seen="0/2",
        ),
        "[16]: ",
    )
    _check(
        table.iloc[1].to_dict(),
        _no_curve_row(
            group="all",
            depth=1,
            hidden_sizes="[64]",
            param_count=400,
            seeds=1,
            best_val_acc=0.5,
            final_val_acc=0.5,
            train_acc=1.0,
            gap=0.5,
            onset_seen="0/1",
        ),
        "[64]: ",
    )
    _check(
        table.iloc[2].to_dict(),
        _no_curve_row(
            group="all",
            depth=2,
            hidden_sizes="[8,8]",
            param_count=50,
            seeds=1,
            best_val_acc=0.25,
            final_val_acc=0.25,
            train_acc=0.5,
            gap=0.25,
            onset_seen="0/1",
        ),
        "[8,8]: ",
    )


def _curve_rows(run_id, val_loss, val_acc, train_acc, gap, val_ece, train_eval_loss):
    n = len(val_loss)
    return pd.DataFrame(
        {
            "run_id": run_id,
            "epoch": range(1, n + 1),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "train_acc": train_acc,
            "gap": gap,
            "val_ece": val_ece,
            "train_eval_loss": train_eval_loss,
        }
    )


def test_per_size_with_curves_takes_losses_onsets_and_widens_only_the_accuracy_intervals():
    trials = _trials(
        [
            # The trials' own last-epoch numbers differ from the curves' tail means: the tails win.
            {"run_id": "r1", "hidden_sizes": (16,), "param_count": 100, "val_acc": 0.1, "train_acc": 0.2},
            {"run_id": "r2", "hidden_sizes": (16,), "param_count": 100, "val_acc": 0.3, "train_acc": 0.4},
            # No curve logged: kept, with its trial numbers and no losses.
            {"run_id": "r3", "hidden_sizes": (64,), "param_count": 400, "val_acc": 0.5, "train_acc": 1.0},
        ]
    )
    trials["best_val_acc"] = [0.875, 0.625, 0.5]
    histories = pd.concat(
        [
            # onset: epoch 38; min 0.5; last 5 epochs 0.5 + 0.01 * (16..20): 0.68, a rise of 0.18
            _curve_rows("r1", _plateau_then_rise(0.5, 40, 20), 0.75, 0.875, 0.125, 0.0625, 0.25),
            # onset: epoch 28; min 0.25; last 5 epochs 0.25 + 0.01 * (26..30): 0.53, a rise of 0.28
            _curve_rows("r2", _plateau_then_rise(0.25, 30, 30), 0.75, 0.875, 0.125, 0.125, 0.5),
        ]
    )
    n_val = 75  # p(1-p)/n_val = 0.75 * 0.25 / 75 = 0.05²
    table = per_size(trials, histories, group="regulariser", n_val=n_val)
    assert list(table.columns) == list(SIZE_COLUMNS) and list(table.index) == [0, 1]
    rise_sd = 0.1 / math.sqrt(2)
    rise_half = t1(0.975) * rise_sd / math.sqrt(2)  # a loss: no split noise, t with 1 df
    split_half = Z975 * 0.05  # the seeds agree (sd 0, df infinite): only the split's noise of p = 0.75
    _check(
        table.iloc[0].to_dict(),
        {
            "group": "all",
            "depth": 1,
            "hidden_sizes": "[16]",
            "param_count": 100,
            "seeds": 2,
            "best_val_acc": 0.75,
            "best_val_acc_sd": 0.25 / math.sqrt(2),
            "final_val_acc": 0.75,
            "final_val_acc_sd": 0.0,
            "final_val_acc_low": 0.75 - split_half,
            "final_val_acc_high": 0.75 + split_half,
            "train_acc": 0.875,
            "train_acc_sd": 0.0,
            "gap": 0.125,
            "gap_sd": 0.0,
            # the gap's split noise is the val accuracy's (p = 0.75), not p(1-p) of the gap itself
            "gap_low": 0.125 - split_half,
            "gap_high": 0.125 + split_half,
            "min_val_loss": 0.375,
            "final_val_loss": 0.605,
            "val_loss_rise": 0.23,
            "val_loss_rise_sd": rise_sd,
            "val_loss_rise_low": 0.23 - rise_half,
            "val_loss_rise_high": 0.23 + rise_half,
            "onset": 33.0,
            "onset_seen": "2/2",
            "train_eval_loss": 0.375,
            "val_ece": 0.09375,
            "val_ece_sd": 0.0625 / math.sqrt(2),
        },
        "[16]: ",
    )
    _check(
        table.iloc[1].to_dict(),
        _no_curve_row(
            group="all",
            depth=1,
            hidden_sizes="[64]",
            param_count=400,
            seeds=1,
            best_val_acc=0.5,
            final_val_acc=0.5,
            train_acc=1.0,
            gap=0.5,
            onset_seen="0/1",
        ),
        "[64]: ",
    )


def test_per_size_loss_intervals_collapse_when_the_seeds_agree_whatever_the_split_size():
    histories = pd.concat(
        [_curve_rows(r, [0.5, 0.25, 0.75], 0.75, 1.0, 0.25, 0.0, 0.0) for r in ("a", "b")], ignore_index=True
    )
    trials = _trials(
        [{"run_id": r, "hidden_sizes": (4,), "param_count": 10, "val_acc": 0.0, "train_acc": 0.0} for r in ("a", "b")]
    )
    row = per_size(trials, histories, n_val=100).iloc[0]
    assert row["val_loss_rise"] == 0.25 and row["val_loss_rise_sd"] == 0.0
    assert (row["val_loss_rise_low"], row["val_loss_rise_high"]) == (0.25, 0.25), "no split noise on a loss"


def test_per_size_keeps_the_trials_order_between_sizes_of_equal_depth_and_parameter_count():
    trials = _trials(
        [
            {"run_id": "x", "hidden_sizes": (8,), "param_count": 100, "val_acc": 0.5, "train_acc": 0.5},
            {"run_id": "y", "hidden_sizes": (4,), "param_count": 100, "val_acc": 0.5, "train_acc": 0.5},
            {"run_id": "z", "hidden_sizes": (2,), "param_count": 50, "val_acc": 0.5, "train_acc": 0.5},
        ]
    )
    assert list(per_size(trials)["hidden_sizes"]) == ["[2]", "[8]", "[4]"]


def test_per_size_groups_by_the_group_columns_values_as_text():
    trials = _trials(
        [
            {"run_id": "a", "hidden_sizes": (4,), "param_count": 10, "val_acc": 0.5, "train_acc": 0.5, "wd": 0.1},
            {"run_id": "b", "hidden_sizes": (4,), "param_count": 10, "val_acc": 0.5, "train_acc": 0.5, "wd": 0.0},
        ]
    )
    table = per_size(trials, group="wd")
    assert list(table["group"]) == ["0.0", "0.1"] and list(table["seeds"]) == [1, 1]


# ---------------------------------------------------------------- curves, trends, comparisons


def test_curves_are_one_per_group_and_depth_renumbered_by_parameter_count():
    sizes = pd.DataFrame(
        {
            "group": ["b", "a", "a", "a"],
            "depth": [1.0, 2.0, 1.0, 1.0],
            "hidden_sizes": ["[9]", "[3,3]", "[64]", "[16]"],
            "param_count": [90, 30, 400, 100],
        },
        index=[4, 3, 2, 1],
    )
    found = list(curves(sizes))
    assert [key for key, _ in found] == [("a", 1), ("a", 2), ("b", 1)]
    assert all(type(depth) is int for (_, depth), _ in found)
    rows = found[0][1]
    assert rows.to_dict("list") == {
        "group": ["a", "a"],
        "depth": [1.0, 1.0],
        "hidden_sizes": ["[16]", "[64]"],
        "param_count": [100, 400],
    }
    assert list(rows.index) == [0, 1]


def _trend_rows(means, sd=0.01, seeds=3):
    """A curve of 4 sizes at 10..10,000 parameters (log10 1..4), ``seeds`` seeds a size with sd ``sd``."""
    k = len(means)
    return pd.DataFrame(
        {
            "hidden_sizes": [f"[{i + 1}]" for i in range(k)],
            "param_count": [10 ** (i + 1) for i in range(k)],
            "acc": means,
            "acc_sd": [sd] * k,
            "seeds": [seeds] * k,
        }
    )


def _ols(x, y):
    xm, ym = sum(x) / len(x), sum(y) / len(y)
    sxx = sum((a - xm) ** 2 for a in x)
    slope = sum((a - xm) * (b - ym) for a, b in zip(x, y, strict=True)) / sxx
    rss = sum((b - ym - slope * (a - xm)) ** 2 for a, b in zip(x, y, strict=True))
    return slope, rss, sxx


def _trend(means, sd=0.01, seeds=3):
    """size_trend's keys by hand for 4 sizes: t(2) interval; lack of fit F(2, 4 (seeds-1)), whose
    survival function is (d2 / (d2 + 2F))^(d2/2)."""
    slope, rss, sxx = _ols([1, 2, 3, 4], means)
    half = t2(0.975) * math.sqrt(rss / 2 / sxx)
    d2 = 4 * (seeds - 1)
    f = rss / 2 / (sd * sd / seeds)
    return {
        "slope_per_decade": slope,
        "low": slope - half,
        "high": slope + half,
        "sizes": 4,
        "df": 2,
        "lack_of_fit_p": (d2 / (d2 + 2 * f)) ** (d2 / 2),
        "method": "t over size means",
    }


def test_curve_trend_of_a_single_peak_names_its_peak_and_the_sizes_level_with_it():
    means = [0.70, 0.88, 0.90, 0.80]  # [2] is 0.02 below the peak [3]: within the noise
    _check(
        curve_trend(_trend_rows(means), "acc"),
        {
            "y": "acc",
            **_trend(means),
            "shape": "single peak",
            "moves": ["up", "down"],
            "peak": "[3]",
            "dip": None,
            "peak_set": ["[2]", "[3]"],
            "trials": 12,
            "delta": 0.02,
            "monotone": False,
        },
    )


def test_curve_trend_of_a_rise_a_dip_and_a_second_rise_names_both_peak_and_dip():
    means = [0.70, 0.90, 0.75, 0.95]
    out = curve_trend(_trend_rows(means, seeds=2), "acc")
    _check(
        out,
        {
            "y": "acc",
            **_trend(means, seeds=2),
            "shape": "dip-then-rise",
            "moves": ["up", "down", "up"],
            "peak": "[2]",
            "dip": "[3]",
            "peak_set": ["[4]"],
            "trials": 8,
            "delta": 0.02,
            "monotone": False,
        },
    )
    assert type(out["trials"]) is int


def test_curve_trend_calls_rising_falling_flat_and_no_detectable_shape_monotone():
    for means, shape, moves in (
        ([0.70, 0.75, 0.80, 0.85], "rising", ["up"]),
        ([0.85, 0.80, 0.75, 0.70], "falling", ["down"]),
    ):
        out = curve_trend(_trend_rows(means), "acc")
        slope = 0.05 if shape == "rising" else -0.05
        assert out["shape"] == shape and out["moves"] == moves and out["monotone"] is True
        assert (out["low"], out["slope_per_decade"], out["high"]) == pytest.approx((slope, slope, slope))
        assert out["lack_of_fit_p"] == pytest.approx(1.0) and out["peak"] is None and out["dip"] is None
    level = _trend_rows([0.8, 0.8, 0.8, 0.8])
    # Every pair's 90% interval is 0 ± t(0.95, 8) 0.01 sqrt(2/3) = ±0.0152: within ±0.02, not within ±0.01.
    flat = curve_trend(level, "acc")
    assert flat["shape"] == "flat" and flat["monotone"] is True and flat["delta"] == 0.02
    assert flat["peak_set"] == ["[1]", "[2]", "[3]", "[4]"] and flat["moves"] == []
    narrow = curve_trend(level, "acc", delta=0.01)
    assert narrow["shape"] == "no detectable shape" and narrow["monotone"] is True and narrow["delta"] == 0.01
    wide = curve_trend(_trend_rows([0.80, 0.81, 0.80, 0.81]), "acc", delta=0.05)
    assert wide["shape"] == "flat" and wide["delta"] == 0.05, "the margin given is the margin used"
    assert curve_trend(_trend_rows([0.80, 0.81, 0.80, 0.81]), "acc")["shape"] == "no detectable shape"


def test_comparisons_default_to_final_val_acc_with_welch_intervals_and_holm():
    rows = pd.DataFrame(
        {
            "hidden_sizes": ["[4]", "[16]"],
            "param_count": [10, 100],
            "final_val_acc": [0.70, 0.80],
            "final_val_acc_sd": [0.05, 0.05],
            "seeds": [2, 2],
        }
    )
    table = comparisons(rows)
    # Welch: se = sqrt(0.05²/2 · 2) = 0.05, df = 2, t = 2; two-sided p with 2 df = 1 - t / sqrt(2 + t²).
    p = 1 - 2 / math.sqrt(6)
    half = t2(0.975) * 0.05
    assert list(table.columns) == ["comparison", "a", "b", "diff", "low", "high", "p", "p_holm"]
    assert list(table.index) == [0, 1]
    for i, kind in enumerate(["adjacent", "vs best"]):
        _check(
            table.iloc[i].to_dict(),
            {
                "comparison": kind,
                "a": "[16]",
                "b": "[4]",
                "diff": 0.1,
                "low": 0.1 - half,
                "high": 0.1 + half,
                "p": p,
                "p_holm": 2 * p,
            },
            f"{kind}: ",
        )


def test_comparisons_of_a_single_size_are_an_empty_table_with_the_columns():
    rows = pd.DataFrame({"hidden_sizes": ["[4]"], "param_count": [10], "gap": [0.1], "gap_sd": [0.01], "seeds": [3]})
    table = comparisons(rows, "gap")
    assert table.empty and list(table.columns) == ["comparison", "a", "b", "diff", "low", "high", "p", "p_holm"]


# ---------------------------------------------------------------- for people


def test_counts_get_thousands_separators_and_missing_counts_a_dash():
    assert fmt_count(1574402) == "1,574,402" and fmt_count(np.int64(98370)) == "98,370"
    assert fmt_count(1574402.0) == "1,574,402" and fmt_count(2.0) == "2", "a float count is still a count"
    assert fmt_count(None) == "—" and fmt_count(NAN) == "—" and fmt_count(np.float64("nan")) == "—"


def test_readable_formats_counts_epochs_and_decimals_and_dashes_what_is_missing():
    table = pd.DataFrame(
        {
            "hidden_sizes": ["[16]", None],
            "depth": [1, 2],
            "param_count": [98370, 1574402],
            "trials": [1000, 12],
            "seeds": [3, 1200],
            "sample_count": [2500.0, NAN],
            "val_acc": [0.83456, NAN],
            "onset": [12.0, NAN],
            "val_loss_onset": [7.4, NAN],
            "epochs": [60.0, NAN],
            "best_epoch": [41.0, NAN],
            "epochs_run": [NAN, 30.0],
            "sweep_epochs": [NAN, 20.0],
        }
    )
    assert readable(table).to_dict("list") == {
        "hidden_sizes": ["[16]", "—"],
        "depth": [1, 2],
        "param_count": ["98,370", "1,574,402"],
        "trials": ["1,000", "12"],
        "seeds": ["3", "1,200"],
        "sample_count": ["2,500", "—"],
        "val_acc": ["0.835", "—"],
        "onset": ["12", "—"],
        "val_loss_onset": ["7", "—"],
        "epochs": ["60", "—"],
        "best_epoch": ["41", "—"],
        "epochs_run": ["—", "30"],
        "sweep_epochs": ["—", "20"],
    }
