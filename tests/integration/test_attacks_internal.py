"""Attacks on the internal plane, replayed against a real suite on loopback: a process that
reaches the balancer's port tries to register a forged worker, to take over a live worker's id,
to read another client's batch out of the batcher's shared memory, and to drain workers or
change routing; one that reaches a worker's port tries to have it compute batches of its own.
Each attempt must fail with a clear status while the real worker keeps serving: clients'
requests before and after every attack all succeed with the model's own outputs."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from harness.cluster import Cluster, sync_channel, wait_for
from tests.accounting import record
from tests.integration.test_request_path import reference
from tideserve import serving, shared_memory
from tideserve.credentials import ROLES
from tideserve.metadata import MODEL_KEY, ROWS_KEY
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc, inference_pb2_grpc
from tideserve.v1 import inference_pb2 as pb

pytestmark = pytest.mark.integration

MODEL = "tiny_cnn"
ROWS = 32
CLIENT_ROUNDS = 10
DISPATCH = "/tideserve.v1.Balancer/Dispatch"
EXECUTE = "/tideserve.v1.Worker/Execute"


@pytest.fixture(scope="module")
def suite(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One real worker; every batch goes through the batcher's shared memory."""
    cluster = Cluster(
        model_repository,
        tmp_path_factory.mktemp("attacks"),
        batcher_args=("--shared-memory-min-bytes", "1"),
    ).start(workers=1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(7).random((ROWS, 1, 28, 28), dtype=np.float32)


@pytest.fixture(scope="module")
def expected(model_repository: Path, batch: np.ndarray) -> np.ndarray:
    return reference(model_repository, MODEL, batch)


def clients(cluster: Cluster, batch: np.ndarray, expected: np.ndarray) -> Counter[str]:
    """CLIENT_ROUNDS 32-row requests through the batcher; outcome code -> count. A response
    whose outputs are not the model's counts as FORGED."""
    outcomes: Counter[str] = Counter()
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="INPUT__0", datatype="FP32", shape=list(batch.shape))
    request.raw_input_contents.append(batch.tobytes())
    with sync_channel(cluster.batcher) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(CLIENT_ROUNDS):
            try:
                response = stub.ModelInfer(request, timeout=30)
            except grpc.RpcError as error:
                outcomes[error.code().name] += 1
                continue
            (tensor,) = response.outputs
            got = np.frombuffer(response.raw_output_contents[0], dtype="<f4")
            right = np.allclose(got.reshape(tuple(tensor.shape)), expected, rtol=1e-5, atol=1e-6)
            outcomes["OK" if right else "FORGED"] += 1
    return outcomes


def status(error: grpc.RpcError) -> str:
    """The status name of a refusal; one without a message (which says what to do) is marked,
    so that it fails the tests' expected counts."""
    code = error.code().name  # type: ignore[attr-defined]
    return code if error.details() else f"{code} without a message"  # type: ignore[attr-defined]


def attempt(call: Callable[[], object]) -> str:
    """The status an attack call ended with ("OK" if it was served)."""
    try:
        call()
    except grpc.RpcError as error:
        return status(error)
    return "OK"


def account(attack: str, codes: Counter[str], before: Counter[str], after: Counter[str]) -> None:
    """One accounting line per attack: the attack calls and the clients' requests around it."""
    clients_sent = before.total() + after.total()
    record(
        attack,
        cases=codes.total(),
        sent=codes.total() + clients_sent,
        answered=codes.total() + clients_sent,
        errors=codes + Counter({k: n for k, n in (before + after).items() if k != "OK"}),
    )


def registration(worker_id: str, address: str) -> cluster_pb2.WorkerReport:
    report = cluster_pb2.WorkerReport()
    report.registration.worker_id = worker_id
    report.registration.address = address
    report.registration.device = "cpu"
    report.registration.models.add(versions=["1"]).config.name = MODEL
    return report


def heartbeat(
    address: str, report: cluster_pb2.WorkerReport, metadata: tuple, hold_s: float
) -> str:
    """Register as `report` says and heartbeat, claiming near-zero service times, for `hold_s`;
    "OK" if the balancer kept the stream open that long, else the status it ended it with.
    (The blocking API: grpc.aio's client may report a write racing the server's refusal as
    INTERNAL instead of the status the server sent.)"""

    def reports() -> Iterator[cluster_pb2.WorkerReport]:
        yield report
        for _ in range(int(hold_s / 0.05)):
            time.sleep(0.05)
            load = cluster_pb2.WorkerReport()
            load.load.service_times.add(batch_size=ROWS, seconds=1e-6, model=MODEL)
            yield load

    with sync_channel(address) as channel:
        call = cluster_pb2_grpc.BalancerStub(channel).Heartbeat(
            reports(), metadata=metadata, timeout=hold_s
        )
        try:
            for _ in call:
                pass
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                return "OK"
            return status(error)
    return "OK"


def the_real_worker_serves(cluster: Cluster, address: str) -> None:
    (worker,) = cluster.snapshot().workers
    assert worker.worker_id == "worker-0"
    assert worker.address == address
    assert worker.phase == cluster_pb2.WorkerState.READY
    assert cluster.processes["worker-0"].poll() is None


def test_forged_worker_registration_is_refused(
    suite: Cluster, batch: np.ndarray, expected: np.ndarray
) -> None:
    real = suite.snapshot().workers[0].address
    before = clients(suite, batch, expected)
    impostor = registration("impostor", "127.0.0.1:9")
    credentials = [
        (),
        serving.bearer("guessed"),
        suite.auth("batcher"),
        suite.auth("operator"),
        suite.auth("scaler"),
    ]
    codes = Counter(heartbeat(suite.balancer, impostor, m, hold_s=1.0) for m in credentials)
    after = clients(suite, batch, expected)
    account("forged worker registration", codes, before, after)

    assert codes == {"UNAUTHENTICATED": 2, "PERMISSION_DENIED": 3}
    assert before == after == {"OK": CLIENT_ROUNDS}, "no client got forged outputs"
    the_real_worker_serves(suite, real)


def test_live_worker_id_cannot_be_taken_over(
    suite: Cluster, batch: np.ndarray, expected: np.ndarray
) -> None:
    real = suite.snapshot().workers[0].address
    before = clients(suite, batch, expected)
    takeover = registration("worker-0", "127.0.0.1:9")
    codes = Counter(
        [
            heartbeat(suite.balancer, takeover, (), hold_s=3.0),
            # Even a holder of the worker token (a stray copy started with the same id) cannot
            # evict the live worker.
            heartbeat(suite.balancer, takeover, suite.auth("worker"), hold_s=3.0),
        ]
    )
    the_real_worker_serves(suite, real)
    # Long past the heartbeat timeout: the real worker is still registered and routable.
    time.sleep(2.0)
    after = clients(suite, batch, expected)
    account("live worker id takeover", codes, before, after)

    assert codes == {"UNAUTHENTICATED": 1, "ALREADY_EXISTS": 1}
    assert before == after == {"OK": CLIENT_ROUNDS}
    the_real_worker_serves(suite, real)
    assert "refused a second registration of a live worker" in suite.log("balancer")


def forged_batch(segment: str, key: bytes = b"") -> bytes:
    """A Batch naming the batcher's segment, as a client's 32-row batch lies in it."""
    message = cluster_pb2.Batch(batch_id="stolen", model_name=MODEL)
    tensor = message.inputs.add(name="INPUT__0", datatype="FP32", shape=[ROWS, 1, 28, 28])
    tensor.shared.CopyFrom(
        cluster_pb2.SharedMemoryRef(segment=segment, offset=0, size=ROWS * 28 * 28 * 4, key=key)
    )
    return message.SerializeToString()


@pytest.mark.skipif(not shared_memory.domain(), reason="no writable /dev/shm")
def test_batches_in_shared_memory_cannot_be_named_by_outsiders(
    suite: Cluster, batch: np.ndarray, expected: np.ndarray
) -> None:
    before = clients(suite, batch, expected)
    pid = suite.processes["batcher"].pid
    segments = sorted(p.name for p in shared_memory.SHM_DIR.glob(f"{shared_memory.PREFIX}{pid}-*"))
    assert segments, "the client's batch went through shared memory"
    worker = suite.snapshot().workers[0].address
    metadata = ((MODEL_KEY, MODEL), (ROWS_KEY, str(ROWS)))
    codes: Counter[str] = Counter()
    with sync_channel(suite.balancer) as to_balancer, sync_channel(worker) as to_worker:
        dispatch = to_balancer.unary_unary(DISPATCH)
        execute = to_worker.unary_unary(EXECUTE)
        for segment in segments:
            for key in (b"", b"\x00" * shared_memory.KEY_BYTES, b"guess" * 4):
                payload = forged_batch(segment, key[: shared_memory.KEY_BYTES])
                # No credential, then another role's: refused at the balancer.
                codes[attempt(lambda p=payload: dispatch(p, timeout=10, metadata=metadata))] += 1
                codes[
                    attempt(
                        lambda p=payload: dispatch(
                            p, timeout=10, metadata=metadata + suite.auth("operator")
                        )
                    )
                ] += 1
                # A stolen batcher token: the worker finds no batch of that key in the segment.
                codes[
                    attempt(
                        lambda p=payload: dispatch(
                            p, timeout=10, metadata=metadata + suite.auth("batcher")
                        )
                    )
                ] += 1
                # Straight to the worker: only its balancers may call Execute.
                codes[attempt(lambda p=payload: execute(p, timeout=10))] += 1
    after = clients(suite, batch, expected)
    account("batch read through a named segment", codes, before, after)

    attempts = len(segments) * 3
    assert codes == {"UNAUTHENTICATED": 2 * attempts, "PERMISSION_DENIED": 2 * attempts}, codes
    assert before == after == {"OK": CLIENT_ROUNDS}


def inline_batch(batch: np.ndarray) -> bytes:
    """A well-formed Batch of the model with its inputs inline, as a balancer forwards one."""
    message = cluster_pb2.Batch(batch_id="direct", model_name=MODEL)
    message.inputs.add(
        name="INPUT__0", datatype="FP32", shape=list(batch.shape), raw=batch.tobytes()
    )
    return message.SerializeToString()


def worker_batches(metrics_address: str) -> float:
    """Batches the worker has executed, whatever their outcome, from its Prometheus metrics."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tideserve_worker_batches_total"
    )


def test_only_its_balancers_may_call_a_workers_execute(
    suite: Cluster, batch: np.ndarray, expected: np.ndarray
) -> None:
    worker = suite.snapshot().workers[0]
    real = worker.address
    before = clients(suite, batch, expected)
    executed = worker_batches(worker.metrics_address)
    payload = inline_batch(batch)
    credentials = [
        (),
        serving.bearer("guessed"),
        *(suite.auth(role) for role in ROLES),
    ]
    codes: Counter[str] = Counter()
    refusals: set[str] = set()
    with sync_channel(real) as channel:
        execute = channel.unary_unary(EXECUTE)
        for metadata in credentials:
            try:
                execute(payload, timeout=10, metadata=metadata)
                codes["OK"] += 1
            except grpc.RpcError as error:
                codes[status(error)] += 1
                refusals.add(error.details() or "")  # type: ignore[attr-defined]
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    # Nothing the attacker sent reached the model: no batch ended, not even in an error.
    assert worker_batches(worker.metrics_address) == executed
    after = clients(suite, batch, expected)
    account("worker Execute without its balancer", codes, before, after)

    assert codes == {"UNAUTHENTICATED": len(credentials)}, codes
    (refusal,) = refusals
    assert "serves only the balancers this worker registered with" in refusal
    assert "Dispatch" in refusal, "the refusal says where batches go instead"
    assert health.status == health_pb2.HealthCheckResponse.SERVING, "health stays open"
    assert before == after == {"OK": CLIENT_ROUNDS}
    the_real_worker_serves(suite, real)


def test_admin_rpcs_need_the_scaler_or_operator_role(
    suite: Cluster, batch: np.ndarray, expected: np.ndarray
) -> None:
    real = suite.snapshot().workers[0].address
    before = clients(suite, batch, expected)
    drain = cluster_pb2.DrainWorkerRequest(worker_id="worker-0", wait=False)
    policy = cluster_pb2.SetRoutingPolicyRequest(name="round_robin")
    codes: Counter[str] = Counter()
    with sync_channel(suite.balancer) as channel:
        stub = cluster_pb2_grpc.BalancerStub(channel)
        for metadata in (
            (),
            serving.bearer("guessed"),
            suite.auth("worker"),
            suite.auth("batcher"),
        ):
            codes[attempt(lambda m=metadata: stub.DrainWorker(drain, timeout=5, metadata=m))] += 1
            codes[
                attempt(lambda m=metadata: stub.SetRoutingPolicy(policy, timeout=5, metadata=m))
            ] += 1
    # Time for a drain, had one been taken, to reach the worker and release it.
    time.sleep(1.0)
    after = clients(suite, batch, expected)
    account("admin RPCs without the role", codes, before, after)

    assert codes == {"UNAUTHENTICATED": 4, "PERMISSION_DENIED": 4}
    assert before == after == {"OK": CLIENT_ROUNDS}
    the_real_worker_serves(suite, real)
    assert suite.snapshot().routing_policy == "least_load"
    assert "draining" not in suite.log("worker-0")


def test_a_real_worker_with_another_roles_token_is_kept_out_and_says_why(suite: Cluster) -> None:
    real = suite.snapshot().workers[0].address
    stray = suite.add_worker(
        "stray", "--balancer-token-file", suite.token_file("batcher"), "--metrics-port", "0"
    )
    try:
        wait_for(lambda: "PERMISSION_DENIED" in suite.log("stray"), 60, "the stray's refusal")
    finally:
        stray.terminate()
        stray.wait(15)
    assert "may not call Balancer/Heartbeat" in suite.log("stray")
    the_real_worker_serves(suite, real)
