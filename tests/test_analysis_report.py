"""The report's analysis (analysis/report.py) on a trial table and curves made here: which trials it uses."""

import pandas as pd

from analysis.report import analyse

SPACE = {"depth": 1, "width": {"low": 8, "high": 64}, "lr": {"low": 1e-3, "high": 1e-1, "log": True}, "epochs": 4}


def _study():
    """Four trials of a 4-epoch study; "short" was stopped by ASHA after 1 epoch while its val_acc was
    the study's highest and its net the smallest: it would top the frontier and the Pareto set."""
    rows = [("a", 8, 0.70, 4), ("b", 16, 0.74, 4), ("c", 32, 0.72, 4), ("short", 4, 0.90, 1)]
    trials = pd.DataFrame(
        [
            {
                "run_id": r,
                "trial_id": f"t_{r}",
                "run_status": "FINISHED",
                "outcome": "completed" if epochs == 4 else "stopped_early",
                "hidden_sizes": (w,),
                "depth": 1,
                "width_0": w,
                "lr": 0.01 * (i + 1),
                "loss": "nll",
                "batch_size": 32,
                "param_count": 3075 * w + 2 * w + 2 - w,
                "val_acc": acc,
                "best_val_acc": acc,
                "train_acc": acc + 0.1,
                "gap": 0.1,
                "val_loss": 1 - acc,
                "train_loss": 0.9 - acc,
                "epochs_run": epochs,
            }
            for i, (r, w, acc, epochs) in enumerate(rows)
        ]
    )
    histories = pd.DataFrame(
        [
            {
                "run_id": r,
                "epoch": e,
                "train_loss": 1.0 / e,
                "train_acc": acc,
                "val_loss": 1 - acc,
                "val_acc": acc,
                "gap": 0.1,
            }
            for r, _, acc, epochs in rows
            for e in range(1, epochs + 1)
        ]
    )
    return trials, histories


def test_a_trial_stopped_before_the_budget_is_kept_off_the_frontier_and_the_tables_and_counted():
    trials, histories = _study()
    report = analyse("s", trials, histories, SPACE)
    assert sorted(report.trials["run_id"]) == ["a", "b", "c"], "the analysis uses the full-budget trials only"
    assert list(report.short["run_id"]) == ["short"]
    assert "short" not in set(report.pareto["run_id"]), "not on the Pareto front it would top"
    assert report.sizes["param_count"].min() > trials.loc[3, "param_count"], "not in the per-size table"
    assert list(report.left_out["reason"]) == ["stopped before the 4-epoch budget"]
    assert report.left_out_text() == "1 trials left out: 1 stopped before the 4-epoch budget"


def test_include_short_puts_every_finished_trial_in():
    trials, histories = _study()
    report = analyse("s", trials, histories, SPACE, include_short=True)
    assert sorted(report.trials["run_id"]) == ["a", "b", "c", "short"] and report.short.empty
    assert "short" in set(report.pareto["run_id"]) and report.left_out.empty
