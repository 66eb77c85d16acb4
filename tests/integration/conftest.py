from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cluster import Cluster


@pytest.fixture(scope="module")
def cluster(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Balancer, batcher and two workers serving every model of the test repository."""
    running = Cluster(model_repository, tmp_path_factory.mktemp("logs")).start(workers=2)
    yield running
    running.stop()
