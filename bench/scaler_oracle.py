"""How cheap can a scaling rule be on the policy-eval traces if it is told each trace's shape?
A reference point for the scaler's target (learned policy <= 0.85x the tuned HPA's worker-seconds
at >= 99% of requests within the SLO).

The rules size on the highest `w`-second mean arrival rate of the last `D` seconds, plus queued
requests / 5 s, at target load L: ceil(demand / (L x per-replica rate within the SLO)). A rise is
followed at once, a fall only once D seconds of lower rates have passed (HPA's scale-down
stabilisation; D = 1 is none). Every (L, w, D) of the grid runs on every trace of the split, in the
simulator and through the live controller `tideserve policy eval` runs
(`tideserve_learning.sim.scaler`). The oracle then picks one setting per trace shape, with the
outcomes in hand, for the fewest pooled worker-seconds with >= 99% of the split's requests within
the SLO. A policy that sees only the past can know neither the shape in advance nor the outcomes,
so within this family it does no better than the oracle. The rule and the oracle's choice are
`tideserve_learning.scaler_oracle`; this module runs the grid.

    python -m bench.scaler_oracle --split test          # the held-out traces, ~3 min on 2 cores
    python -m bench.scaler_oracle --split validation

The HPA reference is `tideserve policy eval`'s tuned setting (target 0.5, `--hpa-target`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tideserve_learning.evaluate import SLO_GOAL
from tideserve_learning.scaler_oracle import (
    LOADS,
    SMOOTHING_S,
    STABILISATION_S,
    cheapest_meeting_goal,
    pareto,
    score,
)
from tideserve_learning.sim import traces
from tideserve_learning.sim.env import EnvConfig
from tideserve_learning.sim.scaler import PolicySpec, run_episode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scaler_oracle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--split", choices=["test", "validation"], default="test")
    parser.add_argument("--hpa-target", type=float, default=0.5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write every setting's outcome as JSON")
    args = parser.parse_args(argv)
    keys = traces.test_set() if args.split == "test" else traces.validation_set()
    shapes = [s for s in traces.SHAPES if any(k[0] == s for k in keys)]
    settings = list(itertools.product(LOADS, SMOOTHING_S, STABILISATION_S))
    with ProcessPoolExecutor(args.jobs) as pool:
        scored = dict(zip(settings, pool.map(score, settings, itertools.repeat(keys)), strict=True))
    hpa_cost = sum(
        run_episode(
            k, PolicySpec("hpa", {"target": args.hpa_target}), EnvConfig()
        ).log.worker_seconds
        for k in keys
    )
    print(
        f"{args.split} traces: {len(keys)}; HPA (target {args.hpa_target:g}): "
        f"{hpa_cost:.0f} worker-seconds"
    )
    for label, allowed in (
        ("without stabilisation (D = 1)", lambda st: st[2] == 1),
        ("with stabilisation", lambda st: True),
    ):
        choices = [pareto([(scored[st][s], st) for st in settings if allowed(st)]) for s in shapes]
        best = cheapest_meeting_goal(choices)
        if best is None:
            print(f"oracle per shape, {label}: no combination reaches {SLO_GOAL:.0%}")
            continue
        picks = ", ".join(
            f"{s} L={st[0]:g} w={st[1]} D={st[2]}" for s, st in zip(shapes, best[2], strict=True)
        )
        print(
            f"oracle per shape, {label}: {best[1]:.2%} within SLO, {best[0]:.0f} "
            f"worker-seconds, {best[0] / hpa_cost:.3f}x HPA ({picks})"
        )
    single = [
        (
            sum(o[2] for o in out.values()),
            st,
            sum(o[0] for o in out.values()) / sum(o[1] for o in out.values()),
        )
        for st, out in scored.items()
    ]
    meeting = [s for s in single if s[2] >= SLO_GOAL]
    if meeting:
        cost, st, attained = min(meeting)
        print(
            f"best single setting for every shape: L={st[0]:g} w={st[1]} D={st[2]}, "
            f"{attained:.2%}, {cost / hpa_cost:.3f}x HPA"
        )
    if args.out:
        args.out.write_text(
            json.dumps(
                [{"setting": list(st), "shapes": out} for st, out in scored.items()], indent=1
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
