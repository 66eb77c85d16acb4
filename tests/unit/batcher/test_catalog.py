"""The batcher's model catalog keeps a model through a balancer restart (an empty snapshot) and
forgets it only after FORGET_AFTER_S without any worker serving it."""

from __future__ import annotations

import pytest

from services.batcher.catalog import (
    FORGET_AFTER_S,
    ModelCatalog,
    merged_statuses,
    unloaded_models,
)
from services.batcher.policies import POLICIES
from tideserve.errors import BalancerUnreachable, FailedPrecondition, NotFound
from tideserve.v1 import cluster_pb2
from tideserve.v1 import model_config_pb2 as mc


def served(name: str) -> cluster_pb2.ServedModel:
    config = mc.ModelConfig(name=name, max_batch_size=8)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[2])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[1])
    return cluster_pb2.ServedModel(config=config, versions=["1"])


def test_a_model_survives_an_empty_snapshot_and_is_forgotten_later() -> None:
    now = [100.0]
    catalog = ModelCatalog(clock=lambda: now[0])
    assert catalog.update([served("m")]) == ["m"]

    now[0] += 5.0
    assert catalog.update([]) == []  # e.g. a restarted balancer, no worker registered yet
    assert catalog.get("m").spec.name == "m"
    assert not catalog.ready("m")

    now[0] += FORGET_AFTER_S
    catalog.update([])
    with pytest.raises(NotFound, match="unknown model 'm'"):
        catalog.get("m")


def test_a_model_seen_again_is_kept_unchanged() -> None:
    now = [0.0]
    catalog = ModelCatalog(clock=lambda: now[0])
    catalog.update([served("m")])
    entry = catalog.get("m")
    now[0] += FORGET_AFTER_S - 1
    catalog.update([])
    catalog.update([served("m")])
    now[0] += FORGET_AFTER_S - 1
    catalog.update([])
    assert catalog.get("m") is entry


def test_worker_counts_come_from_ready_workers_in_the_snapshot() -> None:
    snapshot = cluster_pb2.ClusterSnapshot(
        workers=[
            cluster_pb2.WorkerState(
                worker_id="a", models=["m"], phase=cluster_pb2.WorkerState.READY
            ),
            cluster_pb2.WorkerState(
                worker_id="b", models=["m"], phase=cluster_pb2.WorkerState.DRAINING
            ),
        ],
    )
    catalog = ModelCatalog()
    catalog.update_workers(snapshot)
    assert catalog.worker_counts == {"m": 1}, "a draining worker takes no new batches"


def test_before_any_balancer_answers_an_unknown_model_is_unavailable_not_missing() -> None:
    catalog = ModelCatalog()
    with pytest.raises(BalancerUnreachable, match="not yet heard from a balancer"):
        catalog.get("m")

    catalog.update([])
    with pytest.raises(NotFound, match="unknown model 'm'"):
        catalog.get("m")


def snapshot_with_statuses() -> cluster_pb2.ClusterSnapshot:
    snapshot = cluster_pb2.ClusterSnapshot(models=[served("kept")])
    ready = cluster_pb2.WorkerState.READY
    one = snapshot.workers.add(worker_id="a", models=["kept"], phase=ready)
    one.model_statuses.add(name="kept", version="1", state="LOADING")
    one.model_statuses.add(name="gone", version="1", state="UNAVAILABLE", reason="unloaded")
    two = snapshot.workers.add(worker_id="b", models=["kept"], phase=ready)
    two.model_statuses.add(name="kept", version="1", state="READY")
    two.model_statuses.add(name="gone", version="1", state="UNAVAILABLE", reason="unloaded")
    return snapshot


def test_states_merge_over_workers_and_unloaded_models_go_at_once() -> None:
    snapshot = snapshot_with_statuses()
    assert merged_statuses(snapshot) == {
        "kept": {"1": ("READY", "")},
        "gone": {"1": ("UNAVAILABLE", "unloaded")},
    }
    assert unloaded_models(snapshot) == {"gone"}
    catalog = ModelCatalog()
    catalog.update([served("kept"), served("gone")])
    catalog.update(list(snapshot.models), unloaded_models(snapshot))
    assert catalog.served_names() == ["kept"]
    assert catalog.served_versions("gone") == ()


def test_repository_index_shows_each_version_with_its_state() -> None:
    snapshot = snapshot_with_statuses()
    catalog = ModelCatalog()
    catalog.update(list(snapshot.models), unloaded_models(snapshot))
    catalog.update_workers(snapshot)
    assert catalog.repository_index(reachable=True) == [
        ("gone", "1", "UNAVAILABLE", "unloaded"),
        ("kept", "1", "READY", ""),
    ]
    assert {row[2:] for row in catalog.repository_index(reachable=False)} == {
        ("UNAVAILABLE", "no balancer reachable")
    }
    catalog.worker_counts = {}
    assert catalog.repository_index(reachable=True)[1] == (
        "kept",
        "1",
        "UNAVAILABLE",
        "no ready worker",
    )


def with_parameter(model: cluster_pb2.ServedModel, key: str, value: str) -> cluster_pb2.ServedModel:
    model.config.parameters[key].string_value = value
    return model


def test_a_model_the_batcher_cannot_batch_is_refused_with_the_reason() -> None:
    catalog = ModelCatalog()
    snapshot = cluster_pb2.ClusterSnapshot(
        workers=[
            cluster_pb2.WorkerState(
                worker_id="a",
                models=["m"],
                phase=cluster_pb2.WorkerState.READY,
                model_statuses=[cluster_pb2.ModelStatus(name="m", version="1", state="READY")],
            )
        ]
    )
    assert catalog.update([with_parameter(served("m"), "batching_policy", "magic")]) == []
    catalog.update_workers(snapshot)

    with pytest.raises(FailedPrecondition) as refused:
        catalog.get("m")
    assert "unknown batching_policy 'magic'" in str(refused.value)
    assert str(sorted(POLICIES)) in str(refused.value)
    assert not catalog.ready("m")
    [(name, version, state, reason)] = catalog.repository_index(reachable=True)
    assert (name, version, state) == ("m", "1", "UNAVAILABLE")
    assert reason == str(refused.value)

    # A policy that needs a parameter the config lacks is refused the same way.
    catalog.update([with_parameter(served("m"), "batching_policy", "slo")])
    with pytest.raises(FailedPrecondition, match="needs parameters.slo_ms"):
        catalog.get("m")

    assert catalog.update([with_parameter(served("m"), "batching_policy", "fixed")]) == ["m"]
    assert catalog.get("m").spec.name == "m"
    assert catalog.refused == {}
    assert catalog.repository_index(reachable=True) == [("m", "1", "READY", "")]


def test_a_served_model_whose_config_turns_unbatchable_is_refused() -> None:
    catalog = ModelCatalog()
    catalog.update([served("m")])
    catalog.update([with_parameter(served("m"), "batching_policy", "magic")])
    with pytest.raises(FailedPrecondition, match="magic"):
        catalog.get("m")
    assert catalog.served_names() == []
