"""`tideserve up` is protected without any setting: each service is started with the per-run
credentials of the suite's state directory, the balancer with all of them and every other
process with its own role's token file only."""

from __future__ import annotations

from pathlib import Path

from tideserve.launcher import SuiteConfig, service_commands


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
    assert "--allow-unauthenticated" not in commands["balancer"]
    assert not any("operator" in part for c in commands.values() for part in c)


def test_an_explicit_credentials_directory_wins(tmp_path: Path) -> None:
    config = SuiteConfig(log_dir=tmp_path / "logs", credentials_dir=tmp_path / "secrets")
    assert flag(service_commands(config)["balancer"], "--credentials-dir") == str(
        tmp_path / "secrets"
    )
