"""The scaler's Prometheus metrics, all read from the controller at scrape time: replicas by
state, the bounds, the policy and the inputs it decides on, its decisions, and worker starts and
stops. Nothing is counted on the tick itself; the controller already keeps these figures for
GetStatus."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from services.scaler.controller import ScalerController

WORKER_STATES = ("starting", "ready", "draining", "stopping")


def collect(controller: ScalerController, runtime: str) -> list[Metric]:
    """Read on the event loop at scrape time."""
    replicas = GaugeMetricFamily(
        "tideserve_scaler_replicas",
        "Workers the scaler manages, by state (starting, ready, draining, stopping).",
        labels=["state"],
    )
    states = [w.state for w in controller.workers.values()]
    for state in WORKER_STATES:
        replicas.add_metric([state], states.count(state))
    desired = GaugeMetricFamily(
        "tideserve_scaler_desired_replicas",
        "Replicas the scaler is steering to: the policy's proposal, the operator's pin or the "
        "count held while paused, within the bounds; the guards reach it a step at a time.",
        value=controller.desired,
    )
    bounds = GaugeMetricFamily(
        "tideserve_scaler_replica_bounds", "Minimum and maximum replicas.", labels=["bound"]
    )
    bounds.add_metric(["min"], controller.guard_config.min_replicas)
    bounds.add_metric(["max"], controller.guard_config.max_replicas)
    policy = GaugeMetricFamily(
        "tideserve_scaler_policy_info",
        "1 for the scaling policy in use; `paused` and `pinned` say whether it is overridden.",
        labels=["policy", "paused", "pinned", "fallback"],
    )
    policy.add_metric(
        [
            controller.policy.name,
            str(controller.paused).lower(),
            str(controller.pinned is not None).lower(),
            str(bool(controller.fallback_reason)).lower(),
        ],
        1,
    )
    inputs = GaugeMetricFamily(
        "tideserve_scaler_policy_input",
        "What the policy decides on, as of this scrape (arrival rate, utilisation, queued "
        "requests, p99 latency, ...).",
        labels=["policy", "input"],
    )
    active = controller.active()
    context = controller.observer.context(
        controller.snapshot,
        controller.clock(),
        len(active),
        sum(1 for w in active if w.state == "ready"),
    )
    for name, value in sorted(vars(context).items()):
        if name != "now" and isinstance(value, int | float):
            inputs.add_metric([controller.policy.name, name], float(value))
    decisions = CounterMetricFamily(
        "tideserve_scaler_decisions",
        "Scaling decisions recorded (a change of the desired count or a correction of the "
        "current one), by policy and direction.",
        labels=["policy", "direction"],
    )
    for (name, direction), count in sorted(controller.decision_counts.items()):
        decisions.add_metric([name, direction], count)
    last = controller.decisions[-1] if controller.decisions else None
    proposed = GaugeMetricFamily(
        "tideserve_scaler_last_decision_replicas",
        "The last decision: what the policy proposed and what the guards applied.",
        labels=["stage"],
    )
    if last is not None:
        proposed.add_metric(["proposed"], last.proposed_replicas)
        proposed.add_metric(["applied"], last.applied_replicas)
    starts = CounterMetricFamily(
        "tideserve_scaler_worker_starts",
        "Workers started (processes or containers, by runtime).",
        labels=["runtime"],
    )
    starts.add_metric([runtime], controller.started_total)
    stops = CounterMetricFamily(
        "tideserve_scaler_worker_stops",
        "Workers drained and stopped, by runtime.",
        labels=["runtime"],
    )
    stops.add_metric([runtime], controller.stopped_total)
    return [replicas, desired, bounds, policy, inputs, decisions, proposed, starts, stops]
