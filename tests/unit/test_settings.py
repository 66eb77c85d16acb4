"""load_settings: defaults < TOML file < environment < flags, typed by the dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tideserve.settings import load_settings

PREFIX = "TEST_"


@dataclass(frozen=True)
class Example:
    host: str = "127.0.0.1"
    port: int = 8001
    delay_s: float = 0.5
    json_logs: bool = False
    balancers: tuple[str, ...] = ("a:1",)


def load(argv: list[str], environ: dict[str, str] | None = None) -> Example:
    return load_settings(
        Example, argv, env_prefix=PREFIX, description="test", environ=environ or {}
    )


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def test_defaults_when_nothing_given() -> None:
    assert load([]) == Example()


def test_flags_are_typed() -> None:
    settings = load(
        ["--port", "9000", "--delay-s", "0.25", "--json-logs", "yes", "--balancers", "x:1, y:2"]
    )

    assert settings.port == 9000
    assert settings.delay_s == 0.25
    assert settings.json_logs is True
    assert settings.balancers == ("x:1", "y:2")


def test_a_boolean_flag_alone_means_true() -> None:
    assert load(["--json-logs", "--port", "9000"]) == Example(port=9000, json_logs=True)
    assert load(["--json-logs", "false"]).json_logs is False


def test_environment_is_typed() -> None:
    settings = load([], {"TEST_PORT": "7000", "TEST_JSON_LOGS": "off", "TEST_BALANCERS": "z:3"})

    assert settings.port == 7000
    assert settings.json_logs is False
    assert settings.balancers == ("z:3",)


def test_file_values_keep_their_toml_types(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'port = 1234\njson_logs = true\nbalancers = ["p:1", "q:2"]\n')

    settings = load(["--config", str(path)])

    assert settings.port == 1234
    assert settings.json_logs is True
    assert settings.balancers == ("p:1", "q:2")


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'port = 1\nhost = "file"\ndelay_s = 9.0\n')
    environ = {"TEST_PORT": "2", "TEST_HOST": "env"}

    settings = load(["--config", str(path), "--port", "3"], environ)

    assert settings.port == 3
    assert settings.host == "env"
    assert settings.delay_s == 9.0


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "prot = 1\n")

    with pytest.raises(ValueError, match="unknown settings \\['prot'\\]"):
        load(["--config", str(path)])


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TEST_PORT": "eighty"}, "setting port: expected int, got 'eighty'"),
        ({"TEST_DELAY_S": "soon"}, "setting delay_s: expected float"),
        ({"TEST_JSON_LOGS": "maybe"}, "setting json_logs: expected a boolean"),
    ],
)
def test_malformed_values_name_the_setting(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load([], environ)


def test_unknown_flag_exits() -> None:
    with pytest.raises(SystemExit):
        load(["--no-such-flag", "1"])


def test_service_settings_validate_after_loading() -> None:
    from services.batcher.settings import BatcherSettings

    with pytest.raises(ValueError, match="inflight_per_instance"):
        load_settings(
            BatcherSettings,
            ["--inflight-per-instance", "0"],
            env_prefix="X_",
            description="batcher",
            environ={},
        )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-replicas", "65"], "max_replicas 65 is above replica_ceiling 64"),
        (["--max-replicas", "8", "--replica-ceiling", "4"], "raise --replica-ceiling"),
        (["--replica-ceiling", "0"], "replica_ceiling must be >= 1"),
        (["--min-replicas", "5", "--max-replicas", "3"], "min_replicas <= max_replicas"),
        (["--min-replicas", "-1"], "0 <= min_replicas"),
    ],
)
def test_scaler_replica_settings_stay_under_the_ceiling(argv: list[str], message: str) -> None:
    from services.scaler.settings import ScalerSettings

    with pytest.raises(ValueError, match=message):
        load_settings(ScalerSettings, argv, env_prefix="X_", description="scaler", environ={})
    raised = load_settings(ScalerSettings, ["--max-replicas", "100", "--replica-ceiling", "100"],
                           env_prefix="X_", description="scaler", environ={})
    assert (raised.max_replicas, raised.replica_ceiling) == (100, 100)
