"""When a model instance will be free: the batcher's prediction, so that a second batch for an
instance leaves *just in time* rather than at once.

With one batch in flight per instance, an instance idles for a whole round of hops between
batches (its answer travels back, the next batch travels down): cnn on the 2-core machine spent
about 4 ms of every 30-55 ms batch that way. A second batch sent at once would remove the gap
but leave with whatever is queued that instant, and small batches cost the CPU the hops need
(mlp c=64 under perf_analyzer: 532-1,763 infer/s against 2,448-2,509 with one). Sent at the
predicted end of the instance's current batch less the hop down, it arrives as the instance
frees and holds every request that came in meanwhile.

The prediction is the workers' measured t(b) from each batch's send: sends are known here,
while which instance a batch lands on is the balancer's choice, assumed to be the one that
frees first (least-load routing sends it there).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Booking:
    """Where a dispatched batch was predicted to run: its instance and its place there."""

    instance: int
    sequence: int


class InstanceTimeline:
    """Predicted free times of a model's instances (all workers together)."""

    def __init__(self) -> None:
        self._free_at: list[float] = []
        # Per instance, the sequence number of the last batch booked on it.
        self._last: list[int] = []
        self._sequence = 0

    def _fit(self, instances: int, now: float) -> None:
        """Follow workers joining and leaving: new instances are free now; when instances
        go, those that free last are forgotten (their batches still finish, unpredicted)."""
        while len(self._free_at) < instances:
            self._free_at.append(now)
            self._last.append(-1)
        if len(self._free_at) > instances:
            keep = sorted(range(len(self._free_at)), key=self._free_at.__getitem__)[:instances]
            self._free_at = [self._free_at[i] for i in keep]
            self._last = [self._last[i] for i in keep]

    def free_at(self, instances: int, now: float) -> float:
        """When the instance that frees first is predicted to be free."""
        self._fit(instances, now)
        return min(self._free_at, default=now)

    def book(self, instances: int, now: float, hop_s: float, compute_s: float) -> Booking:
        """A batch leaves now: it reaches a worker `hop_s` from now and starts there when the
        first instance to free is free, computing for `compute_s`."""
        self._fit(instances, now)
        index = min(range(len(self._free_at)), key=self._free_at.__getitem__)
        start = max(now + hop_s, self._free_at[index])
        self._free_at[index] = start + compute_s
        self._sequence += 1
        self._last[index] = self._sequence
        return Booking(index, self._sequence)

    def returned(self, booking: Booking, finished_at: float) -> None:
        """A batch's answer came back; its instance finished it at `finished_at`. If nothing was
        booked behind it there, the instance is free from then, whatever was predicted."""
        index = booking.instance
        if index < len(self._last) and self._last[index] == booking.sequence:
            self._free_at[index] = finished_at
