"""The rollout tests' booking (tests/rollout.py): what it accepts and refuses, without a cluster."""

from __future__ import annotations

import pytest

from tests.rollout import Booking, Rollouts, check_counts
from tideserve.v1 import inference_pb2 as pb


def answer(version: str) -> pb.ModelInferResponse:
    return pb.ModelInferResponse(model_version=version)


def rolled_out_to_2() -> tuple[Rollouts, Booking]:
    """Version 1 served, then version 2 took over; one request booked after that, unanswered."""
    rollouts = Rollouts()
    rollouts.book().answered(answer("1"))
    rollouts.begin("2")
    rollouts.mark_retired()
    rollouts.book().answered(answer("2"))
    return rollouts, rollouts.book()


def rolled_out_to_3_with_the_request_answered_by(version: str) -> Rollouts:
    """As `rolled_out_to_2`, then version 3 rolled out, the request in flight answered by
    `version` once it began."""
    rollouts, in_flight = rolled_out_to_2()
    rollouts.begin("3")
    in_flight.answered(answer(version))
    rollouts.mark_retired()
    rollouts.book().answered(answer("3"))
    return rollouts


def test_a_request_in_flight_when_the_next_version_is_published_may_be_answered_by_it() -> None:
    check_counts(rolled_out_to_3_with_the_request_answered_by("3"), "test", report=lambda _: None)


def test_an_answer_from_an_older_version_after_the_next_rollout_began_fails_the_check() -> None:
    rollouts = rolled_out_to_3_with_the_request_answered_by("1")
    with pytest.raises(AssertionError, match="answered by older versions"):
        check_counts(rollouts, "test", report=lambda _: None)


def test_a_newer_version_before_the_next_rollout_began_fails_the_check() -> None:
    rollouts, in_flight = rolled_out_to_2()
    in_flight.answered(answer("3"))
    with pytest.raises(AssertionError, match="after version 2 took over"):
        check_counts(rollouts, "test", report=lambda _: None)
