"""Known answers for the capacity analysis: budgets, per-size aggregates, trends, memorisation."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis.capacity import (
    comparisons,
    curve_trend,
    curves,
    epochs_of,
    memorisation,
    per_size,
    readable,
    split_by_epochs,
)
from analysis.overfitting import capacity_frontier


def _trials(rows):
    frame = pd.DataFrame(rows)
    frame["gap"] = frame["train_acc"] - frame["val_acc"]
    frame["best_val_acc"] = frame.get("best_val_acc", frame["val_acc"])
    return frame


def test_a_trial_stopped_early_is_kept_off_the_frontier_it_would_change():
    trials = _trials(
        [
            {
                "run_id": "a",
                "hidden_sizes": (16,),
                "param_count": 100,
                "val_acc": 0.70,
                "train_acc": 0.8,
                "epochs_run": 40,
            },
            {
                "run_id": "b",
                "hidden_sizes": (64,),
                "param_count": 400,
                "val_acc": 0.75,
                "train_acc": 0.9,
                "epochs_run": 40,
            },
            # Stopped at epoch 4, while its val_acc was still high by luck: it would top the frontier.
            {
                "run_id": "c",
                "hidden_sizes": (32,),
                "param_count": 200,
                "val_acc": 0.80,
                "train_acc": 0.8,
                "epochs_run": 4,
            },
        ]
    )
    assert list(capacity_frontier(trials)["run_id"]) == ["a", "c"]
    full, short = split_by_epochs(trials, epochs_of({"epochs": 40}))
    assert list(short["run_id"]) == ["c"]
    assert list(capacity_frontier(full)["run_id"]) == ["a", "b"]


def test_without_a_budget_every_trial_counts():
    trials = _trials(
        [{"run_id": "a", "hidden_sizes": (8,), "param_count": 1, "val_acc": 0.5, "train_acc": 0.5, "epochs_run": 3}]
    )
    full, short = split_by_epochs(trials, epochs_of({"epochs": {"low": 1, "high": 9}}))
    assert len(full) == 1 and short.empty


def test_per_size_means_and_spreads_over_seeds_with_val_loss_and_onset_from_the_curves():
    trials = _trials(
        [
            {
                "run_id": "a1",
                "hidden_sizes": (16,),
                "param_count": 100,
                "val_acc": 0.70,
                "train_acc": 0.80,
                "best_val_acc": 0.72,
                "epochs_run": 3,
            },
            {
                "run_id": "a2",
                "hidden_sizes": (16,),
                "param_count": 100,
                "val_acc": 0.74,
                "train_acc": 0.84,
                "best_val_acc": 0.76,
                "epochs_run": 3,
            },
            {
                "run_id": "b1",
                "hidden_sizes": (64,),
                "param_count": 400,
                "val_acc": 0.80,
                "train_acc": 1.00,
                "best_val_acc": 0.82,
                "epochs_run": 3,
            },
        ]
    )
    histories = pd.DataFrame(
        {
            "run_id": ["a1"] * 3 + ["a2"] * 3 + ["b1"] * 3,
            "epoch": [1, 2, 3] * 3,
            "train_acc": [0.6, 0.7, 0.8, 0.6, 0.7, 0.84, 0.7, 0.9, 1.0],
            "val_acc": [0.6, 0.72, 0.70, 0.6, 0.76, 0.74, 0.7, 0.82, 0.80],
            "val_loss": [0.7, 0.5, 0.6, 0.7, 0.4, 0.5, 0.6, 0.3, 0.9],
        }
    )
    table = per_size(trials, histories, tail=1).set_index("hidden_sizes")  # final = the last epoch
    small, large = table.loc["[16]"], table.loc["[64]"]
    assert small["seeds"] == 2 and small["final_val_acc"] == pytest.approx(0.72)
    assert small["final_val_acc_sd"] == pytest.approx(np.std([0.70, 0.74], ddof=1))
    assert small["best_val_acc"] == pytest.approx(0.74) and small["gap"] == pytest.approx(0.10)
    assert small["min_val_loss"] == pytest.approx(0.45) and small["final_val_loss"] == pytest.approx(0.55)
    assert small["val_loss_rise"] == pytest.approx(0.10)
    assert large["val_loss_rise"] == pytest.approx(0.6) and math.isnan(large["final_val_acc_sd"])
    # The onset is read off the val loss with a minimum of later epochs: 3 epochs are too short to tell.
    assert math.isnan(small["onset"]) and small["onset_seen"] == "0/2"
    assert list(table["param_count"]) == [100, 400]


def test_per_size_uses_the_mean_of_the_last_epochs_and_gives_intervals():
    from analysis.statistics import mean_interval

    epochs = 8
    trials = _trials(
        [
            {
                "run_id": f"s{i}",
                "hidden_sizes": (16,),
                "param_count": 100,
                "val_acc": 0.0,
                "train_acc": 0.0,
                "best_val_acc": 0.9,
                "epochs_run": epochs,
            }
            for i in range(3)
        ]
    )
    rows = []
    for i in range(3):
        for e in range(1, epochs + 1):  # val_acc swings 0.80 / 0.84 by epoch; the last 5 epochs average 0.824 + i/100
            val = (0.80 if e % 2 else 0.84) + i / 100
            rows.append(
                {
                    "run_id": f"s{i}",
                    "epoch": e,
                    "val_acc": val,
                    "train_acc": 0.95,
                    "gap": 0.95 - val,
                    "val_loss": 0.5,
                    "val_ece": 0.02 * (i + 1),
                    "train_eval_loss": 0.1,
                }
            )
    table = per_size(trials, pd.DataFrame(rows), n_val=1000).iloc[0]
    tails = [np.mean([(0.80 if e % 2 else 0.84) + i / 100 for e in range(4, 9)]) for i in range(3)]
    assert table["final_val_acc"] == pytest.approx(np.mean(tails)), "final = mean over the last 5 epochs"
    ci = mean_interval(np.mean(tails), np.std(tails, ddof=1), 3, n_val=1000)
    assert (table["final_val_acc_low"], table["final_val_acc_high"]) == pytest.approx((ci["low"], ci["high"]))
    assert table["gap_low"] < table["gap"] < table["gap_high"] and table["train_acc"] == pytest.approx(0.95)
    assert table["val_ece"] == pytest.approx(0.04) and table["val_ece_sd"] == pytest.approx(0.02)
    assert table["train_eval_loss"] == pytest.approx(0.1), "calibration and eval-mode train loss, when logged"


def test_per_size_keeps_groups_apart():
    trials = _trials(
        [
            {
                "run_id": "a",
                "hidden_sizes": (16,),
                "param_count": 100,
                "val_acc": 0.70,
                "train_acc": 0.9,
                "augment": "none",
            },
            {
                "run_id": "b",
                "hidden_sizes": (16,),
                "param_count": 100,
                "val_acc": 0.76,
                "train_acc": 0.8,
                "augment": "crop+flip",
            },
        ]
    )
    table = per_size(trials, group="augment")
    assert sorted(table["group"]) == ["crop+flip", "none"] and (table["seeds"] == 1).all()


def _sizes(means, sd=0.01, seeds=3, depth=1, rng=None, group="all"):
    """A per-size table of train_acc - 0.8 as the gap: ``seeds`` seeds a size around ``means``
    (at -sd, 0, +sd when rng is None: the mean exact, the sd sd)."""
    rows = []
    for i, mean in enumerate(means):
        values = np.full(seeds, mean) + (
            rng.normal(0, sd, seeds) if rng is not None else np.array([-sd, 0.0, sd])[:seeds]
        )
        for s, v in enumerate(values):
            rows.append(
                {
                    "run_id": f"{depth}-{i}-{s}",
                    "hidden_sizes": (4 ** (i + 1),) * depth,
                    "param_count": 10 ** (i + 3) * depth,
                    "val_acc": 0.8,
                    "train_acc": 0.8 + v,
                    "best_val_acc": 0.8,
                    "group": group,
                }
            )
    return per_size(_trials(rows), group="group")


def test_trend_is_fitted_per_depth_over_size_means_with_a_t_interval():
    # Known answer: gap = 0.1 * log10(params) exactly at depth 1; seeds at +-sd around each mean.
    table = pd.concat([_sizes([0.3, 0.4, 0.5, 0.6]), _sizes([0.2, 0.5, 0.6, 0.4], depth=2)])
    found = {key: curve_trend(rows, "gap") for key, rows in curves(table)}
    assert set(found) == {("all", 1), ("all", 2)}, "one curve per depth, never pooled"
    line = found[("all", 1)]
    assert (line["low"], line["slope_per_decade"], line["high"]) == pytest.approx((0.1, 0.1, 0.1))
    assert line["sizes"] == 4 and line["df"] == 2 and line["shape"] == "rising" and line["monotone"]
    assert line["lack_of_fit_p"] == pytest.approx(1.0), "the means lie on the line"
    bent = found[("all", 2)]
    assert bent["shape"] == "single peak" and bent["peak"] == "[64,64]" and not bent["monotone"]
    assert bent["lack_of_fit_p"] < 0.001, "size means far off the line, seeds tight: lack of fit"
    # The interval comes from the size-level residuals: t with 2 df over 4 means.
    assert bent["high"] - bent["low"] > 0.1
    one = curve_trend(_sizes([0.3]), "gap")
    assert one["slope_per_decade"] is None, "one size: no trend"
    two = curve_trend(_sizes([0.3, 0.4]), "gap")
    assert two["slope_per_decade"] == pytest.approx(0.1) and two["low"] is None, "two sizes: no residual df"


def test_comparisons_of_adjacent_sizes_and_against_the_best_are_holm_corrected():
    rows = next(rows for _, rows in curves(_sizes([0.80, 0.80, 0.86, 0.84], sd=0.005)))
    table = comparisons(rows, "gap")
    assert list(table["comparison"]) == ["adjacent"] * 3 + ["vs best"] * 3
    assert list(zip(table["a"], table["b"], strict=False))[:3] == [("[16]", "[4]"), ("[64]", "[16]"), ("[256]", "[64]")]
    assert (table[table["comparison"] == "vs best"]["a"] == "[64]").all()
    assert (table["p_holm"] >= table["p"]).all() and table["p_holm"].max() <= 1
    jump = table.iloc[1]
    assert jump["diff"] == pytest.approx(0.06) and jump["low"] < 0.06 < jump["high"] and jump["p_holm"] < 0.01
    assert table.iloc[0]["p"] == pytest.approx(1.0), "equal means: no difference"


def _curve(train, val):
    n = len(train)
    return pd.DataFrame(
        {
            "hidden_sizes": [f"[{2**i}]" for i in range(n)],
            "param_count": [10**i for i in range(n)],
            "train_acc": train,
            "final_val_acc": val,
        }
    )


def test_memorisation_point_val_peak_and_a_second_rise():
    result = memorisation(_curve([0.8, 0.95, 0.995, 1.0, 1.0, 1.0], [0.70, 0.78, 0.80, 0.76, 0.75, 0.79]))
    assert result["memorised_at"] == 100 and result["val_peak_at"] == 100
    assert result["peak_vs_memorisation"] == "at"
    assert (
        result["second_rise"] and result["second_rise_at"] == 100_000 and result["beyond"] == "dips, then rises again"
    )


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


def _noisy_curve(train, val, sd=0.004, seeds=3):
    """A per-size table as per_size makes it: means with seed sds (train_acc exact)."""
    table = _curve(train, val)
    return table.assign(final_val_acc_sd=sd, seeds=seeds)


def test_memorisation_finds_a_double_descent_on_the_seeds_noise_and_ignores_a_flat_one():
    # val worst at the memorisation threshold, then better again: classic double descent in accuracy.
    dd = memorisation(_noisy_curve([0.9, 0.995, 1.0, 1.0, 1.0], [0.80, 0.76, 0.80, 0.84, 0.86]))
    assert dd["memorised_at"] == 10 and dd["beyond"] == "dips, then rises again" and dd["second_rise"]
    assert dd["second_rise_at"] == 10_000 and dd["judged"].startswith("on the noise of the seeds")
    # The old rule's "dip then rise" of 0.006 is within this curve's noise (sd 0.01, 3 seeds).
    flat = memorisation(_noisy_curve([0.99, 1.0, 1.0, 1.0], [0.806, 0.800, 0.806, 0.803], sd=0.01))
    assert flat["beyond"] in ("stays flat", "no detectable shape") and not flat["second_rise"]
    assert flat["peak_set"] == ["[1]", "[2]", "[4]", "[8]"], "no size is distinguishable from the peak"


def test_a_size_that_falls_back_below_the_threshold_ends_no_memorised_range():
    result = memorisation(_curve([0.9, 0.995, 0.98, 0.999, 1.0], [0.8, 0.81, 0.8, 0.82, 0.83]))
    assert result["memorised_at"] == 1000, "[4] falls back to 0.98: memorisation starts at [8]"
    assert memorisation(_curve([0.9, 0.995, 0.98], [0.8, 0.81, 0.8]))["memorised_at"] is None


# ---------------------------------------------------------------- the report on a tiny synthetic capacity study


def _log_capacity_study(client, name: str, epochs: int = 30) -> dict:
    """A capacity study as MLflow holds it: a parent run and 3 seeds x 7 sizes (two depths) of
    finished trial runs with per-epoch curves. Depth 1: val_acc rises with size; depth 2: the gap
    peaks at [64,64]."""
    from analysis import record

    rng = np.random.default_rng(0)
    experiment_id = client.create_experiment(name)
    parent = client.create_run(experiment_id, tags={record.TAG_ROLE: record.ROLE_CAPACITY, record.TAG_STUDY: name})
    client.log_dict(parent.info.run_id, {"epochs": epochs}, "search_space.json")
    design = {
        (16,): (0.78, 0.85),
        (64,): (0.80, 0.90),
        (256,): (0.82, 0.95),
        (1024,): (0.84, 0.99),
        (16, 16): (0.80, 0.84),
        (64, 64): (0.80, 0.95),
        (256, 256): (0.80, 0.86),
    }
    from mlflow.entities import Metric

    for hidden, (val, train) in design.items():
        params = 3072 * hidden[0] + sum(a * b for a, b in zip(hidden, hidden[1:], strict=False)) + 2 * hidden[-1]
        for seed in range(3):
            run = client.create_run(
                experiment_id,
                tags={
                    record.TAG_ROLE: record.ROLE_TRIAL,
                    record.TAG_TRIAL: f"{hidden}-{seed}",
                    record.TAG_SEED: str(seed),
                    record.TAG_PARENT: parent.info.run_id,
                    "mlflow.parentRunId": parent.info.run_id,
                },
            )
            e = np.arange(1, epochs + 1)
            v = val + rng.normal(0, 0.004) + rng.normal(0, 0.004, epochs)
            tr = train - 0.1 * np.exp(-e / 5) + rng.normal(0, 0.002, epochs)
            loss = 0.4 + 0.3 * np.exp(-e / 5) + rng.normal(0, 0.01, epochs)
            curve = {"val_acc": v, "train_acc": tr, "gap": tr - v, "val_loss": loss, "train_loss": loss - 0.1}
            metrics = [Metric(k, float(vals[i]), 0, int(i + 1)) for k, vals in curve.items() for i in range(epochs)]
            final = {
                "param_count": params,
                "val_acc": v[-1],
                "train_acc": tr[-1],
                "gap": tr[-1] - v[-1],
                "val_loss": loss[-1],
                "train_loss": loss[-1] - 0.1,
                "best_val_acc": v.max(),
                "epochs_run": epochs,
            }
            metrics += [Metric(k, float(x), 0, epochs) for k, x in final.items() if k not in curve]
            client.log_batch(run.info.run_id, metrics=metrics)
            client.log_param(run.info.run_id, "hidden_sizes", ",".join(map(str, hidden)))
            client.log_param(run.info.run_id, "seed", str(seed))
            client.log_param(run.info.run_id, "loss", "nll")
            client.set_terminated(run.info.run_id, status="FINISHED")
    return {"parent": parent.info.run_id}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_report_shows_per_depth_trends_ci_bands_and_the_new_columns(mlflow_server, tmp_path):
    from matplotlib.collections import PolyCollection
    from mlflow import MlflowClient

    from analysis.report import make_figures
    from study.reporting import analyse_study, build_report

    client = MlflowClient(mlflow_server.url)
    _log_capacity_study(client, "stats-cap")
    report, histories, _, study, _ = analyse_study(mlflow_server.url, "stats-cap")
    assert set(report.trends) == {"depth 1", "depth 2"}, "one curve per depth, never pooled"
    assert report.trends["depth 1"]["final_val_acc"]["shape"] == "rising"
    assert report.trends["depth 1"]["final_val_acc"]["low"] > 0, "a rising curve gets a slope with its interval"
    gap2 = report.trends["depth 2"]["gap"]
    assert gap2["shape"] == "single peak" and gap2["peak"] == "[64,64]" and not gap2["monotone"]
    sizes = report.sizes.set_index("hidden_sizes")
    assert (sizes["final_val_acc_low"] < sizes["final_val_acc"]).all()
    assert (sizes["final_val_acc"] < sizes["final_val_acc_high"]).all()
    assert set(report.comparisons["curve"]) == {"depth 1", "depth 2"} and "p_holm" in report.comparisons
    figs = make_figures(report, histories, study.space)
    bands = [c for c in figs["capacity.png"].axes[0].collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2, "one 95% band per curve"
    assert "95% CI" in " ".join(
        t.get_text()
        for leg in figs["capacity.png"].axes[0].findobj(lambda o: hasattr(o, "get_texts"))
        for t in leg.get_texts()
    )
    _, paths, _ = build_report(mlflow_server.url, "stats-cap", tmp_path / "r")
    page = (tmp_path / "r" / "report.html").read_text()
    assert "depth 2: the final train-val gap: single peak, not a trend: it peaks at [64,64]" in page
    assert "depth 1: final val_acc: rising; +0.0" in page and "95% t interval over the size means" in page
    assert "Sizes compared" in page and "p_holm" in page
    header = (tmp_path / "r" / "capacity_table.csv").read_text().splitlines()[0]
    assert "final_val_acc_low,final_val_acc_high" in header and "gap_low,gap_high" in header
