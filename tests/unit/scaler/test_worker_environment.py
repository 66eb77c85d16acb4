"""The environment the process runtime gives workers: the scaler's, without any token."""

from __future__ import annotations

import pytest

from services.scaler.runtime import ProcessRuntime, without_secrets


def test_tokens_and_token_files_are_left_out() -> None:
    environ = {
        "PATH": "/usr/bin",
        "TIDESERVE_SCALER_ADMIN_TOKEN": "a",
        "TIDESERVE_SCALER_ADMIN_TOKEN_FILE": "/run/admin.token",
        "TIDESERVE_BALANCER_TOKEN": "b",
        "TIDESERVE_WORKER_SLOWDOWN": "1.0",
        "MY_TOKEN": "not ours to judge",
    }
    assert without_secrets(environ) == {
        "PATH": "/usr/bin",
        "TIDESERVE_WORKER_SLOWDOWN": "1.0",
        "MY_TOKEN": "not ours to judge",
    }


def test_the_runtime_passes_its_own_additions_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDESERVE_SCALER_ADMIN_TOKEN_FILE", "/run/admin.token")
    monkeypatch.setenv("TIDESERVE_ANY_TOKEN", "secret")
    runtime = ProcessRuntime([], env={"TIDESERVE_WORKER_TOKEN_FILE": "/run/worker.token"})
    assert runtime.env["TIDESERVE_WORKER_TOKEN_FILE"] == "/run/worker.token"
    assert "TIDESERVE_SCALER_ADMIN_TOKEN_FILE" not in runtime.env
    assert "TIDESERVE_ANY_TOKEN" not in runtime.env
