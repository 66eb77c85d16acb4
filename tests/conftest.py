from __future__ import annotations

from pathlib import Path

import pytest

from harness.cluster import ROOT

SHARED_WORKLOADS = ROOT.parent / "shared" / "workloads" / "make_models.py"


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model, plus mlp and cnn from ../shared/workloads when it exists (as in CI)."""
    import subprocess
    import sys

    from services.worker.models import add_torchscript_model, write_default_model

    repository = tmp_path_factory.mktemp("model_repository")
    write_default_model(repository)
    if SHARED_WORKLOADS.exists():
        made = tmp_path_factory.mktemp("workloads")
        subprocess.run(
            [sys.executable, str(SHARED_WORKLOADS), str(made)], check=True, capture_output=True
        )
        add_torchscript_model(repository, "mlp", made / "mlp.pt", [256])
        add_torchscript_model(repository, "cnn", made / "cnn.pt", [3, 64, 64])
    return repository
