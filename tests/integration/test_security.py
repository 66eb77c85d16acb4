"""TLS and admin authentication on real processes: a mutual-TLS cluster serves a client with a
trusted certificate and refuses plaintext and certificate-less clients; the scaler's admin RPCs
refuse missing or wrong bearer tokens (grpc and grpcurl) and change nothing, while health and
reflection stay open."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from harness.cluster import ROOT, Cluster, free_port, sync_channel, wait_healthy
from tests.accounting import record
from tests.certs import Certificates, make_certificates
from tideserve.credentials import write_secret
from tideserve.serving import PLAINTEXT
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc, inference_pb2, inference_pb2_grpc
from tideserve_tools.loadgen import closed_loop

pytestmark = pytest.mark.integration

ADMIN = "tideserve.v1.ScalerAdmin"
TOKEN = "integration-token-4f1c"
UNAUTHENTICATED = 16
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def mtls_cluster(
    model_repository: Path, tmp_path: Path, certs: Certificates
) -> Iterator[Cluster]:
    cluster = Cluster(model_repository, tmp_path, tls=certs.node).start(workers=1)
    yield cluster
    cluster.stop()


def server_ready(address: str, tls: object) -> grpc.StatusCode:
    with sync_channel(address, tls) as channel:  # type: ignore[arg-type]
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            stub.ServerReady(inference_pb2.ServerReadyRequest(), timeout=3)
        except grpc.RpcError as error:
            return error.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def execute_directly(address: str, tls: object) -> grpc.StatusCode:
    """The status of an empty batch sent straight to a worker's Execute, with no key."""
    with sync_channel(address, tls) as channel:  # type: ignore[arg-type]
        try:
            channel.unary_unary("/tideserve.v1.Worker/Execute")(b"", timeout=5)
        except grpc.RpcError as error:
            return error.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


async def test_mutual_tls_cluster_serves_trusted_clients_only(
    mtls_cluster: Cluster, certs: Certificates
) -> None:
    result = await closed_loop(
        mtls_cluster.batcher, "tiny_cnn", concurrency=4, seconds=1.0, tls=certs.operator
    )
    untrusted = [
        server_ready(mtls_cluster.batcher, tls)
        for tls in (PLAINTEXT, certs.verify_only, certs.stranger)
    ]
    # A certificate the CA signed reaches the worker's port, yet not its Execute: only the
    # balancers it registered with hold the key.
    direct = execute_directly(mtls_cluster.snapshot().workers[0].address, certs.operator)
    statuses = Counter(result.errors) + Counter(code.name for code in (*untrusted, direct))
    record("mTLS: a trusted client's load; plaintext, no or untrusted certificate; a trusted "
           "certificate straight to a worker's Execute",
           cases=2 + len(untrusted), sent=result.sent + len(untrusted) + 1,
           answered=result.ok + statuses.total(), errors=statuses)
    assert direct == grpc.StatusCode.UNAUTHENTICATED
    plaintext, no_certificate, stranger = untrusted
    assert result.errors == {}
    assert result.ok > 10
    assert plaintext == grpc.StatusCode.UNAVAILABLE
    assert no_certificate == grpc.StatusCode.UNAVAILABLE
    assert stranger == grpc.StatusCode.UNAVAILABLE
    # Workers registered and batches flowed over mTLS between balancer, batcher and worker.
    assert len(mtls_cluster.snapshot().workers) == 1


@pytest.fixture
def guarded_scaler(
    model_repository: Path, tmp_path: Path
) -> Iterator[tuple[Cluster, str]]:
    cluster = Cluster(model_repository, tmp_path).start(workers=0)
    token_file = write_secret(tmp_path / "admin-token", TOKEN)
    address = f"127.0.0.1:{free_port()}"
    cluster.spawn(
        "scaler", "services.scaler", "--port", address.rsplit(":", 1)[1],
        "--metrics-port", str(free_port()), "--balancers", cluster.balancer,
        "--runtime", "process", "--model-repository", str(model_repository),
        "--worker-threads", "1", "--min-replicas", "0", "--max-replicas", "2",
        "--policy", "static", "--admin-token-file", str(token_file), *cluster.scaler_flags(),
    )
    wait_healthy(address)
    yield cluster, address
    cluster.stop()


def grpcurl(address: str, method: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [".venv/bin/grpcurl", "-plaintext", "-format-error", *extra, address, method],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )


def test_admin_rpcs_need_the_bearer_token(guarded_scaler: tuple[Cluster, str]) -> None:
    _, address = guarded_scaler
    scale = ("-d", '{"replicas": 2}')
    bad_headers = ((), ("-H", "authorization: Bearer wrong"), ("-H", f"authorization: {TOKEN}"))
    refusals: Counter[str] = Counter()
    for headers in bad_headers:
        refused = grpcurl(address, f"{ADMIN}/ScaleTo", *headers, *scale)
        assert refused.returncode != 0
        code = json.loads(refused.stderr)["code"]
        refusals[CODE_NAMES[code]] += 1
        assert code == UNAUTHENTICATED, refused.stderr
    with sync_channel(address) as channel:
        stub = cluster_pb2_grpc.ScalerAdminStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Pause(cluster_pb2.PauseRequest(), timeout=5)
        refusals[caught.value.code().name] += 1  # type: ignore[attr-defined]
        record("admin RPCs with no, a wrong or an unprefixed bearer token",
               cases=len(bad_headers) + 1, sent=len(bad_headers) + 1,
               answered=refusals.total(), errors=refusals)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        status = stub.GetStatus(
            cluster_pb2.GetStatusRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),)
        )
    assert not status.paused
    assert not status.HasField("pinned_replicas")
    # Nothing changed; health and reflection stay open without a token.
    assert grpcurl(address, "grpc.health.v1.Health/Check").returncode == 0
    assert ADMIN in grpcurl(address, "list").stdout
    allowed = grpcurl(address, f"{ADMIN}/ScaleTo", "-H", f"authorization: Bearer {TOKEN}", *scale)
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["pinned_replicas"] == 2
