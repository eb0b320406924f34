"""What `export --out` and `report --out` write: both files (every file) or none, refused in one line
when the place is a folder, missing or read-only, and with the user's umask's mode."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from analysis import record
from analysis.export import write_tables
from analysis.report import write_files
from study.cli import main


@contextmanager
def mounted(folder: Path, options: str):
    """A real tmpfs at ``folder`` (read-only or tiny): as root, where chmod does not stop writes."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (and chmod would do for a non-root user)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@contextmanager
def read_only(folder: Path):
    """A folder nobody may write in: chmod for a normal user, a read-only tmpfs for root."""
    if os.geteuid() != 0:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    with mounted(folder, "ro,size=1m") as path:
        yield path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite store holding one small finished sweep, as the report and export read it."""
    folder = tmp_path_factory.mktemp("outputs-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("small")
    parent = client.create_run(experiment_id, tags={record.TAG_ROLE: record.ROLE_SWEEP, record.TAG_STUDY: "small"})
    client.log_dict(
        parent.info.run_id, {"depth": 1, "width": {"low": 8, "high": 64, "log": True}, "epochs": 2}, "search_space.json"
    )
    for i in range(3):
        run = client.create_run(
            experiment_id,
            tags={record.TAG_ROLE: record.ROLE_TRIAL, record.TAG_TRIAL: f"t{i}", record.TAG_PARENT: parent.info.run_id},
        )
        for epoch in (1, 2):
            metrics = {"val_acc": 0.6 + 0.05 * i, "train_acc": 0.7, "val_loss": 0.5, "train_loss": 0.4, "gap": 0.1}
            for key, value in metrics.items():
                client.log_metric(run.info.run_id, key, value, step=epoch)
        client.log_metric(run.info.run_id, "epochs_run", 2, step=2)
        client.log_metric(run.info.run_id, "param_count", 1000 * (i + 1), step=0)
        client.log_param(run.info.run_id, "hidden_sizes", str(8 * (i + 1)))
        client.log_param(run.info.run_id, "loss", "nll")
        client.set_terminated(run.info.run_id, status="FINISHED")
    return uri


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("birdplane: error: "), captured.err
    return lines[0]


def export(uri: str, out: Path) -> int:
    return main(["export", "--experiment", "small", "--tracking-uri", uri, "--out", str(out)])


def report(uri: str, out: Path) -> int:
    return main(["report", "--experiment", "small", "--tracking-uri", uri, "--out", str(out)])


def test_export_writes_both_tables_with_the_user_s_umask(store, tmp_path):
    out = tmp_path / "t.csv"
    old = os.umask(0o027)
    try:
        assert export(store, out) == 0
    finally:
        os.umask(old)
    curves = pd.read_csv(tmp_path / "t.curves.csv")
    assert len(pd.read_csv(out)) == 3 and len(curves) == 6
    assert "val_acc_sd" not in curves, "one seed a trial: no column of seeds' sd"
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {oct(0o640)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.curves.csv"], "no temporary file left"


EXPORT_REFUSALS = {
    "out-is-a-folder": ("t.csv", "is a folder, not a file"),
    "curves-is-a-folder": ("t.curves.csv", "is a folder, not a file"),
    "folder-missing": (None, "does not exist"),
}


@pytest.mark.parametrize("case", list(EXPORT_REFUSALS))
def test_export_refuses_a_folder_or_a_missing_place_in_one_line_writing_nothing(case, store, tmp_path, capsys):
    folder_name, needle = EXPORT_REFUSALS[case]
    if folder_name:
        (tmp_path / folder_name).mkdir()
    out = tmp_path / ("t.csv" if folder_name else "no/such/t.csv")
    before = sorted(tmp_path.rglob("*"))
    assert export(store, out) == 2
    assert needle in one_error_line(capsys)
    assert sorted(tmp_path.rglob("*")) == before, "nothing written, no temporary file left"


def test_export_refuses_a_read_only_place_in_one_line(store, tmp_path, capsys):
    with read_only(tmp_path / "ro") as folder:
        assert export(store, folder / "t.csv") == 2
        assert "cannot write in" in one_error_line(capsys)
        assert list(folder.iterdir()) == []


def test_export_on_a_full_disk_leaves_neither_table_nor_a_temporary_file(tmp_path):
    # The trials table fits on the 64 KiB filesystem, the curves do not: neither may stay.
    trials = pd.DataFrame({"run_id": ["a", "b"], "val_acc": [0.5, 0.6]})
    curves = pd.DataFrame({"run_id": ["a"] * 20_000, "epoch": range(20_000), "val_acc": 0.5})
    with mounted(tmp_path / "tiny", "size=64k") as folder:
        with pytest.raises(OSError) as err:
            write_tables(trials, curves, folder / "t.csv")
        assert err.value.errno == 28  # ENOSPC, from the real filesystem
        assert list(folder.iterdir()) == []


def test_report_writes_every_file_with_the_user_s_umask(store, tmp_path):
    out = tmp_path / "report"
    old = os.umask(0o077)
    try:
        assert report(store, out) == 0
    finally:
        os.umask(old)
    names = sorted(p.name for p in out.iterdir())
    assert "report.html" in names and "capacity_table.csv" in names and not [n for n in names if n.startswith(".")]
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {oct(0o600)}


REPORT_REFUSALS = {"out-is-a-file": "a file is there, not a folder", "parent-missing": "does not exist"}


@pytest.mark.parametrize("case", list(REPORT_REFUSALS))
def test_report_refuses_a_file_or_a_missing_place_in_one_line_writing_nothing(case, store, tmp_path, capsys):
    if case == "out-is-a-file":
        out = tmp_path / "report"
        out.write_text("mine")
    else:
        out = tmp_path / "no" / "such" / "report"
    before = sorted(tmp_path.rglob("*"))
    assert report(store, out) == 2
    assert REPORT_REFUSALS[case] in one_error_line(capsys)
    assert sorted(tmp_path.rglob("*")) == before
    if case == "out-is-a-file":
        assert out.read_text() == "mine"


def test_report_refuses_a_read_only_place_in_one_line(store, tmp_path, capsys):
    with read_only(tmp_path / "ro") as folder:
        assert report(store, folder / "report") == 2
        assert "cannot write in" in one_error_line(capsys)
        assert list(folder.iterdir()) == []


def test_report_files_are_all_written_or_none_and_the_folder_it_made_is_removed(tmp_path):
    contents = {"small.csv": b"a,b\n1,2\n", "big.png": b"\0" * 200_000}
    with mounted(tmp_path / "tiny", "size=64k") as folder:
        with pytest.raises(OSError):
            write_files(folder / "report", contents)
        assert list(folder.iterdir()) == [], "neither file, no temporary file, no empty folder"
        existing = folder / "kept"
        existing.mkdir()
        (existing / "small.csv").write_bytes(b"old\n")
        with pytest.raises(OSError):
            write_files(existing, contents)
        assert [p.name for p in existing.iterdir()] == ["small.csv"]
        assert (existing / "small.csv").read_bytes() == b"old\n", "the old file is kept whole"
