"""Decoding versus the tensor cache: seconds to load the airplane/bird set, first time and cached.

python benchmarks/data_loading.py [--data-root DIR]     (goal: cached load under 1 s)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from trainables.config import DataConfig
from trainables.data import load_study_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=os.environ.get("BIRDPLANE_DATA", "../shared/data/cifar10"))
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cfg = DataConfig(root=os.path.abspath(a.data_root), cache_dir=cache)
        t = time.perf_counter()
        data = load_study_data(cfg)
        first = time.perf_counter() - t
        cached = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            load_study_data(cfg)
            cached.append(time.perf_counter() - t)
    print(f"{len(data.train)} train + {len(data.val)} val images of {', '.join(data.classes)}")
    print(f"first load (decode {len(data.train) + len(data.val)} + test PNGs, write cache): {first:.2f} s")
    print(
        f"cached load: median {statistics.median(cached):.2f} s over {a.repeats} (goal < 1 s); "
        f"speed-up {first / statistics.median(cached):.1f}x"
    )


if __name__ == "__main__":
    main()
