"""The floors of the house: which package may import which, and that analysis/ only reads MLflow."""

from __future__ import annotations

import ast
from pathlib import Path

import mlflow
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]

# Every MLflow call that changes a tracking store: the client's and the fluent API's writers.
# set_tracking_uri / set_registry_uri only point this process at a store; they write nothing.
_WRITE_PREFIXES = (
    "log_",
    "create_",
    "set_",
    "update_",
    "delete_",
    "rename_",
    "restore_",
    "start_",
    "end_",
    "finalize_",
    "register_",
    "link_",
    "unlink_",
    "transition_",
    "copy_",
    "add_",
    "remove_",
    "detach_",
    "refresh_",
)
MLFLOW_WRITES = {
    name for source in (MlflowClient, mlflow) for name in dir(source) if name.startswith(_WRITE_PREFIXES)
} - {"set_tracking_uri", "set_registry_uri"}


def modules(package: str) -> dict[str, ast.Module]:
    return {str(p.relative_to(REPO)): ast.parse(p.read_text(), str(p)) for p in sorted((REPO / package).glob("*.py"))}


def imported(tree: ast.Module) -> set[str]:
    """The top-level packages a module imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def mlflow_writes(tree: ast.Module) -> list[str]:
    """``name`` at line N for each call, attribute or imported name that is an MLflow writer."""
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in MLFLOW_WRITES:
            hits.append(f"{node.attr} at line {node.lineno}")
        elif isinstance(node, ast.Name) and node.id in MLFLOW_WRITES:
            hits.append(f"{node.id} at line {node.lineno}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlflow"):
            hits += [f"{a.name} at line {node.lineno}" for a in node.names if a.name in MLFLOW_WRITES]
    return hits


def test_the_write_list_knows_the_calls_birdplane_makes():
    # A guard on the guard: the writers study/records.py uses must be on the list.
    assert {
        "log_batch",
        "create_run",
        "create_experiment",
        "set_terminated",
        "update_run",
        "log_inputs",
        "log_artifact",
        "log_dict",
        "set_experiment_tag",
        "delete_run",
        "set_tag",
        "log_metric",
    } <= MLFLOW_WRITES
    assert mlflow_writes(ast.parse("client.set_terminated(run_id)")) == ["set_terminated at line 1"]


def test_analysis_calls_no_mlflow_write_api():
    found = {path: hits for path, tree in modules("analysis").items() if (hits := mlflow_writes(tree))}
    assert found == {}, f"analysis/ must only read MLflow; writers belong in study/records.py: {found}"


def test_analysis_never_imports_study_or_ray():
    found = {path: bad for path, tree in modules("analysis").items() if (bad := imported(tree) & {"study", "ray"})}
    assert found == {}, f"analysis/ imports {found}"


def test_trainables_imports_no_upper_floor_and_ray_only_in_the_tune_adapter():
    upper = {"study", "analysis", "mlflow", "optuna"}
    found = {}
    for path, tree in modules("trainables").items():
        allowed_ray = path == "trainables/tune_adapter.py"
        bad = imported(tree) & (upper if allowed_ray else upper | {"ray"})
        if bad:
            found[path] = bad
    assert found == {}, f"trainables/ imports {found}"
