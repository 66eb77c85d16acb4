"""Where workers run. The controller only ever talks to a `WorkerRuntime`; `ProcessRuntime`
runs workers as local processes (the no-Docker default), `DockerRuntime` (docker_runtime.py) as
containers. A runtime knows nothing about load or policy: it starts, stops, lists and reaps."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from tideserve.procs import child_env

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


class ProcessRuntime:
    """Workers as child processes of the scaler (`python -m services.worker`). They die with the
    scaler, so there is nothing to adopt after a restart.

    A worker gets the scaler's environment without its secrets (`without_secrets`), plus `env`,
    which the scaler sets on purpose and is passed as given."""

    name = "process"

    def __init__(self, worker_args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.worker_args = list(worker_args)
        self.env = {**without_secrets(os.environ), **(env or {})}
        self._procs: dict[str, tuple[ManagedWorker, asyncio.subprocess.Process]] = {}

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
        self._procs[worker_id] = (worker, process)
        logger.info("worker process started", extra={"worker_id": worker_id, "pid": process.pid})
        return worker

    async def stop(self, worker: ManagedWorker, grace_s: float) -> None:
        entry = self._procs.pop(worker.worker_id, None)
        if entry is None:
            return
        _, process = entry
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace_s)
            except TimeoutError:
                logger.warning(
                    "worker ignored SIGTERM; killing", extra={"worker_id": worker.worker_id}
                )
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        logger.info(
            "worker process stopped",
            extra={"worker_id": worker.worker_id, "returncode": process.returncode},
        )

    async def list(self) -> builtins.list[ManagedWorker]:
        return [w for w, p in self._procs.values() if p.returncode is None]

    async def reap(self) -> builtins.list[ManagedWorker]:
        dead = [w for w, p in self._procs.values() if p.returncode is not None]
        for worker in dead:
            del self._procs[worker.worker_id]
            logger.warning("worker process died", extra={"worker_id": worker.worker_id})
        return dead

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(w, 5.0) for w, _ in list(self._procs.values())))
