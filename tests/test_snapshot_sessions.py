"""A resumed study killed while Ray rewrote its new session's snapshot (issue 23): Ray writes
experiment_state-<session>.json in place, so a SIGKILL mid-write truncates it, and birdplane's copy
of the snapshot may still be of the session before. The older session's snapshot is restored."""

import json
import pickle

import pytest

from study.disk import BACKUP, intact_snapshot, unrecoverable
from study.errors import UsageError

OLD, NEW = "2026-01-01_00-00-00", "2026-01-01_00-10-00"


def study(tmp_path, truncate_old: bool = False):
    folder = tmp_path / "study"
    folder.mkdir()
    for session in (OLD, NEW):
        (folder / f"experiment_state-{session}.json").write_text(json.dumps({"trial_data": [], "session": session}))
        (folder / f"basic-variant-state-{session}.json").write_bytes(pickle.dumps({"session": session}))
    (folder / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    (folder / BACKUP).mkdir()
    for name in (f"experiment_state-{OLD}.json", "tuner.pkl"):  # the copy birdplane kept: the session before
        (folder / BACKUP / name).write_bytes((folder / name).read_bytes())
    blob = (folder / f"experiment_state-{NEW}.json").read_bytes()
    (folder / f"experiment_state-{NEW}.json").write_bytes(blob[: len(blob) // 2])  # the SIGKILL mid-write
    if truncate_old:
        for path in (folder / f"experiment_state-{OLD}.json", folder / BACKUP / f"experiment_state-{OLD}.json"):
            path.write_bytes(b"{")
    return folder


def test_a_new_session_s_truncated_snapshot_is_set_aside_whole_for_the_session_before(tmp_path):
    folder = study(tmp_path)
    assert unrecoverable(str(folder), "s") is None, "the older session's snapshot reads"
    moved = intact_snapshot(str(folder), "s")
    assert sorted(moved) == [f"basic-variant-state-{NEW}.json", f"experiment_state-{NEW}.json"]
    assert sorted(p.name for p in folder.glob("experiment_state-*.json")) == [f"experiment_state-{OLD}.json"]
    assert sorted(p.name for p in folder.glob("basic-variant-state-*")) == [
        f"basic-variant-state-{OLD}.json",
        f"basic-variant-state-{NEW}.json.corrupt",
    ], "the searcher's files of the set-aside session go with it"
    assert json.loads((folder / f"experiment_state-{OLD}.json").read_text())["session"] == OLD
    assert intact_snapshot(str(folder), "s") == [], "once is enough"


def test_when_no_session_s_snapshot_reads_it_says_so_in_one_line(tmp_path):
    folder = study(tmp_path, truncate_old=True)
    problem = unrecoverable(str(folder), "s")
    assert problem is not None and f"experiment_state-{NEW}.json" in problem and "\n" not in problem
    with pytest.raises(UsageError, match="truncated or missing"):
        intact_snapshot(str(folder), "s")
    assert (folder / f"experiment_state-{NEW}.json").exists(), "nothing moved when nothing can be restored"


def test_a_truncated_snapshot_is_restored_with_its_copy_s_searcher_state_not_the_newer_one_in_place(tmp_path):
    """The SIGKILL landed in Ray's upload of a snapshot after the searcher's new state (it had made
    the grid's next trial) but mid-way through the experiment state: the copy's experiment state
    alone beside that searcher state left the resumed study waiting for a trial Ray never knew of
    (the population resume test's 300-s timeout). The copy's searcher state comes back with it."""
    folder = tmp_path / "study"
    (folder / BACKUP).mkdir(parents=True)
    state, searcher = f"experiment_state-{NEW}.json", f"basic-variant-state-{NEW}.json"
    (folder / BACKUP / state).write_text(json.dumps({"trial_data": ["t0"]}))  # the copy: one snapshot's pair
    (folder / BACKUP / searcher).write_bytes(pickle.dumps({"live": {"t0"}}))
    (folder / state).write_bytes(b"")  # truncated by the SIGKILL
    (folder / searcher).write_bytes(pickle.dumps({"live": {"t1"}}))  # the next snapshot's: it made trial t1
    (folder / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    moved = intact_snapshot(str(folder), "s")
    assert pickle.loads((folder / searcher).read_bytes()) == {"live": {"t0"}}, "the copy's snapshot's searcher state"
    assert sorted(moved) == [searcher, state]
    assert json.loads((folder / state).read_text()) == {"trial_data": ["t0"]}
    assert pickle.loads((folder / f"{searcher}.unpaired").read_bytes()) == {"live": {"t1"}}, "set aside, not lost"
    assert intact_snapshot(str(folder), "s") == [], "once is enough"


def test_the_copy_of_ray_s_snapshot_is_taken_from_its_staging_folder_not_a_half_uploaded_one(tmp_path):
    """Ray writes its snapshot to the driver's staging folder in one go before the callbacks'
    on_step_end, then uploads it file by file: the storage folder may hold one snapshot's
    experiment state beside another's searcher state; the copy is one snapshot's."""
    from types import SimpleNamespace

    from study.disk import DiskGuard

    storage, staging = tmp_path / "ray" / "s", tmp_path / "staging"
    storage.mkdir(parents=True), staging.mkdir()
    state, searcher = f"experiment_state-{NEW}.json", f"basic-variant-state-{NEW}.json"
    (staging / state).write_text(json.dumps({"trial_data": ["t0", "t1"]}))
    (staging / searcher).write_bytes(pickle.dumps({"live": {"t1"}}))
    (storage / state).write_text(json.dumps({"trial_data": ["t0"]}))  # the upload not there yet
    (storage / searcher).write_bytes(pickle.dumps({"live": {"t1"}}))
    (storage / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    trial = SimpleNamespace(storage=SimpleNamespace(experiment_driver_staging_path=str(staging)))
    DiskGuard(str(tmp_path / "ray"), str(storage)).on_step_end(1, [trial])
    assert json.loads((storage / BACKUP / state).read_text()) == {"trial_data": ["t0", "t1"]}
    assert pickle.loads((storage / BACKUP / searcher).read_bytes()) == {"live": {"t1"}}
    assert (storage / BACKUP / "tuner.pkl").exists()
    DiskGuard(str(tmp_path / "ray"), str(storage)).on_step_end(1, [])  # no trial says: the storage folder's
    assert json.loads((storage / BACKUP / state).read_text()) == {"trial_data": ["t0"]}


def test_an_upload_cut_short_between_the_searcher_s_state_and_the_experiment_state_resumes_from_the_copy(tmp_path):
    """Both files read, but the searcher's is the newer snapshot's: the copy (taken after Ray's
    save, from its staging folder) is put in place whole."""
    folder = tmp_path / "study"
    (folder / BACKUP).mkdir(parents=True)
    state, searcher = f"experiment_state-{NEW}.json", f"basic-variant-state-{NEW}.json"
    (folder / BACKUP / state).write_text(json.dumps({"trial_data": ["t0", "t1"]}))
    (folder / BACKUP / searcher).write_bytes(pickle.dumps({"live": {"t1"}}))
    (folder / state).write_text(json.dumps({"trial_data": ["t0"]}))  # the snapshot before: not uploaded yet
    (folder / searcher).write_bytes(pickle.dumps({"live": {"t1"}}))  # uploaded
    (folder / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    assert intact_snapshot(str(folder), "s") == [state]
    assert json.loads((folder / state).read_text()) == {"trial_data": ["t0", "t1"]}, "the copy's whole snapshot"
    assert json.loads((folder / f"{state}.unpaired").read_text()) == {"trial_data": ["t0"]}
    assert intact_snapshot(str(folder), "s") == [], "once is enough"


def test_an_upload_cut_short_in_a_resumed_study_pairs_the_newest_session_not_an_older_one(tmp_path):
    """A resumed study (an older session's snapshot beside) killed mid-upload: the newest session's
    experiment state comes from the copy, the older session's files stay as they are."""
    folder = tmp_path / "study"
    (folder / BACKUP).mkdir(parents=True)
    old_state = f"experiment_state-{OLD}.json"
    state, searcher = f"experiment_state-{NEW}.json", f"basic-variant-state-{NEW}.json"
    (folder / old_state).write_text(json.dumps({"trial_data": ["t0"]}))
    (folder / BACKUP / state).write_text(json.dumps({"trial_data": ["t0", "t1"]}))
    (folder / BACKUP / searcher).write_bytes(pickle.dumps({"live": {"t1"}}))
    (folder / state).write_text(json.dumps({"trial_data": ["t0"]}))
    (folder / searcher).write_bytes(pickle.dumps({"live": {"t1"}}))
    (folder / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    assert intact_snapshot(str(folder), "s") == [state]
    assert json.loads((folder / state).read_text()) == {"trial_data": ["t0", "t1"]}
    assert json.loads((folder / old_state).read_text()) == {"trial_data": ["t0"]}, "the older session untouched"


def test_an_upload_cut_before_the_searcher_s_state_arrived_restores_it_from_the_copy(tmp_path):
    """The storage folder holds the experiment state only: the copy's searcher state of that
    snapshot is put beside it (Ray would otherwise restore a searcher of another snapshot, or none)."""
    folder = tmp_path / "study"
    (folder / BACKUP).mkdir(parents=True)
    state, searcher = f"experiment_state-{NEW}.json", f"basic-variant-state-{NEW}.json"
    (folder / BACKUP / state).write_text(json.dumps({"trial_data": ["t0"]}))
    (folder / BACKUP / searcher).write_bytes(pickle.dumps({"live": {"t0"}}))
    (folder / state).write_text(json.dumps({"trial_data": ["t0"]}))
    (folder / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    assert intact_snapshot(str(folder), "s") == [searcher]
    assert pickle.loads((folder / searcher).read_bytes()) == {"live": {"t0"}}
