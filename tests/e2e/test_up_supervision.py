"""`tideserve up` under load while its services are SIGKILLed, one at a time: each comes back by
itself, only requests in flight at a kill may fail, and Ctrl-C still leaves nothing behind.

Every request is recorded (start, end, status). The client waits for the batcher while it is
down (wait_for_ready), as a client of a restarting service should. A request the client sends
after the batcher's kill but before its channel has seen the connection drop (a few ms: the
kernel's reset is still on its way) goes down the dead connection like those in flight, and may
fail like them; the accounting counts those apart. The seconds from each kill to the first
success of a request sent after it go to the accounting line (TIDESERVE_ACCOUNTING); the bound
asserted on them is only there to end a broken run."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from harness.cluster import ROOT
from tests.accounting import record
from tests.e2e.test_up import alive, descendants, up_command
from tideserve.credentials import read_secret
from tideserve.serving import bearer
from tideserve.v1 import cluster_pb2, cluster_pb2_grpc, inference_pb2_grpc
from tideserve_tools.loadgen import sample_request

pytestmark = pytest.mark.integration

KILLED = ("balancer", "batcher", "scaler")
CONCURRENCY = 8
# Generous bounds that only end a broken run; the measured figures are recorded.
SERVED_AGAIN_WITHIN_S = 60.0
REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Call:
    start: float
    end: float
    code: str
    details: str = ""


@dataclass(frozen=True)
class Kill:
    service: str
    pid: int
    at: float
    # When the client's channel left READY after the kill (`at` when it never did): a request
    # sent between the two went down the connection of the process already dead, which no
    # client can tell from a live one until the kernel's reset arrives.
    seen: float

    def in_flight(self, call: Call) -> bool:
        return call.start < self.at < call.end

    def sent_before_seen(self, call: Call) -> bool:
        return self.at <= call.start < self.seen


def service_pids(up_pid: int, module: str) -> set[int]:
    found = set()
    for pid in descendants(up_pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"services.{module}".encode() in command:
            found.add(pid)
    return found


def processes_mentioning(text: str) -> set[int]:
    """Live processes whose command line holds `text`, wherever they were reparented."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    return alive(found)


async def client(
    stub: inference_pb2_grpc.GRPCInferenceServiceStub,
    request: object,
    calls: list[Call],
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        start = time.monotonic()
        try:
            await stub.ModelInfer(request, timeout=REQUEST_TIMEOUT_S, wait_for_ready=True)
            code, details = "OK", ""
        except grpc.aio.AioRpcError as error:
            code, details = error.code().name, error.details() or ""
        calls.append(Call(start, time.monotonic(), code, details))


async def first_success_after(calls: list[Call], at: float) -> float:
    deadline = at + SERVED_AGAIN_WITHIN_S
    while time.monotonic() < deadline:
        ends = [c.end for c in calls if c.code == "OK" and c.start >= at]
        if ends:
            return min(ends) - at
        await asyncio.sleep(0.1)
    pytest.fail(f"not served within {SERVED_AGAIN_WITHIN_S:.0f} s of the kill")


async def watch_drops(channel: grpc.aio.Channel, drops: list[float]) -> None:
    """Record when the channel leaves READY, until cancelled."""
    state = channel.get_state()
    while True:
        await channel.wait_for_state_change(state)
        previous, state = state, channel.get_state()
        if previous == grpc.ChannelConnectivity.READY:
            drops.append(time.monotonic())


async def managed_workers(scaler: str, operator_token: Path) -> set[int]:
    """The worker pids the (restarted) scaler manages, once it answers (an operator's call:
    `up` protects the scaler's admin RPCs with the run's operator token)."""
    async with grpc.aio.insecure_channel(scaler) as channel:
        stub = cluster_pb2_grpc.ScalerAdminStub(channel)
        response = await stub.ListWorkers(
            cluster_pb2.ListWorkersRequest(),
            timeout=SERVED_AGAIN_WITHIN_S,
            wait_for_ready=True,
            metadata=bearer(read_secret(operator_token)),
        )
    return {int(worker.runtime_id) for worker in response.workers}


async def kill_each_under_load(
    batcher: str, scaler: str, up_pid: int, calls: list[Call], operator_token: Path
) -> tuple[list[Kill], dict[str, float], dict[str, set[int]]]:
    """Load the suite, SIGKILL each service in turn once it serves again; the kills, seconds
    until served again, and the worker pids before the scaler's kill, after it, and as the
    restarted scaler lists them."""
    stop = asyncio.Event()
    # A plain channel, as a user's client has: no tideserve retry policy to hide failures.
    async with grpc.aio.insecure_channel(batcher) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = await sample_request(stub, "tiny_cnn")
        load = asyncio.gather(*(client(stub, request, calls, stop) for _ in range(CONCURRENCY)))
        drops: list[float] = []
        watch = asyncio.create_task(watch_drops(channel, drops))
        kills: list[Kill] = []
        served: dict[str, float] = {}
        workers: dict[str, set[int]] = {}
        try:
            await asyncio.sleep(3.0)
            for service in KILLED:
                (pid,) = service_pids(up_pid, service)
                if service == "scaler":
                    workers["before"] = service_pids(up_pid, "worker")
                at = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                served[service] = await first_success_after(calls, at)
                seen = min((t for t in drops if t >= at), default=at)
                kills.append(Kill(service, pid, at, seen))
                # Spaced out: the next kill comes after a few seconds of serving again.
                await asyncio.sleep(4.0)
            workers["managed"] = await managed_workers(scaler, operator_token)
            workers["after"] = service_pids(up_pid, "worker")
        finally:
            stop.set()
            await load
            watch.cancel()
    return kills, served, workers


def account(kills: list[Kill], served: dict[str, float], calls: list[Call]) -> None:
    for i, kill in enumerate(kills):
        until = kills[i + 1].at if i + 1 < len(kills) else float("inf")
        # A request still in flight at the next kill is that kill's, not this one's.
        later = kills[i + 1 :]
        window = [
            c
            for c in calls
            if kill.in_flight(c)
            or (kill.at <= c.start < until and not any(k.in_flight(c) for k in later))
        ]
        record(
            f"SIGKILL the {kill.service} under load (tideserve up)",
            cases=1,
            sent=len(window),
            answered=len(window),
            errors=Counter(c.code for c in window),
            detail={
                "service": kill.service,
                "failed": sum(1 for c in window if c.code != "OK"),
                "in_flight_at_kill": sum(1 for c in window if kill.in_flight(c)),
                "failed_in_flight": sum(1 for c in window if kill.in_flight(c) and c.code != "OK"),
                "sent_before_client_saw_drop": sum(1 for c in window if kill.sent_before_seen(c)),
                "failed_sent_before_client_saw_drop": sum(
                    1 for c in window if kill.sent_before_seen(c) and c.code != "OK"
                ),
                "seconds_until_served": round(served[kill.service], 3),
            },
        )


def test_up_restarts_killed_services_and_new_requests_never_fail(tmp_path: Path) -> None:
    process = subprocess.Popen(
        up_command(tmp_path, "--max-replicas", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read_output() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                ready.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        assert ready.wait(180), "tideserve up never became ready:\n" + "".join(lines)
        batcher = re.search(r"inference \(KServe v2 / Triton gRPC\)\s+(\S+)", "".join(lines))
        scaler = re.search(r"scaler admin\s+(\S+)", "".join(lines))
        assert batcher is not None
        assert scaler is not None
        calls: list[Call] = []
        kills, served, workers = asyncio.run(
            kill_each_under_load(
                batcher.group(1),
                scaler.group(1),
                process.pid,
                calls,
                tmp_path / "credentials" / "operator.token",
            )
        )
        account(kills, served, calls)
        print("seconds until served again:", {s: round(t, 2) for s, t in served.items()})

        out = "".join(lines)
        for kill in kills:
            assert f"{kill.service} was killed by SIGKILL; restarting it now" in out, out
            restarted = service_pids(process.pid, kill.service)
            assert restarted, f"{kill.service} is not running again"
            assert kill.pid not in restarted
        # The scaler's workers outlived it and the restarted scaler adopted them.
        assert workers["before"], "no worker ran before the scaler's kill"
        assert workers["managed"] == workers["before"]
        assert workers["after"] == workers["before"]

        assert sum(1 for c in calls if c.code == "OK") > 0
        failed = [c for c in calls if c.code != "OK"]
        # Failures are allowed only to requests on the connection when it broke: in flight at
        # the kill, or sent before the client could see the connection drop.
        unexcused = [
            c for c in failed if not any(k.in_flight(c) or k.sent_before_seen(c) for k in kills)
        ]
        after_which_kill = Counter(
            max((k for k in kills if k.at <= c.start), key=lambda k: k.at).service
            for c in unexcused
        )
        assert not unexcused, (
            f"requests sent after a kill failed, by the kill before them: {dict(after_which_kill)}"
            f", statuses {dict(Counter(f'{c.code}: {c.details}' for c in unexcused))}"
        )

        tree = set(descendants(process.pid))
        process.send_signal(signal.SIGINT)
        assert process.wait(90) == 0, "".join(lines)
        deadline = time.monotonic() + 10
        while (alive(tree) or processes_mentioning(str(tmp_path))) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(tree), f"left running after Ctrl-C: {alive(tree)}"
        assert not processes_mentioning(str(tmp_path)), "a service or worker outlived up"
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(10)


def test_up_gives_up_on_a_crash_loop_and_stops_everything(tmp_path: Path) -> None:
    command = up_command(tmp_path)
    # A port the balancer cannot bind makes it exit at every start.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(command[command.index("--balancer-port") + 1])))
        taken.listen()
        done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 1, done.stdout + done.stderr
    restarts = re.findall(r"balancer exited with code 1; restarting it (.*)", done.stdout)
    assert restarts == [
        "now (crash 1 in 60 s)",
        "in 0.5 s (crash 2 in 60 s)",
        "in 1.0 s (crash 3 in 60 s)",
        "in 2.0 s (crash 4 in 60 s)",
    ]
    assert "balancer exited with code 1: 5 crashes in 60 s, giving up" in done.stderr
    assert "stopped." in done.stdout
    assert not processes_mentioning(str(tmp_path)), "a service or worker outlived up"
