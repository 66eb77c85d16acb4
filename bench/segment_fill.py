"""The CPU of copying a batch's input from a client's shared-memory region into one of the
batcher's segments, on the event loop against on a copier thread
(`services.batcher.core.SharedInputs.fill`): what the hand-off costs the process, and what it
takes off the loop, by the batch's size (a 64-row cnn request is 3 MiB).

    python -m bench.segment_fill [--fills 300] [--rounds 5] [--kib 256,512,1024,3072]

Each round fills a segment `--fills` times each way for each size, from 16 regions in turn (so
the reads come from memory, not cache), and records CPU microseconds a fill: the whole
process's and the event-loop thread's. Rounds alternate the two ways; their spread shows the
machine's noise. Prints JSON: per size and way, each round's figures and their medians.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
import uuid

from services.batcher.client_memory import ClientRegions, RegionSlice
from services.batcher.core import SharedInputs
from tideserve import serving, shared_memory

REGION_BYTES = 3 << 20
REGIONS = 16


class EverySharing:
    """A catalog in which every model's workers share this host's /dev/shm."""

    def shares_memory(self, model: str, domain: str) -> bool:
        return True


def write(segment: shared_memory.Segment, region: RegionSlice, size: int) -> None:
    with memoryview(segment.buffer) as target:
        region.read_into(target[:size])


async def fills(
    shared: SharedInputs, regions: list[RegionSlice], size: int, count: int
) -> tuple[float, float]:
    """CPU seconds of the process and of this (the loop's) thread for `count` fills."""
    process, thread = time.process_time(), time.thread_time()
    for index in range(count):
        segment = shared.acquire("m", size)
        if segment is None:
            raise SystemExit("no room in /dev/shm for a segment")
        try:
            region = regions[index % REGIONS]
            await shared.fill(size, functools.partial(write, segment, region, size))
        finally:
            shared.release(segment)
    return time.process_time() - process, time.thread_time() - thread


async def measure(args: argparse.Namespace, regions: ClientRegions) -> dict:
    pool = shared_memory.SegmentPool()
    figures: dict[str, dict[str, dict[str, list[float]]]] = {}
    try:
        for _ in range(args.rounds):
            for kib in args.kib:
                size = kib << 10
                slices = [regions.slice(str(i), 0, size) for i in range(REGIONS)]
                # Threshold 0: every copy on the loop; the batch's size: this one on a thread.
                for way, thread_bytes in (("loop", 0), ("thread", size)):
                    shared = SharedInputs(EverySharing(), 1, "", pool, thread_bytes)  # type: ignore[arg-type]
                    await fills(shared, slices, size, 20)
                    process, loop = await fills(shared, slices, size, args.fills)
                    shared.copiers.shutdown()
                    rounds = figures.setdefault(f"{kib} KiB", {}).setdefault(
                        way, {"process_us": [], "loop_us": []}
                    )
                    rounds["process_us"].append(round(1e6 * process / args.fills))
                    rounds["loop_us"].append(round(1e6 * loop / args.fills))
    finally:
        pool.close()
    for ways in figures.values():
        for rounds in ways.values():
            for key in list(rounds):
                rounds[f"{key}_median"] = statistics.median(rounds[key])  # type: ignore[assignment]
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fills", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--kib",
        type=lambda text: [int(k) for k in text.split(",")],
        default=[256, 512, 1024, 3072],
        help="batch sizes in KiB, at most 3072",
    )
    args = parser.parse_args(argv)
    tag = f"segment-fill-{uuid.uuid4().hex[:8]}"
    paths = [shared_memory.SHM_DIR / f"{tag}-{i}" for i in range(REGIONS)]
    regions = ClientRegions()
    figures: dict = {}

    async def run() -> None:
        figures.update(await measure(args, regions))

    try:
        for index, path in enumerate(paths):
            path.write_bytes(os.urandom(REGION_BYTES))
            regions.register(str(index), f"/{path.name}", 0, REGION_BYTES)
        serving.run_service(run())
    finally:
        regions.close()
        for path in paths:
            path.unlink(missing_ok=True)
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
