"""Load: a sweep of 200 tiny trials against a real mlflow server, with the driver's memory watched.

Opt-in (about 2 min here): `python3 -m pytest --run-load -m load` (or BIRDPLANE_LOAD=1).
"""

import subprocess
import sys
import threading
import time

import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import make_image_tree

pytestmark = [pytest.mark.load, pytest.mark.timeout(900)]

TRIALS = 200


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_200_tiny_trials_all_reach_mlflow_and_the_driver_memory_stays_bounded(mlflow_server, tmp_path):
    tree = make_image_tree(tmp_path / "images", per_class=20, test_per_class=2, classes=("airplane", "bird"))
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "depth": 1,
                "width": {"low": 8, "high": 32},
                "batch_size": 16,
                "lr": {"low": 1e-3, "high": 1e-1, "log": True},
                "epochs": 1,
            }
        )
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "study.cli",
            "sweep",
            "--num-samples",
            str(TRIALS),
            "--space",
            str(space),
            "--data-root",
            str(tree),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--name",
            "load",
            "--storage-path",
            str(tmp_path / "ray"),
            "--tracking-uri",
            mlflow_server.url,
            "--scheduler",
            "none",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples: list[tuple[float, float]] = []

    def watch():
        while proc.poll() is None:
            try:
                samples.append((time.monotonic(), rss_mb(proc.pid)))
            except OSError:
                break
            time.sleep(0.5)

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert proc.wait(timeout=800) == 0
    watcher.join()
    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name("load")
    runs = [
        r
        for r in client.search_runs([exp.experiment_id], max_results=1000)
        if r.data.tags.get("birdplane.role") == "trial"
    ]
    assert len(runs) == TRIALS and len({r.data.tags["ray_trial_id"] for r in runs}) == TRIALS
    for r in runs:
        assert r.info.status == "FINISHED"
        assert {"train_loss", "train_acc", "val_loss", "val_acc", "gap", "param_count", "best_val_acc"} <= set(
            r.data.metrics
        )
    peak = max(m for _, m in samples)
    half = len(samples) // 2
    first_half_peak = max(m for _, m in samples[:half])
    print(
        f"\ndriver RSS: peak {peak:.0f} MiB; peak over the first half {first_half_peak:.0f} MiB; "
        f"{len(samples)} samples over {samples[-1][0] - samples[0][0]:.0f} s"
    )
    assert peak < 2048, f"driver peak RSS {peak:.0f} MiB"
    assert peak - first_half_peak < 256, "no steady growth through the second half"
