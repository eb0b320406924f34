"""Property-based: whatever search-space file or flag values arrive, validation answers cleanly.

`birdplane sweep --check` runs every validation a sweep runs and stops before Ray, MLflow or any
file is touched. A generated valid space with valid flags is accepted (exit 0); the same space
with one known defect, or with one bad flag value, is refused (exit 2) with exactly one line on
stderr. For arbitrary space files (arbitrary YAML, wrong types, huge and negative numbers, NaN,
unicode, empty and duplicate keys) and flag values, whatever the answer is, it is never a
traceback.
"""

import contextlib
import io
import math
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


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A two-class image tree of 2 images a class (module-scoped: hypothesis runs many examples per test)."""
    return make_image_tree(
        tmp_path_factory.mktemp("fuzz") / "images", per_class=2, test_per_class=1, classes=("airplane", "bird")
    )


numbers = st.one_of(
    st.integers(-(10**40), 10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 2, 16, 512, 1e-3, 0.1, 0.9, 1.0, -1, 10**12]),
)
scalars = st.one_of(
    numbers,
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["nll", "ce", "mse", "bce", "relu", "tanh", "sgd", "adam", "crop+flip", "none"]),
)
ranges = st.fixed_dictionaries(
    {},
    optional={
        "low": scalars,
        "high": scalars,
        "log": scalars,
        "step": scalars,
        "choices": st.lists(scalars, max_size=4) | scalars,
    },
)
values = st.one_of(scalars, ranges, st.lists(scalars, max_size=3))
keys = st.one_of(st.sampled_from(sorted(KNOWN)), st.text(max_size=8), st.integers(-3, 3), st.none())
spaces = st.dictionaries(keys, values, max_size=8)
documents = st.one_of(
    spaces.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.text(max_size=80),  # arbitrary text, mostly not a mapping
    st.lists(
        st.tuples(st.sampled_from(sorted(KNOWN)), st.sampled_from(["1", "2", "{low: 1, high: 4}", "x", ""])), max_size=6
    ).map(lambda kv: "".join(f"{k}: {v}\n" for k, v in kv)),  # duplicate and empty values
)
flag_values = st.one_of(st.text(max_size=10), numbers.map(str), st.sampled_from(["", "-1", "0", "nan", "1e999"]))
flags = st.dictionaries(
    st.sampled_from(
        [
            "--num-samples",
            "--epochs",
            "--grace-epochs",
            "--cpus-per-trial",
            "--gpus-per-trial",
            "--max-concurrent",
            "--metric",
            "--objectives",
            "--scheduler",
            "--search",
            "--name",
            "--seed",
            "--classes",
            "--val-split",
            "--split-seed",
            "--optuna-storage",
        ]
    ),
    flag_values,
    max_size=4,
)


def _check(tree: Path, space_text: str, extra: dict) -> tuple[int, list[str]]:
    """Run `sweep --check` on the space text and flags; (exit code, stderr lines). Always: exit 0 or
    exit 2 with one `birdplane: error:` line, and nothing written beside the space file."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        space = folder / "space.yaml"
        space.write_text(space_text, encoding="utf-8")
        argv = [
            "sweep",
            "--check",
            "--space",
            str(space),
            "--data-root",
            str(tree),
            "--cache-dir",
            str(folder / "c"),
            "--storage-path",
            str(folder / "ray"),
            "--tracking-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
        ]
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
        return code, lines


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space_text=documents, extra=flags)
def test_arbitrary_space_files_and_flags_never_raise_a_traceback(tree, space_text, extra):
    _check(tree, space_text, extra)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space=spaces)
def test_arbitrary_keys_over_a_valid_base_never_raise_a_traceback(tree, space):
    base = {"depth": {"low": 1, "high": 2}, "width": {"low": 8, "high": 64, "log": True}, "epochs": 2}
    _check(tree, yaml.safe_dump({**base, **space}, allow_unicode=True), {})


def _range(low, high, log=False):
    return {"low": low, "high": high, "log": log}


@st.composite
def valid_spaces(draw) -> dict:
    """Spaces that are valid by construction: every range has 0 < low < high (0 <= low for linear
    ranges that allow it), every value within TrainConfig's bounds, choices from the known values."""
    depth_high = draw(st.integers(1, 3))
    width_low = draw(st.integers(1, 256))
    space = {
        "depth": draw(st.sampled_from([depth_high, _range(1, depth_high + 1)])),
        "width": draw(st.sampled_from([width_low, _range(width_low, width_low * 4, log=True)])),
        "epochs": draw(st.integers(1, 50)),
    }
    lr_low = draw(st.floats(1e-6, 0.5))
    optional = {
        "lr": st.sampled_from([lr_low, _range(lr_low, lr_low * 10, log=True), _range(lr_low, lr_low * 2)]),
        "batch_size": st.lists(st.sampled_from([8, 16, 32, 64, 128]), min_size=1, max_size=3, unique=True).map(
            lambda c: {"choices": c}
        ),
        "loss": st.lists(st.sampled_from(["nll", "ce", "mse", "bce"]), min_size=1, max_size=4, unique=True).map(
            lambda c: {"choices": c}
        ),
        "optimizer": st.sampled_from(["sgd", "adam", "adamw", {"choices": ["sgd", "adamw"]}]),
        "activation": st.sampled_from(["tanh", "relu", {"choices": ["tanh", "relu"]}]),
        "dropout": st.sampled_from([0.0, 0.5, 0.89, _range(0.0, 0.5), _range(0.1, 0.89)]),
        "momentum": st.sampled_from([0.0, 0.9, _range(0.0, 0.99)]),
        "weight_decay": st.sampled_from([0.0, 1e-4, {"low": 1e-5, "high": 1e-2, "log": True, "or_zero": True}]),
        "schedule": st.sampled_from(["constant", "cosine", {"choices": ["constant", "onecycle"]}]),
        "warmup": st.sampled_from([0.0, 0.2, _range(0.0, 0.5)]),
        "augment": st.sampled_from(["none", "crop+flip", {"choices": ["none", "flip"]}]),
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True, max_size=len(optional))):
        space[key] = draw(optional[key])
    return space


# One defect each, applied to a valid space: (what it does to the space, a word the refusal names).
DEFECTS = {
    "unknown key": (lambda s: {**s, "learning_rate": 0.1}, "learning_rate"),
    "missing width": (lambda s: {k: v for k, v in s.items() if k != "width"}, "width"),
    "low above high": (lambda s: {**s, "lr": {"low": 0.1, "high": 0.01}}, "lr"),
    "zero log low": (lambda s: {**s, "lr": {"low": 0.0, "high": 0.1, "log": True}}, "lr"),
    "dropout of 0.9": (lambda s: {**s, "dropout": 0.9}, "dropout"),
    "dropout range to 0.95": (lambda s: {**s, "dropout": {"low": 0.0, "high": 0.95}}, "dropout"),
    "momentum of 1": (lambda s: {**s, "momentum": 1.0}, "momentum"),
    "unknown loss": (lambda s: {**s, "loss": {"choices": ["nll", "hinge"]}}, "loss"),
    "depth 0": (lambda s: {**s, "depth": 0}, "depth"),
    "width not an integer": (lambda s: {**s, "width": "wide"}, "width"),
    "NaN lr": (lambda s: {**s, "lr": math.nan}, "lr"),
    "negative weight decay": (lambda s: {**s, "weight_decay": -0.1}, "weight_decay"),
}
BAD_FLAGS = {
    "--num-samples": ["0", "-3", "x"],
    "--max-concurrent": ["0"],
    "--cpus-per-trial": ["0", "-1"],
    "--val-split": ["random"],
    "--classes": ["airplane", "airplane,airplane"],
    "--scheduler": ["hyperband"],
    "--metric": ["accuracy"],
}
good_flags = st.fixed_dictionaries(
    {},
    optional={
        "--num-samples": st.integers(1, 64).map(str),
        "--seed": st.integers(0, 1000).map(str),
        "--scheduler": st.sampled_from(["asha", "none"]),
        "--metric": st.sampled_from(["val_acc", "val_loss"]),
        "--max-concurrent": st.integers(1, 4).map(str),
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space=valid_spaces(), extra=good_flags)
def test_a_valid_space_with_valid_flags_is_accepted(tree, space, extra):
    code, lines = _check(tree, yaml.safe_dump(space), extra)
    assert code == 0, (space, extra, lines)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space=valid_spaces(), defect=st.sampled_from(sorted(DEFECTS)))
def test_a_valid_space_with_one_defect_is_refused_naming_it(tree, space, defect):
    change, needle = DEFECTS[defect]
    code, lines = _check(tree, yaml.safe_dump(change(space)), {})
    assert code == 2 and needle in lines[0], (defect, lines)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space=valid_spaces(), flag=st.sampled_from(sorted(BAD_FLAGS)), data=st.data())
def test_a_valid_space_with_one_bad_flag_value_is_refused(tree, space, flag, data):
    value = data.draw(st.sampled_from(BAD_FLAGS[flag]))
    code, lines = _check(tree, yaml.safe_dump(space), {flag: value})
    assert code == 2, (flag, value, lines)


def test_the_check_accepts_a_small_valid_space_and_writes_nothing(tree):
    code, lines = _check(tree, "depth: 1\nwidth: 16\nepochs: 2\nlr: {low: 1.0e-3, high: 1.0e-1, log: true}\n", {})
    assert code == 0 and lines == []
