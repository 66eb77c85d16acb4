"""BalancerCore's model control: a load or unload goes to every connected worker as a command,
the call answers with their states or the first worker's error, the table follows the workers'
ModelUpdates, and a worker that registers later is told the same."""

from __future__ import annotations

import asyncio

import pytest

from services.balancer.core import BalancerCore, WorkerSession
from services.balancer.registry import WorkerTable
from tideserve.errors import InvalidArgument, NotFound, Unavailable
from tideserve.v1 import cluster_pb2

LOAD = cluster_pb2.BalancerCommand.LOAD_MODEL
UNLOAD = cluster_pb2.BalancerCommand.UNLOAD_MODEL


class NoTransport:
    async def execute(self, address: str, payload: bytes, timeout: float | None) -> bytes:
        raise AssertionError("no batch is dispatched here")

    def forget(self, address: str) -> None:
        pass


def registration(worker_id: str, *models: str) -> cluster_pb2.WorkerRegistration:
    message = cluster_pb2.WorkerRegistration(worker_id=worker_id, address=f"{worker_id}:1")
    for model in models:
        message.models.add(versions=["1"]).config.name = model
    return message


def update(
    command: cluster_pb2.BalancerCommand, *models: str, error: str = ""
) -> cluster_pb2.ModelUpdate:
    answer = cluster_pb2.ModelUpdate(control_id=command.control_id)
    for model in models:
        answer.models.add(versions=["1"]).config.name = model
        answer.statuses.add(name=model, version="1", state="READY")
    if error:
        answer.error_code, answer.error = "INVALID_ARGUMENT", error
    return answer


@pytest.fixture
def core() -> BalancerCore:
    return BalancerCore(WorkerTable(), NoTransport())


async def answer(
    core: BalancerCore, session: WorkerSession, *models: str, error: str = ""
) -> cluster_pb2.BalancerCommand:
    command = await session.commands.get()
    assert command is not None
    await core.model_update(session, update(command, *models, error=error))
    return command


async def test_a_load_reaches_every_worker_and_the_table_follows(core: BalancerCore) -> None:
    a = await core.connect(registration("a", "old"))
    b = await core.connect(registration("b", "old"))
    call = asyncio.create_task(core.control_model("new", True, timeout_s=5))
    commands = await asyncio.gather(answer(core, a, "old", "new"), answer(core, b, "old", "new"))
    response = await call
    assert [(c.action, c.model_name) for c in commands] == [(LOAD, "new")] * 2
    assert len({c.control_id for c in commands}) == 2
    assert response.workers == 2
    assert [(s.name, s.state) for s in response.statuses] == [("new", "READY")] * 2
    assert {m.config.name for m in core.models()} == {"old", "new"}
    assert core.table.candidates("new")


async def test_an_unload_drops_the_model_from_routing(core: BalancerCore) -> None:
    a = await core.connect(registration("a", "m", "n"))
    call = asyncio.create_task(core.control_model("m", False, timeout_s=5))
    command = await answer(core, a, "n")
    await call
    assert command.action == UNLOAD
    assert [m.config.name for m in core.models()] == ["n"]
    assert not core.table.candidates("m")


async def test_a_worker_error_is_the_calls_error(core: BalancerCore) -> None:
    a = await core.connect(registration("a", "m"))
    call = asyncio.create_task(core.control_model("m", True, timeout_s=5))
    await answer(core, a, "m", error="model m version 2: model.pt could not be loaded")
    with pytest.raises(InvalidArgument, match="could not be loaded"):
        await call


async def test_silent_workers_or_none_at_all_are_unavailable(core: BalancerCore) -> None:
    with pytest.raises(Unavailable, match="no worker is connected"):
        await core.control_model("m", True, timeout_s=1)
    await core.connect(registration("a", "m"))
    with pytest.raises(Unavailable, match="1 of 1 workers did not answer"):
        await core.control_model("m", True, timeout_s=0.01)


async def test_a_worker_registering_later_is_told_the_plan(core: BalancerCore) -> None:
    a = await core.connect(registration("a", "m"))
    call = asyncio.create_task(core.control_model("m", False, timeout_s=5))
    await answer(core, a)
    await call
    late = await core.connect(registration("late", "m", "n"))
    command = late.commands.get_nowait()
    assert command is not None
    assert (command.action, command.model_name, command.control_id) == (UNLOAD, "m", 0)
    assert late.commands.empty()


async def test_a_worker_leaving_mid_load_does_not_hold_the_call(core: BalancerCore) -> None:
    a = await core.connect(registration("a", "m"))
    b = await core.connect(registration("b", "m"))
    call = asyncio.create_task(core.control_model("m", True, timeout_s=30))
    await answer(core, a, "m")
    await b.commands.get()
    await core.disconnect(b, "stream closed")
    response = await asyncio.wait_for(call, 5)
    assert response.workers == 1


async def test_draining_workers_are_left_alone(core: BalancerCore) -> None:
    a = await core.connect(registration("a", "m"))
    await core.connect(registration("b", "m"))
    await core.drain("b", None)
    call = asyncio.create_task(core.control_model("m", False, timeout_s=5))
    await answer(core, a)
    assert (await call).workers == 1


async def test_canary_weights_reach_the_served_models_and_are_checked(core: BalancerCore) -> None:
    worker = registration("w1", "m")
    worker.models[0].versions[:] = ["1", "2"]
    await core.connect(worker)
    assert core.set_canary_weights("m", {"1": 90, "2": 10}) == {"1": 90, "2": 10}
    (model,) = core.models()
    assert dict(model.version_weights) == {"1": 90, "2": 10}
    assert list(model.versions) == ["1", "2"]
    # The table's own entry is left as the worker reported it.
    assert not core.table.models["m"].version_weights

    with pytest.raises(InvalidArgument, match=r"versions \['3'\] are not served"):
        core.set_canary_weights("m", {"2": 50, "3": 50})
    with pytest.raises(InvalidArgument, match="all 0"):
        core.set_canary_weights("m", {"1": 0, "2": 0})
    with pytest.raises(NotFound, match="no worker serves model 'other'"):
        core.set_canary_weights("other", {"1": 1})
    assert dict(core.models()[0].version_weights) == {"1": 90, "2": 10}

    assert core.set_canary_weights("m", {}) == {}
    assert not core.models()[0].version_weights
