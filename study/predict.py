"""`birdplane predict`: classify image files with a saved model bundle (a path or an MLflow URI)."""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from study.errors import UsageError
from trainables.bundle import ModelBundle, load_bundle
from trainables.loop import normalise

BATCH = 512


@dataclass
class Prediction:
    path: str
    label: str | None = None
    probability: float | None = None
    error: str | None = None


@contextmanager
def registry(uri: str):
    """MLflow's registry URI set to ``uri`` for the block, then put back: ``mlflow.set_registry_uri``
    also exports MLFLOW_REGISTRY_URI, which would leak into the caller's later clients and child
    processes (a later `rerun --register` registered into this store instead of its own)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils

    previous, previous_env = registry_utils._registry_uri, os.environ.get("MLFLOW_REGISTRY_URI")
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        registry_utils._registry_uri = previous
        if previous_env is None:
            os.environ.pop("MLFLOW_REGISTRY_URI", None)
        else:
            os.environ["MLFLOW_REGISTRY_URI"] = previous_env


def resolve_model(model: str, tracking_uri: str | None, folder: Path) -> Path:
    """A local file, or an MLflow artifact URI (runs:/ID/model.pt, models:/..., mlflow-artifacts:/...)
    downloaded into ``folder`` (the caller's, which it removes)."""
    if "://" in model or model.startswith(("runs:/", "models:/")):
        import mlflow.artifacts

        from study.preflight import check_store_exists, resolve_tracking_uri

        uri = resolve_tracking_uri(tracking_uri)
        if not model.startswith("mlflow-artifacts:"):  # runs:/ and models:/ are looked up in the store
            try:
                check_store_exists(uri)  # reading a model must not create ./mlflow.db
            except UsageError as err:
                raise UsageError(f"cannot fetch model {model}: {err}") from None
        try:
            with registry(uri):  # models:/ URIs are resolved by the registry, not the tracking URI
                path = Path(
                    mlflow.artifacts.download_artifacts(artifact_uri=model, tracking_uri=uri, dst_path=str(folder))
                )
        except Exception as err:  # MLflow raises several types for a bad URI
            raise UsageError(f"cannot fetch model {model}: {str(err).splitlines()[0]}") from None
        if path.is_dir():  # a registered version (models:/NAME/1) is a folder holding model.pt
            path = path / "model.pt"
            if not path.is_file():
                raise UsageError(f"{model} holds no model.pt: not a birdplane model")
        return path
    path = Path(model)
    if not path.is_file():
        raise UsageError(f"model file {model} does not exist")
    return path


def load_model(model: str, tracking_uri: str | None = None, weights: str = "best") -> ModelBundle:
    """The bundle in memory; a downloaded copy lives in a temporary folder only while it is read."""
    with tempfile.TemporaryDirectory(prefix="birdplane-model-") as folder:
        path = resolve_model(model, tracking_uri, Path(folder))
        try:
            return load_bundle(path, weights)
        except Exception as err:  # not a bundle: a pickle with objects, a truncated file, another format
            raise UsageError(f"{model} is not a birdplane model file ({type(err).__name__})") from None


def expand(inputs: list[str]) -> list[Path]:
    """Files as given; folders are walked (sorted) for every file inside."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.rglob("*") if f.is_file())
        else:
            paths.append(p)
    return paths


def read_image(path: Path) -> torch.Tensor:
    """uint8 RGB (3, 32, 32), whatever the file holds, as torchvision brings it there.

    Decoded by torchvision with the JPEG's EXIF orientation applied; grayscale, palette and alpha
    become RGB; 16-bit images are rescaled to 8 bits (``to_dtype(..., scale=True)``, not a cast);
    an animated GIF gives its first frame; any size is resized to 32x32 as training images are.
    """
    image = decode_image(str(path), mode=ImageReadMode.RGB, apply_exif_orientation=True)
    if image.ndim == 4:  # a GIF with several frames
        image = image[0]
    if image.dtype != torch.uint8:
        image = v2.functional.to_dtype(image, torch.uint8, scale=True)
    if image.shape[1:] != (32, 32):
        image = v2.functional.resize(image, [32, 32], antialias=True)
    return image


def predict(bundle: ModelBundle, paths: list[Path]) -> list[Prediction]:
    results, images, slots = [], [], []
    for path in paths:
        try:
            images.append(read_image(path))
            slots.append(len(results))
            results.append(Prediction(str(path)))
        except Exception as err:  # torchvision raises RuntimeError/ValueError for non-images
            reason = "not a readable image" if path.exists() else "no such file"
            detail = re.sub(r"^.*\.cpp:\d+, ", "", str(err).splitlines()[0] if str(err) else type(err).__name__)
            results.append(Prediction(str(path), error=f"{reason} ({detail[:100]})"))
    loss = bundle.loss
    with torch.inference_mode():
        for start in range(0, len(images), BATCH):
            batch = torch.stack(images[start : start + BATCH])
            x = normalise(batch, bundle.mean, bundle.std, torch.device("cpu"))
            probs = loss.probabilities(bundle.model(x))
            conf, label = probs.max(dim=1)
            for offset, (c, index) in enumerate(zip(conf.tolist(), label.tolist(), strict=False)):
                slot = results[slots[start + offset]]
                slot.label, slot.probability = bundle.classes[index], c
    return results
