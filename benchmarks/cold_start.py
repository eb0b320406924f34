"""Cold start of `birdplane train --epochs 0` (process start to exit), this tree against a git ref.

    python benchmarks/cold_start.py [--ref e46c691] [--repeats 5]

Runs both trees' command lines alternately (a noisy machine hits both alike) and prints the
median wall time of each, and which heavy libraries each imported. `--ref` defaults to the last
commit before `train` stopped importing Ray, Optuna and MLflow.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = (
    "import sys, runpy; sys.argv = ['birdplane', 'train', '--epochs', '0', '--json'];\n"
    "try:\n    runpy.run_module('study.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
    "print(','.join(sorted(m for m in ('ray', 'optuna', 'mlflow') if m in sys.modules)), file=sys.stderr)"
)


def once(tree: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tree,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return time.perf_counter() - start, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", default="e46c691", help="the 'before' commit")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        old = Path(folder) / "before"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old), a.ref], cwd=REPO, check=True)
        try:
            times = {"before": [], "after": []}
            imported = {}
            for _ in range(a.repeats):
                for name, tree in (("before", old), ("after", REPO)):
                    seconds, mods = once(tree)
                    times[name].append(seconds)
                    imported[name] = mods or "none of ray, optuna, mlflow"
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO, check=False)
    for name in ("before", "after"):
        print(
            f"{name:>6} ({a.ref if name == 'before' else 'this tree'}): median {statistics.median(times[name]):.2f} s "
            f"over {a.repeats} (min {min(times[name]):.2f}); imported: {imported[name]}"
        )
    print(f"after / before: {statistics.median(times['after']) / statistics.median(times['before']):.2f}")


if __name__ == "__main__":
    main()
