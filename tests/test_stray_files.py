"""No command creates an MLflow store or a file it was not asked to create: each refusal below runs
in an empty working folder, which must stay empty."""

from __future__ import annotations

import pytest

from tests.conftest import make_image_tree, run_birdplane

pytestmark = pytest.mark.slow  # a subprocess each (MLflow imports): ~20 s apiece on the shared machine


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_image_tree(
        tmp_path_factory.mktemp("stray-images"), per_class=4, test_per_class=2, classes=("airplane", "bird")
    )


COMMANDS = {
    "capacity-from-run-new-store": (
        lambda tree: [
            "capacity",
            "--smoke",
            "--from-run",
            "abc123",
            "--tracking-uri",
            "sqlite:///NEW.db",
            "--data-root",
            tree,
        ],
        "--from-run abc123: tracking store sqlite:///",
    ),
    "predict-registered-model": (
        lambda tree: ["predict", "--model", "models:/birdplane@champion", "x.png"],
        "cannot fetch model",
    ),
    "predict-run-model": (lambda tree: ["predict", "--model", "runs:/abc123/model.pt", "x.png"], "cannot fetch model"),
    "report": (lambda tree: ["report", "--experiment", "nope"], "tracking store sqlite:///"),
    "export": (lambda tree: ["export", "--experiment", "nope", "--out", "t.csv"], "tracking store sqlite:///"),
    "rerun": (lambda tree: ["rerun", "--experiment", "nope"], "tracking store sqlite:///"),
    "sync": (lambda tree: ["sync", "--name", "nope", "--storage-path", "ray"], "no birdplane study"),
}


@pytest.mark.parametrize("case", list(COMMANDS))
def test_a_refused_command_leaves_the_working_folder_empty(case, tree, tmp_path):
    flags, needle = COMMANDS[case]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_birdplane(*flags(tree), cwd=cwd, env={"MLFLOW_TRACKING_URI": ""}, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr[-2000:]
    assert "does not exist" in lines[0] or case == "sync"
    assert sorted(p.name for p in cwd.iterdir()) == [], "nothing created in the working folder"
