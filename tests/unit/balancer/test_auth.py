"""Who may call which balancer RPC: BalancerAuth's role table on its own, then applied by
RoleGuard to the real Balancer servicer on an in-process server (every call shape: unary,
server-streaming, bidirectional), with tokens and with mutual-TLS identities."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.balancer.auth import METHOD_ROLES, BalancerAuth
from services.balancer.core import BalancerCore
from services.balancer.metrics import BalancerMetrics
from services.balancer.registry import WorkerTable
from services.balancer.server import SERVICE_NAME, BalancerServicer, add_balancer_to_server
from tests.certs import Certificates, make_certificates
from tideserve import metrics, serving
from tideserve.credentials import ROLES, create_credentials, read_secret
from tideserve.errors import PermissionDenied, Unauthenticated
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc

TOKENS = {role: f"{role}-secret" for role in ROLES}


def header(role: str) -> dict[str, str]:
    return {"authorization": f"Bearer {TOKENS[role]}"}


@pytest.mark.parametrize("method", sorted(METHOD_ROLES))
@pytest.mark.parametrize("role", ROLES)
def test_each_role_reaches_exactly_its_methods(method: str, role: str) -> None:
    auth = BalancerAuth(TOKENS)
    if role in METHOD_ROLES[method]:
        assert auth.check(method, header(role), ()) == {role}
    else:
        with pytest.raises(PermissionDenied, match=f"{role} role may not call Balancer/{method}"):
            auth.check(method, header(role), ())


def test_the_role_table_is_the_documented_one() -> None:
    assert METHOD_ROLES["Heartbeat"] == {"worker"}
    assert METHOD_ROLES["Dispatch"] == {"batcher"}
    assert METHOD_ROLES["ReportFrontend"] == {"batcher"}
    assert METHOD_ROLES["WatchCluster"] == {"batcher", "scaler", "operator"}
    assert METHOD_ROLES["DrainWorker"] == {"scaler", "operator"}
    assert METHOD_ROLES["SetRoutingPolicy"] == {"scaler", "operator"}
    assert METHOD_ROLES["ControlModel"] == {"batcher", "operator"}
    assert METHOD_ROLES["SetCanaryWeights"] == {"operator"}


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Basic {TOKENS['operator']}"},
        {"authorization": TOKENS["operator"]},
        {"authorization": "Bearer "},
    ],
)
def test_missing_or_wrong_token_is_unauthenticated(metadata: dict[str, str]) -> None:
    with pytest.raises(Unauthenticated, match="authorization: Bearer <token>"):
        BalancerAuth(TOKENS).check("DrainWorker", metadata, ())


def test_unknown_method_admits_no_one() -> None:
    with pytest.raises(PermissionDenied):
        BalancerAuth(TOKENS).check("Shutdown", header("operator"), ())


def test_bearer_scheme_is_case_insensitive() -> None:
    metadata = {"authorization": f"bearer {TOKENS['scaler']}"}
    assert BalancerAuth(TOKENS).check("DrainWorker", metadata, ()) == {"scaler"}


def test_certificate_names_count_only_under_mutual_tls() -> None:
    with pytest.raises(Unauthenticated):
        BalancerAuth(TOKENS).check("Heartbeat", {}, {"worker"})
    mutual = BalancerAuth(mutual_tls=True)
    assert mutual.check("Heartbeat", {}, {"worker", "worker-7.example"}) == {"worker"}
    with pytest.raises(PermissionDenied):
        mutual.check("Dispatch", {}, {"worker"})
    with pytest.raises(Unauthenticated):
        mutual.check("Heartbeat", {}, {"tideserve-node", "localhost"})


def test_from_settings_refuses_no_credentials_and_names_the_flag() -> None:
    with pytest.raises(ValueError, match="--credentials-dir"):
        BalancerAuth.from_settings("", mutual_tls=False, allow_unauthenticated=False)


def test_allow_unauthenticated_admits_everyone_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    auth = BalancerAuth.from_settings("", mutual_tls=False, allow_unauthenticated=True)
    assert auth.check("DrainWorker", {}, ())
    assert "--allow-unauthenticated" in caplog.text


def test_from_settings_reads_every_role_token(tmp_path: Path) -> None:
    files = create_credentials(tmp_path / "credentials")
    auth = BalancerAuth.from_settings(str(tmp_path / "credentials"), False, False)
    operator = {"authorization": f"Bearer {read_secret(files['operator'])}"}
    assert auth.check("SetRoutingPolicy", operator, ()) == {"operator"}


def test_from_settings_refuses_a_token_others_can_read(tmp_path: Path) -> None:
    files = create_credentials(tmp_path / "credentials")
    files["batcher"].chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        BalancerAuth.from_settings(str(tmp_path / "credentials"), False, False)


# -- applied to the real servicer ---------------------------------------------------------------


class NoWorkers:
    async def execute(
        self, address: str, payload: bytes, timeout: float | None, *, key: str
    ) -> bytes:
        raise AssertionError("no batch may reach a worker in these tests")

    def forget(self, address: str) -> None:
        pass


async def balancer(
    auth: BalancerAuth, tls: serving.TlsSettings
) -> tuple[grpc.aio.Server, str, BalancerCore]:
    core = BalancerCore(WorkerTable(), NoWorkers())
    servicer = BalancerServicer(core, 0.05, BalancerMetrics(metrics.new_registry()))
    server = serving.new_server([serving.RoleGuard(SERVICE_NAME, auth)])
    add_balancer_to_server(servicer, server)
    port = serving.bind(server, "127.0.0.1:0", tls)
    await serving.add_health_and_reflection(server, [SERVICE_NAME])
    await server.start()
    return server, f"127.0.0.1:{port}", core


def registration() -> cluster_pb2.WorkerReport:
    report = cluster_pb2.WorkerReport()
    report.registration.worker_id = "w1"
    report.registration.address = "127.0.0.1:1"
    report.registration.models.add(versions=["1"]).config.name = "m"
    return report


async def heartbeat(stub: cluster_pb2_grpc.BalancerStub, metadata: tuple) -> grpc.StatusCode:
    """Register and wait for the first command or the refusal; OK once registered."""

    async def reports() -> AsyncIterator[cluster_pb2.WorkerReport]:
        yield registration()
        await asyncio.sleep(30)

    call = stub.Heartbeat(reports(), metadata=metadata, timeout=0.5)
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_role_guard_on_every_call_shape() -> None:
    server, address, core = await balancer(BalancerAuth(TOKENS), serving.PLAINTEXT)
    try:
        async with serving.channel(address) as channel:
            stub = cluster_pb2_grpc.BalancerStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListModels(cluster_pb2.ListModelsRequest())
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "--credentials-dir" in (refused.value.details() or "")

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.SetRoutingPolicy(
                    cluster_pb2.SetRoutingPolicyRequest(name="round_robin"),
                    metadata=serving.bearer(TOKENS["batcher"]),
                )
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert core.policy.name == "least_load", "a refused call changes nothing"

            watch = stub.WatchCluster(
                cluster_pb2.WatchClusterRequest(), metadata=serving.bearer(TOKENS["worker"])
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await watch.read()
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            watch = stub.WatchCluster(
                cluster_pb2.WatchClusterRequest(), metadata=serving.bearer(TOKENS["operator"])
            )
            assert (await watch.read()).routing_policy == "least_load"
            watch.cancel()

            code = await heartbeat(stub, serving.bearer(TOKENS["batcher"]))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert core.sessions == {}
            code = await heartbeat(stub, serving.bearer(TOKENS["worker"]))
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED, "registered: the stream stays open"

            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(None)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


async def test_mutual_tls_certificate_naming_the_role_is_enough(certs: Certificates) -> None:
    server, address, core = await balancer(BalancerAuth(mutual_tls=True), certs.node)
    try:
        # The operator certificate's CN is "operator"; the node certificate names no role.
        async with serving.channel(address, certs.operator) as channel:
            answer = await cluster_pb2_grpc.BalancerStub(channel).SetRoutingPolicy(
                cluster_pb2.SetRoutingPolicyRequest(name="round_robin")
            )
            assert answer.name == "round_robin"
        async with serving.channel(address, certs.node) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await cluster_pb2_grpc.BalancerStub(channel).SetRoutingPolicy(
                    cluster_pb2.SetRoutingPolicyRequest(name="least_load")
                )
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert core.policy.name == "round_robin"
    finally:
        await server.stop(None)
