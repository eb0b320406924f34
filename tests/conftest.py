"""Shared fixtures: tiny synthetic image trees (no real data needed), isolated caches."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--run-load", action="store_true", default=False,
                     help="also run the tests marked load (200-trial load test); BIRDPLANE_LOAD=1 does the same")


def pytest_collection_modifyitems(config, items):
    """The load test is opt-in, independently of -m, so `-m "not slow"` stays quick."""
    if config.getoption("--run-load") or os.environ.get("BIRDPLANE_LOAD") == "1":
        return
    skip = pytest.mark.skip(reason="load test: opt in with --run-load or BIRDPLANE_LOAD=1")
    for item in items:
        if "load" in item.keywords:
            item.add_marker(skip)
REAL_DATA = Path(os.environ.get("BIRDPLANE_DATA") or REPO.parent / "shared" / "data" / "cifar10")

# Each synthetic class has its own mean colour, so a small net can learn it but not perfectly.
CLASS_COLOURS = {"airplane": (170, 190, 220), "bird": (120, 110, 80), "cat": (150, 90, 90)}


def make_image_tree(root: Path, per_class: dict[str, int] | int = 40, test_per_class: int = 16,
                    classes=("airplane", "bird", "cat"), seed: int = 0, jitter: float = 0) -> Path:
    """ROOT/{train,test}/<class>/*.png of 32x32 noisy images, one base colour per class.

    ``jitter`` shifts each image's colour by a random offset (its standard deviation): 0 is easy
    to learn; 80 makes the classes overlap, so configurations reach different accuracies.
    """
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for name in classes:
            n = count[name] if isinstance(count, dict) else count
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            base = np.array(CLASS_COLOURS[name], dtype=np.float64)
            for i in range(n):
                offset = rng.normal(0, jitter, size=3) if jitter else 0.0
                pixels = base + offset + rng.normal(0, 60, size=(32, 32, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{name}_{i:04d}.png")
    return root


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("BIRDPLANE_CACHE", str(path))
    return path


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory) -> Path:
    return make_image_tree(tmp_path_factory.mktemp("images"))


@pytest.fixture()
def tiny_data(image_tree, tmp_path):
    from trainables.config import DataConfig
    from trainables.data import load_study_data

    return load_study_data(DataConfig(root=str(image_tree), cache_dir=str(tmp_path / "cache")))


@pytest.fixture()
def real_data_root() -> Path:
    if not (REAL_DATA / "train" / "airplane").is_dir():
        pytest.skip(f"real CIFAR-10 tree not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 for the whole session (it takes ~10 s to start)."""
    from tests.servers import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


def run_birdplane(*args, env=None, timeout=600, cwd=None):
    """The installed command line, in a subprocess (as a user runs it)."""
    import subprocess
    import sys

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "study.cli", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd)


def last_json(stdout: str) -> dict:
    """The summary object: the last stdout line that is a JSON object (Ray may log after it)."""
    import json

    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON summary in: {stdout[-2000:]}")


SMOKE_SPACE = {"depth": {"low": 1, "high": 2}, "width": {"low": 16, "high": 128, "log": True},
               "batch_size": {"choices": [16, 32]}, "lr": {"low": 1e-3, "high": 1e-1, "log": True},
               "loss": {"choices": ["nll", "ce", "mse", "bce"]}, "epochs": 2}


@pytest.fixture(scope="session")
def smoke_sweep(mlflow_server, tmp_path_factory):
    """One real smoke sweep (5 trials, all at the full 2-epoch budget) logged to the session's mlflow
    server, shared by tests."""
    import yaml

    folder = tmp_path_factory.mktemp("smoke-sweep")
    # Noisy enough that trials reach different accuracies (the report's importances need variation).
    tree = make_image_tree(folder / "images", per_class=40, test_per_class=10, classes=("airplane", "bird"), jitter=80)
    (folder / "space.yaml").write_text(yaml.safe_dump(SMOKE_SPACE))
    proc = run_birdplane("sweep", "--smoke", "--num-samples", 5, "--scheduler", "none", "--space", folder / "space.yaml",
                         "--data-root", tree, "--cache-dir", folder / "cache", "--name", "smoke",
                         "--storage-path", folder / "ray", "--tracking-uri", mlflow_server.url, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"summary": last_json(proc.stdout), "uri": mlflow_server.url, "name": "smoke", "folder": folder,
            "data_root": tree}
