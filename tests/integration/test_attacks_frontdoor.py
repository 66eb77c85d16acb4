"""Attacks on the batcher's front door, against a real suite on loopback: client shared-memory
registrations that would turn the batcher against other files (a symlink out of /dev/shm, a hard
link, tideserve's own segment, another user's segment), a region truncated under the batcher,
a stream flooded with 64 KiB model names whose responses are never read, and requests naming
hundreds of models that do not exist. Each attack gets a clear status, the batcher's memory and
/metrics stay bounded, and normal requests before and after all succeed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from harness.cluster import Cluster, sync_channel
from services.worker.models import DEFAULT_MODEL
from tests.accounting import record
from tideserve import grpc_options
from tideserve.shared_memory import BYTE_SIZE_PARAMETER, PREFIX, REGION_PARAMETER
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc

pytestmark = pytest.mark.integration

SHM = Path("/dev/shm")
# tiny_cnn's rows are 1x28x28 FP32.
ROW_BYTES = 28 * 28 * 4
# Rows of the region tests: 100 KB, enough for the batch to go to the workers through the
# batcher's own segment (shared_memory_min_bytes), the path that copies out of the region.
ROWS = 32
NORMAL = 5


@dataclass
class Suite:
    cluster: Cluster
    channel: grpc.Channel
    stub: inference_pb2_grpc.GRPCInferenceServiceStub
    input_name: str
    output_name: str

    @property
    def batcher_pid(self) -> int:
        return self.cluster.processes["batcher"].pid

    def alive(self) -> bool:
        return self.cluster.processes["batcher"].poll() is None

    def request(self, rows: int = 1, model: str = DEFAULT_MODEL) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name=self.input_name, datatype="FP32", shape=[rows, 1, 28, 28])
        request.raw_input_contents.append(np.ones((rows, 1, 28, 28), "<f4").tobytes())
        return request

    def normal(self, count: int = NORMAL) -> int:
        """Normal requests that succeed, out of `count`."""
        ok = 0
        for _ in range(count):
            response = self.stub.ModelInfer(self.request(2), timeout=30)
            ok += len(response.raw_output_contents[0]) > 0
        return ok

    def status_of(self, call, request) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
        try:
            call(request, timeout=30)
        except grpc.RpcError as error:
            return error.code()  # type: ignore[attr-defined, no-any-return]
        return grpc.StatusCode.OK

    def register(self, name: str, key: str, byte_size: int, offset: int = 0) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as refused:
            self.stub.SystemSharedMemoryRegister(
                pb.SystemSharedMemoryRegisterRequest(
                    name=name, key=key, offset=offset, byte_size=byte_size
                ),
                timeout=10,
            )
        return refused.value

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.batcher_pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.cluster.batcher_metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()


@pytest.fixture(scope="module")
def suite(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    cluster = Cluster(model_repository, tmp_path_factory.mktemp("logs")).start(workers=1)
    channel = sync_channel(cluster.batcher)
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=DEFAULT_MODEL), timeout=10)
    yield Suite(cluster, channel, stub, metadata.inputs[0].name, metadata.outputs[0].name)
    channel.close()
    cluster.stop()


@pytest.fixture
def tag() -> Iterator[str]:
    """A unique prefix for the /dev/shm files a test makes; they are removed afterwards."""
    made = f"attack_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    yield made
    for path in SHM.glob(f"*{made}*"):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink(missing_ok=True)


def test_registrations_that_point_elsewhere_are_refused_and_touch_nothing(
    suite: Suite, tag: str, tmp_path: Path
) -> None:
    before = suite.normal()
    outside = tmp_path / "victim"
    outside.write_bytes(b"V" * 4096)
    internal = SHM / f"{PREFIX}{tag}"
    internal.write_bytes(b"T" * 4096)
    (SHM / f"{tag}_link").symlink_to(outside)
    (SHM / f"{tag}_inner_link").symlink_to(internal)
    os.link(internal, SHM / f"{tag}_hardlink")
    (SHM / f"{tag}_dir").mkdir()
    theirs = SHM / f"{tag}_theirs"
    theirs.write_bytes(b"O" * 4096)
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)
    attempts = {
        "symlink out of /dev/shm": (f"/{tag}_link", grpc.StatusCode.INVALID_ARGUMENT, "link"),
        "symlink to tideserve's segment": (
            f"/{tag}_inner_link",
            grpc.StatusCode.INVALID_ARGUMENT,
            "link",
        ),
        "tideserve's own segment": (
            f"/{internal.name}",
            grpc.StatusCode.INVALID_ARGUMENT,
            "reserved",
        ),
        "hard link to tideserve's segment": (
            f"/{tag}_hardlink",
            grpc.StatusCode.INVALID_ARGUMENT,
            "2 names",
        ),
        "a directory": (f"/{tag}_dir", grpc.StatusCode.INVALID_ARGUMENT, "not a regular file"),
        "a path out of /dev/shm": ("/../etc/passwd", grpc.StatusCode.INVALID_ARGUMENT, "POSIX"),
    }
    if os.geteuid() == 0:
        attempts["another user's segment"] = (
            f"/{theirs.name}",
            grpc.StatusCode.PERMISSION_DENIED,
            "belongs to uid 65534",
        )

    seen: Counter[str] = Counter()
    for index, (key, code, says) in enumerate(attempts.values()):
        refused = suite.register(f"{tag}_{index}", key, 40)
        seen[refused.code().name] += 1  # type: ignore[attr-defined]
        assert refused.code() == code, (key, refused)  # type: ignore[attr-defined]
        assert says in refused.details(), (key, refused.details())  # type: ignore[attr-defined]
    after = suite.normal()
    record(
        "client shared memory: registrations pointing outside the client's segments",
        cases=len(attempts),
        sent=len(attempts) + 2 * NORMAL,
        answered=seen.total() + before + after,
        errors=seen,
    )

    assert outside.read_bytes() == b"V" * 4096
    assert internal.read_bytes() == b"T" * 4096
    assert theirs.read_bytes() == b"O" * 4096
    status = suite.stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(), timeout=10)
    assert not [name for name in status.regions if name.startswith(tag)]
    assert (before, after) == (NORMAL, NORMAL)


def placed(suite: Suite, region: str, rows: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=DEFAULT_MODEL)
    tensor = request.inputs.add(name=suite.input_name, datatype="FP32", shape=[rows, 1, 28, 28])
    tensor.parameters[REGION_PARAMETER].string_param = region
    tensor.parameters[BYTE_SIZE_PARAMETER].int64_param = rows * ROW_BYTES
    return request


def test_a_truncated_region_fails_its_requests_and_the_batcher_keeps_serving(
    suite: Suite, tag: str
) -> None:
    before = suite.normal()
    segment = SHM / f"{tag}_seg"
    size = 1 << 20
    segment.write_bytes(np.ones(size // 4, "<f4").tobytes())
    suite.stub.SystemSharedMemoryRegister(
        pb.SystemSharedMemoryRegisterRequest(
            name=f"{tag}_in", key=f"/{segment.name}", offset=4096, byte_size=ROWS * ROW_BYTES
        ),
        timeout=10,
    )
    try:
        assert suite.stub.ModelInfer(placed(suite, f"{tag}_in", ROWS), timeout=30).outputs
        os.truncate(segment, 0)
        with pytest.raises(grpc.RpcError) as refused:
            suite.stub.ModelInfer(placed(suite, f"{tag}_in", ROWS), timeout=30)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        message = refused.value.details()  # type: ignore[attr-defined]
        assert f"'{tag}_in'" in message
        assert "now has 0 bytes" in message

        # The segment shrinks and grows while requests read it: each is answered or refused,
        # and the batcher never touches memory that is gone.
        statuses = truncate_while_inferring(suite, segment, size, f"{tag}_in")
    finally:
        suite.stub.SystemSharedMemoryUnregister(
            pb.SystemSharedMemoryUnregisterRequest(name=f"{tag}_in"), timeout=10
        )
    after = suite.normal()
    errors = Counter({"FAILED_PRECONDITION": 1}) + statuses
    record(
        "client shared memory: region truncated after registration",
        cases=2,
        sent=2 + statuses.total() + 2 * NORMAL,
        answered=2 + statuses.total() + before + after,
        errors=errors,
    )

    assert suite.alive()
    assert set(statuses) <= {"OK", "FAILED_PRECONDITION"}, statuses
    assert (before, after) == (NORMAL, NORMAL)


def truncate_while_inferring(
    suite: Suite, segment: Path, size: int, region: str, seconds: float = 2.0
) -> Counter[str]:
    stop = threading.Event()

    def churn() -> None:
        with segment.open("r+b") as file:
            while not stop.is_set():
                os.ftruncate(file.fileno(), 0)
                time.sleep(0.0005)
                os.ftruncate(file.fileno(), size)
                time.sleep(0.0005)

    thread = threading.Thread(target=churn)
    thread.start()
    statuses: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            futures = [
                suite.stub.ModelInfer.future(placed(suite, region, ROWS), timeout=30)
                for _ in range(8)
            ]
            for future in futures:
                try:
                    future.result()
                    statuses["OK"] += 1
                except grpc.RpcError as error:
                    statuses[error.code().name] += 1  # type: ignore[attr-defined]
    finally:
        stop.set()
        thread.join()
    return statuses


def test_output_region_truncated_before_the_answer_is_refused(suite: Suite, tag: str) -> None:
    before = suite.normal()
    segment = SHM / f"{tag}_out"
    segment.write_bytes(bytes(1 << 16))
    suite.stub.SystemSharedMemoryRegister(
        pb.SystemSharedMemoryRegisterRequest(
            name=f"{tag}_out", key=f"/{segment.name}", byte_size=1 << 16
        ),
        timeout=10,
    )
    os.truncate(segment, 0)
    request = suite.request(2)
    output = request.outputs.add(name=suite.output_name)
    output.parameters[REGION_PARAMETER].string_param = f"{tag}_out"
    output.parameters[BYTE_SIZE_PARAMETER].int64_param = 1 << 16
    try:
        code = suite.status_of(suite.stub.ModelInfer, request)
    finally:
        suite.stub.SystemSharedMemoryUnregister(
            pb.SystemSharedMemoryUnregisterRequest(name=f"{tag}_out"), timeout=10
        )
    after = suite.normal()
    record(
        "client shared memory: output region truncated",
        cases=1,
        sent=1 + 2 * NORMAL,
        answered=1 + before + after,
        errors={code.name: 1},
    )

    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert segment.stat().st_size == 0, "nothing written to the truncated segment"
    assert (before, after) == (NORMAL, NORMAL)


FLOOD = 3000
NAME_BYTES = 64 * 1024


async def flood_without_reading(address: str, requests: int, settle_s: float) -> int:
    """Send `requests` requests naming 64 KiB models on one stream without reading a response,
    wait `settle_s`, and return how many the client got to send before flow control held it."""
    sent = 0
    name = "m" * NAME_BYTES

    async def messages():  # type: ignore[no-untyped-def]
        nonlocal sent
        for _ in range(requests):
            yield pb.ModelInferRequest(model_name=name)
            sent += 1

    async with grpc.aio.insecure_channel(address, options=grpc_options.CHANNEL_OPTIONS) as ch:
        call = inference_pb2_grpc.GRPCInferenceServiceStub(ch).ModelStreamInfer(messages())
        await asyncio.sleep(settle_s)
        call.cancel()
    return sent


async def flood_and_read(address: str, requests: int) -> list[str]:
    name = "m" * NAME_BYTES
    async with grpc.aio.insecure_channel(address, options=grpc_options.CHANNEL_OPTIONS) as ch:
        call = inference_pb2_grpc.GRPCInferenceServiceStub(ch).ModelStreamInfer(
            iter([pb.ModelInferRequest(model_name=name)] * requests), timeout=120
        )
        return [response.error_message async for response in call]


def test_a_flood_of_huge_names_on_an_unread_stream_keeps_memory_bounded(suite: Suite) -> None:
    before = suite.normal()
    rss_before = suite.rss_bytes()
    sent = asyncio.run(flood_without_reading(suite.cluster.batcher, FLOOD, settle_s=3.0))
    rss_flooded = suite.rss_bytes()
    answers = asyncio.run(flood_and_read(suite.cluster.batcher, 300))
    time.sleep(0.5)
    rss_after = suite.rss_bytes()
    after = suite.normal()
    record(
        # The unread stream's requests are the client's to cancel, as it does: not counted.
        f"64 KiB model names: {sent} on a stream never read (then cancelled), 300 read",
        cases=2,
        sent=len(answers) + 2 * NORMAL,
        answered=len(answers) + before + after,
        errors={"INVALID_ARGUMENT": len(answers)},
    )
    print(
        f"batcher RSS: {rss_before >> 20} MiB before, {rss_flooded >> 20} MiB flooded "
        f"({sent} sent), {rss_after >> 20} MiB after"
    )

    # Unbounded, the batcher kept every request and its error (~560 MiB for 3,000); bounded, it
    # holds stream_inflight of them.
    assert rss_flooded - rss_before < 200 << 20
    assert rss_after - rss_before < 200 << 20
    assert len(answers) == 300
    assert all("names are at most 256" in answer for answer in answers)
    assert max(len(answer) for answer in answers) < 300, "the name is not echoed whole"
    assert suite.alive()
    assert (before, after) == (NORMAL, NORMAL)


def test_unknown_model_names_share_one_metrics_series(suite: Suite) -> None:
    before = suite.normal()
    size_before = len(suite.metrics_text())
    codes: Counter[str] = Counter()
    for index in range(200):
        code = suite.status_of(suite.stub.ModelInfer, suite.request(model=f"ghost-{index}"))
        codes[code.name] += 1
    for length in (257, 4096):
        code = suite.status_of(suite.stub.ModelInfer, suite.request(model="g" * length))
        codes[code.name] += 1
    text = suite.metrics_text()
    after = suite.normal()
    record(
        "requests naming 202 distinct unknown models",
        cases=202,
        sent=202 + 2 * NORMAL,
        answered=codes.total() + before + after,
        errors=codes,
    )

    assert codes == {"NOT_FOUND": 200, "INVALID_ARGUMENT": 2}
    assert "ghost-" not in text
    requests_lines = [
        line for line in text.splitlines() if line.startswith("tideserve_batcher_requests_total")
    ]
    assert {line.split('model="')[1].split('"')[0] for line in requests_lines} == {
        DEFAULT_MODEL,
        "(unknown)",
    }
    assert len(text) - size_before < 8 * 1024, "/metrics grew by a series per name"
    assert (before, after) == (NORMAL, NORMAL)


async def test_the_connection_cap_refuses_connections_beyond_it() -> None:
    """The server option that caps connections is one this gRPC honours (gRPC ignores option
    names it does not know): with the cap at 2, a third client cannot connect."""
    assert ("grpc.max_allowed_incoming_connections", grpc_options.MAX_CONNECTIONS) in (
        grpc_options.SERVER_OPTIONS
    )
    capped = [
        (key, 2 if key == "grpc.max_allowed_incoming_connections" else value)
        for key, value in grpc_options.SERVER_OPTIONS
    ]
    server = grpc.aio.server(options=capped)
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channels = [
        # Distinct channel args keep gRPC from sharing one connection between the channels.
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("tideserve.test.index", i)])
        for i in range(3)
    ]
    outcomes = []
    try:
        for channel in channels:
            try:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=3
                )
                outcomes.append("OK")
            except grpc.aio.AioRpcError as error:
                outcomes.append(error.code().name)
    finally:
        for channel in channels:
            with contextlib.suppress(Exception):
                await channel.close()
        await server.stop(None)
    assert outcomes[:2] == ["OK", "OK"]
    assert outcomes[2] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
