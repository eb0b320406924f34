"""Label noise (trainables/data.py), val's selection and reporting halves, per-size tuning
(analysis/tuning.py), the epoch-wise grids, the power line and the threshold of a capacity report."""

import math

import pandas as pd
import pytest
import torch

from analysis.epochwise import epoch_grids, threshold_row
from analysis.power import interpolation_threshold, min_detectable_difference, seeds_for
from analysis.report import analyse, make_figures
from analysis.tuning import choose, on_reporting_half, selected_runs, tuned_field
from trainables.config import ConfigError, TrainConfig
from trainables.data import noisy_labels, validation_halves
from trainables.loop import fit, setup_run

# ---------------------------------------------------------------- label noise


@pytest.mark.parametrize("share", [0.0, 0.1, 0.2, 0.37, 0.49])
def test_label_noise_flips_exactly_the_requested_share_to_another_class(share):
    y = torch.arange(1000) % 3
    noisy = noisy_labels(y, share, 3)
    assert int((noisy != y).sum()) == round(share * 1000)
    assert noisy.min() >= 0 and noisy.max() <= 2
    assert torch.equal(y, torch.arange(1000) % 3), "the clean labels are not changed in place"


def test_the_labels_flipped_at_a_small_share_are_among_those_flipped_at_a_larger_one():
    y = torch.arange(500) % 2
    small, large = noisy_labels(y, 0.1, 2) != y, noisy_labels(y, 0.2, 2) != y
    assert bool((small & ~large).sum() == 0) and int(large.sum()) == 100


def test_label_noise_is_the_same_for_every_cell_and_seed_and_never_touches_val(tiny_data):
    runs = [
        setup_run(TrainConfig(hidden_sizes=h, seed=s, epochs=1, label_noise=0.25, device="cpu"), tiny_data)
        for h, s in (((8,), 0), ((8,), 3), ((16, 16), 1))
    ]
    clean = tiny_data.train.y
    flipped = [r.train_y != clean for r in runs]
    assert int(flipped[0].sum()) == round(0.25 * len(clean))
    assert all(torch.equal(runs[0].train_y, r.train_y) for r in runs[1:]), "same labels whatever the size and seed"
    for r in runs:
        assert torch.equal(r.val_y, tiny_data.val.y), "val stays clean"
        assert all(
            torch.equal(y, tiny_data.val.y[i])
            for (_, y), i in zip(r.val_halves, validation_halves(tiny_data.val.y), strict=True)
        )
    assert tiny_data.test is None or torch.equal(tiny_data.test.y, tiny_data.test.y)
    assert (
        torch.equal(tiny_data.train.y, clean)
        and int((setup_run(TrainConfig(epochs=1), tiny_data).train_y != clean).sum()) == 0
    )


def test_label_noise_leaves_the_test_split_clean(image_tree, tmp_path):
    from trainables.config import DataConfig
    from trainables.data import load_images, load_study_data

    data = load_study_data(DataConfig(root=str(image_tree), cache_dir=str(tmp_path / "c")), include_test=True)
    _, official_test = load_images(DataConfig(root=str(image_tree), cache_dir=str(tmp_path / "c")))
    setup_run(TrainConfig(epochs=1, label_noise=0.4, device="cpu"), data)
    assert torch.equal(data.test.y, official_test.y)


@pytest.mark.parametrize("share", [0.5, -0.1, 0.7])
def test_a_label_noise_outside_0_to_a_half_is_refused(share):
    with pytest.raises(ConfigError, match="label_noise"):
        TrainConfig(label_noise=share)


# ---------------------------------------------------------------- val's two halves


def test_val_halves_are_disjoint_cover_val_and_split_every_class_in_half():
    y = torch.tensor([0] * 50 + [1] * 30)
    sel, rep = validation_halves(y)
    assert set(sel.tolist()).isdisjoint(rep.tolist())
    assert sorted(sel.tolist() + rep.tolist()) == list(range(80))
    assert [int((y[sel] == c).sum()) for c in (0, 1)] == [25, 15]
    assert torch.equal(validation_halves(y)[0], sel), "a fixed seed: the same halves every time"


def test_fit_reports_both_halves_and_they_add_up_to_the_whole_split(tiny_data):
    result = fit(TrainConfig(hidden_sizes=(8,), epochs=2, device="cpu"), tiny_data)
    sel, rep = validation_halves(tiny_data.val.y)
    for r in result.history:
        whole = (r["val_select_acc"] * len(sel) + r["val_report_acc"] * len(rep)) / len(tiny_data.val.y)
        assert whole == pytest.approx(r["val_acc"], abs=1e-9)
        loss = (r["val_select_loss"] * len(sel) + r["val_report_loss"] * len(rep)) / len(tiny_data.val.y)
        assert loss == pytest.approx(r["val_loss"], rel=1e-5)


# ---------------------------------------------------------------- tuning per size


NO_CURVES = pd.DataFrame(columns=["run_id", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "gap"])


def _tuned(rows):
    """A tuned study's trial table: (size, lr, seed, select_acc, report_acc) each."""
    return pd.DataFrame(
        [
            {
                "run_id": f"{w}-{lr}-{s}",
                "hidden_sizes": (w,),
                "param_count": 3075 * w + 2,
                "lr": lr,
                "tune": f"lr={lr}",
                "regulariser": "none",
                "seed_tag": str(s),
                "val_select_acc": sel,
                "val_report_acc": rep,
                "val_report_loss": 1 - rep,
                "val_acc": (sel + rep) / 2,
                "val_loss": 1 - (sel + rep) / 2,
                "train_acc": 0.95,
                "best_val_acc": max(sel, rep),
                "gap": 0.95 - (sel + rep) / 2,
                "epochs_run": 3,
                "run_status": "FINISHED",
                "trial_id": f"t{w}{lr}{s}",
                "outcome": "completed",
                "depth": 1,
                "batch_size": 64,
                "loss": "nll",
            }
            for w, lr, s, sel, rep in rows
        ]
    )


# Width 8: lr 0.01 wins on the selection half (0.80 > 0.78) but 0.1 is better on the reporting
# half (0.83 > 0.75): choosing on the reporting half would report 0.83 instead of 0.75.
ROWS = [
    (8, 0.01, 0, 0.80, 0.74),
    (8, 0.01, 1, 0.80, 0.76),
    (8, 0.1, 0, 0.78, 0.83),
    (8, 0.1, 1, 0.78, 0.83),
    (64, 0.01, 0, 0.70, 0.71),
    (64, 0.01, 1, 0.72, 0.69),
    (64, 0.1, 0, 0.85, 0.84),
    (64, 0.1, 1, 0.83, 0.86),
]


def test_each_size_keeps_the_value_best_on_the_selection_half_and_reports_the_other_half():
    trials = _tuned(ROWS)
    assert tuned_field(trials) == "lr"
    choice = choose(trials)
    kept = choice[choice["chosen"]].set_index("hidden_sizes")
    assert kept.loc["[8]", "value"] == 0.01 and kept.loc["[64]", "value"] == 0.1
    reported, _ = on_reporting_half(trials, None, choice)
    by_size = reported.groupby("param_count")["val_acc"].mean()
    assert by_size.loc[3075 * 8 + 2] == pytest.approx(0.75), "the reporting half of the value chosen elsewhere"
    on_reporting = trials[trials["hidden_sizes"] == (8,)].groupby("lr")["val_report_acc"].mean().max()
    assert on_reporting == pytest.approx(0.83), "choosing on the reporting half would have reported 0.83"
    assert set(reported["run_id"]) == selected_runs(trials, choice) and len(reported) == 4


def test_a_tuned_report_draws_every_size_at_its_chosen_value_from_the_reporting_half():
    trials = _tuned(ROWS)
    report = analyse("t", trials, NO_CURVES, {"epochs": 3}, kind="capacity", n_val=1000, threshold=18000)
    assert report.tuning is not None and report.tuning["chosen"].sum() == 2
    sizes = report.sizes.set_index("hidden_sizes")
    assert sizes.loc["[8]", "final_val_acc"] == pytest.approx(0.75)
    assert sizes.loc["[64]", "final_val_acc"] == pytest.approx(0.85)
    assert (sizes["seeds"] == 2).all(), "the other value's seeds are not pooled in"
    figs = make_figures(report, NO_CURVES, {})
    assert "tuning.png" in figs


# ---------------------------------------------------------------- power, threshold, epoch-wise


def test_the_minimum_detectable_difference_matches_the_issue_s_known_answer():
    # t(0.975, 4) = 2.776445, t(0.8, 4) = 0.940965: (2.776445 + 0.940965) * 0.008 * sqrt(2/3)
    assert min_detectable_difference(0.008, 3) == pytest.approx(0.024282, abs=2e-6)
    assert min_detectable_difference(0.008, 10) < min_detectable_difference(0.008, 5) < 0.0243
    assert math.isnan(min_detectable_difference(0.008, 1))
    n = seeds_for(0.01, 0.008)
    assert min_detectable_difference(0.008, n) <= 0.01 < min_detectable_difference(0.008, n - 1)


def test_the_threshold_is_training_samples_times_classes_and_is_drawn_on_the_capacity_axes():
    assert interpolation_threshold(9000, 2) == 18000 and interpolation_threshold(None, 2) is None
    report = analyse("t", _tuned(ROWS), NO_CURVES, {"epochs": 3}, kind="capacity", threshold=18000)
    figs = make_figures(report, NO_CURVES, {})
    for name in ("capacity.png", "gap.png"):
        xs = [line.get_xdata() for line in figs[name].axes[0].lines]
        assert any(list(x) == [18000, 18000] for x in xs), name
    assert threshold_row([100, 20000, 90000], 18000) == 0.5 and threshold_row([100, 200], 18000) is None


def test_epoch_grids_hold_the_seed_mean_of_each_size_at_each_epoch_per_curve():
    trials = _tuned(ROWS)[lambda t: t["lr"] == 0.1]
    histories = pd.DataFrame(
        [
            {"run_id": r, "epoch": e, "val_loss": e * 0.1 + s, "val_acc": 0.5 + e * 0.01 + s}
            for r, s in zip(trials["run_id"], [0.0, 0.2, 0.0, 0.4], strict=True)
            for e in (1, 2, 3)
        ]
    )
    grids = epoch_grids(trials, histories, "regulariser")
    assert list(grids) == [("none", 1)]
    loss = grids[("none", 1)]["val_loss"]
    assert list(loss.columns) == [1, 2, 3] and [s for _, s in loss.index] == ["[8]", "[64]"]
    assert loss.iloc[0].tolist() == pytest.approx([0.2, 0.3, 0.4]) and loss.iloc[1].tolist() == pytest.approx(
        [0.3, 0.4, 0.5]
    )


def test_the_report_prints_the_minimum_detectable_difference_of_its_own_seeds():
    from analysis.power import min_detectable_difference
    from analysis.report import power_line, threshold_text

    report = analyse("t", _tuned(ROWS), NO_CURVES, {"epochs": 3}, kind="capacity", threshold=100_000)
    sd = report.power["pooled_sd"]
    assert report.power["seeds"] == 2 and report.power["mdd"] == pytest.approx(min_detectable_difference(sd, 2))
    assert f"{report.power['mdd']:.3f} with 2 seeds a size" in power_line(report)
    assert threshold_text(report).endswith("100,000 parameters; 1 of 2 sizes lie below it")  # [8]: 24,602


def test_compared_studies_mark_the_threshold_too():
    from analysis.compare import frontier_figure, gap_figure

    report = analyse("t", _tuned(ROWS), NO_CURVES, {"epochs": 3}, kind="capacity", threshold=18000)
    for fig in (frontier_figure([report]), gap_figure([report])):
        assert any(list(line.get_xdata()) == [18000, 18000] for line in fig.axes[0].lines)


def test_widths_from_1_make_a_plan(image_tree, tmp_path, capsys):
    import json

    from study.cli import main

    argv = ["capacity", "--check", "--json", "--widths", "1,2,3", "--data-root", str(image_tree)]
    assert main([*argv, "--storage-path", str(tmp_path / "ray")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["design"]["widths"] == [1, 2, 3] and plan["runs"] == 3 * 2 * 5  # widths x depths x seeds
