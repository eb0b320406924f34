"""A study's name is taken once: the experiment folder is created atomically by the start that takes
it, and a lock inside it is held while a driver runs the study.

* A fresh start creates STORAGE/NAME with ``os.mkdir``: of two starts at once, exactly one succeeds;
  the other is refused in one line (the folder exists).
* Every driver (a fresh start or a ``--resume``) and ``sync`` hold ``fcntl.flock`` on
  NAME/.birdplane.lock while they run: a second ``--resume`` or a ``sync`` of a running study is
  refused. The kernel drops the lock when the process dies, SIGKILL included, so a lock left by a
  killed driver never blocks a later --resume.
* A start that fails before birdplane's manifest is written gives its name back (the folder it
  made is removed again), so a corrected retry is not refused.
* In MLflow, a fresh start is refused when the experiment already holds a parent run of that study
  (``check_mlflow_free``); two starts racing there are settled in ``MlflowTrialLogger.open_parent``.

Only local folders (and file:// URIs) can be locked; a cloud storage path (s3://, gs://) has no
atomic create that pyarrow offers, and is checked (not locked) as before.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from study import manifest
from study.errors import UsageError

LOCK_FILE = ".birdplane.lock"


def local_folder(path: str) -> str | None:
    """The local folder of an experiment path (a plain path or a file:// URI); None for a cloud URI."""
    if "://" not in path:
        return os.path.abspath(path)
    if path.startswith("file://"):
        return urlparse(path).path
    return None


@contextmanager
def claimed(path: str, name: str, resume: bool) -> Iterator[None]:
    """Hold study ``name`` at experiment folder ``path`` for the block (see the module's docstring)."""
    folder = local_folder(path)
    if folder is None:
        yield
        return
    storage = os.path.dirname(folder)
    made_storage = not os.path.isdir(storage)
    os.makedirs(storage, exist_ok=True)
    created = False
    if not resume:
        try:
            os.mkdir(folder)  # atomic: one of two simultaneous starts gets FileExistsError
            created = True
        except FileExistsError:
            raise UsageError(
                f"a study named {name!r} already exists under {storage}: pass --resume or another --name"
            ) from None
    # The lock file is opened, never replaced: flock holds on its inode (no atomic_path here).
    fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"study {name!r} under {storage} is running in another process: wait for it to end (or stop it) first"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock
        if created and not os.path.isfile(os.path.join(folder, manifest.MANIFEST_FILE)):
            _give_back(folder, storage if made_storage else None)


def _give_back(folder: str, storage: str | None) -> None:
    """Remove the folder of a start that never got as far as its manifest (it holds the lock file
    only), and the storage folder it made for it, if nothing else is in it."""
    try:
        os.unlink(os.path.join(folder, LOCK_FILE))
        os.rmdir(folder)
        if storage is not None:
            os.rmdir(storage)
    except OSError:  # something else is in it now: leave it
        pass


def check_mlflow_free(tracking_uri: str, experiment: str, study_name: str, kind: str) -> None:
    """A fresh start's study must not exist in MLflow already (under another storage path, say):
    its trials would join the old study's parent run."""
    from analysis.record import TAG_ROLE, TAG_STUDY
    from study import records

    if tracking_uri.startswith("sqlite:///") and not os.path.isfile(tracking_uri[len("sqlite:///") :]):
        return  # a store that does not exist yet holds no study (and is not created here)
    client = records.open_client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return
    found = records.find_run(client, exp.experiment_id, {TAG_STUDY: study_name, TAG_ROLE: kind})
    if found is not None:
        raise UsageError(
            f"MLflow experiment {experiment!r} at {tracking_uri} already holds the {kind} {study_name!r} "
            f"(parent run {found}): pass --resume with its --storage-path, or another --name"
        )


@contextmanager
def study_claimed(prep, kind: str) -> Iterator[None]:
    """``claimed`` for a prepared study, after ``check_mlflow_free`` for a fresh one (an extension
    joins its sweep's parent run on purpose)."""
    opts = prep.options
    with claimed(prep.path, opts.name, opts.resume):
        if not opts.resume and not getattr(opts, "extends", None):
            check_mlflow_free(prep.tracking_uri, prep.experiment, prep.study_name, kind)
        yield
