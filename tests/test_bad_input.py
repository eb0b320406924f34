"""A table of bad inputs: each ends as one line on stderr and exit 2, with nothing started or written."""

import pytest
import yaml

from study.cli import main
from tests.conftest import make_image_tree


@pytest.fixture()
def world(tmp_path):
    tree = make_image_tree(tmp_path / "images", per_class=4, test_per_class=2, classes=("airplane", "bird"))
    good_space = tmp_path / "space.yaml"
    good_space.write_text(yaml.safe_dump({"depth": 1, "width": 16, "lr": 0.01, "epochs": 2}))
    return tmp_path, tree, good_space


def _space(tmp_path, text):
    path = tmp_path / "bad-space.yaml"
    path.write_text(text)
    return path


def _non_image_png(tree):
    (tree / "train" / "bird" / "fake.png").write_text("this is not a PNG")
    return tree


def _truncated_png(tree):
    victim = sorted((tree / "train" / "airplane").glob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:40])
    return tree


# (id, extra flags as a function of (tmp_path, tree, space), text the error line must contain)
CASES = [
    ("zero-samples", lambda t, d, s: ["--num-samples", "0"], "--num-samples"),
    ("bad-metric", lambda t, d, s: ["--metric", "accuracy"], "--metric"),
    ("bad-objectives", lambda t, d, s: ["--objectives", "val_acc,latency"], "--objectives"),
    ("bad-scheduler", lambda t, d, s: ["--scheduler", "pbt"], "--scheduler"),
    ("bad-search", lambda t, d, s: ["--search", "grid"], "--search"),
    ("zero-cpus", lambda t, d, s: ["--cpus-per-trial", "0"], "--cpus-per-trial"),
    ("bad-name", lambda t, d, s: ["--name", "../escape"], "--name"),
    ("resume-unknown", lambda t, d, s: ["--name", "never-ran", "--resume"], "no sweep named"),
    ("grace-too-long", lambda t, d, s: ["--grace-epochs", "5"], "--grace-epochs"),
    (
        "reduction-factor-one",
        lambda t, d, s: ["--reduction-factor", "1"],
        "--reduction-factor must be a finite number above 1",
    ),
    (
        "reduction-factor-nan",
        lambda t, d, s: ["--reduction-factor", "nan"],
        "--reduction-factor must be a finite number above 1",
    ),
    ("reduction-factor-text", lambda t, d, s: ["--reduction-factor", "half"], "--reduction-factor"),
    (
        "reduction-factor-inf",
        lambda t, d, s: ["--reduction-factor", "inf"],
        "--reduction-factor must be a finite number",
    ),
    # Grace 1: milestones 1, 1.4 and 1.96 fall on epochs 1, 2 and 2.
    (
        "reduction-factor-rungs-collide",
        lambda t, d, s: ["--reduction-factor", "1.4", "--grace-epochs", "1", "--epochs", "10"],
        "--reduction-factor 1.4 puts two of ASHA's rungs on epoch 2 (grace 1): give a larger one",
    ),
    ("zero-seeds-per-trial", lambda t, d, s: ["--seeds-per-trial", "0"], "--seeds-per-trial must be an integer >= 1"),
    ("negative-seeds-per-trial", lambda t, d, s: ["--seeds-per-trial", "-2"], "--seeds-per-trial"),
    ("not-an-int", lambda t, d, s: ["--num-samples", "many"], "--num-samples"),
    ("space-missing", lambda t, d, s: ["--space", str(t / "nope.yaml")], "does not exist"),
    (
        "space-unknown-key",
        lambda t, d, s: ["--space", str(_space(t, "depth: 1\nwidth: 8\nepochs: 1\ncolour: red\n"))],
        "colour",
    ),
    (
        "space-empty-choices",
        lambda t, d, s: ["--space", str(_space(t, "depth: 1\nwidth: 8\nepochs: 1\nloss: {choices: []}\n"))],
        "loss",
    ),
    (
        "space-low-high",
        lambda t, d, s: ["--space", str(_space(t, "depth: 1\nwidth: 8\nepochs: 1\nlr: {low: 0.1, high: 0.01}\n"))],
        "lr",
    ),
    (
        "space-lr-not-positive",
        lambda t, d, s: ["--space", str(_space(t, "depth: 1\nwidth: 8\nepochs: 1\nlr: {low: 0, high: 0.1}\n"))],
        "lr",
    ),
    (
        "space-unknown-loss",
        lambda t, d, s: ["--space", str(_space(t, "depth: 1\nwidth: 8\nepochs: 1\nloss: hinge\n"))],
        "hinge",
    ),
    ("space-not-yaml", lambda t, d, s: ["--space", str(_space(t, "depth: [1, 2\n"))], "YAML"),
    ("data-missing", lambda t, d, s: ["--data-root", str(t / "missing")], "does not exist"),
    (
        "data-empty",
        lambda t, d, s: ["--data-root", str((t / "empty").mkdir() or t / "empty")],
        "not a recognised layout",
    ),
    ("data-unknown-class", lambda t, d, s: ["--classes", "airplane,dragon"], "dragon"),
    ("data-non-image", lambda t, d, s: ["--data-root", str(_non_image_png(d))], "fake.png"),
    ("data-truncated-png", lambda t, d, s: ["--data-root", str(_truncated_png(d))], "airplane_0000.png"),
    ("tracking-dead-server", lambda t, d, s: ["--tracking-uri", "http://127.0.0.1:9"], "does not answer"),
    ("tracking-bad-scheme", lambda t, d, s: ["--tracking-uri", "ftp://example.org/mlflow"], "unsupported scheme"),
    (
        "tracking-missing-folder",
        lambda t, d, s: ["--tracking-uri", f"sqlite:///{t}/no/such/dir/m.db"],
        "does not exist",
    ),
    ("ray-address-garbage", lambda t, d, s: ["--address", "not an address"], "--address"),
    ("ray-address-dead", lambda t, d, s: ["--address", "127.0.0.1:9"], "no Ray cluster answers"),
    ("ray-client-dead", lambda t, d, s: ["--address", "ray://127.0.0.1:9"], "no Ray cluster answers"),
]


@pytest.mark.parametrize("case,flags,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_sweep_input_is_one_line_exit_2_with_nothing_started_or_written(world, case, flags, needle, capsys):
    import ray

    tmp_path, tree, space = world
    cache, storage, db = tmp_path / "cache", tmp_path / "ray", tmp_path / "mlflow.db"
    argv = [
        "sweep",
        "--space",
        str(space),
        "--data-root",
        str(tree),
        "--cache-dir",
        str(cache),
        "--storage-path",
        str(storage),
        "--tracking-uri",
        f"sqlite:///{db}",
        "--name",
        "bad",
    ]
    argv += flags(tmp_path, tree, space)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not ray.is_initialized(), "Ray was not started"
    assert not db.exists(), "no MLflow store, experiment or run was created"
    assert not storage.exists(), "no Tune results were written"
    assert not list(cache.glob("*")) if cache.exists() else True, "no cache file, whole or half"
