"""Whether the front door is saturated, read from the closed-loop pattern of its clients: the
signal `batching.Coalescing` holds batches on.

A client of a closed loop (perf_analyzer, a service calling us synchronously) sends its next
request when its last is answered. With N such clients the batcher holds at most N requests,
and N minus those it holds are on their way back: being answered, turned around by the client,
or already sent but not yet read by the batcher. Below saturation the batcher reads a request
as soon as it is sent, and only the client's short turnaround keeps one out, so it holds nearly
all N nearly all the time (mlp at concurrency 16: a batch's worth returns within a millisecond
of its answers). Saturated, the event loop cannot keep up: requests wait in its sockets and in
its answers, and a large share of the N stays outside the queue while the batch in flight is
served (mlp at concurrency 64: about half). Those are the requests a held batch waits for.

So, over each WINDOW_S, the share of the peak outstanding that was not outstanding on average
(time-weighted) says how saturated the front door was: from ENTER_SHARE on it is saturated,
until the share falls below LEAVE_SHARE. Holding batches changes the share it is read from, and
the gap between the two keeps the decision from flapping around one threshold. On a machine
whose cores other processes also want, the clients' own turnaround grows too, and at
concurrency 16 a third to a half of them were outside (2-core machine, load average 6-19):
so the clients outside must also be many, ENTER_OUTSIDE on average (LEAVE_OUTSIDE to leave), as
many as a held batch could hope to gain; fewer clients than that never saturate it, and a
held batch would wait for a few requests at most.
"""

from __future__ import annotations

from typing import Protocol

# The span each reading covers: long enough to average over many batch round trips (mlp's are
# 2-10 ms), short enough to follow a change in load within a second.
WINDOW_S = 0.25
ENTER_SHARE = 0.3
LEAVE_SHARE = 0.2
ENTER_OUTSIDE = 16
LEAVE_OUTSIDE = 12


class Saturation(Protocol):
    """Whether the front door is saturated now."""

    @property
    def saturated(self) -> bool: ...


class _NeverSaturated:
    saturated = False


# For a queue that is never told of its clients (tests of Triton's rule alone): nothing is held.
NEVER_SATURATED: Saturation = _NeverSaturated()


class ClosedLoop:
    """The share of a model's clients outside its queue, from the count of its outstanding
    requests (queued or in a batch in flight) as it changes; `saturated` as above."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self.saturated = False
        # The latest reading: the share of the peak outside the queue over the last window, and
        # how many that was on average.
        self.outside_share = 0.0
        self.outside = 0.0
        self.outstanding = 0
        self._since: float | None = None
        self._window_start = 0.0
        self._peak = 0
        # Integral of the outstanding count over the window so far (request-seconds).
        self._area = 0.0

    def changed(self, outstanding: int, now: float) -> None:
        """The count of outstanding requests is `outstanding` from `now` on."""
        if self._since is None:
            self._since = self._window_start = now
        self._area += self.outstanding * (now - self._since)
        self._since = now
        elapsed = now - self._window_start
        if elapsed >= self.window_s:
            self._read(elapsed)
            self._window_start, self._area, self._peak = now, 0.0, self.outstanding
        self.outstanding = outstanding
        self._peak = max(self._peak, outstanding)

    def _read(self, elapsed: float) -> None:
        if elapsed >= 2 * self.window_s or not self._peak:
            # An idle spell (no change for a whole window): not saturated.
            self.outside_share, self.outside, self.saturated = 0.0, 0.0, False
            return
        self.outside = self._peak - self._area / elapsed
        self.outside_share = self.outside / self._peak
        if self.saturated:
            self.saturated = self.outside_share >= LEAVE_SHARE and self.outside >= LEAVE_OUTSIDE
        else:
            self.saturated = self.outside_share >= ENTER_SHARE and self.outside >= ENTER_OUTSIDE
