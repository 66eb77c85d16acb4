"""Model specs shared by the property-based tests and the atheris fuzzer of the request decoding
path: one batching model with a fixed and a variable dim, one that takes BYTES, one without a
batch dimension."""

from __future__ import annotations

from google.protobuf import text_format

from services.batcher.batching import PendingRequest
from tideserve import codec
from tideserve.modelconfig import ModelSpec
from tideserve.v1 import model_config_pb2 as mc

CONFIGS = (
    """
    name: "mixed" max_batch_size: 8
    input [ { name: "a" data_type: TYPE_FP32 dims: [ 3 ] },
            { name: "b" data_type: TYPE_INT64 dims: [ -1 ] } ]
    output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
    dynamic_batching { priority_levels: 2 default_priority_level: 1
                       default_queue_policy { allow_timeout_override: true } }
    """,
    """
    name: "text" max_batch_size: 4
    input [ { name: "s" data_type: TYPE_STRING dims: [ 1 ] } ]
    output [ { name: "n" data_type: TYPE_INT32 dims: [ 1 ] } ]
    """,
    """
    name: "flat" max_batch_size: 0
    input [ { name: "x" data_type: TYPE_UINT8 dims: [ 2, -1 ] } ]
    output [ { name: "y" data_type: TYPE_FP16 dims: [ 2 ] } ]
    """,
)

SPECS = tuple(ModelSpec.from_config(text_format.Parse(c, mc.ModelConfig())) for c in CONFIGS)


def check_accepted(request: PendingRequest, spec: ModelSpec) -> None:
    """What an accepted request must satisfy: one buffer per model input, of the exact size its
    datatype and shape need, and a batch size the model takes."""
    assert len(request.inputs) == len(spec.inputs)
    if spec.batches:
        assert 1 <= request.rows <= spec.max_batch_size
    for tensor, raw, dims in zip(spec.inputs, request.inputs, request.shape_key, strict=True):
        if tensor.datatype == "BYTES":
            codec.decode_bytes(raw, [request.rows, *dims] if spec.batches else dims)
        else:
            shape = [request.rows, *dims] if spec.batches else list(dims)
            assert len(raw) == codec.expected_nbytes(tensor.datatype, shape)
