"""TLS, mutual TLS and the admin-auth interceptor on real in-process gRPC servers, with
certificates the test makes (tests/certs.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.balancer.settings import BalancerSettings
from services.batcher.settings import BatcherSettings
from services.scaler.auth import AdminAuth
from services.scaler.settings import ScalerSettings
from services.worker.settings import WorkerSettings
from tests.certs import Certificates, make_certificates
from tideserve import serving
from tideserve.credentials import write_secret
from tideserve.settings import TlsFields, load_settings
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc

ADMIN = "tideserve.v1.ScalerAdmin"
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


async def health_server(tls: serving.TlsSettings) -> tuple[grpc.aio.Server, str]:
    server = serving.new_server()
    port = serving.bind(server, "127.0.0.1:0", tls)
    await serving.add_health_and_reflection(server, [])
    await server.start()
    return server, f"127.0.0.1:{port}"


async def check(address: str, tls: serving.TlsSettings) -> grpc.StatusCode:
    async with serving.channel(address, tls) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("settings_class", [BalancerSettings, BatcherSettings, ScalerSettings,
                                            WorkerSettings])
def test_every_service_takes_the_same_tls_flags(settings_class: type) -> None:
    assert issubclass(settings_class, TlsFields)
    settings = load_settings(
        settings_class, ["--tls-cert", "c.pem", "--tls-key", "k.pem"], env_prefix="X_",
        description="", environ={"X_TLS_CA": "ca.pem"},
    )
    assert serving.TlsSettings.of(settings) == serving.TlsSettings("c.pem", "k.pem", "ca.pem")


def test_a_certificate_without_its_key_is_refused() -> None:
    with pytest.raises(ValueError, match="together"):
        serving.TlsSettings(cert="c.pem")


async def test_unreadable_certificate_names_the_setting(tmp_path: Path) -> None:
    server = serving.new_server()
    missing = serving.TlsSettings(str(tmp_path / "no.crt"), str(tmp_path / "no.key"))
    with pytest.raises(ValueError, match="tls_key"):
        serving.bind(server, "127.0.0.1:0", missing)


async def test_tls_server_answers_tls_clients_and_refuses_plaintext(certs: Certificates) -> None:
    server, address = await health_server(certs.node_tls_only)
    try:
        assert await check(address, certs.verify_only) == grpc.StatusCode.OK
        assert await check(address, serving.PLAINTEXT) == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)


async def test_mutual_tls_refuses_clients_without_a_trusted_certificate(
    certs: Certificates,
) -> None:
    server, address = await health_server(certs.node)
    try:
        assert await check(address, certs.operator) == grpc.StatusCode.OK
        assert await check(address, certs.verify_only) == grpc.StatusCode.UNAVAILABLE
        assert await check(address, certs.stranger) == grpc.StatusCode.UNAVAILABLE
        assert await check(address, serving.PLAINTEXT) == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)


class RecordingAdmin(cluster_pb2_grpc.ScalerAdminServicer):
    """Records which admin calls reached the handler (a refused call must not)."""

    def __init__(self) -> None:
        self.scaled: list[int] = []

    async def ScaleTo(  # noqa: N802 (the RPC's name)
        self, request: cluster_pb2.ScaleToRequest, context: grpc.aio.ServicerContext
    ) -> cluster_pb2.ScalerStatus:
        self.scaled.append(request.replicas)
        return cluster_pb2.ScalerStatus(pinned_replicas=request.replicas)


@pytest.fixture
async def admin(
    certs: Certificates,
) -> AsyncIterator[tuple[str, RecordingAdmin]]:
    servicer = RecordingAdmin()
    auth = AdminAuth(TOKEN, identities=["operator"])
    server = serving.new_server(interceptors=[serving.RoleGuard(ADMIN, auth)])
    cluster_pb2_grpc.add_ScalerAdminServicer_to_server(servicer, server)
    port = serving.bind(server, "127.0.0.1:0", certs.node)
    await serving.add_health_and_reflection(server, [ADMIN])
    await server.start()
    yield f"127.0.0.1:{port}", servicer
    await server.stop(None)


async def scale(
    address: str, tls: serving.TlsSettings, metadata: tuple[tuple[str, str], ...] = ()
) -> grpc.StatusCode:
    async with serving.channel(address, tls) as channel:
        try:
            await cluster_pb2_grpc.ScalerAdminStub(channel).ScaleTo(
                cluster_pb2.ScaleToRequest(replicas=3), metadata=metadata, timeout=3
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def test_admin_needs_the_token_or_an_allowed_certificate(
    admin: tuple[str, RecordingAdmin], certs: Certificates
) -> None:
    address, servicer = admin
    # The node certificate is trusted by the CA (so the connection stands) but is not an admin.
    node = certs.node
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    assert await scale(address, node) == unauthenticated
    assert await scale(address, node, (("authorization", "Bearer wrong"),)) == unauthenticated
    assert await scale(address, node, (("authorization", TOKEN),)) == unauthenticated
    assert servicer.scaled == []
    assert await check(address, node) == grpc.StatusCode.OK  # health stays open
    assert await scale(address, node, (("authorization", f"Bearer {TOKEN}"),)) == grpc.StatusCode.OK
    assert await scale(address, certs.operator) == grpc.StatusCode.OK
    assert servicer.scaled == [3, 3]


@pytest.mark.parametrize(
    ("header", "identities", "allowed"),
    [
        ("", frozenset(), False),
        ("Bearer s3cret-token", frozenset(), True),
        ("bearer s3cret-token", frozenset(), True),
        ("Bearer s3cret-token2", frozenset(), False),
        ("Basic s3cret-token", frozenset(), False),
        ("Bearer ", frozenset(), False),
        ("", frozenset({"operator"}), True),
        ("", frozenset({"someone"}), False),
    ],
)
def test_admin_auth_rules(header: str, identities: frozenset[str], allowed: bool) -> None:
    auth = AdminAuth(TOKEN, ["operator"])
    metadata = {"authorization": header} if header else {}
    assert auth.allows(metadata, identities) is allowed


def test_admin_auth_is_open_only_when_nothing_is_configured(tmp_path: Path) -> None:
    assert AdminAuth().allows({}, frozenset())
    assert not AdminAuth(identities=["operator"]).allows({}, frozenset())
    token_file = write_secret(tmp_path / "token", TOKEN)
    from_file = AdminAuth.from_settings(str(token_file), ())
    assert from_file.allows({"authorization": f"Bearer {TOKEN}"}, frozenset())
    assert not from_file.allows({}, frozenset())


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    token_file = write_secret(tmp_path / "token", TOKEN)
    token_file.chmod(0o644)
    with pytest.raises(ValueError, match=r"readable by group or others.*chmod 600"):
        AdminAuth.from_settings(str(token_file), ())


@pytest.mark.parametrize(
    ("argv", "environ"),
    [([], {"TIDESERVE_SCALER_ADMIN_TOKEN": TOKEN}), (["--admin-token", TOKEN], {})],
)
def test_a_token_given_as_a_value_is_refused_with_the_file_form(
    argv: list[str], environ: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match="--admin-token-file FILE"):
        load_settings(ScalerSettings, argv, env_prefix="TIDESERVE_SCALER_", description="",
                      environ=environ)


def test_admin_identities_require_mutual_tls() -> None:
    with pytest.raises(ValueError, match="mutual TLS"):
        ScalerSettings(admin_identities=("operator",))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o666])
async def test_a_private_key_others_can_read_is_refused(
    tmp_path: Path, certs: Certificates, mode: int
) -> None:
    key = tmp_path / "node.key"
    key.write_bytes(Path(certs.path("node.key")).read_bytes())
    key.chmod(mode)
    loose = serving.TlsSettings(certs.path("node.crt"), str(key), certs.path("ca.crt"))
    fix = rf"tls_key '{key}' is readable by group or others.*chmod 600 {key}"
    with pytest.raises(ValueError, match=fix):
        serving.bind(serving.new_server(), "127.0.0.1:0", loose)
    with pytest.raises(ValueError, match=fix):
        serving.channel_credentials(loose)
    key.chmod(0o600)
    assert serving.channel_credentials(loose) is not None
