"""A model's unversioned requests split between served versions by weight: the split is exact
over every run of sum(weights) picks, the operator's weights replace the config's, only served
versions take requests, and a request naming a version keeps it. A canary-picked version retired
before the batcher heard of it gives way to the latest; a version the client named does not."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from google.protobuf import text_format

from services.batcher.canary import WeightedSplit, effective_weights
from services.batcher.catalog import ModelCatalog
from services.batcher.core import BatcherCore
from tests.unit.batcher.test_batcher_core import (
    MODEL,
    EchoDispatcher,
    FakeClock,
    infer_request,
    model_config,
)
from tideserve.errors import NotFound, VersionNotServed
from tideserve.v1 import cluster_pb2
from tideserve.v1 import model_config_pb2 as mc

CANARY = 'parameters {{ key: "canary_weights" value {{ string_value: "{}" }} }}\n'


def test_a_split_is_exact_over_every_window_of_its_total_weight() -> None:
    split = WeightedSplit({"1": 90, "2": 10})
    picks = [split.choose() for _ in range(1000)]
    for start in range(0, 1000, 100):
        assert Counter(picks[start : start + 100]) == {"1": 90, "2": 10}
    # Interleaved, not in blocks: the canary gets one of the first ten.
    assert Counter(picks[:10]) == {"1": 9, "2": 1}


def test_uneven_weights_and_zero_weights() -> None:
    split = WeightedSplit({"3": 1, "4": 2, "5": 0})
    picks = [split.choose() for _ in range(300)]
    assert Counter(picks) == {"3": 100, "4": 200}
    assert Counter(WeightedSplit({"1": 0, "2": 100}).choose() for _ in range(50)) == {"2": 50}


@pytest.mark.parametrize("weights", [{}, {"1": 0}, {"1": -1, "2": 3}])
def test_weights_without_a_positive_one_are_refused(weights: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="above 0"):
        WeightedSplit(weights)


def test_the_operators_weights_replace_the_configs_among_served_versions() -> None:
    served = ("1", "2")
    assert effective_weights(served, {"1": 90, "2": 10}, {}) == {"1": 90, "2": 10}
    assert effective_weights(served, {"1": 90, "2": 10}, {"1": 0, "2": 100}) == {"2": 100}
    # Version 3 is not served: it takes nothing.
    assert effective_weights(served, {"1": 50, "3": 50}, {}) == {"1": 50}
    assert effective_weights(served, {"3": 100}, {}) == {}


def served_model(versions: list[str], canary: str = "", **override: int) -> cluster_pb2.ServedModel:
    config = mc.ModelConfig(name="m", max_batch_size=8)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[2])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[1])
    if canary:
        config.parameters["canary_weights"].string_value = canary
    weights = {version.removeprefix("v"): w for version, w in override.items()}
    return cluster_pb2.ServedModel(config=config, versions=versions, version_weights=weights)


def test_the_catalog_splits_unversioned_requests_and_follows_the_operator() -> None:
    catalog = ModelCatalog()
    catalog.update([served_model(["1", "2"], "1:90,2:10")])
    entry = catalog.get("m")
    assert entry.weights == {"1": 90, "2": 10}
    assert Counter(entry.version_for("") for _ in range(100)) == {"1": 90, "2": 10}
    assert entry.version_for("1") == "1"

    assert catalog.update([served_model(["1", "2"], "1:90,2:10", v1=0, v2=100)]) == ["m"]
    entry = catalog.get("m")
    assert Counter(entry.version_for("") for _ in range(20)) == {"2": 20}

    # The same snapshot again keeps the entry, and so the split's position.
    assert catalog.update([served_model(["1", "2"], "1:90,2:10", v1=0, v2=100)]) == []
    assert catalog.get("m") is entry


def test_without_weights_the_worker_picks_the_latest() -> None:
    catalog = ModelCatalog()
    catalog.update([served_model(["1", "2"])])
    assert catalog.get("m").version_for("") == ""
    assert catalog.get("m").weights == {}


class RetiringDispatcher(EchoDispatcher):
    """A worker that retired version 1 after the batcher's last snapshot: a batch naming it is
    refused as a version not served (the worker's NotFound and reason); the latest is 2."""

    async def dispatch(
        self, model: str, rows: int, payload: bytes, timeout: float | None, batch_id: str = ""
    ) -> bytes:
        batch = cluster_pb2.Batch.FromString(payload)
        if batch.model_version == "1":
            self.batches.append(batch)
            raise VersionNotServed("worker w does not serve version '1' of model 'm'")
        answer = cluster_pb2.BatchResult.FromString(
            await super().dispatch(model, rows, payload, timeout, batch_id)
        )
        answer.model_version = batch.model_version or "2"
        return answer.SerializeToString()


async def test_a_canary_version_retired_before_the_snapshot_falls_back_to_the_latest() -> None:
    catalog = ModelCatalog()
    served = cluster_pb2.ServedModel(versions=["1", "2"])
    served.config.CopyFrom(
        text_format.Parse(model_config() + CANARY.format("1:50,2:50"), mc.ModelConfig())
    )
    catalog.update([served])
    catalog.worker_counts = {MODEL: 1}
    dispatcher = RetiringDispatcher()
    core = BatcherCore(catalog, dispatcher, clock=FakeClock())
    try:
        unversioned = [core.submit(infer_request(i), deadline=None) for i in range(4)]
        answers = await asyncio.wait_for(asyncio.gather(*unversioned), 5)
        assert [a.model_version for a in answers] == ["2"] * 4
        assert {b.model_version for b in dispatcher.batches} >= {"1", ""}, "1 was tried first"

        named = infer_request(9)
        named.model_version = "1"
        with pytest.raises(NotFound) as refused:
            await asyncio.wait_for(core.submit(named, deadline=None), 5)
        assert refused.value.reason == "version-not-served"
    finally:
        core.close()
