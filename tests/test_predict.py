"""`birdplane rerun` on a real sweep and `birdplane predict` on real and broken files."""

import json

import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from study.cli import main
from tests.conftest import eval_mode_logits, run_birdplane
from trainables.bundle import bundle_args, save_bundle
from trainables.config import DataConfig, TrainConfig
from trainables.data import load_study_data
from trainables.loop import evaluate, fit, normalise
from trainables.losses import ChapterLoss
from trainables.tune_adapter import data_meta


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_rerun_reproduces_the_same_seed_trial_exactly_and_adds_test_numbers(smoke_sweep, tmp_path):
    proc = run_birdplane(
        "rerun",
        "--experiment",
        smoke_sweep["name"],
        "--tracking-uri",
        smoke_sweep["uri"],
        "--seeds",
        2,
        "--register",
        "birdplane-smoke",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    best = max(smoke_sweep["summary"]["trials"], key=lambda t: (t["val_acc"], -t["param_count"]))
    assert summary["trial_metric"] == pytest.approx(best["val_acc"])
    client = MlflowClient(smoke_sweep["uri"])

    # The same-seed rerun (the first seed is the trial's own) against the trial, compared here.
    def curves(run_id):
        return {
            key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
            for key in ("train_loss", "train_acc", "val_loss", "val_acc")
        }

    trial_curves, rerun_curves = curves(summary["trial_run_id"]), curves(summary["runs"][0]["run_id"])
    assert trial_curves["val_acc"] and trial_curves == rerun_curves
    assert summary["reproduced"] is True
    assert curves(summary["runs"][1]["run_id"]) != trial_curves, "another seed gives another history"
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.tags["birdplane.role"] == "rerun" and parent.data.tags["rerun_of"] == summary["trial_run_id"]
    assert "test_acc_mean" in parent.data.metrics
    for run in summary["runs"]:
        child = client.get_run(run["run_id"])
        assert child.data.tags["rerun_of"] == summary["trial_run_id"]
        assert child.data.tags["mlflow.parentRunId"] == summary["parent_run_id"]
        assert 0 <= child.data.metrics["test_acc"] <= 1 and "test_loss" in child.data.metrics
        registered = {"model"} if run is summary["runs"][0] else set()  # --register's folder: model/model.pt
        assert {a.path for a in client.list_artifacts(run["run_id"])} == {"config.json", "model.pt"} | registered
        assert [m.step for m in client.get_metric_history(run["run_id"], "val_acc")] == list(
            range(1, int(child.data.metrics["epochs_run"]) + 1)
        )
    # The saved model holds the best-val epoch's weights: they give exactly the logged test_acc.
    import mlflow.artifacts

    from trainables.bundle import load_bundle
    from trainables.config import DataConfig as _DataConfig

    first = client.get_run(summary["runs"][0]["run_id"])
    path = mlflow.artifacts.download_artifacts(
        summary["model_uri"], tracking_uri=smoke_sweep["uri"], dst_path=str(tmp_path / "model")
    )
    bundle = load_bundle(path)
    assert bundle.epoch == int(first.data.metrics["best_epoch"]) == summary["runs"][0]["best_epoch"]
    cfg = _DataConfig.from_dict(
        json.loads(
            open(
                mlflow.artifacts.download_artifacts(
                    f"runs:/{first.info.run_id}/config.json",
                    tracking_uri=smoke_sweep["uri"],
                    dst_path=str(tmp_path / "config"),
                )
            ).read()
        )["data"]
    )
    data = load_study_data(cfg, include_test=True)
    x = normalise(data.test.x, bundle.mean, bundle.std, torch.device("cpu"))
    assert evaluate(bundle.model, x, data.test.y, bundle.loss)["acc"] == first.data.metrics["test_acc"]
    # The model URI it prints works with predict.
    tree = smoke_sweep["data_root"]
    out = run_birdplane(
        "predict",
        "--model",
        summary["model_uri"],
        "--tracking-uri",
        smoke_sweep["uri"],
        tree / "test" / "bird",
        "--json",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    by_run = json.loads(out.stdout)
    assert len(by_run) == 10
    # --register: version 1 of the name, the @champion alias on it, both usable by predict (the same file).
    assert summary["registered"] == {
        "name": "birdplane-smoke",
        "version": 1,
        "uri": "models:/birdplane-smoke/1",
        "alias_uri": "models:/birdplane-smoke@champion",
    }
    version = client.get_model_version("birdplane-smoke", "1")
    assert version.run_id == first.info.run_id
    assert client.get_model_version_by_alias("birdplane-smoke", "champion").version == "1"
    for uri in ("models:/birdplane-smoke/1", "models:/birdplane-smoke@champion"):
        registered = run_birdplane(
            "predict", "--model", uri, "--tracking-uri", smoke_sweep["uri"], tree / "test" / "bird", "--json"
        )
        assert registered.returncode == 0, registered.stderr[-2000:]
        assert json.loads(registered.stdout) == by_run


def _train_bundle(root, cache, path):
    data = load_study_data(DataConfig(root=str(root), cache_dir=str(cache)), include_test=True)
    result = fit(TrainConfig(hidden_sizes=(64,), epochs=1, threads=2, device="cpu"), data)
    save_bundle(path, result.model.state_dict(), TrainConfig(hidden_sizes=(64,), epochs=1).to_dict(), data_meta(data))
    x = normalise(data.test.x, data.mean, data.std, torch.device("cpu"))
    return evaluate(result.model, x, data.test.y, ChapterLoss("nll", 2))


@pytest.mark.realdata
def test_predict_on_the_real_test_images_matches_direct_evaluation(real_data_root, tmp_path, capsys):
    model = tmp_path / "model.pt"
    direct = _train_bundle(real_data_root, tmp_path / "cache", model)
    assert (
        main(
            [
                "predict",
                "--model",
                str(model),
                str(real_data_root / "test" / "airplane"),
                str(real_data_root / "test" / "bird"),
                "--json",
            ]
        )
        == 0
    )
    predictions = json.loads(capsys.readouterr().out)
    assert len(predictions) == 2000
    correct = sum(p["label"] == ("airplane" if "/airplane/" in p["path"] else "bird") for p in predictions)
    assert correct / 2000 == direct["acc"]


def test_predict_uses_the_best_epoch_s_weights_unless_told_the_last(noisy, tmp_path, capsys):
    import numpy as np

    data, config = noisy.data, noisy.config
    result = fit(config, data)
    last_epoch = result.history[-1]["epoch"]
    assert result.best_epoch < last_epoch, "the situation this test needs: the best epoch is not the last"
    last_state = result.model.state_dict()
    meta = {"classes": list(data.classes), "mean": list(data.mean), "std": list(data.std)}
    save_bundle(
        tmp_path / "m.pt",
        **bundle_args(config.to_dict(), meta, last_state, last_epoch, result.best_model, result.best_epoch),
    )
    images = sorted((noisy.tree / "test").rglob("*.png"))
    pixels = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in images])).permute(0, 3, 1, 2)
    expected = {}
    for weights, state in (("best", result.best_model), ("last", last_state)):
        probs = torch.softmax(eval_mode_logits(state, config, pixels, data.mean, data.std), dim=1)
        expected[weights] = [(data.classes[int(i)], float(p)) for p, i in zip(*probs.max(dim=1), strict=False)]
    assert expected["best"] != expected["last"], "the situation: best and last weights predict differently"
    for flags, weights in (([], "best"), (["--weights", "last"], "last"), (["--weights", "best"], "best")):
        assert main(["predict", "--model", str(tmp_path / "m.pt"), *map(str, images), "--json", *flags]) == 0
        got = json.loads(capsys.readouterr().out)
        assert [p["path"] for p in got] == [str(p) for p in images]
        assert [p["label"] for p in got] == [label for label, _ in expected[weights]], f"{flags}: {weights} labels"
        assert [p["probability"] for p in got] == pytest.approx([prob for _, prob in expected[weights]], abs=1e-5), (
            f"{flags}: the probabilities of the {weights} epoch's weights"
        )


def test_predict_reports_bad_files_on_their_own_line_and_classifies_the_rest(image_tree, tmp_path, capsys):
    model = tmp_path / "model.pt"
    _train_bundle(image_tree, tmp_path / "cache", model)
    good = sorted((image_tree / "test" / "bird").iterdir())[0]
    big = tmp_path / "big.jpg"
    Image.open(good).resize((300, 200)).save(big)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:50])
    code = main(
        ["predict", "--model", str(model), str(good), str(text), str(big), str(broken), str(tmp_path / "nope.png")]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 1 and len(lines) == 5
    assert lines[0].split("\t")[1] in ("airplane", "bird") and lines[2].split("\t")[1] in ("airplane", "bird")
    assert "error: not a readable image" in lines[1] and "error: not a readable image" in lines[3]
    assert "error: no such file" in lines[4]


def test_predict_refuses_a_model_file_that_would_unpickle_objects(tmp_path, capsys):
    import pickle

    evil = tmp_path / "evil.pt"
    torch.save(
        {"model": {}, "config": TrainConfig().to_dict(), "data": {"classes": ["a", "b"]}, "f": pickle.dumps}, evil
    )
    assert main(["predict", "--model", str(evil), str(tmp_path)]) == 2
    assert "not a birdplane model file" in capsys.readouterr().err


def _flat(colour, size=(32, 32)):
    import numpy as np

    return np.full((size[1], size[0], 3), colour, np.uint8)


def test_predict_handles_every_image_kind_in_one_call_with_one_line_per_file(image_tree, tmp_path, capsys):
    import numpy as np

    from tests.conftest import CLASS_COLOURS

    model = tmp_path / "model.pt"
    _train_bundle(image_tree, tmp_path / "cache", model)
    plane, bird = CLASS_COLOURS["airplane"], CLASS_COLOURS["bird"]
    gray = lambda c: int(round(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]))  # noqa: E731
    d = tmp_path / "mixed"
    d.mkdir()
    Image.fromarray(np.full((32, 32), gray(plane) * 257, np.uint16)).save(d / "a_16bit.png")
    Image.fromarray(_flat(bird)).convert("L").save(d / "b_gray.png")
    Image.fromarray(_flat(plane)).convert("RGBA").save(d / "c_rgba.png")
    Image.fromarray(_flat(bird)).convert("P").save(d / "d_palette.png")
    Image.fromarray(_flat(plane)).save(d / "e.gif")
    Image.fromarray(_flat(bird)).save(d / "f.webp", lossless=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(_flat(plane, (1600, 1200))).save(d / "g_large_rotated.jpg", exif=exif.tobytes(), quality=95)
    (d / "h_empty.png").write_bytes(b"")
    (d / "i_notes.txt").write_text("not an image")
    expected = ["airplane", "bird", "airplane", "bird", "airplane", "bird", "airplane", None, None]

    code = main(["predict", "--model", str(model), str(d)])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert code == 1 and len(lines) == 9 and "Traceback" not in out + err, out + err
    for line, want in zip(lines, expected, strict=False):
        fields = line.split("\t")
        if want is None:
            assert "error: not a readable image" in fields[1], line
        else:
            assert fields[1] == want and 0.5 <= float(fields[2]) <= 1, line


def test_read_image_gives_uint8_rgb_with_the_exif_orientation_applied(tmp_path):
    import numpy as np

    from study.predict import read_image

    pixels = np.zeros((300, 400, 3), np.uint8)
    pixels[:, :200] = (255, 0, 0)  # left half red, right half blue
    pixels[:, 200:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: red on top, blue below
    Image.fromarray(pixels).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    image = read_image(tmp_path / "r.jpg")
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert image[0, 2, 16] > 200 and image[2, 2, 16] < 50 and image[2, 29, 16] > 200 and image[0, 29, 16] < 50
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "w.png")
    assert read_image(tmp_path / "w.png").unique().tolist() == [255], "16-bit white is 8-bit white"


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_confirmation_retrains_the_top_trials_at_the_full_budget_as_child_runs_of_the_study(smoke_sweep, tmp_path):
    uri, name = smoke_sweep["uri"], smoke_sweep["name"]
    proc = run_birdplane("rerun", "--experiment", name, "--tracking-uri", uri, "--top", 2, "--seeds", 2, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    ranked = sorted(smoke_sweep["summary"]["trials"], key=lambda t: (-t["val_acc"], t["param_count"]))
    assert [t["trial_id"] for t in summary["trials"]] == [t["trial_id"] for t in ranked[:2]]
    assert summary["epochs"] == 2 and summary["parent_run_id"] == smoke_sweep["summary"]["parent_run_id"]
    client = MlflowClient(uri)
    for trial in summary["trials"]:
        assert len(trial["runs"]) == 2
        for run in trial["runs"]:
            r = client.get_run(run["run_id"])
            assert r.data.tags["birdplane.role"] == "confirm" and r.data.tags["confirms"] == trial["run_id"]
            assert r.data.tags["mlflow.parentRunId"] == summary["parent_run_id"]
            assert r.data.metrics["epochs_run"] == 2 and "test_acc" not in r.data.metrics, "validation only"
    # The report puts the confirmed, equal-budget numbers beside the sweep's.
    from study.reporting import build_report

    report, _, _ = build_report(uri, name, tmp_path / "r")
    confirmed = report.confirmations.set_index("confirms")
    for trial in summary["trials"]:
        row = confirmed.loc[trial["run_id"]]
        assert row["seeds"] == 2 and row["best_val_acc"] == pytest.approx(trial["best_val_acc_mean"])
    assert len(report.trials) == len(smoke_sweep["summary"]["trials"]), "confirmations are not trials"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_capacity_recipe_can_come_from_a_sweep_trial(smoke_sweep, capsys):
    from study.cli import main as cli

    best = max(smoke_sweep["summary"]["trials"], key=lambda t: t["val_acc"])
    assert (
        cli(
            [
                "capacity",
                "--check",
                "--json",
                "--from-run",
                best["run_id"],
                "--tracking-uri",
                smoke_sweep["uri"],
                "--data-root",
                str(smoke_sweep["data_root"]),
                "--storage-path",
                str(smoke_sweep["folder"] / "cap"),
            ]
        )
        == 0
    )
    plan = json.loads(capsys.readouterr().out)
    for key in ("lr", "batch_size", "loss", "optimizer", "activation", "weight_decay", "augment"):
        assert plan["recipe"][key] == best["config"][key], key
    assert "hidden_sizes" not in plan["recipe"] and "seed" not in plan["recipe"]
    assert plan["recipe_source"] == f"run {best['run_id']}"


def test_predict_from_an_mlflow_uri_leaves_no_downloaded_copy_behind(image_tree, tmp_path, monkeypatch, capsys):
    import tempfile

    from mlflow import MlflowClient

    model = tmp_path / "model.pt"
    _train_bundle(image_tree, tmp_path / "cache", model)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("predict", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_artifact(run.info.run_id, str(model))
    scratch = tmp_path / "tmp"  # the process's temporary folder, for this test
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    image = sorted((image_tree / "test" / "bird").iterdir())[0]
    assert main(["predict", "--model", f"runs:/{run.info.run_id}/model.pt", "--tracking-uri", uri, str(image)]) == 0
    assert capsys.readouterr().out.split("\t")[1] in ("airplane", "bird")
    assert list(scratch.iterdir()) == [], "the downloaded model was removed after loading"
