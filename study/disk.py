"""A full disk under a study: stop at once with one line, keep what a --resume needs, read back
what a full disk left truncated.

* ``DiskGuard`` (a Tune callback) notices a trial that failed for want of space (ENOSPC while it
  wrote a checkpoint) and ends the experiment at the end of Tune's step, before Tune retries the
  trial against the same full disk. The trial is left to be retried: ``--resume`` continues it
  from its last good checkpoint.
* It also keeps a copy of Ray's last snapshot that reads (``experiment_state-*.json`` and the
  searcher's state beside it) in ``.birdplane-snapshot/``: Ray rewrites its snapshot in place, so
  a write that hits ENOSPC can leave it empty.
* ``intact_snapshot`` (before ``Tuner.restore``) and ``analysis`` (for ``sync``) pass over a
  truncated snapshot to the last good one, or say in one line what cannot be recovered.

Imported by the functions that run or read a study (it imports Ray).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import pickle
import shutil
import time

from ray import tune

from study.errors import StorageFull, UsageError
from trainables.files import atomic_paths
from trainables.tune_adapter import is_disk_full

log = logging.getLogger(__name__)

STATE_PATTERN = "experiment_state-*.json"  # Ray Tune's TuneController.CKPT_FILE_TMPL
# What else Ray writes with each snapshot, named by the session (SearchGenerator's and Searcher's
# CKPT_FILE_TMPL).
SESSION_FILES = ("search_gen_state-{}.json", "searcher-state-{}.pkl", "basic-variant-state-{}.json")
BACKUP = ".birdplane-snapshot"
MARGIN = 16 * 2**20  # free space beyond the largest checkpoint that a study needs to go on
COPY_EVERY_S = 10.0  # the copy of Ray's snapshot is refreshed at most this often (Ray's own least period)


def free_bytes(path: str) -> int | None:
    """Free space of the local folder ``path`` (or of its nearest existing parent); None for a URI."""
    if "://" in path:
        return None
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def full_message(storage: str, needed: int) -> str:
    free = free_bytes(storage)
    have = f"{mb(free)} free" if free is not None else "free space unknown"
    return f"no space left on device under {storage} ({have}; it needs at least {mb(needed + MARGIN)} more)"


class DiskGuard(tune.Callback):
    """Ends the experiment when a trial failed for want of space, instead of retrying it."""

    def __init__(self, storage: str, experiment_path: str):
        self.storage, self.experiment_path = storage, experiment_path
        self.needed = 0  # the largest checkpoint a trial wrote (bytes)
        self.full = False
        self._seen: dict[str, tuple] = {}  # file -> (mtime, size) of the copy kept
        self._copied = -math.inf  # time.monotonic() of the last copy

    def __getstate__(self) -> dict:
        return {**self.__dict__, "full": False, "_seen": {}, "_copied": -math.inf}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.needed = max(self.needed, int(result.get("checkpoint_bytes") or 0))

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._check(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._check(trial)

    def _check(self, trial) -> None:
        try:
            error = trial.get_pickled_error() or trial.get_error()
        except Exception as err:  # the error file itself may be what the full disk truncated
            error = err
        free = free_bytes(self.experiment_path)
        if is_disk_full(error) or (free is not None and free < self.needed + MARGIN):
            self.full = True

    def on_step_end(self, iteration, trials, **info) -> None:
        if self.full:
            raise StorageFull(full_message(self.storage, self.needed))
        staging = _staging(trials)
        # From Ray's staging folder: after each of Ray's saves (Tune's step saved, if at all, just
        # before this call), so that the copy is seldom behind what the upload put on the storage path.
        if staging is not None or time.monotonic() - self._copied >= COPY_EVERY_S:
            self._keep_snapshot(staging)

    def on_experiment_end(self, trials, **info) -> None:
        self._keep_snapshot(_staging(trials))  # Tune's final snapshot, written (and waited for) before this call

    def _keep_snapshot(self, source: str | None = None) -> None:
        """A copy of Ray's newest snapshot (and the searcher's state, tuner.pkl), when it changed and
        reads. ``source``: Ray's driver staging folder, where Tune's step wrote its snapshot (the
        experiment state and the searcher's, in one go, before the callbacks' on_step_end) and from
        where a background sync uploads it file by file: copied from there, the files are one
        snapshot's, never the storage folder's mix of an upload a SIGKILL cut short. None: the
        experiment folder."""
        if "://" in self.experiment_path:
            return
        self._copied = time.monotonic()
        source = source if source and os.path.isdir(source) else self.experiment_path
        newest = _newest(source)
        if newest is None:
            return
        tuner = os.path.join(source, "tuner.pkl")
        if not os.path.exists(tuner):
            tuner = os.path.join(self.experiment_path, "tuner.pkl")
        files = [p for p in (*newest, tuner) if os.path.exists(p)]
        seen = {p: (os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in files}
        changed = [p for p in files if self._seen.get(p) != seen[p]]
        if not changed or not all(_reads(p) for p in changed):
            return
        folder = os.path.join(self.experiment_path, BACKUP)
        try:
            os.makedirs(folder, exist_ok=True)
            for old in os.listdir(folder):
                if not any(old == os.path.basename(p) for p in files):
                    os.unlink(os.path.join(folder, old))
            with atomic_paths([os.path.join(folder, os.path.basename(p)) for p in files]) as temps:
                for src, tmp in zip(files, temps, strict=True):
                    shutil.copyfile(src, tmp)
            self._seen = seen
        except OSError as err:  # no room for the copy: the one before stays
            log.warning("could not keep a copy of Ray's snapshot: %s", err)


def _staging(trials) -> str | None:
    """Ray's driver staging folder of the experiment (where Tune writes its snapshot before the
    upload to the storage path), from any trial's storage context; None when none says."""
    for trial in trials or ():
        storage = getattr(trial, "storage", None)
        path = getattr(storage, "experiment_driver_staging_path", None) if storage is not None else None
        if path:
            return path
    return None


def _session(name: str) -> str | None:
    """The session of one of Ray's snapshot files (experiment_state-S.json, the searcher's files)."""
    for template in ("experiment_state-{}.json", *SESSION_FILES):
        head, tail = template.split("{}")
        if name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail):
            return name[len(head) : -len(tail)]
    return None


def _newest(folder: str) -> tuple[str, ...] | None:
    """Ray's newest experiment_state file in ``folder`` and the searcher's files of its session."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    states = sorted(fnmatch.filter(names, STATE_PATTERN))
    if not states:
        return None
    session = states[-1][len("experiment_state-") : -len(".json")]
    others = [t.format(session) for t in SESSION_FILES]
    return (os.path.join(folder, states[-1]), *(os.path.join(folder, n) for n in others if n in names))


def _reads(path: str) -> bool:
    """Whether Ray's file ``path`` reads whole: as JSON, or as a pickle (Ray pickles some files
    it names .json, such as search_gen_state-*.json)."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError:
        return False
    try:
        json.loads(blob)
        return True
    except ValueError:
        pass
    try:
        pickle.loads(blob)  # cloudpickle writes plain pickles
        return True
    except Exception:
        return False


def _broken(folder: str) -> list[str]:
    names = os.listdir(folder)
    found = [n for p in (STATE_PATTERN, *(t.format("*") for t in SESSION_FILES)) for n in fnmatch.filter(names, p)]
    found += [n for n in ("tuner.pkl",) if n in names]
    return [n for n in sorted(found) if not _reads(os.path.join(folder, n))]


def _kept(experiment_path: str) -> set[str]:
    backup = os.path.join(experiment_path, BACKUP)
    return {n for n in (os.listdir(backup) if os.path.isdir(backup) else []) if _reads(os.path.join(backup, n))}


def _set_aside(experiment_path: str, broken: set[str], kept: set[str]) -> list[str]:
    """The files of Ray's newest sessions whose snapshot is truncated with no good copy kept, while
    an older session's snapshot reads (a resumed study killed while Ray rewrote the new session's
    file, before birdplane's first copy of it): set aside, Ray restores the older session's."""
    names = set(os.listdir(experiment_path))
    states = sorted(fnmatch.filter(names, STATE_PATTERN), reverse=True)
    aside: list[str] = []
    for newer, *older in (states[i:] for i in range(len(states))):
        if not (newer in broken and newer not in kept) or not any(o not in broken or o in kept for o in older):
            break
        session = newer[len("experiment_state-") : -len(".json")]
        aside += [newer, *(n for n in (t.format(session) for t in SESSION_FILES) if n in names)]
    return aside


def unrecoverable(experiment_path: str, name: str, what: str = "resume") -> str | None:
    """The one line that says why Ray's snapshot of the study cannot be read back (every copy of
    it truncated or missing), or None when ``intact_snapshot`` can restore one. Reads only."""
    if "://" in experiment_path:
        return None
    broken, kept = set(_broken(experiment_path)), _kept(experiment_path)
    aside = set(_set_aside(experiment_path, broken, kept))
    broken -= aside
    names = set(os.listdir(experiment_path)) - aside
    usable = (names - broken) | kept
    if fnmatch.filter(usable, STATE_PATTERN) and "tuner.pkl" in usable and not broken - kept:
        return None
    bad = sorted(broken | aside | {n[: -len(".corrupt")] for n in names if n.endswith(".corrupt")})
    return (
        f"cannot {what} {name!r}: Ray's {', '.join(bad) or 'experiment_state-*.json'} in {experiment_path} "
        f"{'is' if len(bad) <= 1 else 'are'} truncated or missing and no earlier snapshot reads; "
        "the MLflow runs keep every epoch they logged; start the study again under another --name"
    )


def intact_snapshot(experiment_path: str, name: str, what: str = "resume") -> list[str]:
    """Before ``Tuner.restore`` (and ``sync``): any truncated snapshot file of Ray's is moved aside
    (NAME.corrupt) and, where birdplane kept a copy of the last good one, that copy is put in its
    place, with the copy's other files of that snapshot (``_unpaired``: the experiment state and
    the searcher's state are restored from one snapshot, also when an upload cut short left them
    of two); a newer session's truncated snapshot with no copy is set aside whole when an older
    session's reads. Returns what was replaced or set aside; raises UsageError (one line) when
    nothing that reads is left."""
    problem = unrecoverable(experiment_path, name, what)
    if problem:
        raise UsageError(problem)
    if "://" in experiment_path:
        return []
    aside = _set_aside(experiment_path, set(_broken(experiment_path)), _kept(experiment_path))
    for n in aside:
        os.replace(os.path.join(experiment_path, n), os.path.join(experiment_path, n + ".corrupt"))
    if aside:
        log.warning("Ray's %s in %s were truncated: resuming from the session before", aside, experiment_path)
    broken = _broken(experiment_path)
    backup = os.path.join(experiment_path, BACKUP)
    paired = _unpaired(experiment_path, broken)
    for n in broken:
        os.replace(os.path.join(experiment_path, n), os.path.join(experiment_path, n + ".corrupt"))
        shutil.copyfile(os.path.join(backup, n), os.path.join(experiment_path, n))
    for n in paired:
        if os.path.exists(os.path.join(experiment_path, n)):
            os.replace(os.path.join(experiment_path, n), os.path.join(experiment_path, n + ".unpaired"))
        shutil.copyfile(os.path.join(backup, n), os.path.join(experiment_path, n))
    if broken:
        log.warning("Ray's %s in %s were truncated: resuming from the last good snapshot", broken, experiment_path)
    if paired:
        log.warning("Ray's %s in %s were of another snapshot: resuming from the copy of one", paired, experiment_path)
    return [*aside, *broken, *paired]


def _unpaired(experiment_path: str, broken: list[str]) -> list[str]:
    """The files of the copy's snapshot that differ from those in place (besides ``broken``), for
    the sessions ``broken`` names and the newest session when the copy is of it: restored with the
    truncated ones, so that Ray restores one snapshot, its experiment state and the searcher's
    together. Ray uploads a snapshot file by file; a SIGKILL during the upload can leave the
    searcher's new state beside the experiment state before it (truncated or whole): such an older
    experiment state beside a searcher that had made the grid's next trial left a resumed study
    waiting for that trial forever. The copy is taken after each of Ray's saves from the staging
    folder the upload reads (DiskGuard), one snapshot whole; when the storage folder's is one save
    newer than it (the SIGKILL fell between an upload and the copy), the resume starts from the
    copy's, as after a SIGKILL one save earlier."""
    backup = os.path.join(experiment_path, BACKUP)
    kept = _kept(experiment_path)
    sessions = {_session(n) for n in broken} - {None}
    states = sorted(fnmatch.filter(os.listdir(experiment_path), STATE_PATTERN))
    if states and states[-1] in kept:
        sessions.add(_session(states[-1]))
    found = []
    for n in sorted(kept):
        if _session(n) not in sessions or n in broken:
            continue
        try:
            with open(os.path.join(experiment_path, n), "rb") as here, open(os.path.join(backup, n), "rb") as copy:
                same = here.read() == copy.read()
        except FileNotFoundError:
            same = False
        if not same:
            found.append(n)
    return found


def _restore_points(experiment_path: str) -> dict[str, str]:
    """What Ray's newest snapshot (the one ``Tuner.restore`` reads) would restore each trial from:
    trial id -> that checkpoint's folder under ``experiment_path`` (a trial with none is left out)."""
    from ray.tune.utils.serialization import TuneFunctionDecoder

    states = fnmatch.filter(os.listdir(experiment_path), STATE_PATTERN)
    if not states:
        return {}
    with open(os.path.join(experiment_path, max(states))) as f:  # Ray's own choice: the newest name
        snapshot = json.load(f)
    points = {}
    for state, metadata in snapshot.get("trial_data", []):
        # Ray reads its own snapshot so (ray.tune.utils.serialization._loads_with_cloudpickle)
        manager = json.loads(metadata, cls=TuneFunctionDecoder, allow_cloudpickle=True).get("checkpoint_manager")
        latest = getattr(manager, "latest_checkpoint_result", None)
        if latest is not None and latest.checkpoint is not None:
            # The trial's folder and the checkpoint's, under this experiment folder: Ray re-roots a
            # moved experiment's paths the same way (Trial.set_storage).
            trial_dir, checkpoint_dir = latest.checkpoint.path.rstrip("/").split("/")[-2:]
            points[json.loads(state)["trial_id"]] = os.path.join(experiment_path, trial_dir, checkpoint_dir)
    return points


def deleted_restore_points(experiment_path: str) -> list[str]:
    """Before ``Tuner.restore``: a trial whose snapshot names a checkpoint that is gone gets an
    empty folder in its place, so that Ray restores it instead of failing it ("Could not recover
    from checkpoint as it does not exist on storage anymore"); the trainable then finds no state
    there and takes the trial's newest checkpoint that reads (trainables.tune_adapter.read_checkpoint).
    Ray forces a snapshot once a trial made ``num_to_keep`` checkpoints since the last one, but a
    trial whose epochs are shorter than a controller step makes the next one, deleting the oldest,
    before that snapshot is written: a SIGKILL then leaves the snapshot naming a deleted folder
    (measured with num_to_keep=2: a population study's resume failed 1 time in 3). Returns the
    folders made. Local storage only (Ray's own check covers a URI's)."""
    if "://" in experiment_path:
        return []
    try:
        points = _restore_points(experiment_path)
    except Exception as err:  # Ray's restore will say what is wrong with its own snapshot
        log.warning("could not read the checkpoints Ray's snapshot names in %s: %s", experiment_path, err)
        return []
    made = []
    for trial_id, folder in sorted(points.items()):
        if not os.path.exists(folder) and os.path.isdir(os.path.dirname(folder)):
            os.mkdir(folder)
            made.append(folder)
            log.warning(
                "trial %s: its snapshot's checkpoint %s was deleted: it resumes from its newest", trial_id, folder
            )
    return made


def drop_placeholders(folders: list[str]) -> None:
    """After the study: the folders ``deleted_restore_points`` made that are still empty (a
    finished trial replays its result and saves nothing; a resumed one's newer checkpoints make
    Ray delete its placeholder with its other old ones) are removed."""
    for folder in folders:
        try:
            os.rmdir(folder)  # only an empty folder
        except OSError:
            pass


def analysis(experiment_path: str, name: str):
    """Ray's ExperimentAnalysis of the study (``sync``), after ``intact_snapshot`` repaired a
    truncated snapshot; UsageError (one line) when nothing that reads is left."""
    from ray.tune import ExperimentAnalysis

    intact_snapshot(experiment_path, name, "sync")
    try:
        return ExperimentAnalysis(experiment_path)
    except Exception as err:  # a snapshot that reads as JSON but not as Tune's state
        raise UsageError(f"cannot sync {name!r}: Ray's snapshot in {experiment_path} cannot be read ({err})") from None
