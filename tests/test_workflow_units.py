"""The pure parts of the researcher's workflow: extension rules, where the Optuna study lives, stale
Optuna trials, run names and the export's all-or-nothing write."""
import optuna
import pandas as pd
import pytest

from analysis.export import curves_path, write_tables
from analysis.record import readable_name
from study.errors import UsageError
from study.space import check_extension, space_from_mapping
from study.runner import fail_stale_optuna_trials
from study.sweep import default_optuna_storage

BASE = {"depth": {"low": 1, "high": 2}, "width": {"low": 16, "high": 128, "log": True},
        "batch_size": {"choices": [16, 32]}, "lr": {"low": 1e-3, "high": 1e-1, "log": True},
        "weight_decay": {"low": 1e-5, "high": 1e-2, "log": True, "or_zero": True}, "loss": {"choices": ["nll", "ce"]},
        "epochs": 4}


def space(**changes):
    return space_from_mapping({**BASE, **changes}, "test")


def test_an_extension_may_widen_numeric_ranges_and_nothing_else():
    check_extension(space(), space())
    check_extension(space(), space(lr={"low": 1e-4, "high": 0.3, "log": True}, width={"low": 8, "high": 512, "log": True}))
    refused = {
        "changes lr from": space(lr={"low": 1e-2, "high": 0.1, "log": True}),  # narrowed
        "changes lr from [0.001, 0.1] log to [0.0001, 0.1]": space(lr={"low": 1e-4, "high": 0.1}),  # log dropped
        "changes batch_size from": space(batch_size={"choices": [16, 32, 64]}),  # Optuna: choices are fixed
        "changes epochs from 4 to 8": space(epochs=8),
        "changes weight_decay from": space(weight_decay={"low": 1e-5, "high": 1e-2, "log": True}),  # no more 0
        "drops 'weight_decay'": space_from_mapping({k: v for k, v in BASE.items() if k != "weight_decay"}, "t"),
        "adds 'dropout'": space(dropout={"low": 0.0, "high": 0.5}),
    }
    for message, new in refused.items():
        with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(")):
            check_extension(space(), new)


def test_the_optuna_study_lives_beside_the_mlflow_store(tmp_path):
    assert default_optuna_storage(f"sqlite:///{tmp_path}/runs/mlflow.db", "/x") == f"sqlite:///{tmp_path}/runs/optuna.db"
    assert default_optuna_storage(f"file://{tmp_path}/mlruns", "/x") == f"sqlite:///{tmp_path}/optuna.db"
    assert default_optuna_storage(str(tmp_path / "mlruns"), "/x") == f"sqlite:///{tmp_path}/optuna.db"
    assert default_optuna_storage("http://127.0.0.1:5000", str(tmp_path)) == f"sqlite:///{tmp_path}/optuna.db"
    assert default_optuna_storage("http://127.0.0.1:5000", "s3://bucket/ray") is None


def test_trials_a_killed_driver_left_running_are_failed_and_finished_ones_kept(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=url)
    done = study.ask()
    study.tell(done, 0.5)
    study.ask()
    study.ask()
    assert fail_stale_optuna_trials(url, "s") == 2
    states = [t.state for t in optuna.load_study(study_name="s", storage=url).trials]
    assert states == [optuna.trial.TrialState.COMPLETE] + [optuna.trial.TrialState.FAIL] * 2
    assert fail_stale_optuna_trials(url, "s") == 0
    assert fail_stale_optuna_trials(url, "no-such-study") == 0 and fail_stale_optuna_trials(None, "s") == 0


def test_run_names_read_like_the_nets_they_train():
    assert readable_name({"hidden_sizes": [505, 103], "activation": "relu", "loss": "bce", "optimizer": "adam"}) == \
        "[505,103] relu bce adam"
    assert readable_name({"hidden_sizes": [512], "activation": "tanh", "loss": "nll", "optimizer": "sgd"}) == \
        "[512] tanh nll sgd"


def test_export_writes_both_tables_or_neither(tmp_path):
    trials = pd.DataFrame({"run_id": ["a", "b"], "val_acc": [0.5, 0.6]})
    curves = pd.DataFrame({"run_id": ["a"], "epoch": [1], "val_acc": [0.5]})
    out = tmp_path / "t.csv"
    assert write_tables(trials, curves, out) == (out, tmp_path / "t.curves.csv")
    assert pd.read_csv(out).equals(trials) and pd.read_csv(curves_path(out)).equals(curves)

    class Unwritable(pd.DataFrame):
        def to_csv(self, *args, **kwargs):
            raise OSError("disk full")

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(OSError, match="disk full"):
        write_tables(trials, Unwritable(curves), fresh / "t.csv")
    assert list(fresh.iterdir()) == []  # the trials table, written first, was not left behind


def test_the_persisted_study_gets_each_finished_trial_once_with_its_distributions(tmp_path):
    from study.optuna_mirror import OptunaStudyMirror

    url = f"sqlite:///{tmp_path}/optuna.db"
    dists = space().optuna_distributions()
    assert set(dists) == {"depth", "width_0", "width_1", "batch_size", "lr", "weight_decay", "weight_decay_on", "loss"}
    mirror = OptunaStudyMirror(url, "s", ["val_acc"], ["maximize"], dists)
    config = {"depth": 1, "width_0": 32, "batch_size": 16, "lr": 0.01, "weight_decay_on": False, "loss": "ce",
              "train": {"hidden_sizes": [32]}}
    for epoch, acc in ((1, 0.6), (2, 0.7)):
        mirror.curves.setdefault("t1", {})[epoch] = acc
    assert mirror.write("t1", config, {"val_acc": 0.7, "epoch": 2}, error=False) is True
    assert mirror.write("t1", config, {"val_acc": 0.7, "epoch": 2}, error=False) is False  # a replay adds nothing
    import pickle

    revived = pickle.loads(pickle.dumps(mirror))  # as Tune restores it on --resume
    assert revived.write("t1", config, {"val_acc": 0.7, "epoch": 2}, error=False) is False
    assert revived.write("t2", config, {"val_acc": float("nan")}, error=False) is True
    assert revived.write("t3", config, {"val_acc": 0.8}, error=True) is True
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL"]
    assert trials[0].params == {k: v for k, v in config.items() if k != "train"} and trials[0].value == 0.7
    assert trials[0].intermediate_values == {1: 0.6, 2: 0.7}
    assert trials[0].user_attrs == {"ray_trial_id": "t1"}
