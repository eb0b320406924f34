"""CUDA-graphed steps: the CPU falls back to eager steps and says why; on a GPU, graphed and eager
steps give the same history (these run only where CUDA exists)."""

import ast

import pytest
import torch

from tests.conftest import REPO
from trainables.config import TrainConfig
from trainables.loop import fit

FAST = dict(hidden_sizes=(32,), epochs=4, batch_size=16, lr=0.05, threads=1)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
RECIPES = {
    "chapter": {},
    "levers": {
        "optimizer": "adamw",
        "lr": 3e-3,
        "weight_decay": 0.05,
        "schedule": "onecycle",
        "warmup": 0.2,
        "augment": "crop+flip",
        "dropout": 0.2,
        "activation": "relu",
    },
}


def test_on_the_cpu_steps_fall_back_to_eager_and_say_why_once(tiny_data):
    result = fit(TrainConfig(**FAST, device="cpu"), tiny_data)
    assert result.steps == "eager (CUDA graphs need a CUDA device)" == result.summary()["steps"]
    off = fit(TrainConfig(**FAST, device="cpu", graphs="off"), tiny_data)
    assert off.steps == "eager (CUDA graphs turned off)"


def _package_imports(path) -> set[str]:
    """The trainables modules that one file imports, anywhere in it (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name.split(".")[1] for name in names if name.startswith("trainables.")}


def test_the_steps_sit_below_the_loop_and_the_package_has_no_import_circle():
    modules = {path.stem for path in (REPO / "trainables").glob("*.py")} - {"__init__"}
    graph = {m: _package_imports(REPO / "trainables" / f"{m}.py") & modules for m in modules}
    assert "loop" not in graph["graphed"] and not {"loop", "graphed"} & graph["steps"]
    assert {"steps", "graphed"} <= graph["loop"]

    def walk(path: list[str]) -> None:
        for dep in graph[path[-1]]:
            assert dep not in path, "import circle: " + " -> ".join([*path, dep])
            walk([*path, dep])

    for module in sorted(graph):
        walk([module])


@cuda
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_graphed_and_eager_steps_give_the_same_history(tiny_data, recipe):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    config = TrainConfig(**{**FAST, **RECIPES[recipe]}, device="cuda")
    graphed = fit(config, tiny_data)
    eager = fit(config.replace(graphs="off"), tiny_data)
    assert graphed.steps == "graphed (CUDA graphs)" and eager.steps.startswith("eager")
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")
    for g, e in zip(graphed.history, eager.history, strict=True):
        for key in keys:
            assert g[key] == pytest.approx(e[key], rel=1e-4, abs=1e-5), (g["epoch"], key)
    for p, q in zip(graphed.model.parameters(), eager.model.parameters(), strict=False):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@cuda
def test_a_graphed_run_resumed_mid_schedule_continues_like_the_uninterrupted_one(tiny_data, tmp_path):
    from trainables.checkpoint import TrainState

    config = TrainConfig(**{**FAST, **RECIPES["levers"]}, device="cuda")
    states = {}
    full = fit(config, tiny_data, on_epoch_end=lambda m, snap: states.__setitem__(m["epoch"], snap()))
    states[2].save(tmp_path / "s.pt")
    resumed = fit(config, tiny_data, resume=TrainState.load(tmp_path / "s.pt"))
    assert resumed.steps == "graphed (CUDA graphs)"
    for a, b in zip(resumed.history, full.history, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4) and a["lr"] == pytest.approx(b["lr"])


@pytest.mark.long  # past the default suite's budget: pytest --run-long
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_gpu_check_script_runs_every_step_and_prints_its_table(tmp_path):
    """benchmarks/gpu_check.sh --smoke: the same steps, tiny and on the CPU, so the script a GPU
    session runs is known to work before device time is spent on it."""
    import os
    import subprocess

    from tests.conftest import REPO, make_image_tree

    tree = make_image_tree(tmp_path / "images", per_class=30, test_per_class=10, classes=("airplane", "bird"))
    env = {
        **os.environ,
        "BIRDPLANE_DATA": str(tree),
        "BIRDPLANE_CACHE": str(tmp_path / "cache"),
        "GPU_CHECK_OUT": str(tmp_path / "out"),
    }
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--smoke"], cwd=REPO, env=env, capture_output=True, text=True, timeout=380
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout
    for row in (
        "chapter [512], graphed (auto): training s",
        "chapter [512], eager: training s",
        "graphed speed-up (eager / graphed)",
        "default sweep: wall s",
        "--- loop_auto.txt",
        "--- share.txt",
        "largest count at >= 0.8x solo speed",
    ):
        assert row in table, row
    assert "steps eager (CUDA graphs need a CUDA device)" in table
