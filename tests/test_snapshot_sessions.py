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
