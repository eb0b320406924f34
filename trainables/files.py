"""Files written all-or-nothing: each is written to a temporary file beside its target and renamed
into place only when every file of the group was written, so a crash or a full disk leaves the old
files (or none), never half a file. The files get the user's umask, as ``open`` would give them."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_paths(targets: Sequence[Path | str]) -> Iterator[list[Path]]:
    """Yields one temporary path per target, in the target's folder. When the block ends without an
    exception, each is flushed to disk and renamed onto its target (all of them, or, if a rename
    fails part-way, the ones before it); when it raises, every temporary file is removed and no
    target is touched."""
    targets = [Path(t) for t in targets]
    temps: list[Path] = []
    try:
        for target in targets:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            temps.append(Path(tmp))
        yield temps
        mode = 0o666 & ~_umask()
        for tmp in temps:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, target in zip(temps, targets, strict=True):
        os.replace(tmp, target)


@contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """``atomic_paths`` for one file."""
    with atomic_paths([target]) as (tmp,):
        yield tmp


def write_text_atomic(target: Path | str, text: str) -> Path:
    """Writes ``text`` to ``target`` all-or-nothing; returns the target."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_bytes_atomic(target: Path | str, data: bytes) -> Path:
    """Writes ``data`` to ``target`` all-or-nothing; returns the target."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)
