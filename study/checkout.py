"""The git checkout birdplane runs from: its commit, branch and remote, read once per process."""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Checkout:
    commit: str = ""  # "" when this is not a git checkout (an unpacked copy) or git is missing
    branch: str = ""  # "" on a detached HEAD
    remote: str = ""  # remote.origin.url, "" when there is none


def git(*args: str) -> str:
    """``git ARGS`` in the repository: its output, or "" when git fails or is not installed."""
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@functools.lru_cache(maxsize=1)
def checkout() -> Checkout:
    commit = git("rev-parse", "HEAD")
    if not commit:
        return Checkout()
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    return Checkout(commit, branch if branch != "HEAD" else "", git("config", "--get", "remote.origin.url"))


def git_commit() -> str:
    """The checkout's commit, or "unknown"."""
    return checkout().commit or "unknown"
