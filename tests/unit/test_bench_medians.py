"""`python -m bench.suite` measures its systems in rotated rounds and reports, for each figure,
the run with the median throughput of its rounds: a whole run (its latencies belong to it), with
every round's figure beside it."""

from __future__ import annotations

from collections.abc import Callable

from harness.repeats import median_inprocess, median_run, rotated_rounds


def test_median_run_keeps_the_middle_run_whole() -> None:
    runs = [
        {"throughput_infer_per_s": 1500.0, "p99_ms": 40.0},
        {"throughput_infer_per_s": 1200.0, "p99_ms": 90.0},
        {"throughput_infer_per_s": 1400.0, "p99_ms": 55.0},
    ]

    median = median_run(runs)

    assert median["throughput_infer_per_s"] == 1400.0
    assert median["p99_ms"] == 55.0
    assert median["rounds"] == [1500.0, 1200.0, 1400.0]


def test_median_run_of_an_even_count_takes_the_lower_middle() -> None:
    runs = [{"throughput_infer_per_s": t} for t in (4.0, 1.0, 3.0, 2.0)]

    assert median_run(runs)["throughput_infer_per_s"] == 2.0


def test_a_failed_run_ranks_lowest() -> None:
    runs = [{"ok": False}, {"throughput_infer_per_s": 900.0}, {"throughput_infer_per_s": 800.0}]

    assert median_run(runs)["throughput_infer_per_s"] == 800.0


def test_median_inprocess_takes_each_batch_size_from_its_own_rounds() -> None:
    def record(rates: dict[int, float]) -> dict:
        return {
            "model": "mlp.pt",
            "results": [{"batch_size": b, "samples_per_s": r} for b, r in rates.items()],
        }

    merged = median_inprocess(
        [
            record({1: 100.0, 64: 900.0}),
            record({1: 300.0, 64: 700.0}),
            record({1: 200.0, 64: 800.0}),
        ]
    )

    assert [(r["batch_size"], r["samples_per_s"]) for r in merged["results"]] == [
        (1, 200.0),
        (64, 800.0),
    ]
    assert merged["best_samples_per_s"] == 800.0
    assert merged["model"] == "mlp.pt"


def test_rounds_rotate_the_order_and_keep_each_rounds_figures() -> None:
    ran: list[str] = []

    def system(name: str, figure: int) -> Callable[[], int]:
        def measure() -> int:
            ran.append(name)
            return figure + len(ran)

        return measure

    rounds = rotated_rounds(
        {"a": system("a", 100), "b": system("b", 200), "c": system("c", 300)}, 3
    )

    assert ran == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert rounds[1] == {"b": 204, "c": 305, "a": 106}
