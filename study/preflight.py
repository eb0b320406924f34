"""Pre-flight checks: everything that can be refused before Ray starts or an MLflow run exists.

Each check raises UsageError with one line naming the problem: a tracking URI nobody answers, a Ray
address nobody answers, a cluster without a tracking server or without shared storage.
"""

from __future__ import annotations

import os
import re
import socket
import urllib.request
import uuid
from pathlib import Path

from study.errors import UsageError

ADDRESS_PATTERN = re.compile(r"^(auto|local|ray://[^\s:/]+:\d+|[^\s:/]+:\d+)$")
# What one MLflow HTTP call may take in the driver; the Outbox's back-off (<= 10 s) does the retrying.
MLFLOW_HTTP_TIMEOUT_S = 10
MLFLOW_HTTP_RETRIES = 0


# ---------------------------------------------------------------- MLflow


def resolve_tracking_uri(uri: str | None) -> str:
    """MLflow's default local store, made absolute: trials and later commands must find the same file."""
    if not uri:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///") :])
    return uri


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/", ".")) or "://" not in uri


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before anything starts, when a tracking server does not answer."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
                if resp.status != 200:
                    raise OSError(f"HTTP {resp.status}")
        except Exception as err:  # urllib raises several types
            raise UsageError(f"tracking server {uri} does not answer ({err})") from None
    elif uri.startswith("sqlite:///"):
        folder = os.path.dirname(uri[len("sqlite:///") :]) or "."
        if not os.path.isdir(folder):
            raise UsageError(f"tracking URI {uri}: folder {folder} does not exist")
    elif "://" in uri and not uri.startswith(("file://", "databricks")):
        raise UsageError(f"tracking URI {uri}: unsupported scheme (use http(s)://, sqlite:/// or a folder)")


def check_store_exists(uri: str) -> None:
    """For commands that read a study: a local store that is not there is a typo, not an empty study."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise UsageError(f"tracking store {uri} does not exist")


def bound_mlflow_http(timeout_s: int = MLFLOW_HTTP_TIMEOUT_S, retries: int = MLFLOW_HTTP_RETRIES) -> None:
    """Cap MLflow's own HTTP retries and timeout in this process (a user's larger values included).

    MLflow retries a failed call 7 times with exponential back-off and waits up to 120 s for an
    answer by default: minutes inside one call, hidden from the Outbox that owns retrying.
    """
    for name, bound in (("MLFLOW_HTTP_REQUEST_TIMEOUT", timeout_s), ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", retries)):
        try:
            current = int(os.environ.get(name, bound))
        except ValueError:
            current = bound
        os.environ[name] = str(min(current, bound))


# ---------------------------------------------------------------- Ray


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """A Ray address that nothing answers makes ray.init hang for minutes: fail fast instead."""
    if address in (None, "local"):
        return
    if not ADDRESS_PATTERN.match(address):
        raise UsageError(f"--address {address!r}: expected auto, local, HOST:PORT or ray://HOST:PORT")
    target = address
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS") or ""
        current = Path("/tmp/ray/ray_current_cluster")
        if not target and current.is_file():
            target = current.read_text().strip()
        if not target:
            raise UsageError(
                "--address auto: no running Ray cluster found on this machine (start one with `ray start --head`)"
            )
    host, _, port = target.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as err:
        raise UsageError(f"--address {address}: no Ray cluster answers at {host}:{port} ({err})") from None


def check_cluster(ray, tracking_uri: str, storage_path: str, storage_given: bool) -> dict:
    """Resources, and the rules for several nodes: a tracking server and shared storage."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    resources = ray.cluster_resources()
    if len(nodes) > 1:
        if is_local_store(tracking_uri):
            raise UsageError(
                f"a {len(nodes)}-node cluster needs an MLflow tracking server (--tracking-uri http://...), "
                f"not the local store {tracking_uri}"
            )
        if not storage_given:
            raise UsageError(f"a {len(nodes)}-node cluster needs --storage-path on shared storage (NFS) or a cloud URI")
        if "://" not in storage_path:
            check_shared_path(ray, storage_path, nodes)
    return {"nodes": len(nodes), "cpus": int(resources.get("CPU", 0)), "gpus": float(resources.get("GPU", 0))}


def check_shared_path(ray, path: str, nodes: list) -> None:
    """A marker written here must be visible on every node, or checkpoints would be lost."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    os.makedirs(path, exist_ok=True)
    marker = os.path.join(path, f".birdplane-shared-{uuid.uuid4().hex}")
    Path(marker).write_text("ok")
    try:

        @ray.remote(num_cpus=0)
        def visible(p):
            return os.path.exists(p)

        checks = [
            visible.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(marker)
            for n in nodes
        ]
        if not all(ray.get(checks, timeout=60)):
            raise UsageError(
                f"--storage-path {path} is not shared by every node of the cluster (use NFS or a cloud URI)"
            )
    finally:
        os.unlink(marker)
