"""The models the workers serve, as last told by the balancer, with the answers to metadata and
config queries precomputed (they are asked often by clients such as perf_analyzer).

The batching configuration (parameters.batching_policy and what that policy needs) is the
batcher's alone to read, so it is checked here, as the catalog learns of a model: a model the
batcher cannot batch is refused as a whole (requests FAILED_PRECONDITION with the reason, not
ready, UNAVAILABLE with the reason in the repository index) rather than request by request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.batcher.canary import WeightedSplit, effective_weights
from services.batcher.policies import create_policy
from services.batcher.requests import check_model_name, quoted
from tideserve.errors import BalancerUnreachable, FailedPrecondition, NotFound
from tideserve.modelconfig import ModelSpec
from tideserve.v1 import cluster_pb2, inference_pb2

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogEntry:
    spec: ModelSpec
    config: object  # inference.ModelConfig
    versions: tuple[str, ...]
    metadata: inference_pb2.ModelMetadataResponse
    # The operator's split of unversioned requests as the balancer sent it (empty: none).
    override: dict[str, int]
    # Which served version each unversioned request goes to; None: the latest (no canary).
    split: WeightedSplit | None

    def version_for(self, requested: str) -> str:
        """The version to send a request for `requested` to ("" lets the worker take the
        latest)."""
        if requested or self.split is None:
            return requested
        return self.split.choose()

    @property
    def weights(self) -> dict[str, int]:
        return dict(self.split.weights) if self.split is not None else {}


def _metadata(
    spec: ModelSpec, served: cluster_pb2.ServedModel
) -> inference_pb2.ModelMetadataResponse:
    batch_dim = [-1] if spec.batches else []
    response = inference_pb2.ModelMetadataResponse(
        name=spec.name, versions=list(served.versions), platform=spec.platform
    )
    for tensor in spec.inputs:
        response.inputs.add(
            name=tensor.name, datatype=tensor.datatype, shape=[*batch_dim, *tensor.dims]
        )
    for tensor in spec.outputs:
        response.outputs.add(
            name=tensor.name, datatype=tensor.datatype, shape=[*batch_dim, *tensor.dims]
        )
    return response


@dataclass(frozen=True)
class Refusal:
    """A model the workers serve that this batcher cannot batch, and why."""

    versions: tuple[str, ...]
    reason: str


def batching_refusal(spec: ModelSpec) -> str:
    """Why the batcher cannot batch the model as its config asks ("" when it can): the policy
    registry (policies.create_policy) is the one judge of the names and what each needs."""
    try:
        create_policy(spec, dict)
    except ValueError as error:
        return (
            f"the batcher cannot batch model {quoted(spec.name)}: {error}; fix its config.pbtxt "
            "and load the model again"
        )
    return ""


# Of a model version's states on several workers, the one the repository index shows.
STATE_RANK = {"READY": 0, "LOADING": 1, "UNAVAILABLE": 2}


def merged_statuses(snapshot: cluster_pb2.ClusterSnapshot) -> dict[str, dict[str, tuple[str, str]]]:
    """Each model version's state over the workers: READY if any worker serves it, else
    LOADING if any is loading it, else UNAVAILABLE with a worker's reason."""
    merged: dict[str, dict[str, tuple[str, str]]] = {}
    for worker in snapshot.workers:
        for status in worker.model_statuses:
            versions = merged.setdefault(status.name, {})
            seen = versions.get(status.version)
            rank = STATE_RANK.get(status.state, len(STATE_RANK))
            if seen is None or rank < STATE_RANK.get(seen[0], len(STATE_RANK)):
                versions[status.version] = (status.state, status.reason)
    return merged


def unloaded_models(snapshot: cluster_pb2.ClusterSnapshot) -> frozenset[str]:
    """Models no worker serves that some worker unloaded on purpose (not a worker gone)."""
    served = {m.config.name for m in snapshot.models}
    return frozenset(
        name
        for name, versions in merged_statuses(snapshot).items()
        if name not in served and all(state == "UNAVAILABLE" for state, _ in versions.values())
    )


# How long a model stays known after the last worker serving it went away. Within it, requests
# for the model wait (bounded by the balancer's wait for a worker) instead of getting NOT_FOUND:
# a restarting balancer or a rolling worker restart is not the model ceasing to exist.
FORGET_AFTER_S = 60.0


class ModelCatalog:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.entries: dict[str, CatalogEntry] = {}
        # When each known model was last seen in a snapshot.
        self.last_seen: dict[str, float] = {}
        # Ready workers serving each model, from the latest cluster snapshot.
        self.worker_counts: dict[str, int] = {}
        # The /dev/shm domains of the workers serving each model ("" for a worker without one).
        self.shared_memory_domains: dict[str, frozenset[str]] = {}
        # Compute seconds by batch size per model, averaged over the workers that report it.
        self.service_curves: dict[str, dict[int, float]] = {}
        # Whether any balancer has told us what is served yet: before, "unknown model" would be
        # a guess, so requests get UNAVAILABLE (retry) rather than NOT_FOUND.
        self.synced = False
        # Model name -> version -> (state, reason), merged over the workers (READY on any
        # worker wins, then LOADING): Triton's repository index.
        self.statuses: dict[str, dict[str, tuple[str, str]]] = {}
        # Models the workers serve whose batching configuration this batcher refuses.
        self.refused: dict[str, Refusal] = {}
        # Cluster snapshots taken so far: a model-control call waits for one taken after the
        # workers answered, so it does not read a refusal of the model's previous config.
        self.generation = 0

    def update(
        self, models: list[cluster_pb2.ServedModel], unloaded: frozenset[str] = frozenset()
    ) -> list[str]:
        """Take the balancer's list of served models; returns the names that appeared or changed.
        Models missing from the list are kept for FORGET_AFTER_S before they are dropped, unless
        they are `unloaded` (on purpose, by model control): those go at once."""
        changed = []
        now = self.clock()
        self.synced = True
        self.generation += 1
        refused: dict[str, Refusal] = {}
        entries = {
            name: entry
            for name, entry in self.entries.items()
            if now - self.last_seen.get(name, now) < FORGET_AFTER_S and name not in unloaded
        }
        for served in models:
            name = served.config.name
            self.last_seen[name] = now
            current = self.entries.get(name)
            override = dict(served.version_weights)
            if (
                current is not None
                and current.config == served.config
                and current.versions == tuple(served.versions)
                and current.override == override
            ):
                entries[name] = current
                continue
            spec = ModelSpec.from_config(served.config)
            versions = tuple(served.versions)
            reason = batching_refusal(spec)
            if reason:
                if name not in self.refused:
                    logger.warning("model refused", extra={"model": name, "reason": reason})
                refused[name] = Refusal(versions, reason)
                entries.pop(name, None)
                continue
            weights = effective_weights(versions, spec.canary_weights, override)
            entries[name] = CatalogEntry(
                spec,
                served.config,
                versions,
                _metadata(spec, served),
                override,
                WeightedSplit(weights) if weights else None,
            )
            changed.append(name)
        self.entries = entries
        self.last_seen = {name: self.last_seen[name] for name in entries}
        self.refused = refused
        return changed

    def update_workers(self, snapshot: cluster_pb2.ClusterSnapshot) -> None:
        self.statuses = merged_statuses(snapshot)
        counts: dict[str, int] = {}
        domains: dict[str, set[str]] = {}
        samples: dict[str, dict[int, list[float]]] = {}
        for worker in snapshot.workers:
            for model in worker.models:
                domains.setdefault(model, set()).add(worker.shared_memory_domain)
            if worker.phase == cluster_pb2.WorkerState.READY:
                for model in worker.models:
                    counts[model] = counts.get(model, 0) + 1
                for point in worker.service_times:
                    by_size = samples.setdefault(point.model, {})
                    by_size.setdefault(point.batch_size, []).append(point.seconds)
        self.worker_counts = counts
        self.shared_memory_domains = {model: frozenset(d) for model, d in domains.items()}
        self.service_curves = {
            model: {size: sum(times) / len(times) for size, times in by_size.items()}
            for model, by_size in samples.items()
        }

    def get(self, name: str, version: str = "") -> CatalogEntry:
        check_model_name(name)
        entry = self.entries.get(name)
        if name in self.refused:
            raise FailedPrecondition(self.refused[name].reason)
        if entry is None and not self.synced:
            raise BalancerUnreachable(
                "this batcher has not yet heard from a balancer which models are served; "
                "retry shortly"
            )
        if entry is None:
            served = f"served models are {sorted(self.entries) or 'none yet'}"
            reasons = sorted({r for _, r in self.statuses.get(name, {}).values() if r})
            if reasons:
                # Known to the workers but served by none: say why (unloaded, removed from the
                # repository, failed to load) rather than calling it unknown.
                raise NotFound(
                    f"model {quoted(name)} is not served ({'; '.join(reasons)}); {served}"
                )
            raise NotFound(f"unknown model {quoted(name)}; {served}")
        if version and version not in entry.versions:
            raise NotFound(
                f"model {quoted(name)} has no version {quoted(version)} served; served versions "
                f"are {list(entry.versions)}"
            )
        return entry

    def repository_index(self, reachable: bool) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) of every model version a worker serves or knows of
        (unloaded, failed to load, being loaded), as Triton's repository index; all
        UNAVAILABLE while no balancer is `reachable`."""
        rows: dict[tuple[str, str], tuple[str, str]] = {}
        for name, versions in self.statuses.items():
            for version, status in versions.items():
                rows[(name, version)] = status
        for name, entry in self.entries.items():
            for version in entry.versions:
                if not self.ready(name):
                    rows[(name, version)] = ("UNAVAILABLE", "no ready worker")
                else:
                    rows.setdefault((name, version), ("READY", ""))
        for name, refusal in self.refused.items():
            for version in refusal.versions:
                rows[(name, version)] = ("UNAVAILABLE", refusal.reason)
        if not reachable:
            rows = {key: ("UNAVAILABLE", "no balancer reachable") for key in rows}
        return [(*key, *status) for key, status in sorted(rows.items())]

    def served_names(self) -> list[str]:
        return sorted(self.entries)

    def served_versions(self, name: str) -> tuple[str, ...]:
        entry = self.entries.get(name)
        return entry.versions if entry is not None else ()

    def shares_memory(self, name: str, domain: str) -> bool:
        """Whether every worker the balancer may send `name`'s batches to sees our /dev/shm.
        Every worker, draining and ejected ones too: routing picks among them, not us."""
        return bool(domain) and self.shared_memory_domains.get(name) == frozenset({domain})

    def ready(self, name: str) -> bool:
        return name in self.entries and self.worker_counts.get(name, 0) > 0
