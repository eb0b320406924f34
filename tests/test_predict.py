"""`birdplane predict`: a saved model (a file or an MLflow URI) on real, broken and odd image files."""

import json

import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from study.cli import main
from tests.conftest import eval_mode_logits
from trainables.bundle import bundle_args, save_bundle
from trainables.config import DataConfig, TrainConfig
from trainables.data import load_study_data
from trainables.loop import evaluate, fit, normalise
from trainables.losses import ChapterLoss
from trainables.tune_adapter import data_meta


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


def test_predict_from_an_mlflow_uri_leaves_no_downloaded_copy_behind(image_tree, tmp_path, monkeypatch, capsys):
    import tempfile

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


def test_predict_from_an_mlflow_uri_leaves_the_caller_s_registry_uri_as_it_was(image_tree, tmp_path, monkeypatch):
    # mlflow.set_registry_uri exports MLFLOW_REGISTRY_URI: left behind, a later rerun --register in the
    # same process tree registered its model into this store instead of its own tracking server.
    import os

    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    model = tmp_path / "model.pt"
    _train_bundle(image_tree, tmp_path / "cache", model)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("p", artifact_location=(tmp_path / "a").as_uri()))
    client.log_artifact(run.info.run_id, str(model))
    image = sorted((image_tree / "test" / "bird").iterdir())[0]
    assert main(["predict", "--model", f"runs:/{run.info.run_id}/model.pt", "--tracking-uri", uri, str(image)]) == 0
    assert "MLFLOW_REGISTRY_URI" not in os.environ, "predict left its registry URI to the caller's process"
