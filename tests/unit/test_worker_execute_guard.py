"""Only the balancers a worker registered with may call its Execute: ExecuteGuard on its own,
then applied by RoleGuard to the Worker service on an in-process server and called through the
balancer's real transport, with the worker's key and without it."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.balancer.core import WorkerLost
from services.balancer.server import GrpcWorkerTransport
from services.worker.auth import ExecuteGuard
from services.worker.server import SERVICE_NAME
from services.worker.settings import WorkerSettings
from tideserve import serving
from tideserve.credentials import ROLES, SecretRefused, write_secret
from tideserve.errors import Unauthenticated

KEY = "worker-key"


def bearer(token: str) -> dict[str, str]:
    return dict(serving.bearer(token))


def test_the_registered_key_is_admitted() -> None:
    guard = ExecuteGuard(KEY)
    guard.check("Execute", bearer(KEY), ())
    guard.check("Execute", {"authorization": f"bearer   {KEY} "}, ())


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"authorization": ""},
        {"authorization": KEY},
        {"authorization": f"Basic {KEY}"},
        {"authorization": "Bearer "},
        {"authorization": "Bearer worker-ke"},
        {"authorization": "Bearer worker-key-and-more"},
        {"authorization": "Bearer WORKER-KEY"},
        {"tideserve-execute-key": KEY},
    ],
    ids=repr,
)
def test_any_other_credential_is_refused_and_told_where_to_go(metadata: dict[str, str]) -> None:
    with pytest.raises(Unauthenticated) as refused:
        ExecuteGuard(KEY).check("Execute", metadata, ())
    message = str(refused.value)
    assert "serves only the balancers this worker registered with" in message
    assert "Dispatch" in message
    assert KEY not in message


@pytest.mark.parametrize("role", ROLES)
def test_a_role_token_or_certificate_is_not_the_key(role: str) -> None:
    """Every process of a role shares its token and certificate name, so neither can stand for
    one worker's key, under mutual TLS as without it."""
    guard = ExecuteGuard(KEY)
    with pytest.raises(Unauthenticated):
        guard.check("Execute", bearer(f"{role}-token"), (role,))


def test_each_start_makes_its_own_random_key() -> None:
    keys = {ExecuteGuard.from_settings("").key for _ in range(20)}
    assert len(keys) == 20
    assert min(len(key) for key in keys) >= 32


def test_a_key_file_is_read_and_must_be_private(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "execute.key", "from-a-file")
    assert ExecuteGuard.from_settings(str(path)).key == "from-a-file"
    os.chmod(path, 0o644)
    with pytest.raises(SecretRefused, match="chmod 600"):
        ExecuteGuard.from_settings(str(path))


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty key"):
        ExecuteGuard("")


def test_a_random_key_is_the_default_setting() -> None:
    assert WorkerSettings().execute_key_file == ""


# -- applied to the Worker service, called by the balancer's transport --------------------------


async def test_the_balancers_transport_gets_through_and_an_outsider_does_not() -> None:
    executed: list[bytes] = []

    async def execute(payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
        executed.append(payload)
        return b"result"

    guard = ExecuteGuard.from_settings("")
    server = serving.new_server([serving.RoleGuard(SERVICE_NAME, guard)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE_NAME, {"Execute": grpc.unary_unary_rpc_method_handler(execute)}
            ),
        )
    )
    address = f"127.0.0.1:{serving.bind(server, '127.0.0.1:0')}"
    await serving.add_health_and_reflection(server, [SERVICE_NAME])
    await server.start()
    transport = GrpcWorkerTransport()
    try:
        assert await transport.execute(address, b"batch", 5.0, key=guard.key) == b"result"
        # A balancer holding a stale key (the worker at that address restarted) loses the
        # batch to retry it elsewhere, rather than answer the client UNAUTHENTICATED.
        with pytest.raises(WorkerLost, match="refused the key its worker registered with"):
            await transport.execute(address, b"stale", 5.0, key="an-old-key")
        async with serving.channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await channel.unary_unary(f"/{SERVICE_NAME}/Execute")(b"outsider", timeout=5.0)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, "health stays open"
        assert executed == [b"batch"], "a refused call never reaches the handler"
    finally:
        await transport.close()
        await server.stop(None)
