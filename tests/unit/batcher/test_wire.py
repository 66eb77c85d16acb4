"""The wire module alone, with no event loop: requests of different row counts and input dtypes,
some with inputs in a client's shared-memory region, become one Batch (inline or in a segment),
and an echoed BatchResult splits back to each request's own rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from services.batcher.batching import PendingRequest
from services.batcher.wire import encode_batch, split_result
from tideserve import shared_memory
from tideserve.errors import FailedPrecondition, TideserveError
from tideserve.modelconfig import ModelSpec
from tideserve.v1 import cluster_pb2
from tideserve.v1 import model_config_pb2 as mc

# Two inputs of different dtypes and widths, echoed as outputs of the same names.
CONFIG = """
name: "mixed"
max_batch_size: 16
input [
  { name: "a" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "b" data_type: TYPE_INT64 dims: [ 2 ] }
]
output [
  { name: "a_out" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "b_out" data_type: TYPE_INT64 dims: [ 2 ] }
]
dynamic_batching { }
"""
SPEC = ModelSpec.from_config(text_format.Parse(CONFIG, mc.ModelConfig()))
ROWS = [1, 4, 2]


class RegionInput:
    """An input left in a client's shared-memory region until the batch is assembled."""

    def __init__(self, data: bytes, readable: bool = True) -> None:
        self.data = data
        self.readable = readable

    def __len__(self) -> int:
        return len(self.data)

    def read(self) -> bytes:
        if not self.readable:
            raise FailedPrecondition("region 'r' was truncated")
        return self.data

    def read_into(self, target: memoryview) -> None:
        if not self.readable:
            raise FailedPrecondition("region 'r' was truncated")
        target[:] = self.data


def arrays(index: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values per request, so a misplaced row shows up."""
    a = (np.arange(rows * 3, dtype="<f4") + 100 * index).reshape(rows, 3)
    b = (np.arange(rows * 2, dtype="<i8") - 1000 * index).reshape(rows, 2)
    return a, b


def pending(index: int, rows: int, *, in_region: bool = False, outputs=()) -> PendingRequest:
    a, b = arrays(index, rows)
    inputs = [a.tobytes(), b.tobytes()]
    if in_region:
        inputs[1] = RegionInput(inputs[1])
    return PendingRequest(
        request_id=f"r{index}",
        rows=rows,
        inputs=inputs,
        shape_key=((3,), (2,)),
        output_names=tuple(outputs),
        arrival=0.0,
    )


def batch_of(*, in_region: bool = False) -> list[PendingRequest]:
    """The middle request's INT64 input lies in a client region when `in_region`."""
    return [pending(i, rows, in_region=in_region and i == 1) for i, rows in enumerate(ROWS)]


def echo(inputs: list[bytes], version: str = "3") -> cluster_pb2.BatchResult:
    """A worker's answer: each input back as the output of the same position."""
    result = cluster_pb2.BatchResult(model_version=version)
    rows = sum(ROWS)
    result.outputs.add(name="a_out", datatype="FP32", shape=[rows, 3], raw=inputs[0])
    result.outputs.add(name="b_out", datatype="INT64", shape=[rows, 2], raw=inputs[1])
    return result


def never_unreadable(request: PendingRequest, error: TideserveError) -> None:
    raise AssertionError(f"{request.request_id} was readable: {error}")


@pytest.mark.parametrize("in_region", [False, True])
def test_inline_batch_round_trip(in_region: bool) -> None:
    batch = batch_of(in_region=in_region)

    payload = encode_batch(SPEC, "", batch, sum(ROWS), "b-1", never_unreadable)

    message = cluster_pb2.Batch.FromString(payload)
    assert (message.batch_id, message.model_name, message.model_version) == ("b-1", "mixed", "")
    assert [(t.name, t.datatype, list(t.shape)) for t in message.inputs] == [
        ("a", "FP32", [7, 3]),
        ("b", "INT64", [7, 2]),
    ]
    sent = [t.raw for t in message.inputs]
    np.testing.assert_array_equal(
        np.frombuffer(sent[0], "<f4").reshape(7, 3),
        np.concatenate([arrays(i, n)[0] for i, n in enumerate(ROWS)]),
    )
    assert list(message.output_names) == [], "no request names outputs: all are wanted"

    responses = list(split_result(SPEC, "", batch, sum(ROWS), echo(sent)))

    assert [r.id for r in responses] == ["r0", "r1", "r2"]
    for index, (rows, response) in enumerate(zip(ROWS, responses, strict=True)):
        assert (response.model_name, response.model_version) == ("mixed", "3")
        assert [(o.name, list(o.shape)) for o in response.outputs] == [
            ("a_out", [rows, 3]),
            ("b_out", [rows, 2]),
        ]
        a, b = arrays(index, rows)
        np.testing.assert_array_equal(
            np.frombuffer(response.raw_output_contents[0], "<f4").reshape(rows, 3), a
        )
        np.testing.assert_array_equal(
            np.frombuffer(response.raw_output_contents[1], "<i8").reshape(rows, 2), b
        )


def test_shared_memory_batch_round_trip(tmp_path: Path) -> None:
    batch = batch_of(in_region=True)
    pool = shared_memory.SegmentPool(tmp_path)
    segment = pool.acquire(sum(len(x) for r in batch for x in r.inputs))
    try:
        payload = encode_batch(SPEC, "2", batch, sum(ROWS), "b-2", never_unreadable, segment)
        message = cluster_pb2.Batch.FromString(payload)
        assert message.model_version == "2"
        assert all(t.HasField("shared") and t.raw == b"" for t in message.inputs)
        reader = shared_memory.SegmentReader(tmp_path)
        sent = [bytes(reader.view(t.shared)) for t in message.inputs]
    finally:
        pool.release(segment)
        pool.close()
    expected = [b"".join(arrays(i, n)[k].tobytes() for i, n in enumerate(ROWS)) for k in range(2)]
    assert sent == expected, "each input is contiguous in the segment, requests in order"

    # A worker that names no version: the response carries the batch's.
    responses = list(split_result(SPEC, "2", batch, sum(ROWS), echo(sent, version="")))
    assert {r.model_version for r in responses} == {"2"}
    np.testing.assert_array_equal(
        np.frombuffer(responses[1].raw_output_contents[1], "<i8").reshape(4, 2), arrays(1, 4)[1]
    )


def test_each_request_gets_only_the_outputs_it_named() -> None:
    batch = [
        pending(0, 1, outputs=("b_out",)),
        pending(1, 2, outputs=("a_out", "b_out")),
    ]
    payload = encode_batch(SPEC, "", batch, 3, "b-3", never_unreadable)
    message = cluster_pb2.Batch.FromString(payload)
    assert list(message.output_names) == ["a_out", "b_out"]

    a = np.concatenate([arrays(0, 1)[0], arrays(1, 2)[0]]).tobytes()
    b = np.concatenate([arrays(0, 1)[1], arrays(1, 2)[1]]).tobytes()
    result = cluster_pb2.BatchResult()
    result.outputs.add(name="a_out", datatype="FP32", shape=[3, 3], raw=a)
    result.outputs.add(name="b_out", datatype="INT64", shape=[3, 2], raw=b)
    first, second = split_result(SPEC, "", batch, 3, result)

    assert [o.name for o in first.outputs] == ["b_out"]
    assert first.raw_output_contents[0] == arrays(0, 1)[1].tobytes()
    assert [o.name for o in second.outputs] == ["a_out", "b_out"]


@pytest.mark.parametrize("through_segment", [False, True])
def test_an_unreadable_input_travels_as_zeros_and_is_reported(
    through_segment: bool, tmp_path: Path
) -> None:
    batch = batch_of(in_region=True)
    batch[1].inputs[1].readable = False  # type: ignore[union-attr]
    reported: list[tuple[str, TideserveError]] = []
    pool = shared_memory.SegmentPool(tmp_path)
    segment = pool.acquire(4096) if through_segment else None
    try:
        payload = encode_batch(
            SPEC, "", batch, 7, "b-4", lambda r, e: reported.append((r.request_id, e)), segment
        )
        message = cluster_pb2.Batch.FromString(payload)
        if segment is None:
            sent = message.inputs[1].raw
        else:
            sent = bytes(shared_memory.SegmentReader(tmp_path).view(message.inputs[1].shared))
    finally:
        if segment is not None:
            pool.release(segment)
        pool.close()

    assert [(name, type(error)) for name, error in reported] == [("r1", FailedPrecondition)]
    values = np.frombuffer(sent, "<i8").reshape(7, 2)
    np.testing.assert_array_equal(values[1:5], 0)
    np.testing.assert_array_equal(values[0:1], arrays(0, 1)[1])
    np.testing.assert_array_equal(values[5:7], arrays(2, 2)[1])


def test_a_model_that_does_not_batch_sends_and_returns_whole_tensors() -> None:
    config = text_format.Parse(CONFIG.replace("max_batch_size: 16", ""), mc.ModelConfig())
    config.ClearField("dynamic_batching")
    spec = ModelSpec.from_config(config)
    request = PendingRequest(
        request_id="whole",
        rows=1,
        inputs=[np.ones(3, "<f4").tobytes(), np.ones(2, "<i8").tobytes()],
        shape_key=((3,), (2,)),
        output_names=(),
        arrival=0.0,
    )
    message = cluster_pb2.Batch.FromString(
        encode_batch(spec, "", [request], 1, "b-5", never_unreadable)
    )
    assert [list(t.shape) for t in message.inputs] == [[3], [2]], "no batch dimension"

    result = cluster_pb2.BatchResult()
    result.outputs.add(name="a_out", datatype="FP32", shape=[3], raw=message.inputs[0].raw)
    (response,) = split_result(spec, "", [request], 1, result)
    assert list(response.outputs[0].shape) == [3]
    assert response.raw_output_contents[0] == message.inputs[0].raw


@pytest.mark.parametrize("rows", [0, 1, 2000])
def test_an_inline_batch_parses_as_the_batch_protobuf_would_build(rows: int) -> None:
    """The inline inputs are written as wire bytes by hand; lengths of one, two and three
    varint bytes (and an empty tensor) must parse to the very message protobuf builds."""
    batch = [pending(0, rows, outputs=("a_out",)), pending(1, 1, outputs=("b_out",))]

    payload = encode_batch(SPEC, "7", batch, rows + 1, "b-6", never_unreadable)

    expected = cluster_pb2.Batch(
        batch_id="b-6", model_name="mixed", model_version="7", output_names=["a_out", "b_out"]
    )
    for index, (name, datatype, width) in enumerate([("a", "FP32", 3), ("b", "INT64", 2)]):
        expected.inputs.add(
            name=name,
            datatype=datatype,
            shape=[rows + 1, width],
            raw=arrays(0, rows)[index].tobytes() + arrays(1, 1)[index].tobytes(),
        )
    assert cluster_pb2.Batch.FromString(payload) == expected
