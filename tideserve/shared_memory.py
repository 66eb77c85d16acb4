"""Batch inputs handed from batcher to worker through POSIX shared memory (/dev/shm).

Large tensors are what a Python gRPC hop moves slowest (about 1 GB/s a connection here) and a
batch crosses two hops (batcher -> balancer -> worker). When batcher and worker see the same
/dev/shm, the batcher assembles a batch's inputs straight into a shared segment and only a
`SharedMemoryRef` travels; the balancer still routes the message untouched.

Segments are plain files under /dev/shm mapped with mmap, not `multiprocessing.shared_memory`:
that class's resource tracker unlinks a segment when any process that merely attached exits.
A batcher owns its segments (named after its pid), reuses them batch after batch, and removes
them when it stops; those of a batcher that died are swept by the next one to start.

A segment's name is no secret (anyone on the host can list /dev/shm), so a reference also
carries a key: fresh random bytes the batcher writes into the segment's last `KEY_BYTES` when it
puts a batch there, and zeroes when the batch is done. The worker reads a range only while the
segment holds the reference's key, so a Batch naming a segment, forged or replayed, reads
nothing: not the batch in it now, nor what an earlier batch left behind.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import mmap
import os
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from tideserve.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from tideserve.v1 import cluster_pb2

SHM_DIR = Path("/dev/shm")
PREFIX = "tideserve-"
# Triton's system shared-memory extension: the tensor parameters that place a tensor's bytes in
# a client's registered region instead of the message (read by the batcher, sent by clients).
REGION_PARAMETER = "shared_memory_region"
BYTE_SIZE_PARAMETER = "shared_memory_byte_size"
OFFSET_PARAMETER = "shared_memory_offset"
SEGMENT_NAME = re.compile(rf"^{PREFIX}(\d+)-(\d+)$")
# Segments are sized in powers of two from here, so a few sizes serve every batch.
MIN_SEGMENT_BYTES = 1 << 20
# Free segments kept for reuse per pool; more are unlinked when returned.
KEEP_FREE = 8
# Segments a reader keeps mapped; a batcher reuses few, so this is rarely reached.
READER_CACHE = 64
# The batch key at each segment's end (see the module docstring): 128 random bits.
KEY_BYTES = 16
NO_KEY = bytes(KEY_BYTES)
# Segment numbers, unique in this process even across pools.
_SERIALS = itertools.count(1)


def domain(shm_dir: Path = SHM_DIR) -> str:
    """Who can see our segments: the kernel's boot id and the device of the /dev/shm mount.
    Equal on both sides means one tmpfs instance on one host (a container needs --ipc=host or
    the host's /dev/shm mounted). Empty when there is no usable /dev/shm."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        device = os.stat(shm_dir).st_dev
    except OSError:
        return ""
    if not os.access(shm_dir, os.W_OK):
        return ""
    return f"{boot_id}:{device}"


@dataclass(eq=False)
class Segment:
    name: str
    size: int
    buffer: mmap.mmap
    # The key of the batch in the segment now; NO_KEY while it holds none.
    key: bytes = NO_KEY

    @property
    def capacity(self) -> int:
        """Bytes a batch may use: all but the key at the end."""
        return self.size - KEY_BYTES

    def seal(self) -> None:
        """A new batch goes in: a fresh key, so references to earlier batches stop reading."""
        self._set_key(secrets.token_bytes(KEY_BYTES))

    def unseal(self) -> None:
        """The batch is done: no reference reads the segment until the next `seal`."""
        self._set_key(NO_KEY)

    def _set_key(self, key: bytes) -> None:
        self.key = key
        self.buffer[self.capacity : self.size] = key

    def ref(self, offset: int, size: int) -> cluster_pb2.SharedMemoryRef:
        return cluster_pb2.SharedMemoryRef(
            segment=self.name, offset=offset, size=size, key=self.key
        )


class SegmentPool:
    """The batcher's segments: `acquire` one with room for `nbytes`, sealed with a new key;
    `release` it once the batch's result is back (the worker reads it until then)."""

    def __init__(self, shm_dir: Path = SHM_DIR) -> None:
        self.shm_dir = shm_dir
        self._free: list[Segment] = []
        self._all: dict[str, Segment] = {}
        sweep_orphans(shm_dir)

    def acquire(self, nbytes: int) -> Segment:
        fitting = [s for s in self._free if s.capacity >= nbytes]
        if fitting:
            segment = min(fitting, key=lambda s: s.size)
            self._free.remove(segment)
        else:
            segment = self._create(nbytes + KEY_BYTES)
        segment.seal()
        return segment

    def release(self, segment: Segment) -> None:
        if segment.name not in self._all:
            return
        segment.unseal()
        self._free.append(segment)
        if len(self._free) > KEEP_FREE:
            self._destroy(min(self._free, key=lambda s: s.size))

    def close(self) -> None:
        for segment in list(self._all.values()):
            self._destroy(segment)

    def _create(self, nbytes: int) -> Segment:
        size = max(MIN_SEGMENT_BYTES, 1 << (max(nbytes, 1) - 1).bit_length())
        name = f"{PREFIX}{os.getpid()}-{next(_SERIALS)}"
        path = self.shm_dir / name
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            # Allocated now, not on first write: a full /dev/shm (Docker's default is 64 MB)
            # fails here with ENOSPC instead of killing us with SIGBUS mid-copy.
            os.posix_fallocate(fd, 0, size)
            buffer = mmap.mmap(fd, size)
        except OSError:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        segment = Segment(name, size, buffer)
        self._all[name] = segment
        return segment

    def _destroy(self, segment: Segment) -> None:
        self._all.pop(segment.name, None)
        if segment in self._free:
            self._free.remove(segment)
        (self.shm_dir / segment.name).unlink(missing_ok=True)
        # A worker may still map it; the file's memory goes when the last mapping does.
        unmap(segment.buffer)


def unmap(buffer: mmap.mmap) -> None:
    """Unmap now or, while arrays still view the buffer (a batch still running), once they are
    gone: closing a viewed mmap raises BufferError, and the last view's release unmaps it."""
    with contextlib.suppress(BufferError):
        buffer.close()


def sweep_orphans(shm_dir: Path = SHM_DIR) -> None:
    """Remove segments left by batchers that are no longer running."""
    with contextlib.suppress(OSError):
        for path in shm_dir.glob(f"{PREFIX}*"):
            match = SEGMENT_NAME.match(path.name)
            if match and not _alive(int(match.group(1))):
                path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class HostPinning(Protocol):
    """Page-locks host memory for a device's DMA engine (cudaHostRegister on a GPU worker)."""

    def pin(self, address: int, size: int) -> bool:
        """Pin [address, address + size); False if the device refused (then it stays pageable)."""
        ...

    def unpin(self, address: int) -> None: ...


@dataclass
class _Pinned:
    """A mapping pinned for the device: where it starts, and how many batches read it now."""

    address: int
    uses: int = 0


class SegmentReader:
    """The worker's side: the bytes a `SharedMemoryRef` names, as a read-only memoryview.
    Mappings are kept (a batcher reuses a handful of segments) up to READER_CACHE; opening the
    file each time (a few microseconds) tells whether the mapping is still of that file.

    With `pinning`, each mapping is pinned once when first mapped, so a GPU copies a batch
    straight out of the segment instead of through a staging copy into pinned memory (3 MB a
    64-row cnn batch, per batch, on the instance's thread). A pinned mapping is unpinned only
    once no batch reads it: `view` counts a use, `done` ends it."""

    def __init__(self, shm_dir: Path = SHM_DIR, pinning: HostPinning | None = None) -> None:
        self.shm_dir = shm_dir
        self.pinning = pinning
        # What the worker reports at registration; "" when it has no usable /dev/shm.
        self.domain = domain(shm_dir)
        self._maps: OrderedDict[str, tuple[int, mmap.mmap]] = OrderedDict()
        # Pinned mappings by id: their address, and how many batches are reading them.
        self._pinned: dict[int, _Pinned] = {}
        # Forgotten while in use: unpinned and unmapped when their last batch is done.
        self._retired: dict[int, mmap.mmap] = {}

    def view(self, ref: cluster_pb2.SharedMemoryRef) -> memoryview:
        if not SEGMENT_NAME.match(ref.segment):
            raise InvalidArgument(f"{ref.segment!r} is not a tideserve shared-memory segment")
        buffer = self._current(ref.segment)
        capacity = len(buffer) - KEY_BYTES
        if ref.offset + ref.size > capacity:
            raise InvalidArgument(
                f"shared-memory range {ref.offset}+{ref.size} lies outside segment "
                f"{ref.segment} ({max(capacity, 0)} bytes)"
            )
        # Constant time: how long a refusal takes tells nothing about the key in the segment.
        held = buffer[capacity:]
        if len(ref.key) != KEY_BYTES or ref.key == NO_KEY or not hmac.compare_digest(held, ref.key):
            raise PermissionDenied(
                f"shared-memory segment {ref.segment} does not hold this batch (its key does "
                "not match): a batch's inputs are readable only with the key its batcher sent, "
                "and only until the batch is done"
            )
        pinned = self._pinned.get(id(buffer))
        if pinned is not None:
            pinned.uses += 1
        return memoryview(buffer)[ref.offset : ref.offset + ref.size].toreadonly()

    def done(self, view: memoryview) -> None:
        """A batch has finished reading `view` (from `view()`): its device copies are complete."""
        key = id(view.obj)
        pinned = self._pinned.get(key)
        if pinned is None:
            return
        pinned.uses -= 1
        if pinned.uses == 0 and key in self._retired:
            self._release(self._retired.pop(key))

    def _current(self, name: str) -> mmap.mmap:
        """Our mapping of `name`, remade when the file is another than the one mapped (a new
        batcher that got a dead one's pid reuses its segment names)."""
        try:
            fd = os.open(self.shm_dir / name, os.O_RDONLY)
        except FileNotFoundError:
            raise FailedPrecondition(
                f"shared-memory segment {name} is not visible here: the batcher and this worker "
                "do not share /dev/shm (run them on one host, containers with --ipc=host)"
            ) from None
        except PermissionError:
            # Segments are private to the batcher's user (0600): inputs are clients' data.
            raise FailedPrecondition(
                f"shared-memory segment {name} belongs to another user: run the batcher and "
                "this worker as the same user, or start the worker with --shared-memory false"
            ) from None
        try:
            inode = os.fstat(fd).st_ino
            cached = self._maps.get(name)
            if cached is not None and cached[0] == inode:
                self._maps.move_to_end(name)
                return cached[1]
            try:
                buffer = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
            except ValueError as error:
                raise InvalidArgument(f"shared-memory segment {name}: {error}") from None
        finally:
            os.close(fd)
        self._forget(name)
        self._drop_removed()
        self._maps[name] = (inode, buffer)
        self._pin(buffer)
        while len(self._maps) > READER_CACHE:
            self._forget(next(iter(self._maps)))
        return buffer

    def _pin(self, buffer: mmap.mmap) -> None:
        if self.pinning is None:
            return
        probe = np.frombuffer(buffer, dtype=np.uint8)
        address = probe.ctypes.data
        del probe  # an export would keep the mapping from ever closing
        if self.pinning.pin(address, len(buffer)):
            self._pinned[id(buffer)] = _Pinned(address)

    def _drop_removed(self) -> None:
        """Unmap segments their batcher has removed: nothing names them again, and our mapping
        would keep their memory allocated. Checked when a new segment appears, which is when a
        batcher may have let others go."""
        for gone in [name for name in self._maps if not (self.shm_dir / name).exists()]:
            self._forget(gone)

    def _forget(self, name: str) -> None:
        cached = self._maps.pop(name, None)
        if cached is None:
            return
        buffer = cached[1]
        pinned = self._pinned.get(id(buffer))
        if pinned is not None and pinned.uses > 0:
            self._retired[id(buffer)] = buffer
        else:
            self._release(buffer)

    def _release(self, buffer: mmap.mmap) -> None:
        pinned = self._pinned.pop(id(buffer), None)
        if pinned is not None and self.pinning is not None:
            self.pinning.unpin(pinned.address)
        unmap(buffer)
