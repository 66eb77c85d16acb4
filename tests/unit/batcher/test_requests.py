"""parse_request: every malformed ModelInferRequest is refused with INVALID_ARGUMENT naming the
problem; a good one becomes a PendingRequest with raw inputs in the model's order."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from services.batcher.requests import parse_request
from tideserve.errors import InvalidArgument
from tideserve.modelconfig import ModelSpec
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import model_config_pb2 as mc

NOW = 50.0

CONFIG = """
name: "m"
max_batch_size: 8
input [
  { name: "a" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "b" data_type: TYPE_INT64 dims: [ -1 ] }
]
output [
  { name: "y" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "z" data_type: TYPE_FP32 dims: [ 1 ] }
]
dynamic_batching {
  priority_levels: 3
  default_priority_level: 2
  default_queue_policy { default_timeout_microseconds: 2000 allow_timeout_override: true }
  priority_queue_policy { key: 1 value { default_timeout_microseconds: 500 } }
}
"""


def make_spec(text: str = CONFIG) -> ModelSpec:
    return ModelSpec.from_config(text_format.Parse(text, mc.ModelConfig()))


SPEC = make_spec()


def a_tensor(rows: int) -> np.ndarray:
    return np.arange(rows * 3, dtype="<f4").reshape(rows, 3)


def b_tensor(rows: int, width: int = 2) -> np.ndarray:
    return np.arange(rows * width, dtype="<i8").reshape(rows, width)


def make_request(rows: int = 2, *, reverse: bool = False) -> pb.ModelInferRequest:
    """Inputs a and b, as raw contents; `reverse` sends them in the opposite order."""
    request = pb.ModelInferRequest(model_name="m", id="req-1")
    tensors = [("a", "FP32", a_tensor(rows)), ("b", "INT64", b_tensor(rows))]
    if reverse:
        tensors.reverse()
    for name, datatype, array in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    return request


def parse(request: pb.ModelInferRequest, spec: ModelSpec = SPEC):
    return parse_request(request, spec, NOW, deadline=NOW + 1.0)


def test_good_request_becomes_pending_request() -> None:
    pending = parse(make_request(rows=2))

    assert pending.request_id == "req-1"
    assert pending.rows == 2
    assert pending.inputs == [a_tensor(2).tobytes(), b_tensor(2).tobytes()]
    assert pending.shape_key == ((3,), (2,))
    assert pending.output_names == ()
    assert pending.arrival == NOW
    assert pending.deadline == NOW + 1.0
    assert pending.priority == 0
    assert pending.expires == pytest.approx(NOW + 0.002)


def test_inputs_are_put_in_model_order() -> None:
    pending = parse(make_request(reverse=True))

    assert pending.inputs == [a_tensor(2).tobytes(), b_tensor(2).tobytes()]


def test_typed_contents_are_accepted() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="FP32", shape=[1, 3]).contents.fp32_contents.extend(
        [1, 2, 3]
    )
    request.inputs.add(name="b", datatype="INT64", shape=[1, 1]).contents.int64_contents.append(7)

    pending = parse(request)

    assert pending.inputs == [
        np.array([1, 2, 3], "<f4").tobytes(),
        np.array([7], "<i8").tobytes(),
    ]


def test_typed_contents_in_the_wrong_field_name_the_input_and_the_expected_field() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="FP32", shape=[1, 3]).contents.int_contents.extend(
        [1, 2, 3]
    )
    request.inputs.add(name="b", datatype="INT64", shape=[1, 1]).contents.int64_contents.append(7)

    with pytest.raises(InvalidArgument) as refused:
        parse(request)

    assert (
        str(refused.value)
        == "input 'a' is FP32: put its values in fp32_contents (got int_contents)"
    )


def test_requested_outputs_are_kept() -> None:
    request = make_request()
    request.outputs.add(name="z")

    assert parse(request).output_names == ("z",)


def test_non_batching_model_takes_whole_shape() -> None:
    spec = make_spec(
        'name: "nb" max_batch_size: 0 input { name: "x" data_type: TYPE_FP32 dims: [2, 2] } '
        'output { name: "y" data_type: TYPE_FP32 dims: 1 }'
    )
    request = pb.ModelInferRequest(model_name="nb")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 2])
    request.raw_input_contents.append(b"\x00" * 16)

    pending = parse(request, spec)

    assert pending.rows == 1
    assert pending.shape_key == ((2, 2),)
    assert pending.expires is None


def mutate_unknown_input(r: pb.ModelInferRequest) -> None:
    r.inputs[1].name = "c"


def mutate_duplicate(r: pb.ModelInferRequest) -> None:
    r.inputs[1].name = "a"


def mutate_missing(r: pb.ModelInferRequest) -> None:
    del r.inputs[1]
    del r.raw_input_contents[1]


def mutate_dtype(r: pb.ModelInferRequest) -> None:
    r.inputs[0].datatype = "FP64"


def mutate_shape(r: pb.ModelInferRequest) -> None:
    r.inputs[0].shape[:] = [2, 4]


def mutate_rank(r: pb.ModelInferRequest) -> None:
    r.inputs[0].shape[:] = [2, 3, 1]


def mutate_no_batch_dim(r: pb.ModelInferRequest) -> None:
    r.inputs[0].shape[:] = []


def mutate_batch_too_big(r: pb.ModelInferRequest) -> None:
    r.inputs[0].shape[0] = 9


def mutate_batch_zero(r: pb.ModelInferRequest) -> None:
    r.inputs[0].shape[0] = 0


def mutate_batch_mismatch(r: pb.ModelInferRequest) -> None:
    r.inputs[1].shape[0] = 1
    r.raw_input_contents[1] = b_tensor(1).tobytes()


def mutate_raw_size(r: pb.ModelInferRequest) -> None:
    r.raw_input_contents[0] = r.raw_input_contents[0][:-1]


def mutate_raw_count(r: pb.ModelInferRequest) -> None:
    del r.raw_input_contents[1]


def mutate_no_data(r: pb.ModelInferRequest) -> None:
    del r.raw_input_contents[:]


def mutate_unknown_output(r: pb.ModelInferRequest) -> None:
    r.outputs.add(name="nope")


def mutate_negative_dim(r: pb.ModelInferRequest) -> None:
    r.inputs[1].shape[:] = [2, -2]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (mutate_unknown_input, "has no input 'c'"),
        (mutate_duplicate, "'a' appears more than once"),
        (mutate_missing, "missing input 'b'"),
        (mutate_dtype, "'a' has datatype FP64, model 'm' expects FP32"),
        (mutate_shape, "input 'a' .*has shape \\[(2, )?4\\].*expect"),
        (mutate_rank, "input 'a' .*has shape \\[(2, )?3, 1\\].*expect"),
        (mutate_no_batch_dim, "needs a batch dimension"),
        (mutate_batch_too_big, "batch size 9; model 'm' takes 1..8"),
        (mutate_batch_zero, "batch size 0"),
        (mutate_batch_mismatch, "same batch size"),
        (mutate_raw_size, "'a': raw content has 23 bytes but FP32 \\[2, 3\\] needs 24"),
        (mutate_raw_count, "2 inputs but 1 raw_input_contents"),
        (mutate_no_data, "has no data"),
        (mutate_unknown_output, "has no output 'nope'"),
        (mutate_negative_dim, "negative"),
    ],
)
def test_malformed_requests_are_refused_naming_the_problem(mutate, message: str) -> None:
    request = make_request()
    mutate(request)

    with pytest.raises(InvalidArgument, match=message):
        parse(request)


def set_param(request: pb.ModelInferRequest, name: str, **value: object) -> None:
    request.parameters[name].CopyFrom(pb.InferParameter(**value))


@pytest.mark.parametrize("kind", ["int64_param", "uint64_param"])
def test_priority_parameter_as_tritonclient_sends_it(kind: str) -> None:
    request = make_request()
    set_param(request, "priority", **{kind: 1})

    pending = parse(request)

    assert pending.priority == 1
    assert pending.expires == pytest.approx(NOW + 0.0005), "level 1's own queue policy"


def test_integral_double_priority_is_accepted() -> None:
    request = make_request()
    set_param(request, "priority", double_param=3.0)

    assert parse(request).priority == 3


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"uint64_param": 4}, "priority 4 is outside 1..3"),
        ({"int64_param": -1}, "must be >= 0"),
        ({"string_param": "high"}, "must be an integer, got string_param"),
        ({"double_param": 1.5}, "must be an integer"),
    ],
)
def test_bad_priority_is_refused(value: dict[str, object], message: str) -> None:
    request = make_request()
    set_param(request, "priority", **value)

    with pytest.raises(InvalidArgument, match=message):
        parse(request)


def test_timeout_parameter_overrides_the_default_when_allowed() -> None:
    request = make_request()
    set_param(request, "timeout", uint64_param=10_000)

    assert parse(request).expires == pytest.approx(NOW + 0.010)


def test_timeout_override_ignored_when_not_allowed() -> None:
    request = make_request()
    set_param(request, "priority", uint64_param=1)
    set_param(request, "timeout", uint64_param=10_000)

    assert parse(request).expires == pytest.approx(NOW + 0.0005)


def test_unknown_parameters_are_ignored() -> None:
    request = make_request()
    set_param(request, "sequence_id", string_param="x")

    assert parse(request).rows == 2
