"""Helpers that exist once: the size label, the net a config describes, the git checkout, the
default storage path."""

from __future__ import annotations

import os

import pandas as pd

from analysis.capacity import per_size
from analysis.record import readable_name
from analysis.report import config_label
from study import checkout, manifest, records
from trainables.bundle import build_model_for, load_bundle, save_bundle
from trainables.config import TrainConfig
from trainables.model import build_model, param_count, size_label


def test_every_reader_shows_the_hidden_sizes_as_one_label():
    assert size_label((256, 256)) == size_label([256, 256]) == "[256,256]"
    assert size_label("[512]") == "[512]"  # already a label: shown as it is
    train = {
        "hidden_sizes": (256, 256),
        "activation": "relu",
        "loss": "ce",
        "optimizer": "adamw",
        "lr": 1e-3,
        "batch_size": 64,
    }
    assert readable_name(train).startswith("[256,256] ")
    assert config_label(train).startswith("[256,256] ")
    trials = pd.DataFrame(
        [
            {
                "run_id": "a",
                "hidden_sizes": (256, 256),
                "param_count": 1,
                "val_acc": 0.7,
                "best_val_acc": 0.7,
                "train_acc": 0.8,
                "gap": 0.1,
                "epochs_run": 4,
            }
        ]
    )
    assert list(per_size(trials)["hidden_sizes"]) == ["[256,256]"]


def test_a_saved_bundle_loads_into_the_net_its_config_describes(tmp_path):
    config = TrainConfig(hidden_sizes=(8, 4), activation="relu", loss="bce", dropout=0.1)
    model = build_model_for(config, n_classes=2)
    assert param_count(model) == param_count(build_model(3 * 32 * 32, (8, 4), 1, "relu", 0.1))
    save_bundle(
        tmp_path / "m.pt",
        model.state_dict(),
        config.to_dict(),
        {"classes": ["airplane", "bird"], "mean": [0.5] * 3, "std": [0.2] * 3},
    )
    assert str(load_bundle(tmp_path / "m.pt").model) == str(model)


def test_the_git_commit_is_this_checkouts_or_unknown(tmp_path, monkeypatch):
    found = checkout.checkout()
    assert found.commit == checkout.git("rev-parse", "HEAD") and len(found.commit) == 40
    assert checkout.git_commit() == found.commit
    assert records.source_tags("birdplane sweep")["mlflow.source.git.commit"] == found.commit

    monkeypatch.setattr(checkout, "REPO", tmp_path)  # not a git checkout (an unpacked copy)
    checkout.checkout.cache_clear()
    try:
        assert checkout.checkout() == checkout.Checkout() and checkout.git_commit() == "unknown"
        assert "mlflow.source.git.commit" not in records.source_tags("birdplane sweep")
    finally:
        checkout.checkout.cache_clear()


def test_studies_live_under_ray_results_unless_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert manifest.storage_root(None) == str(tmp_path / "ray_results")
    assert manifest.experiment_path(None, "s") == str(tmp_path / "ray_results" / "s")
    monkeypatch.chdir(tmp_path)
    assert manifest.storage_root("runs") == os.path.join(str(tmp_path), "runs")
    assert manifest.storage_root("s3://bucket/x") == "s3://bucket/x"
    assert manifest.experiment_path("s3://bucket/x/", "s") == "s3://bucket/x/s"
