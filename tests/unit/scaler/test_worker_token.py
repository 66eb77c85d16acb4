"""The scaler hands its workers the path of the worker token, never the token: as a flag to
worker processes, and as the worker setting that container runtimes pass on (with the file
mounted at that path)."""

from __future__ import annotations

from services.scaler.runtime import ProcessRuntime
from services.scaler.server import build_runtime
from services.scaler.settings import ScalerSettings

PATH = "/run/tideserve/worker.token"


def test_worker_processes_get_the_token_file_path() -> None:
    runtime = build_runtime(ScalerSettings(worker_token_file=PATH))
    assert isinstance(runtime, ProcessRuntime)
    at = runtime.worker_args.index("--balancer-token-file")
    assert runtime.worker_args[at + 1] == PATH


def test_without_a_worker_token_file_no_flag_is_passed() -> None:
    runtime = build_runtime(ScalerSettings())
    assert isinstance(runtime, ProcessRuntime)
    assert "--balancer-token-file" not in runtime.worker_args
    assert "TIDESERVE_WORKER_BALANCER_TOKEN_FILE" not in ScalerSettings().worker_settings_env()


def test_container_workers_get_the_path_as_their_setting() -> None:
    env = ScalerSettings(worker_token_file=PATH).worker_settings_env()
    assert env["TIDESERVE_WORKER_BALANCER_TOKEN_FILE"] == PATH
