"""Where workers run. The controller only ever talks to a `WorkerRuntime`; `ProcessRuntime`
runs workers as local processes (the no-Docker default), `DockerRuntime` (docker_runtime.py) as
containers. A runtime knows nothing about load or policy: it starts, stops, lists and reaps."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tideserve.procs import ProcessWatch, child_env, start_ticks

logger = logging.getLogger(__name__)


@dataclass
class ManagedWorker:
    worker_id: str
    # Process id or container id, by runtime.
    runtime_id: str
    started_unix: float
    # starting | ready | draining | stopping
    state: str = "starting"


class WorkerRuntime(Protocol):
    name: str

    async def start(self, worker_id: str) -> ManagedWorker:
        """Start a worker that will register with the balancers under `worker_id`."""
        ...

    async def stop(self, worker: ManagedWorker, grace_s: float) -> None:
        """SIGTERM, wait up to `grace_s`, then kill; release everything it held."""
        ...

    async def list(self) -> builtins.list[ManagedWorker]:
        """Live workers of this scaler, including ones adopted from a previous run."""
        ...

    async def reap(self) -> builtins.list[ManagedWorker]:
        """Forget (and clean up) workers that died; return them."""
        ...

    async def close(self) -> None: ...


def without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` less every TIDESERVE_*TOKEN* variable. Workers run model code, so they inherit
    no token of the scaler's, nor where its token files are: the scaler reads its own secrets
    from files and never passes them on by environment."""
    return {
        name: value
        for name, value in environ.items()
        if not (name.startswith("TIDESERVE_") and "TOKEN" in name)
    }


class _Process(Protocol):
    pid: int

    def exited(self) -> bool: ...

    def send_signal(self, signum: int) -> None: ...

    async def wait(self, timeout_s: float) -> bool: ...

    def close(self) -> None: ...


class _Child:
    """A worker this scaler started: its child, reaped by the event loop."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid

    def exited(self) -> bool:
        return self.process.returncode is not None

    def send_signal(self, signum: int) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    async def wait(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self.process.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Nothing to release: the event loop reaps its children."""


class ProcessRuntime:
    """Workers as child processes of the scaler (`python -m services.worker`).

    Without `state_dir` they die with the scaler, and there is nothing to adopt after a restart.
    With it, each worker's pid and start time are kept in `<state_dir>/<worker id>.json`, and a
    scaler started later on the same directory adopts the live ones (`list`). Under `tideserve
    up` workers outlive a scaler crash (see tideserve.procs), so the restarted scaler carries on
    with the workers that are serving instead of cold-starting new ones. An adopted worker is
    not this process's child: it is watched and signalled through a pidfd.

    A worker gets the scaler's environment without its secrets (`without_secrets`), plus `env`,
    which the scaler sets on purpose and is passed as given."""

    name = "process"

    def __init__(
        self,
        worker_args: Sequence[str],
        env: dict[str, str] | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.worker_args = list(worker_args)
        self.env = {**without_secrets(os.environ), **(env or {})}
        self.state_dir = state_dir
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
        self._procs: dict[str, tuple[ManagedWorker, _Process]] = {}

    async def start(self, worker_id: str) -> ManagedWorker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.worker",
            "--worker-id",
            worker_id,
            *self.worker_args,
            env=child_env(self.env),
        )
        worker = ManagedWorker(worker_id, str(process.pid), time.time())
        self._procs[worker_id] = (worker, _Child(process))
        self._write_state(worker, process.pid)
        logger.info("worker process started", extra={"worker_id": worker_id, "pid": process.pid})
        return worker

    async def stop(self, worker: ManagedWorker, grace_s: float) -> None:
        entry = self._procs.pop(worker.worker_id, None)
        if entry is None:
            return
        _, process = entry
        process.send_signal(signal.SIGTERM)
        if not await process.wait(grace_s):
            logger.warning("worker ignored SIGTERM; killing", extra={"worker_id": worker.worker_id})
            process.send_signal(signal.SIGKILL)
            await process.wait(grace_s)
        self._forget(worker.worker_id, process)
        logger.info("worker process stopped", extra={"worker_id": worker.worker_id})

    async def list(self) -> builtins.list[ManagedWorker]:
        if self.state_dir is not None:
            self._adopt(self.state_dir)
        return [w for w, p in self._procs.values() if not p.exited()]

    async def reap(self) -> builtins.list[ManagedWorker]:
        dead = [(w, p) for w, p in self._procs.values() if p.exited()]
        for worker, process in dead:
            del self._procs[worker.worker_id]
            self._forget(worker.worker_id, process)
            logger.warning("worker process died", extra={"worker_id": worker.worker_id})
        return [w for w, _ in dead]

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(w, 5.0) for w, _ in list(self._procs.values())))

    def _state_file(self, worker_id: str) -> Path | None:
        return None if self.state_dir is None else self.state_dir / f"{worker_id}.json"

    def _write_state(self, worker: ManagedWorker, pid: int) -> None:
        path = self._state_file(worker.worker_id)
        ticks = start_ticks(pid)
        if path is None or ticks is None:
            return
        state = {"pid": pid, "start_ticks": ticks, "started_unix": worker.started_unix}
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(state))
        partial.replace(path)

    def _forget(self, worker_id: str, process: _Process) -> None:
        process.close()
        path = self._state_file(worker_id)
        if path is not None:
            path.unlink(missing_ok=True)

    def _adopt(self, state_dir: Path) -> None:
        """Take over the live workers recorded in `state_dir` that this scaler does not know;
        drop the records of dead ones. The start time guards against a reused pid."""
        for path in sorted(state_dir.glob("*.json")):
            worker_id = path.stem
            if worker_id in self._procs:
                continue
            try:
                state = json.loads(path.read_text())
                pid, ticks = int(state["pid"]), int(state["start_ticks"])
                watch = ProcessWatch(pid)
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
                continue
            if start_ticks(pid) != ticks or watch.exited():
                watch.close()
                path.unlink(missing_ok=True)
                continue
            worker = ManagedWorker(worker_id, str(pid), float(state.get("started_unix", 0.0)))
            self._procs[worker_id] = (worker, watch)
            logger.info("adopted worker process", extra={"worker_id": worker_id, "pid": pid})
