"""Property-based: whatever search-space file or flag values arrive, validation answers cleanly.

`birdplane sweep --check` runs every validation a sweep runs and stops before Ray, MLflow or any
file is touched. For generated space files (arbitrary YAML, wrong types, huge and negative
numbers, NaN, unicode, empty and duplicate keys) and flag values, the result is always either
accepted (exit 0) or exit 2 with exactly one line on stderr: never a traceback.
"""
import contextlib
import io
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from study.cli import main
from study.space import KNOWN
from tests.conftest import make_image_tree

pytestmark = pytest.mark.timeout(300)

TREE = Path(tempfile.mkdtemp(prefix="birdplane-fuzz-")) / "images"
make_image_tree(TREE, per_class=2, test_per_class=1, classes=("airplane", "bird"))

numbers = st.one_of(st.integers(-10**40, 10**40), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, 2, 16, 512, 1e-3, 0.1, 0.9, 1.0, -1, 10**12]))
scalars = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=12),
                    st.sampled_from(["nll", "ce", "mse", "bce", "relu", "tanh", "sgd", "adam", "crop+flip", "none"]))
ranges = st.fixed_dictionaries({}, optional={"low": scalars, "high": scalars, "log": scalars, "step": scalars,
                                             "choices": st.lists(scalars, max_size=4) | scalars})
values = st.one_of(scalars, ranges, st.lists(scalars, max_size=3))
keys = st.one_of(st.sampled_from(sorted(KNOWN)), st.text(max_size=8), st.integers(-3, 3), st.none())
spaces = st.dictionaries(keys, values, max_size=8)
documents = st.one_of(
    spaces.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.text(max_size=80),  # arbitrary text, mostly not a mapping
    st.lists(st.tuples(st.sampled_from(sorted(KNOWN)), st.sampled_from(["1", "2", "{low: 1, high: 4}", "x", ""])),
             max_size=6).map(lambda kv: "".join(f"{k}: {v}\n" for k, v in kv)),  # duplicate and empty values
)
flag_values = st.one_of(st.text(max_size=10), numbers.map(str), st.sampled_from(["", "-1", "0", "nan", "1e999"]))
flags = st.dictionaries(
    st.sampled_from(["--num-samples", "--epochs", "--grace-epochs", "--cpus-per-trial", "--gpus-per-trial",
                     "--max-concurrent", "--metric", "--objectives", "--scheduler", "--search", "--name", "--seed",
                     "--classes", "--val-split", "--split-seed", "--optuna-storage"]),
    flag_values, max_size=4)


def _check(space_text: str, extra: dict) -> None:
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        space = folder / "space.yaml"
        space.write_text(space_text, encoding="utf-8")
        argv = ["sweep", "--check", "--space", str(space), "--data-root", str(TREE), "--cache-dir", str(folder / "c"),
                "--storage-path", str(folder / "ray"), "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}"]
        for flag, value in extra.items():
            argv.append(f"{flag}={value}")  # "=" so that values starting with "-" stay values
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        lines = err.getvalue().strip().splitlines()
        assert code in (0, 2), (code, argv, err.getvalue())
        if code == 2:
            assert len(lines) == 1 and lines[0].startswith("birdplane: error: "), lines
        assert sorted(p.name for p in folder.iterdir()) == ["space.yaml"], "nothing was written"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space_text=documents, extra=flags)
def test_generated_space_files_and_flags_are_accepted_or_refused_in_one_line(space_text, extra):
    _check(space_text, extra)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space=spaces)
def test_generated_spaces_over_a_valid_base_are_accepted_or_refused_in_one_line(space):
    base = {"depth": {"low": 1, "high": 2}, "width": {"low": 8, "high": 64, "log": True}, "epochs": 2}
    _check(yaml.safe_dump({**base, **space}, allow_unicode=True), {})


def test_the_check_accepts_a_valid_space_and_writes_nothing(capsys):
    _check("depth: 1\nwidth: 16\nepochs: 2\nlr: {low: 1.0e-3, high: 1.0e-1, log: true}\n", {})
