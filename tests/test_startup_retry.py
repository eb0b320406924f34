"""A study's first MLflow calls, made before its outbox exists, survive a server that is not
answering yet (refused, reset): tried again a few times, while an answer from the server is not."""

from __future__ import annotations

import threading
import time

import pytest
from mlflow.exceptions import MlflowException

from study import preflight, records
from tests.servers import MlflowServer

pytestmark = pytest.mark.timeout(240)


def test_the_first_call_waits_out_a_server_that_comes_up_late_and_a_real_answer_is_not_retried(tmp_path, monkeypatch):
    preflight.bound_mlflow_http()  # as run_study does: no retries inside MLflow's own HTTP client
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, records.os.environ[name])
    server = MlflowServer(tmp_path / "server")
    client = records.open_client(server.url)
    with pytest.raises(MlflowException) as refused:
        records.ensure_experiment(client, "late")
    assert records.transient(refused.value), str(refused.value)  # nobody listens yet: a transport failure

    attempts = []
    starter = threading.Thread(target=server.start)
    try:
        starter.start()

        def call():
            attempts.append(time.monotonic())
            return records.ensure_experiment(client, "late")

        experiment_id = records.retry_transient(call, attempts=60, wait_s=1.0)
        starter.join()
        assert len(attempts) > 1, "the server was up at once: the retry was never exercised"
        assert client.get_experiment(experiment_id).name == "late"

        # What the server answers is not retried: a second experiment of that name is an error at once.
        answered = []
        with pytest.raises(MlflowException, match="already exists") as exists:
            records.retry_transient(lambda: answered.append(1) or client.create_experiment("late"), wait_s=0.1)
        assert not records.transient(exists.value) and answered == [1], "a real answer was retried"
    finally:
        starter.join()
        server.stop()
