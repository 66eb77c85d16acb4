"""Worker-seconds against SLO attainment under the live scaler's controller, with cold starts paid:
HPA at several targets, learned policies, and a foresight oracle that knows the next N seconds.

Every setting runs the held-out split and the out-of-family split of `tideserve policy eval`
(`--split validation`: the validation seeds, for placing candidates before any is chosen)
through the live controller (`tideserve_learning.sim.scaler`: policy, fallback, the live guards
of 2 s up / 10 s down cooldown, a 3 s scale-down stabilisation window and steps of +2 / -1,
bounds), on the same arrivals. Worker-seconds
are given against HPA at `--hpa-target` (what `tideserve policy eval` tunes it to).

The foresight oracle sizes for the highest mean rate of the trace over the next N seconds (the
rate the arrivals are drawn from, not the arrivals themselves), plus the backlog drained in 5 s,
at target load L: ceil(demand / (L x per-replica rate within the SLO)). N = 0 knows only the
present rate, without the measurement's noise and lag; a policy that sees only the past cannot do
better than the oracle with the N its cold start and cooldowns need.

    python -m bench.autoscaling_frontier --policy build/policy-guarded/guarded.zip --jobs 2
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from services.scaler.learning import DEFAULT_POLICY
from services.scaler.policies import ScalingContext
from tideserve_learning.evaluate import Result
from tideserve_learning.sim import traces
from tideserve_learning.sim.env import EnvConfig, EpisodeLog, ServingClusterEnv
from tideserve_learning.sim.scaler import PolicySpec, drive

HPA_TARGETS = (0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8)
HORIZONS_S = (0, 5, 10, 20)
LOADS = (0.7, 0.8, 0.9, 1.0)
BACKLOG_DRAIN_S = 5.0
SPLITS = {
    "held-out": traces.test_set,
    "out-of-family": traces.out_of_family_set,
    "validation": traces.validation_set,
}

Setting = tuple[str, str]  # (kind, value): ("hpa", "0.55"), ("learned", path), ("foresight", "N/L")


class Foresight:
    """Sizes on the highest trace rate of the next `horizon_s` seconds of `env`'s episode."""

    name = "foresight"

    def __init__(self, env: ServingClusterEnv, horizon_s: int, load: float) -> None:
        self.env = env
        self.horizon_s = horizon_s
        self.load = load

    def decide(self, ctx: ScalingContext) -> int:
        step = int(ctx.now / self.env.config.step_s)
        rates = self.env.trace.rates[step : step + self.horizon_s + 1] * self.env.rate_scale
        demand = float(rates.max()) + ctx.queued_requests / BACKLOG_DRAIN_S
        return max(1, math.ceil(demand / (ctx.service_rate_per_replica * self.load)))


def run(setting: Setting, split: str) -> Result:
    kind, value = setting
    config = EnvConfig()
    result = Result(kind, value, {})
    for key in SPLITS[split]():
        env = ServingClusterEnv(config, trace_keys=[key])
        if kind == "hpa":
            spec = PolicySpec("hpa", {"target": float(value)})
        elif kind == "learned":
            spec = PolicySpec("learned", policy_file=value)
        else:
            horizon, load = value.split("/")
            spec = PolicySpec(policy=Foresight(env, int(horizon), float(load)))
        episode = asyncio.run(drive(env, spec, key[1]))
        result.logs[key] = episode.log
        result.fallbacks += episode.fallbacks
    return result


def row(setting: Setting, log: EpisodeLog, hpa: EpisodeLog) -> str:
    kind, value = setting
    label = Path(value).name if kind == "learned" else value
    return (
        f"{kind:<10}{label:<22}{log.slo_attainment():>10.2%}"
        f"{log.worker_seconds / hpa.worker_seconds:>9.2f}{log.actions_per_hour():>10.0f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.autoscaling_frontier",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--policy",
        type=Path,
        action="append",
        help="learned policies to place (default: the shipped one); repeatable",
    )
    parser.add_argument("--hpa-target", type=float, default=0.55)
    parser.add_argument(
        "--kinds",
        default="hpa,learned,foresight",
        help="which settings to run (HPA at --hpa-target always runs)",
    )
    parser.add_argument(
        "--split",
        choices=list(SPLITS),
        action="append",
        help="the traces (default: held-out and out-of-family); repeatable",
    )
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    splits = args.split or ["held-out", "out-of-family"]
    kinds = set(args.kinds.split(","))
    settings: list[Setting] = []
    if "hpa" in kinds:
        settings += [("hpa", f"{t:g}") for t in HPA_TARGETS]
    if "learned" in kinds:
        settings += [("learned", str(p)) for p in args.policy or [DEFAULT_POLICY]]
    if "foresight" in kinds:
        settings += [
            ("foresight", f"{n}/{load:g}") for n, load in itertools.product(HORIZONS_S, LOADS)
        ]
    reference = ("hpa", f"{args.hpa_target:g}")
    if reference not in settings:
        settings.append(reference)
    jobs = list(itertools.product(settings, splits))
    with ProcessPoolExecutor(args.jobs) as pool:
        results = dict(zip(jobs, pool.map(run, *zip(*jobs, strict=True)), strict=True))
    for split in splits:
        hpa = results[(reference, split)].pooled()
        print(
            f"{split}: within SLO, worker-seconds vs HPA target {args.hpa_target:g}, "
            "actions per hour"
        )
        print(f"{'kind':<10}{'setting':<22}{'within SLO':>10}{'vs HPA':>9}{'actions/h':>10}")
        for setting in settings:
            print(row(setting, results[(setting, split)].pooled(), hpa))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
