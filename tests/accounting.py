"""What each fault and bad-input test did to the suite, for the faults table: the fault or input
class, the cases tried, the requests sent, how many of them were lost (no response and no clear
status) and the error statuses seen.

Each such test calls `record` once, after it has measured and before it asserts, so a failing
run is accounted for too. It prints one line; with TIDESERVE_ACCOUNTING=FILE it also appends one
JSON line to FILE, which `scripts/reliability_table.py FILE` turns into a markdown table."""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from tideserve.errors import InvalidArgument
from tideserve_tools.loadgen import LoadResult

T = TypeVar("T")

ENV = "TIDESERVE_ACCOUNTING"


def record(
    fault: str,
    *,
    cases: int,
    sent: int,
    answered: int,
    errors: Mapping[str, int],
    detail: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`answered`: requests that got a response or a clear status; the rest of `sent` are lost.
    `errors`: status name -> count; "OK" and zero counts are left out. `detail`: further fields
    of the line, for figures particular to one fault. A test may record several faults (one
    line each)."""
    entry = {
        "fault": fault,
        "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
        "cases": cases,
        "sent": sent,
        "lost": sent - answered,
        "errors": {code: n for code, n in sorted(errors.items()) if code != "OK" and n},
        **(detail or {}),
    }
    print(f"accounting: {fault}: {cases} cases, {sent} requests sent, {entry['lost']} lost, "
          f"errors {entry['errors']}")
    path = os.environ.get(ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")
    return entry


def record_load(fault: str, result: LoadResult, cases: int = 1) -> dict[str, Any]:
    """`record` for a `tideserve_tools.loadgen` run: a request is answered when it returned or
    failed with a status."""
    answered = result.ok + sum(result.errors.values())
    return record(fault, cases=cases, sent=result.sent, answered=answered, errors=result.errors)


class Examples:
    """A hypothesis property's examples as they actually run (fewer than max_examples when the
    strategy is exhausted; saved failures are replayed too). The body calls `example(n)` first,
    n being the inputs it feeds the code under test, and `answered(code)` for each one that was
    accepted ("OK") or refused with a clear error. Wrapped around the @given test, `property`
    records the totals when hypothesis is done, passed or failed."""

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.cases = 0
        self.sent = 0
        self.codes: Counter[str] = Counter()

    def example(self, inputs: int = 1) -> None:
        self.cases += 1
        self.sent += inputs

    def answered(self, code: str) -> None:
        self.codes[code] += 1

    def accepted_or_refused(self, call: Callable[[], T]) -> T | None:
        """One example fed to `call`: its result when accepted, None when refused with an
        InvalidArgument that says why; any other exception fails the property."""
        self.example()
        try:
            result = call()
        except InvalidArgument as error:
            refusal = str(error)
        else:
            self.answered("OK")
            return result
        assert refusal, "a refusal must say what is wrong"
        self.answered("INVALID_ARGUMENT")
        return None

    def property(self, test: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> None:
            try:
                test(*args, **kwargs)
            finally:
                record(self.fault, cases=self.cases, sent=self.sent,
                       answered=self.codes.total(), errors=self.codes)

        return run
