"""config.pbtxt -> ModelConfig -> ModelSpec: Triton's fields, tideserve's parameters, and the
validation that names the faulty field."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from tideserve.errors import InvalidArgument, NotFound
from tideserve.modelconfig import (
    ModelSpec,
    QueuePolicy,
    data_type_enum,
    datatype_name,
    read_config,
    select_versions,
)
from tideserve.v1 import model_config_pb2 as mc

FULL = """
name: "resnet"
platform: "pytorch_libtorch"
max_batch_size: 16
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3, -1 ] } ]
output [
  { name: "y" data_type: TYPE_FP32 dims: [ 10 ] },
  { name: "label" data_type: TYPE_STRING dims: [ 1 ] }
]
dynamic_batching {
  preferred_batch_size: [ 8, 4 ]
  max_queue_delay_microseconds: 500
  preserve_ordering: true
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy {
    timeout_action: DELAY
    default_timeout_microseconds: 1000
    max_queue_size: 7
  }
  priority_queue_policy {
    key: 1
    value { allow_timeout_override: true max_queue_size: 3 }
  }
}
parameters { key: "instance_count" value { string_value: "2" } }
parameters { key: "slo_ms" value { string_value: "25" } }
"""


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def spec_of(text: str) -> ModelSpec:
    return ModelSpec.from_config(parse(text))


def test_full_config_becomes_a_spec() -> None:
    spec = spec_of(FULL)

    assert spec.name == "resnet"
    assert spec.platform == "pytorch_libtorch"
    assert spec.batches
    assert spec.max_batch_size == 16
    assert [(t.name, t.datatype, t.dims) for t in spec.inputs] == [("x", "FP32", (3, -1))]
    assert [(t.name, t.datatype) for t in spec.outputs] == [("y", "FP32"), ("label", "BYTES")]
    assert spec.input_named("x") is spec.inputs[0]
    assert spec.input_named("nope") is None
    assert spec.instance_count == 2
    assert spec.slo_ms == 25.0


def test_dynamic_batching_fields() -> None:
    batching = spec_of(FULL).batching

    assert batching.enabled
    assert batching.max_queue_delay_us == 500
    assert batching.preferred_batch_sizes == (4, 8)
    assert batching.preserve_ordering
    assert batching.priority_levels == 2
    assert batching.default_priority_level == 2
    assert batching.default_queue_policy == QueuePolicy(
        reject_on_timeout=False,
        default_timeout_us=1000,
        allow_timeout_override=False,
        max_queue_size=7,
    )
    assert batching.priority_queue_policy == {
        1: QueuePolicy(reject_on_timeout=True, allow_timeout_override=True, max_queue_size=3)
    }


def test_defaults_without_dynamic_batching() -> None:
    spec = spec_of(
        'name: "m" max_batch_size: 8 '
        'input { name: "x" data_type: TYPE_INT64 dims: 4 } '
        'output { name: "y" data_type: TYPE_FP16 dims: 4 }'
    )

    assert not spec.batching.enabled
    assert spec.instance_count == 1
    assert spec.slo_ms is None


def test_max_batch_size_zero_disables_batching_even_with_dynamic_batching() -> None:
    spec = spec_of(
        'name: "m" max_batch_size: 0 dynamic_batching {} '
        'input { name: "x" data_type: TYPE_FP32 dims: [2, 2] } '
        'output { name: "y" data_type: TYPE_FP32 dims: 1 }'
    )

    assert not spec.batches
    assert not spec.batching.enabled


def test_tensor_spec_row_bytes_and_fixedness() -> None:
    spec = spec_of(FULL)

    assert not spec.inputs[0].fixed
    assert spec.outputs[0].fixed
    assert spec.outputs[0].row_nbytes == 40


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('max_batch_size: 1 input { name: "x" } output { name: "y" }', "no name"),
        ('name: "m" max_batch_size: -1 input { name: "x" } output { name: "y" }', ">= 0"),
        ('name: "m" input { name: "x" }', "at least one input and output"),
        (
            'name: "m" max_batch_size: 4 input { name: "x" } output { name: "y" } '
            "dynamic_batching { preferred_batch_size: 8 }",
            "preferred_batch_size \\[8\\] must lie in 1..max_batch_size \\(4\\)",
        ),
        (
            'name: "m" max_batch_size: 4 input { name: "x" } output { name: "y" } '
            "dynamic_batching { priority_levels: 2 default_priority_level: 3 }",
            "default_priority_level",
        ),
        (
            'name: "m" max_batch_size: 4 input { name: "x" } output { name: "y" } '
            "dynamic_batching { priority_levels: 2 }",
            "default_priority_level",
        ),
    ],
)
def test_invalid_configs_name_the_fault(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        spec_of(text)


@pytest.mark.parametrize(
    ("enum", "name"),
    [(mc.TYPE_FP32, "FP32"), (mc.TYPE_STRING, "BYTES"), (mc.TYPE_BF16, "BF16")],
)
def test_datatype_names_round_trip(enum: int, name: str) -> None:
    assert datatype_name(enum) == name
    assert data_type_enum(name) == enum


def test_read_config_names_model_after_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text(
        'max_batch_size: 2 input { name: "x" data_type: TYPE_FP32 dims: 1 } '
        'output { name: "y" data_type: TYPE_FP32 dims: 1 }'
    )

    assert read_config(path, "from_dir").name == "from_dir"


def test_read_config_keeps_explicit_name(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text(FULL)

    assert read_config(path, "from_dir").name == "resnet"


def test_read_config_reports_syntax_errors_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text("max_batch_size: { nonsense")

    with pytest.raises(InvalidArgument, match="config.pbtxt"):
        read_config(path, "m")


def test_read_config_validates(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('max_batch_size: 2 input { name: "x" }')

    with pytest.raises(InvalidArgument, match="at least one input and output"):
        read_config(path, "m")


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ("", [7]),
        ("version_policy: { latest: { num_versions: 2 } }", [3, 7]),
        ("version_policy: { latest: { num_versions: 9 } }", [1, 3, 7]),
        ("version_policy: { all: {} }", [1, 3, 7]),
        ("version_policy: { specific: { versions: [3, 1] } }", [1, 3]),
    ],
)
def test_version_policy_picks_versions_as_triton_does(policy: str, served: list[int]) -> None:
    config = mc.ModelConfig(name="m")
    text_format.Parse(policy, config)
    assert select_versions(config, [7, 1, 3]) == served


def test_version_policy_that_cannot_be_met_says_why() -> None:
    config = mc.ModelConfig(name="m")
    text_format.Parse("version_policy: { specific: { versions: [2, 5] } }", config)
    with pytest.raises(NotFound, match=r"versions \[5\] that the repository lacks"):
        select_versions(config, [1, 2])
    config = mc.ModelConfig(name="m")
    text_format.Parse("version_policy: { latest: { num_versions: 0 } }", config)
    with pytest.raises(InvalidArgument, match="num_versions >= 1"):
        select_versions(config, [1, 2])


CANARY = 'name: "m" input { name: "x" } output { name: "y" } '


def canary(value: str) -> str:
    return CANARY + f'parameters {{ key: "canary_weights" value {{ string_value: "{value}" }} }}'


def test_canary_weights_parameter() -> None:
    assert spec_of(canary("1:90, 2:10")).canary_weights == {"1": 90, "2": 10}
    assert spec_of(canary("3:0,4:1")).canary_weights == {"3": 0, "4": 1}
    assert spec_of(CANARY).canary_weights == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1=90", "VERSION:WEIGHT"),
        ("1:90,1:10", "each version once"),
        ("a:1", "VERSION:WEIGHT"),
        ("1:-5", "VERSION:WEIGHT"),
        ("1:0,2:0", "every version weight 0"),
    ],
)
def test_invalid_canary_weights_name_the_fault(value: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        spec_of(canary(value))
