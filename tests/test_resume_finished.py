"""A trial that finished before the driver was killed is not trained again by --resume (issue 23)."""

import json

import pytest

from tests.conftest import last_json, make_image_tree, run_birdplane
from tests.test_faults import children, kill_when, slow_tree, start, sweep_args, write_space  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def closed_runs(uri, experiment) -> dict[str, object]:
    return {r.data.tags["ray_trial_id"]: r for r in children(uri, experiment)[1] if r.info.status == "FINISHED"}


def test_a_trial_mlflow_and_ray_saw_finish_is_not_run_again_after_a_sigkill(slow_tree, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)  # MLflow's ./mlruns artefacts of the sqlite store land here
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Tune snapshots its state only at the first step (and when a trial made num_to_keep=2
    # checkpoints: at epoch 2 of 3 here): the snapshot still has the first trial unfinished.
    env = {"TUNE_GLOBAL_CHECKPOINT_S": "3600"}
    args = sweep_args(tmp_path, slow_tree, uri, "done", 3, write_space(tmp_path, epochs=3), "--max-concurrent", 1)
    proc = start(args, env=env)
    kill_when(proc, lambda: len(closed_runs(uri, "done")) >= 1, "the first trial's run FINISHED")
    (trial, run) = next(iter(closed_runs(uri, "done").items()))
    experiment = tmp_path / "ray" / "done"
    checkpoints = sorted(p.name for p in experiment.glob(f"trial_{trial}/checkpoint_*"))

    resumed = run_birdplane(*args, "--resume", "--json", env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(last_json(resumed.stdout)["trials"]) == 3
    client, runs = children(uri, "done")
    after = {r.data.tags["ray_trial_id"]: r for r in runs}[trial]
    assert after.info.run_id == run.info.run_id
    assert after.info.status == "FINISHED" and after.info.end_time == run.info.end_time, "the run was not reopened"
    for key in ("val_acc", "train_loss", "best_val_acc", "epochs_run", "param_count"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {steps}"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2, 3]
    assert sorted(p.name for p in experiment.glob(f"trial_{trial}/checkpoint_*")) == checkpoints, "no new training"


@pytest.fixture(scope="module")
def population_tree(tmp_path_factory):
    """Enough images that each population of the test's design trains for a second or more (and
    Ray starts each trial apart): the kill lands while the later ones are unfinished."""
    return make_image_tree(
        tmp_path_factory.mktemp("population-images"), per_class=600, test_per_class=5, classes=("airplane", "bird")
    )


@pytest.mark.long  # past the default suite's budget: pytest --run-long
def test_a_population_whose_member_runs_all_finished_is_not_run_again_after_a_sigkill(
    population_tree, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"TUNE_GLOBAL_CHECKPOINT_S": "3600"}  # as above: the snapshot has the first population unfinished
    # Three wide populations, one at a time: the kill, once the first one's members FINISHED, has a
    # whole trial (its start, 3 epochs of 1,200 images) before a second one could finish too.
    args = ["capacity", "--population", "--widths", "256,1024,2048", "--depths", 1, "--seeds", 2, "--epochs", 3]
    args += ["--data-root", population_tree, "--cache-dir", tmp_path / "cache", "--name", "done", "--max-concurrent", 1]
    args += ["--storage-path", tmp_path / "ray", "--tracking-uri", uri]
    experiment = tmp_path / "ray" / "done"
    proc = start(args, env=env)

    def finished() -> int:  # once the study made its store (its manifest follows): no second migration
        return (experiment / "birdplane.json").exists() and sum(
            r.info.status == "FINISHED" for r in children(uri, "done")[1]
        )

    kill_when(proc, lambda: finished() >= 2, "the first population's two member runs FINISHED")
    client, runs = children(uri, "done")
    done = [r for r in runs if r.info.status == "FINISHED"]
    # The situation the test is about: one population wholly finished, the other not.
    assert len(done) == 2 and len({r.data.tags["ray_trial_id"] for r in done}) == 1, [r.data.tags for r in done]
    trial = done[0].data.tags["ray_trial_id"]
    checkpoints = sorted(p.name for p in experiment.glob(f"trial_{trial}/checkpoint_*"))

    resumed = run_birdplane(*args, "--resume", "--json", env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = last_json(resumed.stdout)["trials"]
    assert len(summary) == 6 and all(t["epochs"] == 3 for t in summary), (summary, resumed.stderr[-6000:])
    client, runs = children(uri, "done")
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    for before in done:
        after = next(r for r in runs if r.info.run_id == before.info.run_id)
        assert after.info.end_time == before.info.end_time, "the member's run was not reopened"
        assert [m.step for m in client.get_metric_history(before.info.run_id, "val_acc")] == [1, 2, 3]
    assert sorted(p.name for p in experiment.glob(f"trial_{trial}/checkpoint_*")) == checkpoints, "no new training"


def snapshot_checkpoints(experiment) -> dict:
    """Trial id -> the checkpoint folder Ray's newest snapshot restores it from, read by Ray's own
    Trial.from_json_state / restore_run_metadata (what Tuner.restore does), apart from study.disk."""
    from ray.tune.experiment import Trial

    newest = max(experiment.glob("experiment_state-*.json"))
    found = {}
    for state, metadata in json.loads(newest.read_text())["trial_data"]:
        trial = Trial.from_json_state(state, stub=True)
        trial.restore_run_metadata(metadata)
        if trial.checkpoint is not None:
            found[trial.trial_id] = experiment / f"trial_{trial.trial_id}" / trial.checkpoint.path.rsplit("/", 1)[1]
    return found


def test_a_trial_whose_snapshot_names_a_deleted_checkpoint_resumes_from_its_newest_after_a_sigkill(
    slow_tree,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """Ray deletes a trial's oldest checkpoint (num_to_keep) before the snapshot it forced is
    written when epochs are short: a SIGKILL in between leaves the snapshot naming a deleted
    folder, and Ray's restore fails the trial. Made certain here: killed while the snapshot
    names a checkpoint that has a newer one, which the test then deletes as num_to_keep would."""
    from study.runner import NUM_TO_KEEP

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"TUNE_GLOBAL_CHECKPOINT_S": "3600"}  # snapshots only the forced ones (every NUM_TO_KEEP checkpoints)
    epochs = NUM_TO_KEEP + 4
    args = sweep_args(tmp_path, slow_tree, uri, "gone", 1, write_space(tmp_path, epochs=epochs), "--max-concurrent", 1)
    experiment = tmp_path / "ray" / "gone"
    proc = start(args, env=env)

    def index(folder) -> int:
        return int(str(folder).rsplit("_", 1)[1])

    def named_with_a_newer():
        try:
            ((trial, named),) = snapshot_checkpoints(experiment).items()
        except (OSError, ValueError):  # no snapshot yet, or one being written
            return None
        newest = max(map(index, experiment.glob(f"trial_{trial}/checkpoint_*")), default=-1)
        return (trial, named) if index(named) < newest < epochs - 1 else None

    kill_when(proc, named_with_a_newer, "the snapshot names a checkpoint with a newer one beside it")
    found = named_with_a_newer()
    assert found is not None, "killed mid-trial, before its last checkpoint"
    trial, named = found
    import shutil

    shutil.rmtree(named)

    resumed = run_birdplane(*args, "--resume", "--json", env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (summary,) = last_json(resumed.stdout)["trials"]
    assert summary["epochs"] == epochs and summary["error"] is None, (summary, resumed.stderr[-3000:])
    assert "its snapshot's checkpoint" in resumed.stderr and "was deleted" in resumed.stderr
    client, (run,) = children(uri, "gone")
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
    assert sorted(steps) == list(range(1, epochs + 1)), f"each epoch logged once: {steps}"
    # Resumed from the newest checkpoint, not from scratch nor from the one before the deleted one:
    # no epoch was reported twice to Ray (its result.json, one line a report, both drivers').
    reported = [json.loads(line)["epoch"] for line in (experiment / f"trial_{trial}" / "result.json").open()]
    assert len(reported) == len(set(reported)) and max(reported) == epochs, reported
    empty = [p.name for p in experiment.glob("trial_*/checkpoint_*") if not any(p.iterdir())]
    assert empty == [], "the placeholder went with the trial's old checkpoints"
