import json
import subprocess
import sys

import pytest

from study.cli import main


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True, text=True, env=env)


def test_train_json_prints_exactly_one_object_with_the_summary(image_tree, cache_dir, capsys):
    code = main(["train", "--data-root", str(image_tree), "--hidden", "16", "--epochs", "2",
                 "--batch-size", "16", "--threads", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    summary = json.loads(out)
    for key in ("param_count", "epochs", "train_acc", "val_acc", "val_loss", "best_val_acc", "best_epoch", "status", "seconds"):
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
