"""`tideserve policy eval`: the learned policy against the rule policies on held-out traces.

Every policy runs in the same simulator, through the same guards, on the same arrivals (each test
trace is reset with its own seed). The rule policies are first tuned to the SLO: each one's main
parameter is swept on training traces (10 seeds per training shape; HPA's target in steps of 0.05)
and the cheapest setting that keeps >= 99% of requests within the SLO is kept, so the comparison is
at the same SLO and not against a straw man. The learned policy falls back to the tuned HPA
whenever its observation leaves the trained range or is not a finite number, as the live scaler
does; the table counts those fallbacks. `--split validation` runs the same comparison on the
validation seeds of the training shapes instead, for choosing among trained policies without
looking at the test traces.

Prints a table (SLO attainment, pooled p99, worker-seconds, scaling actions) and writes one PNG
per trace shape (load, replicas and p99 latency over time, one column per policy). With
`--run-json DIR` it also writes each plotted episode as DIR/<shape>_<policy>.json in the RUN.json
format of `tideserve report` (tideserve/runs.py), to plot one policy's run on its own or beside
a real one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from services.scaler.guards import GuardConfig, Guards
from services.scaler.learning import DEFAULT_POLICY
from services.scaler.learning.policy import LearnedPolicy, UntrustedObservation
from services.scaler.planner import MEAN_OVER_TAU, batch_latency_cdf
from services.scaler.policies import ScalingContext, ScalingPolicy, create_policy
from tideserve.logs import configure_logging
from tideserve.runs import Run, Sample
from tideserve_learning.sim import traces
from tideserve_learning.sim.env import EnvConfig, EpisodeLog, ServingClusterEnv

logger = logging.getLogger(__name__)

SLO_GOAL = 0.99
# Concurrency targets are swept as fractions of one replica's concurrency at its SLO capacity.
CONCURRENCY_FRACTIONS = (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
# Steps of 0.05: with 0.1 steps the tuned HPA could sit up to 0.1 below the cheapest target that
# meets the goal, paying for headroom it does not need.
HPA_TARGETS = tuple(round(0.3 + 0.05 * i, 2) for i in range(13))


@dataclass
class Result:
    policy: str
    setting: str
    logs: dict[tuple[str, int], EpisodeLog]
    fallbacks: int = 0

    def pooled(self, shape: str | None = None) -> EpisodeLog:
        pooled = EpisodeLog()
        for (trace_shape, _), log in self.logs.items():
            if shape in (None, trace_shape):
                for name in ("arrivals", "within_slo", "wait_s", "tau_s", "p99_s", "replicas"):
                    getattr(pooled, name).extend(getattr(log, name))
                pooled.changes += log.changes
                pooled.worker_seconds += log.worker_seconds
        return pooled


def run_episode(
    key: tuple[str, int], decide: Callable[[ScalingContext], int], config: EnvConfig
) -> EpisodeLog:
    """One trace under one policy, with the live scaler's guards between proposal and cluster."""
    env = ServingClusterEnv(config, trace_keys=[key])
    env.reset(seed=key[1])
    guards = Guards(GuardConfig(min_replicas=config.min_replicas,
                                max_replicas=config.max_replicas))
    truncated = False
    while not truncated:
        ctx = env.scaling_context()
        applied, _ = guards.apply(ctx.current_replicas, decide(ctx), ctx.now)
        _, _, _, truncated, _ = env.step_to(applied)
    return env.log


def _rule_grid(env: ServingClusterEnv) -> dict[str, list[dict[str, float]]]:
    mu = env.rate_within_slo
    concurrency = mu * MEAN_OVER_TAU * env.profile.steady_batch_time(mu)
    targets = [{"target": round(f * concurrency, 2)} for f in CONCURRENCY_FRACTIONS]
    return {
        "static": [{"replicas": n} for n in range(1, env.config.max_replicas + 1)],
        "hpa": [{"target": t} for t in HPA_TARGETS],
        "kpa": targets,
        "target_tracking": targets,
    }


def _counted(keys: Iterable[tuple[str, int]], progress: tqdm | None) -> Iterator[tuple[str, int]]:
    """`keys`, advancing `progress` by one episode as each one's episode has run."""
    for key in keys:
        yield key
        if progress is not None:
            progress.update()


def tune(name: str, grid: list[dict[str, float]], keys: list[tuple[str, int]],
         config: EnvConfig, progress: tqdm | None = None) -> dict[str, float]:
    """The cheapest setting meeting SLO_GOAL on `keys` (or the best attainment if none does)."""
    scored = []
    for params in grid:
        logs = {k: run_episode(k, create_policy(name, **params).decide, config)
                for k in _counted(keys, progress)}
        pooled = Result(name, "", logs).pooled()
        scored.append((pooled.slo_attainment(), pooled.worker_seconds, params))
    meeting = [s for s in scored if s[0] >= SLO_GOAL]
    best = min(meeting, key=lambda s: s[1]) if meeting else max(scored, key=lambda s: s[0])
    logger.info("tuned %s: %s (attainment %.4f on training traces)", name, best[2], best[0])
    return best[2]


def evaluate_learned(
    path: Path, fallback: dict[str, float], keys: list[tuple[str, int]], config: EnvConfig,
    progress: tqdm | None = None,
) -> Result:
    result = Result("learned", path.name, {})
    for key in _counted(keys, progress):
        learned, hpa = LearnedPolicy(path), create_policy("hpa", **fallback)

        def decide(ctx: ScalingContext, learned: LearnedPolicy = learned,
                   hpa: ScalingPolicy = hpa) -> int:
            # The fallback sees every context, so its windows are warm when it is needed.
            rule = hpa.decide(ctx)
            try:
                return learned.decide(ctx)
            except UntrustedObservation:
                result.fallbacks += 1
                return rule

        result.logs[key] = run_episode(key, decide, config)
    return result


def _describe(params: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in params.items())


def print_table(results: list[Result], slo_s: float, split: str = "held-out") -> None:
    hpa_cost = next(r for r in results if r.policy == "hpa").pooled().worker_seconds
    header = (f"{'policy':<16}{'setting':<20}{'within SLO':>11}{'p99 ms':>9}{'worker-s':>10}"
              f"{'vs HPA':>8}{'actions':>9}{'fallbacks':>10}")
    print(f"{split} traces: {len(results[0].logs)}, SLO {slo_s * 1e3:g} ms")
    print(header)
    print("-" * len(header))
    for r in results:
        pooled = r.pooled()
        print(f"{r.policy:<16}{r.setting:<20}{pooled.slo_attainment():>10.2%} "
              f"{pooled.latency_quantile(0.99) * 1e3:>8.1f}{pooled.worker_seconds:>10.0f}"
              f"{pooled.worker_seconds / hpa_cost:>8.2f}{pooled.changes:>9d}{r.fallbacks:>10d}")
    print("\nper shape: within SLO / worker-seconds")
    shapes = [s for s in traces.SHAPES if any(k[0] == s for k in results[0].logs)]
    print(f"{'policy':<16}" + "".join(f"{s:>20}" for s in shapes))
    for r in results:
        cells = [r.pooled(s) for s in shapes]
        print(f"{r.policy:<16}" + "".join(
            f"{c.slo_attainment():>12.2%} /{c.worker_seconds:>6.0f}" for c in cells))


def plot(results: list[Result], key: tuple[str, int], path: Path, slo_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, len(results), figsize=(3.2 * len(results), 7), sharex=True,
                             sharey="row", squeeze=False)
    for col, r in enumerate(results):
        log = r.logs[key]
        t = np.arange(len(log.arrivals))
        axes[0, col].plot(t, log.arrivals, lw=0.7)
        axes[0, col].set_title(f"{r.policy}\n{r.setting}", fontsize=8)
        axes[1, col].step(t, log.replicas, where="post", lw=0.9)
        axes[2, col].plot(t, np.asarray(log.p99_s) * 1e3, lw=0.7)
        axes[2, col].axhline(slo_s * 1e3, color="red", ls="--", lw=0.7)
        axes[2, col].set_yscale("log")
        axes[2, col].set_xlabel("time (s)")
    for row, label in enumerate(("requests/s", "replicas", "p99 ms")):
        axes[row, 0].set_ylabel(label)
    fig.suptitle(f"trace {key[0]} seed {key[1]}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _median_over_tau() -> float:
    """Median batch latency / tau: the request-latency model depends on x / tau only, so one
    bisection gives every step's p50 as wait + this * tau (the env logs p99 but not p50)."""
    low, high = 0.0, 100.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if batch_latency_cdf(mid, 1.0) < 0.5 else (low, mid)
    return high


def episode_run(log: EpisodeLog, *, step_s: float, slo_s: float, meta: dict[str, object]) -> Run:
    """One simulated episode as a RUN.json run. The fluid model has no batch-size distribution,
    so batch_size_counts stays empty; a step without ready replicas has unbounded latency (null)."""
    median = _median_over_tau()
    cap_ms = 100 * slo_s * 1e3  # the env caps p99 here; p50 gets the same bound
    samples = [
        Sample(
            t=step * step_s,
            arrival_rate=arrivals / step_s,
            replicas_ready=ready,
            replicas_desired=desired,
            latency_p50_ms=min((wait + median * tau) * 1e3, cap_ms) if np.isfinite(tau) else None,
            latency_p99_ms=p99 * 1e3 if np.isfinite(tau) else None,
            slo_ms=slo_s * 1e3,
        )
        for step, (arrivals, ready, desired, wait, tau, p99) in enumerate(zip(
            log.arrivals, log.ready, log.replicas, log.wait_s, log.tau_s, log.p99_s, strict=True))
    ]
    return Run(samples, {}, dict(meta))


def write_run_json(result: Result, key: tuple[str, int], path: Path, config: EnvConfig) -> Path:
    meta = {"source": "tideserve policy eval (simulator)", "title": f"{result.policy} on "
            f"{key[0]} seed {key[1]} (sim)", "policy": result.policy, "setting": result.setting,
            "trace": key[0], "seed": key[1]}
    return episode_run(result.logs[key], step_s=config.step_s, slo_s=config.slo_s,
                       meta=meta).write(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tideserve policy eval", description=__doc__)
    parser.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
    parser.add_argument("--out", type=Path, default=Path("build/policy-eval"))
    # 10 seeds per shape: with 4, the tuned HPA target moved between 0.4 and 0.55 with the choice
    # of seeds and the cheapest setting cleared 99% on the tuning traces by a hair (99.08%).
    parser.add_argument("--tune-seeds", type=int, default=10,
                        help="training seeds per shape used to tune the rule policies")
    parser.add_argument("--split", choices=["test", "validation"], default="test",
                        help="held-out test traces (the reported figures) or the validation "
                             "seeds of the training shapes (for choosing among trained policies)")
    parser.add_argument("--run-json", type=Path, metavar="DIR",
                        help="also write each plotted episode as DIR/<shape>_<policy>.json")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    config = EnvConfig()
    stride = max(len(traces.TRAIN_SEEDS) // args.tune_seeds, 1)
    tune_seeds = traces.TRAIN_SEEDS[::stride][: args.tune_seeds]
    tune_keys = [(shape, seed) for shape in traces.TRAIN_SHAPES for seed in tune_seeds]
    test_keys = traces.test_set() if args.split == "test" else traces.validation_set()
    grids = _rule_grid(ServingClusterEnv(config))
    episodes = (sum(len(grid) for grid in grids.values()) * len(tune_keys)
                + (1 + len(grids)) * len(test_keys))
    logger.info("tuning %s on %d training traces, then scoring them and the learned policy on "
                "%d %s traces: %d episodes", ", ".join(grids), len(tune_keys), len(test_keys),
                args.split, episodes)
    with logging_redirect_tqdm(), tqdm(total=episodes, unit="episode", mininterval=1.0,
                                       disable=args.no_progress) as progress:
        tuned = {}
        for name, grid in grids.items():
            progress.set_description(f"tuning {name}")
            tuned[name] = tune(name, grid, tune_keys, config, progress)
        progress.set_description(f"{args.split}: learned")
        results = [evaluate_learned(args.policy, tuned["hpa"], test_keys, config, progress)]
        logger.info("learned on %s traces: %.2f%% within SLO, %d fallbacks", args.split,
                    100 * results[0].pooled().slo_attainment(), results[0].fallbacks)
        for name, params in tuned.items():
            progress.set_description(f"{args.split}: {name}")
            logs = {k: run_episode(k, create_policy(name, **params).decide, config)
                    for k in _counted(test_keys, progress)}
            results.append(Result(name, _describe(params), logs))
    print_table(results, config.slo_s, "held-out" if args.split == "test" else "validation")
    args.out.mkdir(parents=True, exist_ok=True)
    for shape in sorted({shape for shape, _ in test_keys}, key=traces.SHAPES.index):
        key = next(k for k in test_keys if k[0] == shape)
        plot(results, key, args.out / f"eval_{shape}.png", config.slo_s)
        if args.run_json is not None:
            for r in results:
                write_run_json(r, key, args.run_json / f"{shape}_{r.policy}.json", config)
    print(f"\nplots: {args.out}/eval_<shape>.png")
    if args.run_json is not None:
        print(f"runs: {args.run_json}/<shape>_<policy>.json (tideserve report RUN.json)")
    return 0


if __name__ == "__main__":
    configure_logging("policy", "INFO")
    sys.exit(main())
