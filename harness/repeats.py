"""How a benchmark's repeated runs are ordered and reduced to one figure, shared by the benchmarks
and the tests of that arithmetic: systems measured in rotated rounds, and the run with the median
throughput reported whole (its latencies belong to it) with every round's figure beside it."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any


def rotated_rounds(
    systems: dict[str, Callable[[], Any]], rounds: int, label: str = ""
) -> list[dict[str, Any]]:
    """Each system measured `rounds` times, the order rotated every round so that no system
    always runs first or right after the same neighbour: each round's figures by name."""
    order = list(systems)
    results = []
    for index in range(rounds):
        shift = index % len(order)
        figures = {}
        for name in order[shift:] + order[:shift]:
            print(f"round {index + 1}: {name}{label}", flush=True)
            figures[name] = systems[name]()
        results.append(figures)
    return results


def median_run(runs: list[dict[str, Any]], key: str = "throughput_infer_per_s") -> dict[str, Any]:
    """The run with the median `key` (the lower middle for an even count), with every run's
    figure beside it."""
    ranked = sorted(runs, key=lambda r: r.get(key) or 0)
    return {**ranked[(len(ranked) - 1) // 2], "rounds": [r.get(key) for r in runs]}


def median_inprocess(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One in-process record whose rows are, per batch size, the median of the rounds."""
    by_size: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        for row in record["results"]:
            by_size.setdefault(row["batch_size"], []).append(row)
    rows = [median_run(runs, "samples_per_s") for _, runs in sorted(by_size.items())]
    return {
        **records[0],
        "results": rows,
        "best_samples_per_s": max(r["samples_per_s"] for r in rows),
    }


def summarize(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """The median repeat's figures, with the spread of throughput across repeats."""
    rates = sorted(run["samples_per_s"] for run in repeats)
    median = statistics.median(rates)
    middle = min(repeats, key=lambda run: abs(run["samples_per_s"] - median))
    return {
        **{k: v for k, v in middle.items() if k != "samples_per_s"},
        "samples_per_s": median,
        "samples_per_s_min": rates[0],
        "samples_per_s_max": rates[-1],
        "throughput": median / middle["rows_per_request"],
        "client_bound": any(run["client_bound"] for run in repeats),
    }
