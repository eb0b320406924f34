"""birdplane's own record of a study, written into Ray's experiment folder.

What `--resume` and `birdplane sync` need is read from here, never from Ray's private files
(``tuner.pkl``): the tracking URI, the MLflow experiment and parent run, the data config, the search
space and the flags. The folder may be local or a URI (``s3://``, ``file://``): pyarrow's
filesystems, which Ray uses for its storage too, read and write it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from study.errors import UsageError
from trainables.files import write_text_atomic

MANIFEST_FILE = "birdplane.json"
FORMAT = 1
DEFAULT_STORAGE_PATH = "~/ray_results"  # Ray Tune's own default


@dataclass(frozen=True)
class Manifest:
    kind: str  # the study's design: "sweep" or "capacity"
    name: str
    experiment: str
    tracking_uri: str
    parent_run_id: str
    data: dict  # DataConfig.to_dict()
    space: dict  # SearchSpace.to_dict()
    options: dict = field(default_factory=dict)  # the flags the study was launched with
    optuna_storage: str | None = None
    format: int = FORMAT

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def storage_root(storage_path: str | None) -> str:
    """Where studies live: ``--storage-path`` (a local folder, made absolute, or a URI as given),
    by default Ray's own ~/ray_results."""
    storage = storage_path or os.path.expanduser(DEFAULT_STORAGE_PATH)
    return storage if "://" in storage else os.path.abspath(storage)


def experiment_path(storage_path: str | None, name: str) -> str:
    """Ray's experiment folder of study ``name``: STORAGE/NAME, STORAGE a local path or a URI."""
    storage = storage_root(storage_path)
    if "://" in storage:
        return storage.rstrip("/") + "/" + name
    return os.path.join(storage, name)


def _filesystem(path: str):
    import pyarrow.fs

    if "://" not in path:
        return pyarrow.fs.LocalFileSystem(), os.path.abspath(path)
    return pyarrow.fs.FileSystem.from_uri(path)


def exists(folder: str) -> bool:
    """Whether anything is at ``folder`` (a study of that name was started there)."""
    import pyarrow.fs

    fs, path = _filesystem(folder)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def write(folder: str, manifest: Manifest) -> None:
    """Written all-or-nothing (trainables/files.py locally; under a temporary name and moved on a
    URI), so a reader never sees half a manifest, and a full disk leaves none rather than half."""
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True)
    fs, path = _filesystem(folder)
    fs.create_dir(path, recursive=True)
    if "://" not in folder:
        write_text_atomic(os.path.join(path, MANIFEST_FILE), text)
        return
    final, tmp = f"{path}/{MANIFEST_FILE}", f"{path}/.{MANIFEST_FILE}.tmp"
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(text.encode())
    except BaseException:
        try:
            fs.delete_file(tmp)
        except OSError:
            pass
        raise
    fs.move(tmp, final)


def read(folder: str) -> Manifest:
    """The manifest of the study at ``folder``; UsageError when there is none."""
    import pyarrow.fs

    fs, path = _filesystem(folder)
    final = f"{path}/{MANIFEST_FILE}"
    if fs.get_file_info(final).type != pyarrow.fs.FileType.File:
        raise UsageError(f"no birdplane study at {folder} (no {MANIFEST_FILE})")
    with fs.open_input_stream(final) as f:
        try:
            blob = json.loads(f.read().decode())
            known = {f.name for f in dataclasses.fields(Manifest)}
            return Manifest(**{k: v for k, v in blob.items() if k in known})
        except (ValueError, TypeError) as err:
            raise UsageError(f"{final} is not a birdplane manifest ({err})") from None
