"""Two starts of one study that both found no parent run in MLflow and created one each: the
earlier parent (by start time, then run id) is the study's, and only the later start deletes its
own and stops (study/tracking.py, MlflowTrialLogger._settle_twin_parents). A real sqlite store, no
Ray: each start's parent is created with the tags ``open_parent`` gives it, at a chosen start time."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from analysis.record import ROLE_CAPACITY, ROLE_SWEEP, TAG_ROLE, TAG_STUDY
from study import records as store
from study.errors import UsageError
from study.tracking import MlflowTrialLogger

START = 1_700_000_000_000  # ms


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    """One store for the module (a new sqlite store costs seconds of migrations); each test its own study."""
    return f"sqlite:///{tmp_path_factory.mktemp('twin-parents') / 'mlflow.db'}"


def start(uri: str, study: str, start_time: int, role: str = ROLE_SWEEP) -> MlflowTrialLogger:
    """One start of ``study`` just after it created its parent run (``open_parent`` found none)."""
    logger = MlflowTrialLogger(uri, "twins", study, {}, {}, {}, key=f"{study}-{start_time}", role=role)
    logger._client = store.open_client(uri)
    logger._experiment_id = store.ensure_experiment(logger._client, "twins")
    key = {TAG_STUDY: study, TAG_ROLE: role}
    run = logger._client.create_run(logger._experiment_id, start_time=start_time, tags=key, run_name=study)
    logger.parent_run_id = run.info.run_id
    return logger


def settle(logger: MlflowTrialLogger) -> None:
    logger._settle_twin_parents({TAG_STUDY: logger.study_name, TAG_ROLE: logger.role})


def active_parents(uri: str, study: str) -> list[str]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("twins")
    return [r.info.run_id for r in client.search_runs([exp.experiment_id], f"tags.`{TAG_STUDY}` = '{study}'")]


def test_the_later_of_two_starts_deletes_its_own_parent_and_stops_naming_the_earlier_one(store_uri):
    first, later = start(store_uri, "twin", START), start(store_uri, "twin", START + 500)
    settle(first)  # the earlier start goes on: nothing is deleted
    assert sorted(active_parents(store_uri, "twin")) == sorted([first.parent_run_id, later.parent_run_id])
    with pytest.raises(UsageError) as refused:
        settle(later)
    assert str(refused.value) == (
        f"study 'twin' was started twice at once: MLflow parent run {first.parent_run_id} is the other start's; "
        "pass another --name"
    )
    assert active_parents(store_uri, "twin") == [first.parent_run_id]
    client = MlflowClient(store_uri)
    assert client.get_run(later.parent_run_id).info.lifecycle_stage == "deleted"
    assert client.get_run(first.parent_run_id).info.status == "RUNNING"


def test_twins_started_in_the_same_millisecond_agree_on_one_parent_by_run_id(store_uri):
    a, b = start(store_uri, "tie", START), start(store_uri, "tie", START)
    winner, loser = sorted((a, b), key=lambda s: s.parent_run_id)
    settle(winner)
    with pytest.raises(UsageError, match=winner.parent_run_id):
        settle(loser)
    assert active_parents(store_uri, "tie") == [winner.parent_run_id]


def test_an_earlier_parent_of_another_study_or_kind_does_not_stop_a_start(store_uri):
    start(store_uri, "other", START)  # another study in the same experiment
    start(store_uri, "mine", START, role=ROLE_CAPACITY)  # a capacity study of the same name
    mine = start(store_uri, "mine", START + 500)
    settle(mine)
    assert mine.parent_run_id in active_parents(store_uri, "mine")
