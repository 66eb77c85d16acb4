"""Shared-memory segments between batcher and worker (tideserve/shared_memory.py), on a
temporary directory standing in for /dev/shm: reuse, bounds, names, stale and orphaned
segments."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tideserve import shared_memory
from tideserve.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from tideserve.v1 import cluster_pb2


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_segments_are_sized_in_powers_of_two_and_reused(tmp_path: Path) -> None:
    pool = shared_memory.SegmentPool(tmp_path)
    small = pool.acquire(10)
    assert small.size == shared_memory.MIN_SEGMENT_BYTES
    large = pool.acquire(shared_memory.MIN_SEGMENT_BYTES + 1)
    assert large.size == 2 * shared_memory.MIN_SEGMENT_BYTES
    pool.release(small)
    pool.release(large)

    # The smallest free segment that fits is handed out again; no new file appears.
    assert pool.acquire(100) is small
    assert pool.acquire(shared_memory.MIN_SEGMENT_BYTES + 5) is large
    assert len(segments(tmp_path)) == 2
    pool.close()
    assert segments(tmp_path) == []


def test_free_segments_beyond_the_keep_limit_are_removed(tmp_path: Path) -> None:
    pool = shared_memory.SegmentPool(tmp_path)
    held = [pool.acquire(1) for _ in range(shared_memory.KEEP_FREE + 3)]
    for segment in held:
        pool.release(segment)
    assert len(segments(tmp_path)) == shared_memory.KEEP_FREE
    pool.close()


def test_reader_sees_what_the_pool_wrote(tmp_path: Path) -> None:
    pool = shared_memory.SegmentPool(tmp_path)
    segment = pool.acquire(64)
    segment.buffer[8:13] = b"hello"
    reader = shared_memory.SegmentReader(tmp_path)

    view = reader.view(segment.ref(8, 5))

    assert bytes(view) == b"hello"
    assert view.readonly
    segment.buffer[8:13] = b"world"
    assert bytes(reader.view(segment.ref(8, 5))) == b"world"
    pool.close()


def test_reader_refuses_ranges_outside_the_segment_and_foreign_names(tmp_path: Path) -> None:
    pool = shared_memory.SegmentPool(tmp_path)
    segment = pool.acquire(1)
    reader = shared_memory.SegmentReader(tmp_path)

    with pytest.raises(InvalidArgument, match="outside segment"):
        reader.view(segment.ref(segment.size - 4, 8))
    for name in ("../etc/passwd", "other-1-1", "tideserve-1-1/../x"):
        with pytest.raises(InvalidArgument, match="not a tideserve shared-memory segment"):
            reader.view(cluster_pb2.SharedMemoryRef(segment=name, size=1))
    pool.close()


def test_missing_segment_means_the_worker_does_not_share_dev_shm(tmp_path: Path) -> None:
    reader = shared_memory.SegmentReader(tmp_path)
    with pytest.raises(FailedPrecondition, match="do not share /dev/shm"):
        reader.view(cluster_pb2.SharedMemoryRef(segment="tideserve-1-1", size=1))


def test_segment_of_another_user_is_a_failed_precondition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker running as another user than the batcher cannot open its 0600 segments: that
    is a refusal the batcher answers by resending inline, not a worker fault. (The tests run as
    root, who may open anything, so the kernel's refusal is stood in for.)"""
    pool = shared_memory.SegmentPool(tmp_path)
    segment = pool.acquire(1)
    assert (tmp_path / segment.name).stat().st_mode & 0o777 == 0o600

    def refuse(path: object, flags: int, *args: object) -> int:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(shared_memory.os, "open", refuse)
    with pytest.raises(FailedPrecondition, match="belongs to another user"):
        shared_memory.SegmentReader(tmp_path).view(segment.ref(0, 1))
    monkeypatch.undo()
    pool.close()


def test_reader_remaps_a_name_that_now_names_another_file(tmp_path: Path) -> None:
    """A batcher that got a dead batcher's pid makes segments of the same names."""
    name, key = "tideserve-4242-1", b"k" * shared_memory.KEY_BYTES
    (tmp_path / name).write_bytes(b"old!" * 16 + key)
    reader = shared_memory.SegmentReader(tmp_path)
    ref = cluster_pb2.SharedMemoryRef(segment=name, size=4, key=key)
    assert bytes(reader.view(ref)) == b"old!"

    (tmp_path / name).unlink()
    (tmp_path / name).write_bytes(b"new!" * 16 + key)

    assert bytes(reader.view(ref)) == b"new!"


def test_a_batch_is_readable_only_with_its_key_and_only_until_it_is_done(tmp_path: Path) -> None:
    """Naming a segment is not enough: a forged reference (no key, a guessed key, the key of an
    earlier batch in the same segment) reads nothing, and neither does the real one once the
    batcher has released the segment, though its bytes are still there."""
    pool = shared_memory.SegmentPool(tmp_path)
    reader = shared_memory.SegmentReader(tmp_path)
    segment = pool.acquire(8)
    segment.buffer[0:8] = b"secret-1"
    first = segment.ref(0, 8)
    assert bytes(reader.view(first)) == b"secret-1"

    forged = [
        cluster_pb2.SharedMemoryRef(segment=segment.name, size=8),
        cluster_pb2.SharedMemoryRef(segment=segment.name, size=8, key=shared_memory.NO_KEY),
        cluster_pb2.SharedMemoryRef(segment=segment.name, size=8, key=b"x" * 16),
        cluster_pb2.SharedMemoryRef(segment=segment.name, size=8, key=first.key[:8]),
    ]
    for ref in forged:
        with pytest.raises(PermissionDenied, match="does not hold this batch"):
            reader.view(ref)

    pool.release(segment)
    with pytest.raises(PermissionDenied):
        reader.view(first)
    assert bytes(segment.buffer[0:8]) == b"secret-1", "released, the bytes stay but are sealed"

    again = pool.acquire(8)
    assert again is segment, "the segment is reused for the next batch ..."
    segment.buffer[0:8] = b"secret-2"
    with pytest.raises(PermissionDenied):
        reader.view(first)  # ... under a new key: the old reference reads nothing
    assert bytes(reader.view(again.ref(0, 8))) == b"secret-2"
    pool.close()


def test_the_key_is_not_part_of_the_batch_room(tmp_path: Path) -> None:
    pool = shared_memory.SegmentPool(tmp_path)
    segment = pool.acquire(shared_memory.MIN_SEGMENT_BYTES)
    assert segment.size == 2 * shared_memory.MIN_SEGMENT_BYTES, "room for the key too"
    reader = shared_memory.SegmentReader(tmp_path)
    with pytest.raises(InvalidArgument, match="outside segment"):
        reader.view(segment.ref(segment.capacity - 1, 2))
    pool.close()


def test_reader_lets_go_of_segments_their_batcher_removed(tmp_path: Path) -> None:
    pool = shared_memory.SegmentPool(tmp_path)
    first, second = pool.acquire(1), pool.acquire(1)
    reader = shared_memory.SegmentReader(tmp_path)
    reader.view(first.ref(0, 1))
    (tmp_path / first.name).unlink()  # what the batcher does when it lets a segment go

    reader.view(second.ref(0, 1))

    assert list(reader._maps) == [second.name]
    pool.close()


def test_segments_of_dead_batchers_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    orphan = tmp_path / f"tideserve-{dead.stdout.strip()}-1"
    orphan.write_bytes(b"x")
    live = tmp_path / f"tideserve-{os.getpid()}-999"
    live.write_bytes(b"x")
    unrelated = tmp_path / "someone-else"
    unrelated.write_bytes(b"x")

    pool = shared_memory.SegmentPool(tmp_path)

    assert not orphan.exists()
    assert live.exists()
    assert unrelated.exists()
    pool.close()


def test_domain_is_empty_without_a_shm_directory(tmp_path: Path) -> None:
    assert shared_memory.domain(tmp_path / "missing") == ""
    assert shared_memory.domain(tmp_path) == shared_memory.domain(tmp_path) != ""


class RecordingPinning:
    """Stands in for cudaHostRegister (tests run without a GPU; bench/gpu.py runs the real one)."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.pinned: list[int] = []
        self.unpinned: list[int] = []

    def pin(self, address: int, size: int) -> bool:
        if self.accept:
            self.pinned.append(address)
        return self.accept

    def unpin(self, address: int) -> None:
        self.unpinned.append(address)


def test_a_mapping_is_pinned_once_and_unpinned_when_forgotten(tmp_path: Path) -> None:
    pool = shared_memory.SegmentPool(tmp_path)
    first, second = pool.acquire(1), pool.acquire(1)
    pinning = RecordingPinning()
    reader = shared_memory.SegmentReader(tmp_path, pinning)
    for _ in range(3):
        reader.done(reader.view(first.ref(0, 1)))
    assert len(pinning.pinned) == 1, "one pin per mapping, not per batch"

    (tmp_path / first.name).unlink()
    reader.view(second.ref(0, 1))  # a new segment: removed ones are let go

    assert pinning.unpinned == pinning.pinned[:1]
    pool.close()


def test_a_pinned_mapping_stays_pinned_while_a_batch_reads_it(tmp_path: Path) -> None:
    """The batcher let the segment go while a worker's batch still copies from it: unpinning
    then could pull the pages from under the GPU's copy; it waits for the batch."""
    pool = shared_memory.SegmentPool(tmp_path)
    first, second = pool.acquire(1), pool.acquire(1)
    pinning = RecordingPinning()
    reader = shared_memory.SegmentReader(tmp_path, pinning)
    in_use = reader.view(first.ref(0, 1))
    (tmp_path / first.name).unlink()

    reader.view(second.ref(0, 1))
    assert pinning.unpinned == [], "still read by a batch"

    reader.done(in_use)
    assert pinning.unpinned == pinning.pinned[:1]
    pool.close()


def test_a_segment_the_device_will_not_pin_is_read_as_before(tmp_path: Path) -> None:
    pool = shared_memory.SegmentPool(tmp_path)
    segment = pool.acquire(8)
    segment.buffer[0:4] = b"data"
    pinning = RecordingPinning(accept=False)
    reader = shared_memory.SegmentReader(tmp_path, pinning)

    view = reader.view(segment.ref(0, 4))
    reader.done(view)

    assert bytes(view) == b"data"
    (tmp_path / segment.name).unlink()
    reader.view(pool.acquire(1).ref(0, 1))
    assert pinning.unpinned == [], "nothing was pinned, nothing to unpin"
    pool.close()
