"""Closing a run logs every epoch MLflow lacks, gaps included (issue 23): a trial resumed from a
checkpoint newer than the last epoch MLflow got (its stale snapshot named a deleted checkpoint)
skips the epochs in between, which the checkpoint's history still holds."""

from study import records


def epoch(e: int) -> dict:
    return {"epoch": e, "val_acc": 0.5 + e / 100, "val_loss": 1.0 / e, "train_loss": 1.0 / e, "train_acc": 0.6}


def close(client, run_id, history, after_step) -> int:
    return records.write_finished_run(
        client,
        run_id,
        history=history,
        after_step=after_step,
        param_count=10,
        outcome="completed",
        resolved_config={"train": {}},
        model=None,
    )


def test_closing_a_run_fills_the_epochs_it_lacks_and_logs_none_twice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    client = records.open_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("close")).info.run_id
    # Epochs 1-4 from the first driver, 6-8 after the resume: 5 reached only the checkpoint.
    records.log_epochs(client, run_id, [epoch(e) for e in (1, 2, 3, 4)], -1)
    last = records.log_epochs(client, run_id, [epoch(e) for e in (6, 7, 8)], 4)
    assert last == 8
    assert close(client, run_id, [epoch(e) for e in range(1, 9)], after_step=8) == 8
    for key in ("val_acc", "val_loss", "train_loss"):
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(1, 9)), f"{key}: {steps}"
    (five,) = [m for m in client.get_metric_history(run_id, "val_acc") if m.step == 5]
    assert five.value == epoch(5)["val_acc"]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_closing_a_run_logs_the_epochs_after_the_last_logged_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    client = records.open_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("close")).info.run_id
    records.log_epochs(client, run_id, [epoch(e) for e in (1, 2)], -1)
    assert close(client, run_id, [epoch(e) for e in range(1, 5)], after_step=2) == 4
    assert sorted(m.step for m in client.get_metric_history(run_id, "val_acc")) == [1, 2, 3, 4]
