"""`tideserve up` is protected without any setting: each service is started with the per-run
credentials of the suite's state directory, the balancer with all of them and every other
process with its own role's token file only; the scaler also checks operators' admin calls
against the operator token (its role may already drain workers and set routing, so holding it
grants the scaler nothing more)."""

from __future__ import annotations

from pathlib import Path

from tideserve_tools.launcher import SuiteConfig, service_commands


def flag(command: list[str], name: str) -> str:
    assert command.count(name) == 1, f"{name} once in {command}"
    return command[command.index(name) + 1]


def test_services_get_the_credentials_of_the_suite_state_directory(tmp_path: Path) -> None:
    config = SuiteConfig(log_dir=tmp_path / ".tideserve" / "logs")
    commands = service_commands(config)
    credentials = tmp_path / ".tideserve" / "credentials"

    assert flag(commands["balancer"], "--credentials-dir") == str(credentials)
    assert flag(commands["batcher"], "--balancer-token-file") == str(credentials / "batcher.token")
    assert flag(commands["scaler"], "--balancer-token-file") == str(credentials / "scaler.token")
    assert flag(commands["scaler"], "--worker-token-file") == str(credentials / "worker.token")
    assert flag(commands["scaler"], "--admin-token-file") == str(credentials / "operator.token")
    assert "--allow-unauthenticated" not in commands["balancer"]
    assert not any("operator" in part for part in commands["batcher"])


def test_an_explicit_credentials_directory_wins(tmp_path: Path) -> None:
    config = SuiteConfig(log_dir=tmp_path / "logs", credentials_dir=tmp_path / "secrets")
    assert flag(service_commands(config)["balancer"], "--credentials-dir") == str(
        tmp_path / "secrets"
    )
