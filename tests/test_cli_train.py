import dataclasses
import json
import subprocess
import sys

import pytest

from study.cli import main


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True, text=True, env=env)


def test_train_json_prints_exactly_one_object_with_the_summary(image_tree, cache_dir, capsys):
    code = main(
        [
            "train",
            "--data-root",
            str(image_tree),
            "--hidden",
            "16",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--threads",
            "1",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0
    summary = json.loads(out)
    for key in (
        "param_count",
        "epochs",
        "train_acc",
        "val_acc",
        "val_loss",
        "best_val_acc",
        "best_epoch",
        "status",
        "seconds",
    ):
        assert key in summary
    assert summary["param_count"] == 3072 * 16 + 16 + 16 * 2 + 2 and summary["epochs"] == 2
    assert err.count("epoch ") == 2, "one progress line per epoch, on stderr with --json"


def test_zero_epochs_reports_the_chapter_param_count(image_tree, cache_dir, capsys):
    assert main(["train", "--data-root", str(image_tree), "--epochs", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["param_count"] == 1_574_402


BAD = [
    (["--lr", "0"], "lr"),
    (["--lr", "-0.1"], "lr"),
    (["--batch-size", "0"], "batch_size"),
    (["--loss", "hinge"], "loss"),
    (["--activation", "sigmoid"], "activation"),
    (["--hidden", "512,,3"], "hidden"),
    (["--hidden", "0"], "hidden"),
    (["--classes", "airplane,dragon"], "dragon"),
    (["--classes", "airplane,bird,cat", "--loss", "bce"], "bce"),
    (["--epochs", "-1"], "epochs"),
    (["--lr", "fast"], "--lr"),
]


@pytest.mark.parametrize("flags,needle", BAD)
def test_bad_input_exits_2_with_one_line_before_loading_data(image_tree, tmp_path, flags, needle, capsys):
    cache = tmp_path / "cache"
    assert main(["train", "--data-root", str(image_tree), "--cache-dir", str(cache), *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]
    assert not cache.exists(), "no data was decoded"


def test_the_installed_command_exits_2_on_bad_input(image_tree):
    proc = run_cli("train", "--data-root", str(image_tree), "--batch-size", "0")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "batch_size" in proc.stderr


@pytest.mark.parametrize("root", ["missing", "empty"])
def test_missing_or_unrecognised_data_root_is_one_line_exit_2(tmp_path, root, capsys):
    path = tmp_path / root
    if root == "empty":
        path.mkdir()
    assert main(["train", "--data-root", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(path) in err


def test_train_predict_and_help_run_where_ray_optuna_and_mlflow_cannot_be_imported(image_tree, tmp_path):
    from trainables.bundle import save_bundle
    from trainables.config import TrainConfig
    from trainables.model import build_model

    model = tmp_path / "model.pt"
    config = TrainConfig(hidden_sizes=(8,))
    save_bundle(
        model,
        build_model(3072, (8,), 2).state_dict(),
        config.to_dict(),
        {"classes": ["airplane", "bird"], "mean": [0.5] * 3, "std": [0.25] * 3},
    )
    image = sorted((image_tree / "test" / "bird").iterdir())[0]
    script = f"""
import sys
for name in ("ray", "optuna", "mlflow"):
    sys.modules[name] = None  # importing any of them now raises ImportError
from study.cli import main
for help in (["--help"], ["train", "--help"]):
    try:
        main(help)
    except SystemExit as exit:
        assert exit.code == 0
assert main(["train", "--data-root", {str(image_tree)!r}, "--cache-dir", {str(tmp_path / "c")!r}, "--hidden", "8",
             "--epochs", "1", "--batch-size", "16", "--threads", "1"]) == 0
assert main(["train", "--data-root", {str(image_tree)!r}, "--cache-dir", {str(tmp_path / "c")!r}, "--epochs", "0"]) == 0
assert main(["predict", "--model", {str(model)!r}, {str(image)!r}]) == 0
print("LEAN-OK")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "LEAN-OK" in proc.stdout, proc.stderr[-2000:]
    assert "usage: birdplane" in proc.stdout and "untrained: param_count 1,574,402" in proc.stdout
    assert "usage: birdplane train" in proc.stdout and "--weight-decay" in proc.stdout


BAD_LEVERS = [
    (["--dropout", "1.0"], "dropout"),
    (["--dropout", "-0.1"], "dropout"),
    (["--schedule", "linear"], "schedule"),
    (["--weight-decay", "-0.01"], "weight_decay"),
    (["--warmup", "1.5"], "warmup"),
    (["--optimizer", "lamb"], "optimizer"),
    (["--label-noise", "0.5"], "label_noise"),
    (["--label-noise", "-0.1"], "label_noise"),
]


@pytest.mark.parametrize("flags,needle", BAD_LEVERS)
def test_bad_values_of_the_new_levers_are_refused_in_one_line(image_tree, tmp_path, flags, needle, capsys):
    assert main(["train", "--data-root", str(image_tree), "--cache-dir", str(tmp_path / "c"), *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and not (tmp_path / "c").exists()


def test_every_train_flag_comes_from_a_trainconfig_field_and_reaches_the_config():
    from study.cli import build_parser, train_config
    from trainables.config import TrainConfig

    assert train_config(build_parser().parse_args(["train"])) == TrainConfig(), "the flags' defaults are the config's"
    changed = {
        "hidden_sizes": [64, 32],
        "activation": "relu",
        "loss": "ce",
        "optimizer": "adamw",
        "lr": 0.003,
        "momentum": 0.5,
        "weight_decay": 0.01,
        "batch_size": 32,
        "epochs": 7,
        "augment": "flip",
        "dropout": 0.2,
        "schedule": "cosine",
        "warmup": 0.1,
        "label_noise": 0.2,
        "seed": 5,
        "device": "cpu",
        "threads": 2,
        "graphs": "off",
    }
    assert set(changed) == {f.name for f in dataclasses.fields(TrainConfig)}, "the test names every field"
    argv = ["train"]
    for name, value in changed.items():
        flag = "--hidden" if name == "hidden_sizes" else "--" + name.replace("_", "-")
        argv += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    assert train_config(build_parser().parse_args(argv)).to_dict() == changed


def test_a_bad_choice_is_refused_by_the_config_with_its_choices(image_tree, tmp_path, capsys):
    assert (
        main(["train", "--data-root", str(image_tree), "--cache-dir", str(tmp_path / "c"), "--graphs", "sometimes"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["birdplane: error: graphs: unknown value 'sometimes' (choose from auto, off)"], err
