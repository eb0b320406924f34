"""The pure parts of the researcher's workflow: extension rules, where the Optuna study lives, stale
Optuna trials, run names and the export's all-or-nothing write."""

import optuna
import pandas as pd
import pytest

from analysis.export import curves_path, write_tables
from analysis.record import readable_name
from study.errors import UsageError
from study.runner import fail_stale_optuna_trials
from study.space import check_extension, space_from_mapping
from study.sweep import default_optuna_storage

BASE = {
    "depth": {"low": 1, "high": 2},
    "width": {"low": 16, "high": 128, "log": True},
    "batch_size": {"choices": [16, 32]},
    "lr": {"low": 1e-3, "high": 1e-1, "log": True},
    "weight_decay": {"low": 1e-5, "high": 1e-2, "log": True, "or_zero": True},
    "loss": {"choices": ["nll", "ce"]},
    "epochs": 4,
}


def space(**changes):
    return space_from_mapping({**BASE, **changes}, "test")


def test_an_extension_may_widen_numeric_ranges_and_nothing_else():
    check_extension(space(), space())
    check_extension(
        space(), space(lr={"low": 1e-4, "high": 0.3, "log": True}, width={"low": 8, "high": 512, "log": True})
    )
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
    assert (
        default_optuna_storage(f"sqlite:///{tmp_path}/runs/mlflow.db", "/x") == f"sqlite:///{tmp_path}/runs/optuna.db"
    )
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
    assert (
        readable_name({"hidden_sizes": [505, 103], "activation": "relu", "loss": "bce", "optimizer": "adam"})
        == "[505,103] relu bce adam"
    )
    assert (
        readable_name({"hidden_sizes": [512], "activation": "tanh", "loss": "nll", "optimizer": "sgd"})
        == "[512] tanh nll sgd"
    )


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


CONFIG = {
    "depth": 1,
    "width_0": 32,
    "batch_size": 16,
    "lr": 0.01,
    "weight_decay_on": False,
    "loss": "ce",
    "train": {"hidden_sizes": [32]},
}


def _mirror(tmp_path):
    from study.optuna_mirror import OptunaStudyMirror

    url = f"sqlite:///{tmp_path}/optuna.db"
    return url, OptunaStudyMirror(url, "s", ["val_acc"], ["maximize"], space().optuna_distributions())


def _trials(url):
    return optuna.load_study(study_name="s", storage=url).trials


def test_the_distributions_are_every_parameter_the_define_by_run_space_can_suggest():
    assert set(space().optuna_distributions()) == {
        "depth",
        "width_0",
        "width_1",
        "batch_size",
        "lr",
        "weight_decay",
        "weight_decay_on",
        "loss",
    }


def test_a_finished_trial_is_written_with_its_params_value_curve_and_ray_trial_id(tmp_path):
    url, mirror = _mirror(tmp_path)
    for epoch, acc in ((1, 0.6), (2, 0.7)):
        mirror.curves.setdefault("t1", {})[epoch] = acc
    assert mirror.write("t1", CONFIG, {"val_acc": 0.7, "epoch": 2}, error=False) is True
    (trial,) = _trials(url)
    assert trial.state.name == "COMPLETE" and trial.value == 0.7
    assert trial.params == {k: v for k, v in CONFIG.items() if k != "train"}
    assert trial.intermediate_values == {1: 0.6, 2: 0.7}
    assert trial.user_attrs == {"ray_trial_id": "t1"}


def test_a_trial_is_written_once_even_replayed_or_after_the_mirror_is_unpickled(tmp_path):
    import pickle

    url, mirror = _mirror(tmp_path)
    assert mirror.write("t1", CONFIG, {"val_acc": 0.7, "epoch": 2}, error=False) is True
    assert mirror.write("t1", CONFIG, {"val_acc": 0.7, "epoch": 2}, error=False) is False  # a replay adds nothing
    revived = pickle.loads(pickle.dumps(mirror))  # as Tune restores it on --resume
    assert revived.write("t1", CONFIG, {"val_acc": 0.7, "epoch": 2}, error=False) is False
    assert len(_trials(url)) == 1


def test_a_trial_without_a_finite_value_or_that_errored_is_written_as_failed(tmp_path):
    url, mirror = _mirror(tmp_path)
    assert mirror.write("t2", CONFIG, {"val_acc": float("nan")}, error=False) is True
    assert mirror.write("t3", CONFIG, {"val_acc": 0.8}, error=True) is True
    assert mirror.write("t4", CONFIG, {}, error=False) is True
    assert [(t.state.name, t.value) for t in _trials(url)] == [("FAIL", None)] * 3


def test_a_study_that_cannot_be_opened_is_logged_and_skipped_without_raising(tmp_path, caplog):
    from study.optuna_mirror import OptunaStudyMirror

    url = f"sqlite:///{tmp_path}/no/such/folder/optuna.db"
    mirror = OptunaStudyMirror(url, "s", ["val_acc"], ["maximize"], space().optuna_distributions())
    with caplog.at_level("WARNING", logger="study.optuna_mirror"):
        mirror.setup()
        assert mirror.write("t1", CONFIG, {"val_acc": 0.7}, error=False) is False
    first, second = (r.getMessage() for r in caplog.records)
    # Each line ends with the storage's own error: why the study cannot be opened.
    assert first.startswith(f"Optuna study s at {url} not available: ")
    assert second.startswith("could not copy trial t1 into the Optuna study s: ")
    assert all("unable to open database file" in line for line in (first, second)), (first, second)


def test_what_tune_snapshots_holds_the_settings_and_curves_but_no_live_study(tmp_path):
    url, mirror = _mirror(tmp_path)
    mirror.write("t1", CONFIG, {"val_acc": 0.7}, error=False)  # the study is open now
    mirror.curves["t2"] = {1: 0.5}
    state = mirror.__getstate__()
    assert set(state) == {"url", "study_name", "metrics", "directions", "distributions", "curves"}
    assert state["curves"] == {"t2": {1: 0.5}}


def _trial(trial_id, last_result=None):
    """What Tune hands a callback: a trial with its id, config and last result."""
    from types import SimpleNamespace

    return SimpleNamespace(trial_id=trial_id, config=CONFIG, last_result=last_result)


def test_the_callbacks_record_each_epoch_s_finite_metric_and_write_the_finished_trial(tmp_path):
    url, mirror = _mirror(tmp_path)
    mirror.setup()
    assert _trials(url) == [], "the study exists (the dashboard lists it) from the sweep's start"
    t = _trial("t1", {"val_acc": 0.7, "epoch": 3})
    for epoch, value in ((1, 0.5), (2, float("nan")), (3, 0.7)):
        mirror.on_trial_result(0, [], t, {"val_acc": value, "epoch": epoch})
    mirror.on_trial_result(0, [], t, {"val_acc": 0.9})  # no epoch: not a point of the curve
    mirror.on_trial_complete(0, [], t)
    mirror.on_trial_error(0, [], _trial("t2", {"val_acc": 0.8, "epoch": 1}))  # a value, but the trial errored
    first, second = _trials(url)
    assert first.state.name == "COMPLETE" and first.intermediate_values == {1: 0.5, 3: 0.7} and first.value == 0.7
    assert second.state.name == "FAIL" and second.user_attrs == {"ray_trial_id": "t2"}


def test_a_multi_objective_trial_is_written_with_every_value_and_no_curve(tmp_path):
    from study.optuna_mirror import OptunaStudyMirror

    url = f"sqlite:///{tmp_path}/optuna.db"
    mirror = OptunaStudyMirror(
        url, "s", ["val_acc", "param_count"], ["maximize", "minimize"], space().optuna_distributions()
    )
    mirror.curves["t1"] = {1: 0.6}
    assert mirror.write("t1", CONFIG, {"val_acc": 0.7, "param_count": 1000}, error=False) is True
    (trial,) = _trials(url)
    assert trial.values == [0.7, 1000.0] and trial.intermediate_values == {}


def test_a_second_mirror_of_the_same_study_adds_to_it_and_knows_its_trials(tmp_path):
    """A resumed driver or an extension opens the persisted study again: loaded, not refused, and the
    trials already there are not written twice."""
    url, first = _mirror(tmp_path)
    assert first.write("t1", CONFIG, {"val_acc": 0.7}, error=False) is True
    _, second = _mirror(tmp_path)
    assert second.write("t1", CONFIG, {"val_acc": 0.7}, error=False) is False
    assert second.write("t2", CONFIG, {"val_acc": 0.6}, error=False) is True
    assert [t.user_attrs["ray_trial_id"] for t in _trials(url)] == ["t1", "t2"]
