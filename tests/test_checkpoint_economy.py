"""What a trial's checkpoints hold and when they are written (issue 23): the schedule of
--checkpoint-every, best weights saved once, truncated checkpoints passed over, finished trials slimmed."""

import torch
from ray import tune

from trainables.checkpoint import STATE_FILE, TrainState
from trainables.tune_adapter import checkpoint_due, read_checkpoint, slim_finished


def state(epoch: int, best_epoch: int, width: int = 256) -> TrainState:
    weights = {"w": torch.randn(width, width)}
    # As in trainables/loop.py: the best weights are a copy of the weights of the best epoch.
    best = {k: v.clone() for k, v in weights.items()} if best_epoch == epoch else {"w": torch.randn(width, width)}
    return TrainState(
        epoch=epoch,
        model=weights,
        optimizer={"state": {0: {"momentum_buffer": torch.randn(width, width)}}, "param_groups": [{"lr": 0.1}]},
        sampler_rng=torch.ByteTensor(8),
        augment_rng=torch.ByteTensor(8),
        history=[{"epoch": e, "val_acc": 0.5} for e in range(1, epoch + 1)],
        config={"epochs": 10},
        best_epoch=best_epoch,
        best_model=best,
    )


def test_the_schedule_checkpoints_the_first_every_nth_and_the_last_epoch():
    assert [e for e in range(1, 11) if checkpoint_due(e, 10, 1, False)] == list(range(1, 11))
    assert [e for e in range(1, 11) if checkpoint_due(e, 10, 4, False)] == [1, 5, 9, 10]
    assert checkpoint_due(3, 10, 4, diverged=True)


def test_best_weights_are_saved_once_when_the_last_epoch_is_the_best(tmp_path):
    same, other = tmp_path / "same.pt", tmp_path / "other.pt"
    state(3, best_epoch=3).save(same)
    state(3, best_epoch=2).save(other)
    weights = 256 * 256 * 4
    assert other.stat().st_size - same.stat().st_size > 0.9 * weights, (same.stat().st_size, other.stat().st_size)
    assert same.stat().st_size < 2.2 * weights, "weights and optimizer state only"
    loaded = TrainState.load(same)
    assert loaded.best_epoch == 3 and torch.equal(loaded.best_model["w"], loaded.model["w"])


def checkpoints(trial: object, *states) -> list:
    folders = []
    for i, s in enumerate(states):
        folder = trial / f"checkpoint_{i:06d}"
        folder.mkdir(parents=True)
        s.save(folder / STATE_FILE)
        folders.append(folder)
    return folders


def test_a_truncated_checkpoint_is_passed_over_for_the_newest_earlier_one(tmp_path):
    first, second = checkpoints(tmp_path / "trial_a", state(1, 1), state(2, 2))
    blob = (second / STATE_FILE).read_bytes()
    (second / STATE_FILE).write_bytes(blob[: len(blob) // 2])  # what a full disk leaves
    restored = read_checkpoint(tune.Checkpoint(str(second)))
    assert restored is not None and restored.epoch == 1
    (first / STATE_FILE).write_bytes(b"")
    assert read_checkpoint(tune.Checkpoint(str(second))) is None  # nothing reads: the trial starts afresh


def test_a_finished_trial_keeps_one_checkpoint_with_the_best_weights_alone(tmp_path):
    *_, newest = checkpoints(tmp_path / "trial_b", state(1, 1), state(2, 1), state(3, 1))
    before = (newest / STATE_FILE).stat().st_size
    slim_finished(tune.Checkpoint(str(newest)))
    assert sorted(p.name for p in (tmp_path / "trial_b").iterdir()) == [newest.name]
    slim = TrainState.load(newest / STATE_FILE)
    assert slim.optimizer == {} and slim.epoch == 3 and [r["epoch"] for r in slim.history] == [1, 2, 3]
    assert slim.best_epoch == 1 and slim.best_model is not None and slim.model == {}, "one set of weights: the best"
    assert (newest / STATE_FILE).stat().st_size < before
    assert not list((tmp_path / "trial_b").rglob("*.tmp"))


def trial_state(experiment, trial_id: str, named: list) -> list:
    """One trial of Ray's snapshot whose checkpoint manager registered ``named`` (the last is what
    a restore uses), as Ray's own Trial.get_json_state writes it (its TuneController does so)."""
    from ray.train._internal.session import _TrainingResult
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    storage = StorageContext(
        storage_path=str(experiment.parent), experiment_dir_name=experiment.name, trial_dir_name=f"trial_{trial_id}"
    )
    trial = Trial("train_trial", config={}, storage=storage, trial_id=trial_id, stub=True)
    for i, folder in enumerate(named):
        trial.run_metadata.checkpoint_manager.register_checkpoint(
            _TrainingResult(checkpoint=tune.Checkpoint(str(folder)), metrics={"epoch": i + 1})
        )
    return list(trial.get_json_state())


def ray_snapshot(experiment, trials: dict, stamp: str = "2026-01-01_00-00-00") -> None:
    """Ray's snapshot (experiment_state-STAMP.json) of ``trials``: trial id -> the checkpoints it registered."""
    import json

    data = [trial_state(experiment, t, named) for t, named in trials.items()]
    snapshot = {"trial_data": data, "runner_data": {}, "stats": {}}
    (experiment / f"experiment_state-{stamp}.json").write_text(json.dumps(snapshot))


def remove(*folders) -> None:
    for gone in folders:  # what num_to_keep deleted before the next snapshot was written
        (gone / STATE_FILE).unlink()
        gone.rmdir()


def test_a_checkpoint_a_stale_snapshot_names_but_num_to_keep_deleted_resumes_from_the_trial_s_newest(tmp_path):
    from study.disk import deleted_restore_points

    experiment = tmp_path / "ray" / "study"
    folders = checkpoints(experiment / "trial_t_00000", state(1, 1), state(2, 2), state(3, 3), state(4, 3))
    ray_snapshot(experiment, {"t_00000": folders[:2]})  # the snapshot was taken at epoch 2
    assert deleted_restore_points(str(experiment)) == [], "its checkpoint is there: nothing to do"
    remove(*folders[:2])
    assert deleted_restore_points(str(experiment)) == [str(folders[1])]
    assert folders[1].is_dir() and not any(folders[1].iterdir()), "an empty folder where Ray will look"
    assert not folders[0].exists(), "only the one Ray restores from"
    restored = read_checkpoint(tune.Checkpoint(str(folders[1])))
    assert restored is not None and restored.epoch == 4, "the trial's newest checkpoint, not a fresh start"
    assert deleted_restore_points(str(experiment)) == [], "once is enough"
    assert deleted_restore_points(f"file://{experiment}") == [] and deleted_restore_points(str(tmp_path)) == []


def test_every_trial_of_the_newest_snapshot_gets_its_folder_and_only_those(tmp_path):
    from study.disk import deleted_restore_points

    experiment = tmp_path / "ray" / "study"
    a = checkpoints(experiment / "trial_t_00000", state(1, 1), state(2, 2), state(3, 3))
    b = checkpoints(experiment / "trial_t_00001", state(1, 1), state(2, 2), state(3, 3))
    ray_snapshot(experiment, {"t_00000": a[:1], "t_00001": b[:1]}, stamp="2026-01-01_00-00-00")  # older
    ray_snapshot(experiment, {"t_00000": a[:2], "t_00001": b[:2]}, stamp="2026-01-01_00-10-00")  # Ray's choice
    remove(a[0], a[1], b[0], b[1])
    assert deleted_restore_points(str(experiment)) == [str(a[1]), str(b[1])], "both trials, from the newest snapshot"
    assert not a[0].exists() and not b[0].exists()


def test_a_moved_experiment_s_snapshot_is_read_under_its_new_folder(tmp_path):
    import shutil

    from study.disk import deleted_restore_points

    experiment = tmp_path / "ray" / "study"
    folders = checkpoints(experiment / "trial_t_00000", state(1, 1), state(2, 2), state(3, 3))
    ray_snapshot(experiment, {"t_00000": folders[:2]})
    remove(*folders[:2])
    moved = tmp_path / "elsewhere" / "study"
    moved.parent.mkdir()
    shutil.move(str(experiment), str(moved))
    assert deleted_restore_points(str(moved)) == [str(moved / "trial_t_00000" / folders[1].name)]
    assert not experiment.exists(), "nothing made under the old path"


def test_a_trial_whose_folder_is_gone_or_an_unreadable_snapshot_makes_nothing_and_raises_nothing(tmp_path, caplog):
    import shutil

    from study.disk import deleted_restore_points

    experiment = tmp_path / "ray" / "study"
    folders = checkpoints(experiment / "trial_t_00000", state(1, 1), state(2, 2))
    ray_snapshot(experiment, {"t_00000": folders[:1]})
    shutil.rmtree(experiment / "trial_t_00000")
    assert deleted_restore_points(str(experiment)) == [] and not (experiment / "trial_t_00000").exists()
    (experiment / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [["{}", 7]]}')
    with caplog.at_level("WARNING"):
        assert deleted_restore_points(str(experiment)) == []
    assert "could not read the checkpoints Ray's snapshot names" in caplog.text
