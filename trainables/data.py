"""Images in, tensors out: torchvision datasets -> cached uint8 tensors -> class subset, splits, statistics.

Three layouts are read, always through torchvision's own datasets:
  * an image tree ``ROOT/train/<class>/*.png`` and ``ROOT/test/<class>/*.png`` (``ImageFolder``);
  * the official python batches ``ROOT/cifar-10-batches-py`` (``CIFAR10``);
  * ``download=True``: ``CIFAR10`` downloads the batches into ROOT.
Decoding happens once; the tensors are cached on disk under a key made of the source's location,
its files' sizes and modification times, and the classes, so a changed source is decoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from trainables.config import DataConfig

# torchvision is imported where images are read, not here: a Ray trial needs only the tensors,
# and importing torchvision would add ~1.5 s to every trial actor's start.
CIFAR_FOLDER = "cifar-10-batches-py"

IMAGE_SIZE = (3, 32, 32)
LAYOUTS_HELP = (
    "expected ROOT/train/<class>/*.png and ROOT/test/<class>/*.png, or ROOT/cifar-10-batches-py, or --download"
)
CACHE_FORMAT = 1


class DataError(ValueError):
    """The data root or its contents cannot be used; the message names the path."""


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # uint8, (N, 3, 32, 32)
    y: torch.Tensor  # int64, (N,), labels 0..k-1 in the order of DataConfig.classes

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class StudyData:
    """What a run trains on. ``test`` is None unless asked for: selection never sees it."""

    train: Split
    val: Split
    test: Split | None
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def summary(self) -> dict:
        return {
            "classes": list(self.classes),
            "train_size": len(self.train),
            "val_size": len(self.val),
            "test_size": len(self.test) if self.test is not None else 0,
            "mean": list(self.mean),
            "std": list(self.std),
        }


# ---------------------------------------------------------------- layout and classes (no decoding)


def detect_layout(cfg: DataConfig) -> str:
    """'imagefolder', 'cifar-python' or 'download'; DataError for anything else."""
    root = Path(cfg.root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "imagefolder"
    if (root / CIFAR_FOLDER).is_dir():
        return "cifar-python"
    if cfg.download:
        return "download"
    if not root.exists():
        raise DataError(f"data root {root} does not exist ({LAYOUTS_HELP})")
    raise DataError(f"data root {root} is not a recognised layout ({LAYOUTS_HELP})")


def _folder_classes(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def available_classes(cfg: DataConfig, layout: str) -> list[str]:
    root = Path(cfg.root)
    if layout == "imagefolder":
        train, test = _folder_classes(root / "train"), _folder_classes(root / "test")
        if not train:
            raise DataError(f"data root {root}/train holds no class folders ({LAYOUTS_HELP})")
        if train != test:
            raise DataError(f"data root {root}: train and test hold different class folders")
        return train
    from torchvision import datasets

    meta = root / CIFAR_FOLDER / datasets.CIFAR10.meta["filename"]
    if meta.is_file():
        import pickle  # the official meta file is a pickle of a dict of strings

        with open(meta, "rb") as f:
            return list(pickle.load(f, encoding="latin1")[datasets.CIFAR10.meta["key"]])
    return ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def check_data(cfg: DataConfig) -> str:
    """Validate root and class names without decoding an image; returns the layout."""
    layout = detect_layout(cfg)
    valid = available_classes(cfg, layout)
    unknown = [c for c in cfg.classes if c not in valid]
    if unknown:
        raise DataError(f"unknown class {unknown[0]!r} (valid: {', '.join(valid)})")
    return layout


# ---------------------------------------------------------------- decoding and cache


def _class_subset_folder(root: str, classes: tuple[str, ...], transform):
    """ImageFolder restricted to the requested classes, labelled in the order given."""
    from torchvision import datasets

    class ClassSubsetFolder(datasets.ImageFolder):
        def find_classes(self, directory):
            return list(classes), {name: i for i, name in enumerate(classes)}

    return ClassSubsetFolder(root, transform=transform)


def _fingerprint(cfg: DataConfig, layout: str) -> str:
    root = Path(cfg.root).resolve()
    h = hashlib.sha256(json.dumps([CACHE_FORMAT, layout, str(root), list(cfg.classes)]).encode())
    if layout == "imagefolder":
        dirs = [root / split / c for split in ("train", "test") for c in cfg.classes]
    else:
        dirs = [root / CIFAR_FOLDER]
    for d in dirs:
        if not d.is_dir():
            continue
        with os.scandir(d) as it:
            entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in it if e.is_file())
        h.update(json.dumps([str(d), entries]).encode())
    return h.hexdigest()[:24]


def _decode_folder(folder: str, classes: tuple[str, ...]) -> Split:
    from torchvision.transforms import v2

    to_tensor = v2.Compose([v2.PILToTensor(), v2.Resize(IMAGE_SIZE[1:], antialias=True)])
    ds = _class_subset_folder(folder, classes, transform=to_tensor)
    if len(ds) == 0:
        raise DataError(f"no images found under {folder} for classes {','.join(classes)}")
    xs = torch.empty((len(ds), *IMAGE_SIZE), dtype=torch.uint8)
    for i, (path, _) in enumerate(ds.samples):
        try:
            image, _ = ds[i]
        except Exception as err:  # PIL raises several types for broken files
            raise DataError(f"cannot decode image {path}: {err}") from None
        xs[i] = image
    return Split(xs, torch.tensor(ds.targets, dtype=torch.int64))


def _decode_cifar(root: str, train: bool, classes: tuple[str, ...], download: bool) -> Split:
    from torchvision import datasets

    ds = datasets.CIFAR10(root, train=train, download=download)
    index = {name: i for i, name in enumerate(ds.classes)}
    wanted = torch.tensor([index[c] for c in classes])
    targets = torch.tensor(ds.targets)
    keep = torch.isin(targets, wanted)
    remap = torch.full((len(ds.classes),), -1, dtype=torch.int64)
    remap[wanted] = torch.arange(len(classes))
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2)[keep].contiguous()
    return Split(x, remap[targets[keep]])


def default_cache_dir() -> Path:
    return Path(os.environ.get("BIRDPLANE_CACHE") or Path.home() / ".cache" / "birdplane")


def load_images(cfg: DataConfig) -> tuple[Split, Split]:
    """(official train, official test) of the chosen classes as uint8 tensors, cached on disk."""
    layout = check_data(cfg)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    cache_file = cache_dir / f"{_fingerprint(cfg, layout)}.pt"
    if cache_file.is_file():
        blob = torch.load(cache_file, weights_only=True)
        return Split(blob["train_x"], blob["train_y"]), Split(blob["test_x"], blob["test_y"])
    if layout == "imagefolder":
        train = _decode_folder(str(Path(cfg.root) / "train"), cfg.classes)
        test = _decode_folder(str(Path(cfg.root) / "test"), cfg.classes)
    else:
        download = layout == "download"
        train = _decode_cifar(cfg.root, True, cfg.classes, download)
        test = _decode_cifar(cfg.root, False, cfg.classes, download)
    blob = {"train_x": train.x, "train_y": train.y, "test_x": test.x, "test_y": test.y}
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed, so a killed process never leaves half a cache.
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(blob, tmp)
        os.replace(tmp, cache_file)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return train, test


# ---------------------------------------------------------------- splits and statistics


def stratified_holdout(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, held_out): ``fraction`` of every class held out, chosen by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    held = []
    for label in torch.unique(y):
        members = torch.nonzero(y == label).flatten()
        n_out = int(round(fraction * len(members)))
        held.append(members[torch.randperm(len(members), generator=g)[:n_out]])
    held_out = torch.sort(torch.cat(held)).values
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[held_out] = False
    return torch.nonzero(mask).flatten(), held_out


def per_class_subset(y: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    picks = []
    for label in torch.unique(y):
        members = torch.nonzero(y == label).flatten()
        picks.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    return torch.sort(torch.cat(picks)).values


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units (what ToTensor produces)."""
    flat = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).double() / 255.0
    return tuple(flat.mean(dim=1).tolist()), tuple(flat.std(dim=1).tolist())


# ---------------------------------------------------------------- label noise and the two halves of val

# Their own fixed seeds, apart from the split seed and every run's seed: the same training labels
# are flipped in every cell and seed of a study, and the same validation images choose.
LABEL_NOISE_SEED = 19
VAL_HALVES_SEED = 20


def noisy_labels(y: torch.Tensor, share: float, n_classes: int, seed: int = LABEL_NOISE_SEED) -> torch.Tensor:
    """``y`` with exactly round(share * len(y)) labels changed to another class (uniformly among the
    others). The draws do not depend on ``share``: the labels flipped at 0.1 are among those flipped
    at 0.2, so a noise axis adds noise to the same data. ``share`` 0 returns ``y`` itself."""
    if share == 0:
        return y
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    shift = torch.randint(1, n_classes, (len(y),), generator=g)
    flipped = order[: int(round(share * len(y)))]
    out = y.clone()
    out[flipped] = (y[flipped] + shift[flipped]) % n_classes
    return out


def validation_halves(y: torch.Tensor, seed: int = VAL_HALVES_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (selection, reporting) of the validation split, half of every class each: a tuned
    hyperparameter is chosen on the first half and its numbers are reported on the second."""
    reporting, selection = stratified_holdout(y, 0.5, seed)
    return selection, reporting


def load_study_data(cfg: DataConfig, include_test: bool = False) -> StudyData:
    train_all, test = load_images(cfg)
    if cfg.subset:
        keep = per_class_subset(train_all.y, cfg.subset, cfg.split_seed)
        train_all = Split(train_all.x[keep], train_all.y[keep])
    if cfg.val_split == "book":
        train, val = train_all, test
    else:
        keep, held = stratified_holdout(train_all.y, cfg.val_fraction, cfg.split_seed)
        train = Split(train_all.x[keep], train_all.y[keep])
        val = Split(train_all.x[held], train_all.y[held])
    mean, std = channel_stats(train.x)
    return StudyData(train, val, test if include_test else None, cfg.classes, mean, std)
