"""Model configuration: Triton's `config.pbtxt` text format (the subset in
protos/tideserve/v1/model_config.proto), read into a `ModelConfig` message and viewed through
`ModelSpec`, the plain, validated form the batcher and worker work with.

tideserve-specific options live in `parameters`, as Triton keeps backend options there:
  instance_count      model instances (executor threads / CUDA streams) per worker, default 1
  batching_policy     the batcher's batching policy by name, checked by the batcher against the
                      policies it registers (services/batcher/policies.py)
  slo_ms              end-to-end latency target for the SLO-aware batching policy
  coalesce_window_us  how long a batch may stay for requests still arriving close together,
                      once it could leave, while the batcher is saturated (default: one
                      measured batch round trip; 0: off; services/batcher/batching.py)
  precision           "fp32" (default), "fp16" or "bf16" execution on GPU
  canary_weights      "VERSION:WEIGHT,..." (e.g. "1:90,2:10"): the batcher splits the model's
                      unversioned requests between those of the named versions that are served,
                      each getting weight / sum of weights (0: none); the version_policy must
                      serve them. Unset, or no weighted version served: the latest takes all.
                      An operator moves it at run time with the balancer's SetCanaryWeights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from tideserve.codec import ELEMENT_SIZES
from tideserve.errors import InvalidArgument, NotFound
from tideserve.v1 import model_config_pb2 as mc


def datatype_name(data_type: int) -> str:
    """TYPE_FP32 -> "FP32"; TYPE_STRING -> "BYTES" (the protocol's name for it)."""
    name = mc.DataType.Name(data_type).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def data_type_enum(datatype: str) -> int:
    return mc.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    # Per-request dims, without the batch dimension when the model batches; -1 = any size.
    dims: tuple[int, ...]

    @property
    def fixed(self) -> bool:
        return all(d >= 0 for d in self.dims)

    @property
    def row_nbytes(self) -> int:
        """Bytes per batch row; only meaningful for fixed-size numeric tensors."""
        return ELEMENT_SIZES.get(self.datatype, 0) * math.prod(self.dims)


@dataclass(frozen=True)
class QueuePolicy:
    reject_on_timeout: bool = True
    default_timeout_us: int = 0
    allow_timeout_override: bool = True
    max_queue_size: int = 0


@dataclass(frozen=True)
class BatchingSpec:
    enabled: bool
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    preserve_ordering: bool = False
    priority_levels: int = 0
    default_priority_level: int = 0
    default_queue_policy: QueuePolicy = field(default_factory=QueuePolicy)
    priority_queue_policy: dict[int, QueuePolicy] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: BatchingSpec
    parameters: dict[str, str]

    @property
    def batches(self) -> bool:
        return self.max_batch_size > 0

    @property
    def instance_count(self) -> int:
        return int(self.parameters.get("instance_count", "1"))

    @property
    def slo_ms(self) -> float | None:
        raw = self.parameters.get("slo_ms")
        return float(raw) if raw else None

    @property
    def coalesce_window_s(self) -> float | None:
        """The pinned coalescing window; None when the batcher chooses it."""
        raw = self.parameters.get("coalesce_window_us")
        return None if raw is None else float(raw) / 1e6

    @property
    def canary_weights(self) -> dict[str, int]:
        raw = self.parameters.get("canary_weights")
        return parse_version_weights(self.name, raw) if raw else {}

    def input_named(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> ModelSpec:
        """Validate a ModelConfig and view it as a ModelSpec; InvalidArgument names the fault."""
        if not config.name:
            raise InvalidArgument("model config has no name")
        if config.max_batch_size < 0:
            raise InvalidArgument(f"model {config.name}: max_batch_size must be >= 0")
        if not config.input or not config.output:
            raise InvalidArgument(
                f"model {config.name}: config needs at least one input and output"
            )

        def tensors(items: object) -> tuple[TensorSpec, ...]:
            return tuple(
                TensorSpec(t.name, datatype_name(t.data_type), tuple(t.dims))  # type: ignore[attr-defined]
                for t in items  # type: ignore[attr-defined]
            )

        def queue_policy(p: mc.ModelQueuePolicy) -> QueuePolicy:
            return QueuePolicy(
                reject_on_timeout=p.timeout_action == mc.ModelQueuePolicy.REJECT,
                default_timeout_us=p.default_timeout_microseconds,
                allow_timeout_override=p.allow_timeout_override,
                max_queue_size=p.max_queue_size,
            )

        db = config.dynamic_batching
        enabled = config.HasField("dynamic_batching") and config.max_batch_size > 0
        preferred = tuple(sorted(db.preferred_batch_size))
        if any(p <= 0 or p > config.max_batch_size for p in preferred):
            raise InvalidArgument(
                f"model {config.name}: preferred_batch_size {list(preferred)} must lie in "
                f"1..max_batch_size ({config.max_batch_size})"
            )
        if db.priority_levels and not 1 <= db.default_priority_level <= db.priority_levels:
            raise InvalidArgument(
                f"model {config.name}: default_priority_level must lie in 1..priority_levels"
            )
        batching = BatchingSpec(
            enabled=enabled,
            max_queue_delay_us=db.max_queue_delay_microseconds,
            preferred_batch_sizes=preferred,
            preserve_ordering=db.preserve_ordering,
            priority_levels=db.priority_levels,
            default_priority_level=db.default_priority_level,
            default_queue_policy=queue_policy(db.default_queue_policy),
            priority_queue_policy={k: queue_policy(v) for k, v in db.priority_queue_policy.items()},
        )
        parameters = {k: v.string_value for k, v in config.parameters.items()}
        _check_parameters(config.name, parameters)
        return cls(
            name=config.name,
            platform=config.platform,
            max_batch_size=config.max_batch_size,
            inputs=tensors(config.input),
            outputs=tensors(config.output),
            batching=batching,
            parameters=parameters,
        )


def select_versions(config: mc.ModelConfig, available: Iterable[int]) -> list[int]:
    """The versions of `available` that the config's version_policy serves, ascending, as
    Triton's: latest N (unset: the latest one), all, or specific ones (every one named must be
    there). InvalidArgument for a policy that names nothing; NotFound for missing versions."""
    have = sorted(set(available))
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return have
    if choice == "specific":
        wanted = sorted(set(policy.specific.versions))
        if not wanted:
            raise InvalidArgument(f"model {config.name}: version_policy specific names no version")
        missing = [v for v in wanted if v not in have]
        if missing:
            raise NotFound(
                f"model {config.name}: version_policy names versions {missing} that the "
                f"repository lacks (it has {have})"
            )
        return wanted
    count = policy.latest.num_versions if choice == "latest" else 1
    if count < 1:
        raise InvalidArgument(f"model {config.name}: version_policy latest needs num_versions >= 1")
    return have[-count:]


def parse_version_weights(model: str, text: str) -> dict[str, int]:
    """"1:90,2:10" -> {"1": 90, "2": 10}; InvalidArgument names what is wrong."""
    weights: dict[str, int] = {}
    for item in text.split(","):
        version, sep, weight = item.strip().partition(":")
        version, weight = version.strip(), weight.strip()
        if not (sep and version.isdigit() and weight.isdigit()) or version in weights:
            raise InvalidArgument(
                f"model {model}: parameter canary_weights must read VERSION:WEIGHT,... with each "
                f"version once and whole weights >= 0 (e.g. \"1:90,2:10\"); got {text!r}"
            )
        weights[version] = int(weight)
    if not any(weights.values()):
        raise InvalidArgument(
            f"model {model}: parameter canary_weights gives every version weight 0; give some "
            "version a weight above 0, or leave the parameter out"
        )
    return weights


def _check_parameters(model: str, parameters: dict[str, str]) -> None:
    if "canary_weights" in parameters:
        parse_version_weights(model, parameters["canary_weights"])
    for name, zero_allowed in (
        ("slo_ms", False),
        ("instance_count", False),
        ("coalesce_window_us", True),
    ):
        value = parameters.get(name)
        try:
            valid = value is None or float(value) > 0 or (zero_allowed and float(value) == 0)
        except ValueError:
            valid = False
        if not valid:
            bound = ">= 0" if zero_allowed else "> 0"
            raise InvalidArgument(f"model {model}: parameter {name} must be a number {bound}")


def read_config(path: Path, default_name: str) -> mc.ModelConfig:
    """Parse a config.pbtxt; the model is named after its directory unless the file names it."""
    config = mc.ModelConfig()
    try:
        text_format.Parse(path.read_text(), config)
    except text_format.ParseError as exc:
        raise InvalidArgument(f"{path}: {exc}") from exc
    if not config.name:
        config.name = default_name
    ModelSpec.from_config(config)
    return config
