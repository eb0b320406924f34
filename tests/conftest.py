"""Shared fixtures: tiny synthetic image trees (no real data needed), isolated caches."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption(
        "--run-load",
        action="store_true",
        default=False,
        help="also run the tests marked load (200-trial load test); BIRDPLANE_LOAD=1 does the same",
    )
    parser.addoption(
        "--run-long",
        action="store_true",
        default=False,
        help="also run the tests marked long (end-to-end runs past the default suite's budget); BIRDPLANE_LONG=1",
    )


# Tests that share a session fixture go to one xdist worker (`-n auto --dist loadgroup`), so the
# fixture's study is built once, not once per worker. test_sweep_extend's module fixture `extended`
# extends a sweep of a fixed name on the session's MLflow server: its tests must run together on one
# worker too (a second set-up, after the worker ran another module's tests, is refused: name taken).
SHARED_FIXTURE_GROUPS = {"smoke_sweep": "smoke-sweep", "extended": "smoke-sweep", "noisy": "noisy-study"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """The load and long tests are opt-in, independently of -m, so `-m "not slow"` stays quick and
    the default suite fits its budget; tests sharing a session fixture share an xdist group."""
    opted = {
        "load": config.getoption("--run-load") or os.environ.get("BIRDPLANE_LOAD") == "1",
        "long": config.getoption("--run-long") or os.environ.get("BIRDPLANE_LONG") == "1",
    }
    reasons = {
        "load": "load test: opt in with --run-load or BIRDPLANE_LOAD=1",
        "long": "long end-to-end test: opt in with --run-long or BIRDPLANE_LONG=1",
    }
    for item in items:
        for fixture, group in SHARED_FIXTURE_GROUPS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(group))
        for marker, wanted in opted.items():
            if not wanted and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reasons[marker]))


# Variables pointing at per-user state that tests must not share with the machine: Ray's session
# folder (/tmp/ray by default), HOME-side files (~/.ray's auth token, ~/.config/mlflow,
# ~/ray_results, ~/.cache/birdplane) and XDG folders.
ISOLATED = ("RAY_TMPDIR", "HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "BIRDPLANE_TEST_TMP")


@pytest.fixture(scope="session", autouse=True)
def isolated_run_folders():
    """One short temporary root for the whole test run, removed at its end: RAY_TMPDIR, HOME and the
    XDG folders point into it, so every Ray session, token and config file a test (or a process it
    starts) writes stays out of /tmp/ray and the user's home. Short on purpose: Ray's socket paths
    (RAY_TMPDIR/session_.../sockets/...) must stay under the ~107-character limit of AF_UNIX."""
    saved = {name: os.environ.get(name) for name in (*ISOLATED, "PYENV_ROOT")}
    home = Path.home()
    root = Path(tempfile.mkdtemp(prefix="bp-", dir="/tmp"))
    if (home / ".pyenv").is_dir():  # pyenv's shims find their interpreters through HOME otherwise
        os.environ.setdefault("PYENV_ROOT", str(home / ".pyenv"))
    folders = {
        "RAY_TMPDIR": root / "ray",
        "HOME": root / "home",
        "XDG_CONFIG_HOME": root / "home" / ".config",
        "XDG_CACHE_HOME": root / "home" / ".cache",
        "MPLCONFIGDIR": root / "mpl",
        "BIRDPLANE_TEST_TMP": root / "tmp",
    }
    for name, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(folder)
    try:
        yield root
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(root, ignore_errors=True)


REAL_DATA = Path(os.environ.get("BIRDPLANE_DATA") or REPO.parent / "shared" / "data" / "cifar10")

# Each synthetic class has its own mean colour, so a small net can learn it but not perfectly.
CLASS_COLOURS = {"airplane": (170, 190, 220), "bird": (120, 110, 80), "cat": (150, 90, 90)}


def make_image_tree(
    root: Path,
    per_class: dict[str, int] | int = 40,
    test_per_class: int = 16,
    classes=("airplane", "bird", "cat"),
    seed: int = 0,
    jitter: float = 0,
) -> Path:
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


class CommandTimedOut(subprocess.TimeoutExpired):
    """A command that ran past its timeout, with the tail of what it printed and where its processes
    were (tests.servers.stack_dumps) in its message: a hang in CI says where it hung."""

    def __init__(self, cmd, timeout, output, stderr, stacks: str):
        super().__init__(cmd, timeout, output, stderr)
        self.stacks = stacks

    def __str__(self) -> str:
        return (
            f"{super().__str__()}\n--- stdout (tail) ---\n{(self.output or '')[-6000:]}"
            f"\n--- stderr (tail) ---\n{(self.stderr or '')[-12000:]}"
            f"\n--- stacks at the timeout ---\n{self.stacks[:40000]}"
        )


ROOT = Path(__file__).resolve().parent.parent


def this_tree(env: dict) -> dict:
    """``env`` with this checkout first on PYTHONPATH: a command run from another folder (``cwd``)
    imports the code under test, not whatever checkout the package was installed from."""
    path = [str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    return {**env, "PYTHONPATH": os.pathsep.join(path)}


def run_birdplane(*args, env=None, timeout=600, cwd=None):
    """The installed command line, in a subprocess (as a user runs it), in its own process group,
    its output going to temporary files (a process it leaves behind cannot hold a pipe open). Past
    ``timeout``: its processes' stacks are dumped, the group is stopped, and CommandTimedOut (a
    subprocess.TimeoutExpired) says what it printed and where it was."""
    import sys

    from tests.servers import stack_dumps, stop_group

    full_env = this_tree({"PYTHONFAULTHANDLER": "1", **os.environ, **(env or {})})
    cmd = [sys.executable, "-m", "study.cli", *map(str, args)]
    with tempfile.TemporaryFile("w+", errors="replace") as out, tempfile.TemporaryFile("w+", errors="replace") as err:

        def printed() -> tuple[str, str]:
            out.seek(0), err.seek(0)
            return out.read(), err.read()

        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=full_env, cwd=cwd, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stacks = stack_dumps(proc.pid)
            stop_group(proc)
            raise CommandTimedOut(cmd, timeout, *printed(), stacks) from None
        finally:
            stop_group(proc)  # only if it is still running (an interrupted test)
        return subprocess.CompletedProcess(cmd, proc.returncode, *printed())


class Started:
    """A birdplane command started in its own process group, stdout and stderr going to files in
    ``folder`` (a pipe nobody reads until the end fills at 64 KiB and blocks a chatty study), so
    several can run at once. ``result()`` waits and gives what ``run_birdplane`` gives."""

    def __init__(self, folder: Path, label: str, *args, env=None, cwd=None):
        import sys

        folder.mkdir(parents=True, exist_ok=True)
        self.args = [sys.executable, "-m", "study.cli", *map(str, args)]
        self.out, self.err = folder / f"{label}.out", folder / f"{label}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                self.args,
                stdout=out,
                stderr=err,
                text=True,
                env=this_tree({**os.environ, **(env or {})}),
                cwd=cwd,
                start_new_session=True,
            )

    def result(self, timeout: float = 600):
        from tests.servers import stack_dumps, stop_group

        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stacks = stack_dumps(self.proc.pid)
            stop_group(self.proc)
            printed = (p.read_text(errors="replace") for p in (self.out, self.err))
            raise CommandTimedOut(self.args, timeout, *printed, stacks) from None
        finally:
            stop_group(self.proc)  # only if it is still running (a timeout): this command's own group
        return subprocess.CompletedProcess(
            self.args, self.proc.returncode, self.out.read_text(errors="replace"), self.err.read_text(errors="replace")
        )


def run_together(folder: Path, commands: dict[str, list], timeout: float = 600, env=None) -> dict:
    """Several birdplane commands at once (label -> arguments); their results by label."""
    started = {label: Started(folder, label, *args, env=env) for label, args in commands.items()}
    try:
        return {label: s.result(timeout) for label, s in started.items()}
    finally:
        from tests.servers import stop_group

        for s in started.values():
            stop_group(s.proc)


def last_json(stdout: str) -> dict:
    """The summary object: the last stdout line that is a JSON object (Ray may log after it)."""
    import json

    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON summary in: {stdout[-2000:]}")


SMOKE_SPACE = {
    "depth": {"low": 1, "high": 2},
    "width": {"low": 16, "high": 128, "log": True},
    "batch_size": {"choices": [16, 32]},
    "lr": {"low": 1e-3, "high": 1e-1, "log": True},
    "loss": {"choices": ["nll", "ce", "mse", "bce"]},
    "epochs": 2,
}


@pytest.fixture(scope="session")
def smoke_sweep(mlflow_server, tmp_path_factory):
    """One real smoke sweep (5 trials, all at the full 2-epoch budget) logged to the session's mlflow
    server, shared by tests."""
    import yaml

    folder = tmp_path_factory.mktemp("smoke-sweep")
    # Noisy enough that trials reach different accuracies (the report's importances need variation).
    tree = make_image_tree(folder / "images", per_class=40, test_per_class=10, classes=("airplane", "bird"), jitter=80)
    (folder / "space.yaml").write_text(yaml.safe_dump(SMOKE_SPACE))
    proc = run_birdplane(
        "sweep",
        "--smoke",
        "--num-samples",
        5,
        "--scheduler",
        "none",
        "--space",
        folder / "space.yaml",
        "--data-root",
        tree,
        "--cache-dir",
        folder / "cache",
        "--name",
        "smoke",
        "--storage-path",
        folder / "ray",
        "--tracking-uri",
        mlflow_server.url,
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        "summary": last_json(proc.stdout),
        "uri": mlflow_server.url,
        "name": "smoke",
        "folder": folder,
        "data_root": tree,
    }


@dataclass(frozen=True)
class NoisyStudy:
    tree: Path
    data: object  # trainables.data.StudyData, with its test split
    config: object  # trainables.config.TrainConfig


@pytest.fixture(scope="session")
def noisy(tmp_path_factory) -> NoisyStudy:
    """Two overlapping classes (colour jitter 80): 210 training, 90 validation and 120 test images,
    and a recipe whose val_acc swings, so that its best epoch (6 of 8: 0.878 against 0.856 at the
    end) is not its last, and the best and last weights score differently on the test split too.
    The tests that use it assert that situation first: the behaviour they check shows only there."""
    from trainables.config import DataConfig, TrainConfig
    from trainables.data import load_study_data

    folder = tmp_path_factory.mktemp("noisy")
    tree = make_image_tree(folder / "images", per_class=150, test_per_class=60, classes=("airplane", "bird"), jitter=80)
    data = load_study_data(
        DataConfig(root=str(tree), cache_dir=str(folder / "cache"), val_fraction=0.3), include_test=True
    )
    config = TrainConfig(
        hidden_sizes=(32,), epochs=8, batch_size=16, lr=0.05, activation="relu", threads=1, device="cpu"
    )
    return NoisyStudy(tree, data, config)


def eval_mode_logits(state: dict, config, x_uint8, mean, std):
    """The logits of weights ``state`` on uint8 images, computed here, apart from the code under test:
    the chapter's net in eval mode on (x/255 - mean) / std."""
    import torch

    from trainables.model import build_model

    model = build_model(3 * 32 * 32, config.hidden_sizes, 2, config.activation, config.dropout)
    model.load_state_dict(state)
    model.eval()
    x = (x_uint8.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x)


def correct(state: dict, config, split, mean, std) -> int:
    """How many images of ``split`` the weights ``state`` classify right (an nll/ce net's argmax)."""
    return int((eval_mode_logits(state, config, split.x, mean, std).argmax(1) == split.y).sum())
