"""compare's best-trial table: each study's best trial is its highest val_acc, the smaller net on a tie."""

from types import SimpleNamespace

import pandas as pd

from analysis.compare import best_table


def test_each_study_s_best_trial_is_its_highest_val_acc_and_the_smaller_net_on_a_tie():
    trials = pd.DataFrame(
        {
            "run_id": ["low", "big", "small", "mid"],
            "val_acc": [0.70, 0.85, 0.85, 0.80],
            "train_acc": [0.75, 0.99, 0.90, 0.88],
            "gap": [0.05, 0.14, 0.05, 0.08],
            "param_count": [1_000, 90_000, 20_000, 5_000],
            "hidden_sizes": [[4], [32], [8], [2]],
            "activation": "tanh",
            "loss": "nll",
        }
    )
    study = SimpleNamespace(experiment="a", trials=trials, epochs=40)  # the fields best_table reads
    row = best_table([study]).iloc[0]
    assert row["best_run_id"] == "small", "not the highest val_acc, or not the smaller of the tied nets"
    assert (row["best_val_acc"], row["best_param_count"], row["trials"]) == (0.85, 20_000, 4)
