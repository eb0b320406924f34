"""Where a command writes what the user asked for (`export --out`, `report --out`): checked before any
work starts, so a folder given as a file, a missing folder or a read-only place is one line and exit 2,
with nothing written. The writes themselves go through ``trainables/files.py`` (all-or-nothing)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from study.errors import UsageError


def _probe(folder: Path, flag: str, given) -> None:
    """A file can be created in ``folder`` (an existing folder): the permission bits, a read-only
    mount and a full disk's inodes are all answered by trying, and the probe is removed at once."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".birdplane-probe-", dir=folder)
    except OSError as err:
        raise UsageError(f"{flag} {given}: cannot write in {folder} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)


def check_out_files(paths: list[Path], flag: str = "--out") -> None:
    """Each path names a file to create or replace: not a folder, in an existing writable folder."""
    for path in paths:
        if path.is_dir():
            raise UsageError(f"{flag} {paths[0]}: {path} is a folder, not a file")
        folder = path.parent
        if not folder.is_dir():
            raise UsageError(f"{flag} {paths[0]}: folder {folder} does not exist")
    for folder in dict.fromkeys(p.parent for p in paths):
        _probe(folder, flag, paths[0])


def check_out_folder(out: Path, flag: str = "--out") -> None:
    """``out`` is a folder to write into, or can be created as one (its parent exists and is writable)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out}: a file is there, not a folder")
    if out.is_dir():
        _probe(out, flag, out)
        return
    parent = out.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {out}: folder {parent} does not exist")
    _probe(parent, flag, out)


def write_error(flag: str, out, err: OSError) -> UsageError:
    """The one line for a write that failed after the checks (the disk filled up meanwhile)."""
    return UsageError(f"{flag} {out}: could not write ({err.strerror or err}); nothing was written")
