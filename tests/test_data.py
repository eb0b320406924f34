import pickle

import numpy as np
import pytest
import torch
from torchvision import datasets

from tests.conftest import make_image_tree
from trainables.config import DataConfig
from trainables.data import DataError, channel_stats, check_data, load_images, load_study_data, stratified_holdout


def _cfg(root, cache, **kw):
    return DataConfig(root=str(root), cache_dir=str(cache), **kw)


def test_image_tree_loads_the_requested_classes_in_the_order_given(image_tree, tmp_path):
    train, test = load_images(_cfg(image_tree, tmp_path, classes=("bird", "airplane")))
    assert train.x.shape == (80, 3, 32, 32) and train.x.dtype == torch.uint8
    assert test.x.shape == (32, 3, 32, 32)
    # bird was named first, so bird is label 0; the synthetic birds are darker than airplanes.
    assert train.x[train.y == 0].float().mean() < train.x[train.y == 1].float().mean()
    assert torch.bincount(train.y).tolist() == [40, 40]


def test_unknown_class_lists_the_valid_names(image_tree, tmp_path):
    with pytest.raises(DataError, match="unknown class 'dragon'.*airplane, bird, cat"):
        check_data(_cfg(image_tree, tmp_path, classes=("airplane", "dragon")))


@pytest.mark.parametrize("layout", ["missing", "empty", "only-train"])
def test_unrecognised_roots_name_the_accepted_layouts(tmp_path, layout):
    root = tmp_path / "root"
    if layout != "missing":
        root.mkdir()
    if layout == "only-train":
        (root / "train" / "bird").mkdir(parents=True)
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        check_data(_cfg(root, tmp_path / "cache"))


def test_second_load_comes_from_the_cache_and_a_changed_source_is_decoded_again(tmp_path, monkeypatch):
    import trainables.data

    # Count the images torchvision decodes (the real decoder runs; the spy only counts).
    decoded = []
    real_decode = trainables.data._decode_folder
    monkeypatch.setattr(
        trainables.data,
        "_decode_folder",
        lambda folder, classes: decoded.append(folder) or real_decode(folder, classes),
    )
    root = make_image_tree(tmp_path / "imgs", per_class=6, test_per_class=2, classes=("airplane", "bird"))
    cache = tmp_path / "cache"
    first, _ = load_images(_cfg(root, cache))
    files = sorted(cache.glob("*.pt"))
    assert len(files) == 1 and len(decoded) == 2  # train and test
    second, _ = load_images(_cfg(root, cache))
    assert len(decoded) == 2, "a cache hit decodes nothing"
    assert torch.equal(first.x, second.x) and sorted(cache.glob("*.pt")) == files
    # Replace one image: a new cache entry holds the new pixels.
    victim = sorted((root / "train" / "bird").iterdir())[0]
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(victim)
    third, _ = load_images(_cfg(root, cache))
    assert len(decoded) == 4, "a changed source is decoded again"
    assert len(list(cache.glob("*.pt"))) == 2
    assert not torch.equal(first.x, third.x)
    assert not list(cache.glob("*.tmp")), "no temporary file is left behind"


def test_nothing_is_written_into_the_data_root(image_tree, tmp_path):
    before = sorted(p for p in image_tree.rglob("*"))
    load_study_data(_cfg(image_tree, tmp_path / "c"))
    assert sorted(p for p in image_tree.rglob("*")) == before


def test_truncated_png_is_reported_with_its_path(tmp_path):
    root = make_image_tree(tmp_path / "imgs", per_class=3, test_per_class=1, classes=("airplane", "bird"))
    bad = root / "train" / "bird" / "bird_0001.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(DataError, match="bird_0001.png"):
        load_images(_cfg(root, tmp_path / "cache"))
    assert not list((tmp_path / "cache").glob("*")) if (tmp_path / "cache").exists() else True


def test_non_image_file_in_a_class_folder_is_ignored_by_extension(tmp_path):
    root = make_image_tree(tmp_path / "imgs", per_class=3, test_per_class=1, classes=("airplane", "bird"))
    (root / "train" / "bird" / "notes.txt").write_text("not an image")
    train, _ = load_images(_cfg(root, tmp_path / "cache"))
    assert len(train) == 6


def test_holdout_is_stratified_disjoint_and_seeded():
    y = torch.tensor([0] * 50 + [1] * 30)
    keep, held = stratified_holdout(y, 0.1, seed=3)
    assert torch.bincount(y[held]).tolist() == [5, 3]
    assert set(keep.tolist()).isdisjoint(held.tolist()) and len(keep) + len(held) == 80
    assert torch.equal(held, stratified_holdout(y, 0.1, seed=3)[1])
    assert not torch.equal(held, stratified_holdout(y, 0.1, seed=4)[1])


def test_normalisation_statistics_come_from_the_training_split_only(image_tree, tmp_path):
    data = load_study_data(_cfg(image_tree, tmp_path, classes=("airplane", "bird")))
    assert len(data.train) == 72 and len(data.val) == 8 and data.test is None
    mean, std = channel_stats(data.train.x)
    assert data.mean == mean and data.std == std
    everything = torch.cat([data.train.x, data.val.x])
    assert channel_stats(everything)[0] != mean


def test_book_split_validates_on_the_official_test_images(image_tree, tmp_path):
    cfg = _cfg(image_tree, tmp_path, val_split="book")
    data = load_study_data(cfg, include_test=True)
    _, test = load_images(cfg)
    assert torch.equal(data.val.x, test.x) and len(data.train) == 80


def test_official_python_batches_are_read_through_torchvision_cifar10(tmp_path, monkeypatch):
    # Fake batches in the official pickle format; only torchvision's md5 check is bypassed,
    # since the official files cannot be fetched here.
    folder = tmp_path / "root" / datasets.CIFAR10.base_folder
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    rng = np.random.default_rng(0)

    def batch(n, fname):
        labels = [i % 10 for i in range(n)]
        data = rng.integers(0, 255, size=(n, 3072), dtype=np.uint8)
        with open(folder / fname, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        return data, labels

    train_parts = [batch(20, f"data_batch_{i}") for i in range(1, 6)]
    batch(20, "test_batch")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args: True)
    cfg = _cfg(tmp_path / "root", tmp_path / "cache", classes=("bird", "airplane"))
    assert check_data(cfg) == "cifar-python"
    train, test = load_images(cfg)
    assert len(train) == 20 and len(test) == 4  # two of ten labels, 100 train and 20 test images
    first_bird = train_parts[0][0][2].reshape(3, 32, 32)
    assert train.y[0] == 1  # the first image is an airplane, labelled 1 since bird came first
    assert torch.equal(train.x[train.y == 0][0], torch.from_numpy(first_bird))


@pytest.mark.realdata
def test_real_airplane_bird_subset(real_data_root, tmp_path):
    cfg = _cfg(real_data_root, tmp_path, val_split="book")
    train, test = load_images(cfg)
    assert len(train) == 10_000 and len(test) == 2_000
    assert torch.bincount(train.y).tolist() == [5000, 5000]
    holdout = load_study_data(_cfg(real_data_root, tmp_path))
    assert (len(holdout.train), len(holdout.val)) == (9000, 1000)
