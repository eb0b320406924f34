"""Real processes for integration tests: an `mlflow server` on 127.0.0.1 and Ray nodes.

Each process runs in its own session and is stopped by its process group, so a test stops
exactly what it started (never `ray stop`, which would stop every Ray process on the machine).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> dict[int, str]:
    """{pid: command name} of every process below ``pid``, read from /proc."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
        names[int(entry.name)] = name
    found, frontier = {}, [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in found:
                found[child] = names[child]
                frontier.append(child)
    return found


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout)


def stack_dumps(pid: int, limit: int = 8, timeout: float = 30) -> str:
    """Where the Python processes of ``pid``'s tree are (py-spy dump of each, ``pid`` first, at most
    ``limit``): what a test prints about a command that ran past its timeout. Without py-spy, the
    command (started with PYTHONFAULTHANDLER=1) is sent SIGABRT: faulthandler writes its threads'
    stacks to its own stderr, which the caller captures."""
    import shutil

    spy = shutil.which("py-spy")
    if spy is None:
        try:
            os.kill(pid, signal.SIGABRT)
        except ProcessLookupError:
            return "py-spy not installed; the command had already ended"
        time.sleep(2)
        return "py-spy not installed: SIGABRT sent (faulthandler's stacks are in the command's stderr)"
    tree = {pid: "driver", **descendants(pid)}
    # The driver, then Ray's workers (a trial's process is named ray::...), then the other Python
    # ones (Ray's gcs_server and raylet are not).
    python = [p for p in tree if p == pid or tree[p].startswith(("ray::", "python"))]
    order = sorted(python, key=lambda p: (p != pid, not tree[p].startswith("ray::"), p))[:limit]
    dumps = []
    for p in order:
        try:
            done = subprocess.run(
                [spy, "dump", "--pid", str(p)],
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, "RUST_BACKTRACE": "0"},
            )
            text = (done.stdout + done.stderr).strip()
        except (OSError, subprocess.TimeoutExpired) as err:
            text = f"py-spy failed: {err}"
        dumps.append(f"--- {p} ({tree[p]}) ---\n{text}")
    return "\n".join(dumps)


class MlflowServer:
    def __init__(self, folder: Path, port: int | None = None):
        self.folder, self.port = folder, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> MlflowServer:
        if self.proc is not None:  # a server kill()ed before: reaped before its port is taken again
            stop_group(self.proc)
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / "server.log", "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.folder / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.folder / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.folder,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not answer /health in time")

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)

    def kill(self) -> None:
        """The server goes away now (SIGKILL to its process group; stop() or start() reaps it): a
        graceful stop can take seconds on a loaded machine, while the study it serves goes on."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)


class RayNode:
    """`ray start --block` in its own process group; the head's address is read from its output."""

    def __init__(self, folder: Path, num_cpus: int = 1, head_address: str | None = None):
        self.folder, self.num_cpus, self.head_address = folder, num_cpus, head_address
        self.address: str | None = head_address
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> RayNode:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = "head" if self.head_address is None else f"node-{time.monotonic_ns()}"
        self.log = self.folder / f"{name}.log"
        cmd = [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--block",
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            "--disable-usage-stats",
        ]
        cmd += (
            ["--head", f"--port={free_port()}", "--include-dashboard=false"]
            if self.head_address is None
            else [f"--address={self.head_address}"]
        )
        env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
        self.proc = subprocess.Popen(
            cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {text[-2000:]}")
            found = re.search(r"ray start --address='([^']+)'", text)
            if self.head_address is None and found:
                self.address = found.group(1)
                return self
            if self.head_address is not None and "block forever" in text:
                return self
            time.sleep(0.5)
        raise RuntimeError(f"ray node did not start in time: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, timeout=5)
