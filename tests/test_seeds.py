"""trainables/seeds.py: a sweep trial of several seeds is scored by their mean record.

Known answers, computed here by hand, for the mean and the sd; a diverged seed keeps counting; the
history rebuilt from a checkpoint is what the trial reported live."""

import math
from types import SimpleNamespace

import pytest

from trainables.config import TrainConfig
from trainables.seeds import SEED_SD, mean_history, mean_record, population_mean_history, seed_configs


def record(epoch, val_acc, train_loss=0.5, status="completed", **extra):
    return {"epoch": epoch, "val_acc": val_acc, "train_loss": train_loss, "param_count": 99, "status": status, **extra}


def test_the_trial_s_record_is_the_mean_of_its_seeds_with_their_sample_sd():
    got = mean_record([record(3, 0.80, 0.2), record(3, 0.84, 0.4), record(3, 0.90, 0.6)])
    assert got["val_acc"] == pytest.approx((0.80 + 0.84 + 0.90) / 3)
    assert got["train_loss"] == pytest.approx(0.4)
    # sample sd (n - 1): deviations -0.0466.., -0.0066.., +0.0533..
    mean = (0.80 + 0.84 + 0.90) / 3
    want = math.sqrt(((0.80 - mean) ** 2 + (0.84 - mean) ** 2 + (0.90 - mean) ** 2) / 2)
    assert got[SEED_SD] == pytest.approx(want) and got[SEED_SD] == pytest.approx(0.0503322, abs=1e-6)
    assert got["epoch"] == 3 and got["param_count"] == 99 and got["status"] == "completed"


def test_one_seed_has_sd_0_and_the_mean_is_order_free():
    assert mean_record([record(1, 0.7)])[SEED_SD] == 0.0
    a, b, c = record(2, 0.1 + 1e-17), record(2, 0.2), record(2, 0.3)
    assert mean_record([a, b, c]) == mean_record([c, a, b])


def test_a_diverged_seed_counts_with_its_last_record_and_the_trial_diverged_only_when_all_did():
    live = record(4, 0.9)
    dead = record(2, 0.5, train_loss=math.inf, status="diverged")
    got = mean_record([live, dead])
    assert got["val_acc"] == pytest.approx(0.7), "not the survivors' 0.9"
    assert got["train_loss"] == math.inf and got["epoch"] == 4 and got["status"] == "completed"
    assert mean_record([dead, {**dead, "val_acc": 0.4}])["status"] == "diverged"


def test_a_metric_not_every_seed_holds_is_left_out_and_no_record_is_refused():
    got = mean_record([record(1, 0.5, lr=0.1), record(1, 0.7)])
    assert "lr" not in got and got["val_acc"] == pytest.approx(0.6)
    with pytest.raises(ValueError):
        mean_record([])


def test_the_history_from_a_checkpoint_is_the_mean_of_each_seed_s_latest_record_per_epoch():
    a = [record(1, 0.5), record(2, 0.6), record(3, 0.7)]
    b = [record(1, 0.3), record(2, 0.1, train_loss=math.inf)]  # diverged at epoch 2
    got = mean_history([a, b], ["completed", "diverged"])
    assert [r["epoch"] for r in got] == [1, 2, 3]
    assert [r["val_acc"] for r in got] == pytest.approx([0.4, 0.35, 0.4]), "epoch 3: b's epoch-2 record"
    assert [r["status"] for r in got] == ["completed", "completed", "completed"]
    assert mean_history([b], ["diverged"])[-1]["status"] == "diverged"
    # What the trial reported live at each epoch (each seed's latest record so far, its status on it).
    live = [
        mean_record([a[0], b[0]]),
        mean_record([a[1], {**b[1], "status": "diverged"}]),
        mean_record([a[2], {**b[1], "status": "diverged"}]),
    ]
    assert got == live


def test_each_seed_is_the_recipe_with_its_own_seed():
    recipe = TrainConfig(hidden_sizes=(8,), lr=0.03, seed=5)
    got = seed_configs(recipe, [5, 6, 7])
    assert [c.seed for c in got] == [5, 6, 7]
    assert all(c.replace(seed=5) == recipe for c in got)


def test_the_trial_s_epoch_is_its_latest_seed_s_whichever_comes_first():
    early = record(2, 0.5, status="diverged")
    assert mean_record([early, record(4, 0.9)])["epoch"] == 4
    assert mean_record([record(4, 0.9), early])["epoch"] == 4


def test_a_seed_s_final_status_marks_only_its_last_record_and_epochs_before_every_seed_reported_are_left_out():
    b = [record(1, 0.3), record(2, 0.1, train_loss=math.inf)]
    assert [r["status"] for r in mean_history([b], ["diverged"])] == ["completed", "diverged"]
    late = [record(2, 0.6), record(3, 0.8)]  # no record at epoch 1 (a history that starts late)
    got = mean_history([[record(1, 0.5), record(2, 0.5), record(3, 0.5)], late], ["completed", "completed"])
    assert [r["epoch"] for r in got] == [2, 3] and [r["val_acc"] for r in got] == pytest.approx([0.55, 0.65])


def test_ray_s_last_record_of_a_trial_of_seeds_is_their_mean_at_the_newest_checkpoint(tiny_data, tmp_path):
    """What a --resume reports again for a trial the dead driver had closed (study.runner): the
    newest of Ray's results and checkpoint; here the checkpoint is ahead of the results."""
    from types import SimpleNamespace

    import pandas as pd

    from study.runner import ray_last_record
    from trainables.population import fit_population

    configs = seed_configs(TrainConfig(hidden_sizes=(8,), batch_size=16, epochs=3, threads=1), [0, 1, 2])
    saved = {}
    fit_population(configs, tiny_data, on_epoch_end=lambda members, snapshot: saved.update(last=snapshot()))
    folder = tmp_path / "trial_x"
    (folder / "checkpoint_000002").mkdir(parents=True)
    saved["last"].save(folder / "checkpoint_000002" / "population.pt")
    trial = SimpleNamespace(storage=SimpleNamespace(trial_fs_path=str(folder), storage_filesystem=None))
    got = ray_last_record(trial, pd.DataFrame([{"epoch": 1, "val_acc": 0.1}]))  # the results lag
    finals = [m["history"][-1]["val_acc"] for m in saved["last"].members]
    assert got["epoch"] == 3
    assert got["val_acc"] == pytest.approx(sum(finals) / 3, abs=1e-12)
    assert got[SEED_SD] == pytest.approx(mean_record([{"epoch": 3, "val_acc": v} for v in finals])[SEED_SD])


def test_check_s_checkpoint_estimate_counts_every_seed_of_a_trial():
    """One population checkpoint holds K members' weights and optimizer state (`sweep --check`)."""
    from types import SimpleNamespace

    from study.space import load_space
    from study.sweep import SweepOptions, checkpoint_sizes

    space = load_space()
    one = checkpoint_sizes(SimpleNamespace(space=space, options=SweepOptions(num_samples=4, seeds_per_trial=1)))
    three = checkpoint_sizes(SimpleNamespace(space=space, options=SweepOptions(num_samples=4, seeds_per_trial=3)))
    assert len(one) == len(three) == 4 and three == [3 * b for b in one] and one[0] > 0


def test_a_population_s_mean_history_takes_each_member_s_final_status_from_its_state():
    # A member's status in a population's state is one of "running", "completed", "stopped" or
    # "diverged"; only a diverged one marks its last record (and only if every seed diverged).
    dead = [record(1, 0.2, train_loss=math.inf)]
    state = SimpleNamespace(members=[{"history": dead, "status": "diverged"}, {"history": dead, "status": "running"}])
    assert [r["status"] for r in population_mean_history(state)] == ["completed"]
    state.members[1]["status"] = "diverged"
    assert [r["status"] for r in population_mean_history(state)] == ["diverged"]
    state.members[1]["status"] = "stopped"
    assert population_mean_history(state) == mean_history([dead, dead], ["diverged", "stopped"])
