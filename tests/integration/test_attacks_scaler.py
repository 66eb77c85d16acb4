"""Attacks on a real scaler on loopback, replayed as an attacker would send them.

- A stolen admin token, used to ask for 2^32 - 1 replicas (a raw -1 on the wire) and then for
  10,000: refused with INVALID_ARGUMENT naming the ceiling and its setting; the count never goes
  above the ceiling, each decision moves it by at most the step, and the scaler keeps answering.
- Secrets left readable by group or others (the admin token file, any service's TLS key): the
  service refuses to start, exits non-zero and says on stderr which file and how to fix it.
- A worker (it runs model code) finds no token in its environment (/proc/<pid>/environ).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from harness.cluster import ROOT, Cluster, free_port, sync_channel, wait_for
from tests.accounting import record
from tests.certs import Certificates, make_certificates
from tideserve.credentials import write_secret
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc

pytestmark = pytest.mark.integration

ADMIN = "tideserve.v1.ScalerAdmin"
TOKEN = "attack-test-admin-token-7d2e"
# A token of another role, as an operator's shell might export it: workers must not inherit it.
STRAY_TOKEN = "stray-balancer-token-51ac"
CEILING = 3
STEP_UP = 1


def set_bounds_with_raw_minus_one() -> bytes:
    """SetBoundsRequest{min_replicas: 1, max_replicas: -1} as a client that writes a signed -1
    into the uint32 field puts it on the wire: a ten-byte varint, which decodes to 2^32 - 1."""
    return bytes([0x08, 0x01, 0x10]) + b"\xff" * 9 + b"\x01"


@pytest.fixture
def scaler(model_repository: Path, tmp_path: Path) -> Iterator[tuple[Cluster, str]]:
    cluster = Cluster(model_repository, tmp_path).start(workers=0)
    token_file = write_secret(tmp_path / "admin.token", TOKEN)
    port = free_port()
    cluster.spawn(
        "scaler",
        "services.scaler",
        "--port",
        str(port),
        "--metrics-port",
        str(free_port()),
        "--balancers",
        cluster.balancer,
        "--runtime",
        "process",
        "--model-repository",
        str(model_repository),
        "--worker-threads",
        "1",
        "--min-replicas",
        "1",
        "--max-replicas",
        "2",
        "--replica-ceiling",
        str(CEILING),
        "--max-step-up",
        str(STEP_UP),
        "--up-cooldown-s",
        "0.5",
        "--tick-s",
        "0.2",
        "--policy",
        "static",
        # The token file's path by environment, and stray tokens an operator's shell may hold.
        env={
            "TIDESERVE_SCALER_ADMIN_TOKEN_FILE": str(token_file),
            "TIDESERVE_BALANCER_TOKEN": STRAY_TOKEN,
            "TIDESERVE_ATTACK_MARKER": "inherited",
        },
    )
    address = f"127.0.0.1:{port}"
    cluster.wait_serving("scaler", address)
    yield cluster, address
    cluster.stop()


def admin_stub(channel: grpc.Channel) -> cluster_pb2_grpc.ScalerAdminStub:
    return cluster_pb2_grpc.ScalerAdminStub(channel)


AUTH = (("authorization", f"Bearer {TOKEN}"),)


def refusal(call) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_a_stolen_token_cannot_run_the_scaler_away(scaler: tuple[Cluster, str]) -> None:
    _, address = scaler
    raw = set_bounds_with_raw_minus_one()
    assert cluster_pb2.SetBoundsRequest.FromString(raw).max_replicas == 2**32 - 1
    with sync_channel(address) as channel:
        stub = admin_stub(channel)
        raw_set_bounds = channel.unary_unary(
            f"/{ADMIN}/SetBounds", response_deserializer=cluster_pb2.ScalerStatus.FromString
        )
        attacks = [
            lambda: raw_set_bounds(raw, metadata=AUTH, timeout=10),
            lambda: stub.SetBounds(
                cluster_pb2.SetBoundsRequest(min_replicas=1, max_replicas=2**32 - 1),
                metadata=AUTH,
                timeout=10,
            ),
            lambda: stub.ScaleTo(
                cluster_pb2.ScaleToRequest(replicas=10_000), metadata=AUTH, timeout=10
            ),
            lambda: stub.ScaleTo(
                cluster_pb2.ScaleToRequest(replicas=2**32 - 1), metadata=AUTH, timeout=10
            ),
            lambda: stub.SetBounds(
                cluster_pb2.SetBoundsRequest(min_replicas=3, max_replicas=2),
                metadata=AUTH,
                timeout=10,
            ),
        ]
        refusals = [refusal(attack) for attack in attacks]
        codes = Counter(error.code().name for error in refusals)  # type: ignore[attr-defined]
        record(
            "scaler admin: SetBounds 2^32-1 (raw -1), ScaleTo 10000 and 2^32-1, min > max",
            cases=len(attacks),
            sent=len(attacks),
            answered=codes.total(),
            errors=codes,
        )
        assert codes == {"INVALID_ARGUMENT": len(attacks)}
        for error in refusals[:4]:
            assert f"above the replica ceiling {CEILING}" in error.details()  # type: ignore[attr-defined]
            assert "--replica-ceiling" in error.details()  # type: ignore[attr-defined]
        assert "min_replicas 3 is above max_replicas 2" in refusals[4].details()  # type: ignore[attr-defined]

        # Nothing changed, and the scaler still answers.
        status = stub.GetStatus(cluster_pb2.GetStatusRequest(), metadata=AUTH, timeout=10)
        assert (status.min_replicas, status.max_replicas) == (1, 2)
        assert not status.HasField("pinned_replicas")

        # The most an operator may ask for is the ceiling, and it is reached a step at a time.
        stub.SetBounds(
            cluster_pb2.SetBoundsRequest(min_replicas=1, max_replicas=CEILING),
            metadata=AUTH,
            timeout=10,
        )
        stub.ScaleTo(cluster_pb2.ScaleToRequest(replicas=CEILING), metadata=AUTH, timeout=10)
        seen: list[int] = []

        def at_ceiling() -> bool:
            workers = stub.ListWorkers(
                cluster_pb2.ListWorkersRequest(), metadata=AUTH, timeout=10
            ).workers
            seen.append(len(workers))
            return len(workers) == CEILING

        wait_for(at_ceiling, 60, f"{CEILING} workers")
        time.sleep(1.0)
        at_ceiling()
        status = stub.GetStatus(cluster_pb2.GetStatusRequest(), metadata=AUTH, timeout=10)
    assert max(seen) == CEILING
    moves = [(d.current_replicas, d.applied_replicas) for d in status.recent_decisions]
    # Every decision the scaler took (one per tick at most) stayed under the ceiling and moved
    # up by at most the step: the pin from 1 to the ceiling took one decision per worker.
    assert all(after <= CEILING for _, after in moves), moves
    assert all(after - before <= STEP_UP for before, after in moves), moves
    assert (1, 2) in moves, moves
    assert (2, 3) in moves, moves
    assert status.desired_replicas == CEILING


def test_workers_inherit_no_token(scaler: tuple[Cluster, str]) -> None:
    _, address = scaler
    with sync_channel(address) as channel:
        stub = admin_stub(channel)
        workers = wait_for(
            lambda: (
                stub.ListWorkers(
                    cluster_pb2.ListWorkersRequest(), metadata=AUTH, timeout=10
                ).workers
            ),
            60,
            "a worker",
        )
    environ = Path(f"/proc/{workers[0].runtime_id}/environ").read_bytes().split(b"\0")
    names = {entry.partition(b"=")[0].decode() for entry in environ if entry}
    leaked = sorted(n for n in names if n.startswith("TIDESERVE_") and "TOKEN" in n)
    secrets_seen = [s for s in (TOKEN, STRAY_TOKEN) if any(s.encode() in e for e in environ)]
    record(
        "scaler: a started worker's environment searched for tokens",
        cases=1,
        sent=1,
        answered=1,
        errors=Counter({"LEAKED": len(leaked) + len(secrets_seen)}),
    )
    # The environment was read: what the scaler inherited that is no secret reaches the worker.
    assert b"TIDESERVE_ATTACK_MARKER=inherited" in environ
    assert leaked == []
    assert secrets_seen == []


def start_refused(module: str, *args: str) -> subprocess.CompletedProcess:
    """Start `python -m module args` and wait for it to give up (it must not serve)."""
    return subprocess.run(
        [sys.executable, "-m", module, "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_a_token_file_others_can_read_stops_the_scaler(tmp_path: Path) -> None:
    token_file = write_secret(tmp_path / "admin.token", TOKEN)
    token_file.chmod(0o644)
    done = start_refused(
        "services.scaler", "--metrics-port", str(free_port()), "--admin-token-file", str(token_file)
    )
    record(
        "scaler started with a token file others can read",
        cases=1,
        sent=1,
        answered=1,
        errors=Counter({"REFUSED": int(done.returncode != 0)}),
    )
    assert done.returncode != 0
    assert f"admin_token_file '{token_file}' is readable by group or others" in done.stderr
    assert f"chmod 600 {token_file}" in done.stderr
    assert "Traceback" not in done.stderr
    assert TOKEN not in done.stderr


def test_a_token_in_the_environment_stops_the_scaler() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.scaler", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "TIDESERVE_SCALER_ADMIN_TOKEN": TOKEN},
    )
    assert done.returncode != 0
    assert "--admin-token-file FILE" in done.stderr


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


SERVICES = {
    "balancer": ("--metrics-port", "0"),
    "batcher": ("--metrics-port", "0", "--balancers", "127.0.0.1:1"),
    "worker": ("--balancers", "127.0.0.1:1"),
    "scaler": ("--metrics-port", "0", "--balancers", "127.0.0.1:1", "--min-replicas", "0"),
}


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_tls_key_others_can_read_stops_every_service(
    service: str, certs: Certificates, tmp_path: Path, model_repository: Path
) -> None:
    key = tmp_path / "node.key"
    key.write_bytes(Path(certs.path("node.key")).read_bytes())
    key.chmod(0o644)
    extra = ("--model-repository", str(model_repository)) if service == "worker" else ()
    done = start_refused(
        f"services.{service}",
        *SERVICES[service],
        *extra,
        "--tls-cert",
        certs.path("node.crt"),
        "--tls-key",
        str(key),
        "--tls-ca",
        certs.path("ca.crt"),
    )
    record(
        f"{service} started with a TLS key others can read",
        cases=1,
        sent=1,
        answered=1,
        errors=Counter({"REFUSED": int(done.returncode != 0)}),
    )
    assert done.returncode != 0, done.stderr[-2000:]
    assert f"tls_key '{key}' is readable by group or others" in done.stderr
    assert f"chmod 600 {key}" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
