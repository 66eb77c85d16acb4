"""Where clients of the balancer find their token: a service's own setting, and the operator
tools' default of the token `tideserve up` wrote in the working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tideserve.credentials import (
    create_credentials,
    operator_token_file,
    read_secret,
    read_token_file,
)


def test_an_empty_setting_sends_no_token() -> None:
    assert read_token_file("") == ""


def test_a_token_file_others_can_read_is_refused_naming_the_setting(tmp_path: Path) -> None:
    files = create_credentials(tmp_path)
    assert read_token_file(str(files["worker"])) == read_secret(files["worker"])
    files["worker"].chmod(0o640)
    with pytest.raises(ValueError, match="balancer_token_file .*chmod 600"):
        read_token_file(str(files["worker"]))


def test_operator_tools_default_to_the_token_tideserve_up_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert operator_token_file(None) == "", "no run here: no token"
    create_credentials(tmp_path / ".tideserve" / "credentials")
    assert operator_token_file(None) == ".tideserve/credentials/operator.token"
    assert operator_token_file("elsewhere.token") == "elsewhere.token"
    assert operator_token_file("") == ""


def test_each_run_makes_new_tokens(tmp_path: Path) -> None:
    first = read_secret(create_credentials(tmp_path)["operator"])
    second = read_secret(create_credentials(tmp_path)["operator"])
    assert first != second
