"""A sweep trial of several seeds as the live logger writes it, event by event, into a real MLflow
store: the trial's run holds the seeds' mean per epoch as it arrives (not only when the trial
closes), and each seed's run nests under it, even for a trial whose start this driver never saw
(a trial a resumed driver only closes)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from analysis.record import ROLE_TRIAL, ROLE_TRIAL_SEED, TAG_MEMBER, TAG_OUTCOME, TAG_PARENT, TAG_ROLE, TAG_TRIAL
from study.tracking import MlflowTrialLogger
from trainables.config import TrainConfig
from trainables.seeds import SEED_SD, mean_record

TRIAL = "abc12_00000"


@pytest.fixture()
def logger(tmp_path):
    log = MlflowTrialLogger(f"sqlite:///{tmp_path / 'mlflow.db'}", "seeded", "seeded", {}, {}, {}, key=str(tmp_path))
    log.open_parent()
    return log


def seeded_trial() -> SimpleNamespace:
    config = {"train": TrainConfig(hidden_sizes=(8,), epochs=3).to_dict(), "seeds": [10, 11]}
    return SimpleNamespace(trial_id=TRIAL, config=config, checkpoint=None, last_result={})


def member(epoch: int, val_acc: float) -> dict:
    return {"epoch": epoch, "val_acc": val_acc, "train_acc": 0.9, "train_loss": 0.3, "val_loss": 0.4}


def result(epoch: int, accs: list[float]) -> dict:
    members = {str(k): member(epoch, a) for k, a in enumerate(accs)}
    return {**mean_record(list(members.values())), "members": members}


def runs_by_role(logger) -> dict[str, list]:
    client = MlflowClient(logger.tracking_uri)
    runs = client.search_runs([logger.experiment_id], f"tags.`{TAG_TRIAL}` = '{TRIAL}'")
    out: dict[str, list] = {}
    for run in runs:
        out.setdefault(run.data.tags[TAG_ROLE], []).append(run)
    return out


def test_the_trial_s_run_logs_its_seeds_mean_each_epoch_as_it_arrives(logger):
    trial = seeded_trial()
    logger.on_trial_start(0, [], trial)
    logger.on_trial_result(0, [], trial, result(1, [0.60, 0.70]))
    logger.on_trial_result(0, [], trial, result(2, [0.64, 0.80]))
    assert logger.finish() == 0  # delivered, and the trial never closed
    client = MlflowClient(logger.tracking_uri)
    roles = runs_by_role(logger)
    (run,) = roles[ROLE_TRIAL]
    history = sorted(client.get_metric_history(run.info.run_id, "val_acc"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(1, pytest.approx(0.65)), (2, pytest.approx(0.72))]
    sd = [m.value for m in sorted(client.get_metric_history(run.info.run_id, SEED_SD), key=lambda m: m.step)]
    assert sd == pytest.approx([0.0707107, 0.1131371], abs=1e-6)
    seeds = sorted(roles[ROLE_TRIAL_SEED], key=lambda r: r.data.tags[TAG_MEMBER])
    assert [r.data.tags[TAG_PARENT] for r in seeds] == [run.info.run_id] * 2
    assert [r.data.params["seed"] for r in seeds] == ["10", "11"]
    got = [[m.value for m in client.get_metric_history(r.info.run_id, "val_acc")] for r in seeds]
    assert sorted(got) == [pytest.approx([0.60, 0.64]), pytest.approx([0.70, 0.80])]


def test_a_trial_this_driver_only_closes_still_nests_its_seeds_runs_under_its_own(logger):
    logger.on_trial_complete(0, [], seeded_trial())  # no on_trial_start: a resumed driver's
    assert logger.finish() == 0
    roles = runs_by_role(logger)
    assert {role: len(runs) for role, runs in roles.items()} == {ROLE_TRIAL: 1, ROLE_TRIAL_SEED: 2}
    (run,), seeds = roles[ROLE_TRIAL], roles[ROLE_TRIAL_SEED]
    assert [r.data.tags[TAG_PARENT] for r in seeds] == [run.info.run_id] * 2


@pytest.mark.parametrize("finished", [False, True])
def test_an_orphaned_trial_of_seeds_takes_its_seeds_runs_with_it(logger, finished):
    from study.sync import retire_orphans

    trial = seeded_trial()
    logger.on_trial_start(0, [], trial)
    logger.on_trial_result(0, [], trial, result(1, [0.60, 0.70]))
    if finished:
        logger.on_trial_complete(0, [], trial)
    assert logger.finish() == 0
    client = MlflowClient(logger.tracking_uri)
    retired, kept = retire_orphans(client, logger, known=set())  # Ray's saved state knows no trial
    assert (len(retired), len(kept)) == ((0, 1) if finished else (1, 0))
    runs = client.search_runs([logger.experiment_id], f"tags.`{TAG_TRIAL}` = '{TRIAL}'", run_view_type=3)
    assert len(runs) == 3
    if finished:  # kept for anyone to look at, out of the analysis's reach
        assert {r.data.tags[TAG_ROLE] for r in runs} == {"orphan"}
        assert {r.info.lifecycle_stage for r in runs} == {"active"}
    else:  # retired: ended and soft-deleted, the trial's and its seeds'
        assert {r.info.lifecycle_stage for r in runs} == {"deleted"}
        assert {r.info.status for r in runs} == {"KILLED"}
        assert {r.data.tags[TAG_OUTCOME] for r in runs} == {"orphaned"}
