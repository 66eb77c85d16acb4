"""Each service loads only what its role's install carries (pyproject.toml's extras): a plain
install runs the batcher and the balancer, so loading them must not pull torch, the docker SDK or
the learning and plotting libraries in; the scaler adds only the docker SDK, and only for its
docker and swarm runtimes. Each check runs in a fresh interpreter, where sys.modules is exactly
what the imports loaded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "docker", "kubernetes", "stable_baselines3", "gymnasium", "matplotlib")

PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_modules(*modules: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *modules],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(json.loads(done.stdout))


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.mark.parametrize("service", ["batcher", "balancer"])
def test_the_plain_install_services_load_no_heavy_library(service: str) -> None:
    modules = loaded_modules(f"services.{service}.server", f"services.{service}.__main__")
    assert f"services.{service}.server" in modules
    assert heavy_in(modules) == []


def test_the_scaler_loads_no_heavy_library_until_a_container_runtime_is_chosen() -> None:
    modules = loaded_modules("services.scaler.server", "services.scaler.__main__")
    assert "services.scaler.learning.inference" in modules
    assert heavy_in(modules) == []


def test_the_probe_sees_a_heavy_library_that_is_loaded() -> None:
    # The scaler's docker runtime imports the docker SDK at module level: the probe must see it.
    assert "docker" in heavy_in(loaded_modules("services.scaler.docker_runtime"))
