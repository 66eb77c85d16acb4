"""The batch on the wire, without asyncio or gRPC: a model's pending requests become one
serialized `Batch` for the workers (`encode_batch`), and the `BatchResult` that comes back
becomes one `ModelInferResponse` per request (`split_result`).

Both are the batcher's per-batch work, so each copies every byte once: a request's inputs go
straight from where they lie (its message, or a client's shared-memory region) into the batch,
and a response's outputs are slices of the result's. A large batch is encoded into its segment
on a copier thread (core.SharedInputs.fill), so `encode_batch` touches nothing of the event
loop's: a request it cannot read goes to `unreadable`, which the caller makes safe.

An inline batch is written as protobuf wire bytes by hand around its inputs' raw bytes: set on a
message and serialized, each byte would be copied twice more (into the message, then out of
it), 6 MB of the event loop's memory traffic for one 64-row cnn request. The result parses as
the `Batch` that protobuf would have built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from services.batcher.batching import PendingRequest
from tideserve import shared_memory
from tideserve.errors import TideserveError
from tideserve.modelconfig import ModelSpec
from tideserve.v1 import cluster_pb2, inference_pb2

# Told of a request whose input can no longer be read, so that it fails alone.
Unreadable = Callable[[PendingRequest, TideserveError], None]


def encode_batch(
    spec: ModelSpec,
    version: str,
    batch: Sequence[PendingRequest],
    rows: int,
    batch_id: str,
    unreadable: Unreadable,
    segment: shared_memory.Segment | None = None,
) -> bytes:
    """The serialized Batch of `rows` rows for `version` of the model (empty: the latest): each
    input concatenated over the requests in order, inline or, with a `segment`, written into it
    and referenced (one copy either way). The requests share their per-row dims (the queue
    batches only equal shapes), so the first one's give every input's shape.

    A deferred input that can no longer be read (its client cut its region short) is passed to
    `unreadable` and travels as zeros: the rest of the batch is still served. Output names are
    sent only when every request names some; one that wants all outputs gets all of them."""
    message = cluster_pb2.Batch(batch_id=batch_id, model_name=spec.name, model_version=version)
    if all(r.output_names for r in batch):
        message.output_names.extend(sorted({n for r in batch for n in r.output_names}))
    first = batch[0]
    position = 0
    inline: list[bytes] = []
    for index, tensor in enumerate(spec.inputs):
        dims = list(first.shape_key[index])
        added = cluster_pb2.TensorData(
            name=tensor.name,
            datatype=tensor.datatype,
            shape=[rows, *dims] if spec.batches else dims,
        )
        if segment is None:
            inline.extend(_inline_tensor(added, [_read(r, index, unreadable) for r in batch]))
            continue
        start = position
        with memoryview(segment.buffer) as target:
            for request in batch:
                size = len(request.inputs[index])
                _read_into(request, index, target[position : position + size], unreadable)
                position += size
        added.shared.CopyFrom(segment.ref(start, position - start))
        message.inputs.append(added)
    # Fields may come in any order on the wire: the inline inputs follow the rest.
    return b"".join([message.SerializeToString(), *inline])


def _inline_tensor(tensor: cluster_pb2.TensorData, raws: list[bytes]) -> list[bytes]:
    """The wire pieces of one `Batch.inputs` entry: `tensor` with `raws`, concatenated, as its
    raw field; the bytes themselves are not copied until the batch is joined."""
    size = sum(len(raw) for raw in raws)
    head = tensor.SerializeToString() + _RAW_KEY + _varint(size)
    return [_INPUTS_KEY, _varint(len(head) + size), head, *raws]


def _varint(value: int) -> bytes:
    """`value` as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Keys of the length-delimited fields (wire type 2) written by hand above.
_INPUTS_KEY = _varint(cluster_pb2.Batch.INPUTS_FIELD_NUMBER << 3 | 2)
_RAW_KEY = _varint(cluster_pb2.TensorData.RAW_FIELD_NUMBER << 3 | 2)


def split_result(
    spec: ModelSpec,
    version: str,
    batch: Sequence[PendingRequest],
    rows: int,
    result: cluster_pb2.BatchResult,
) -> Iterator[inference_pb2.ModelInferResponse]:
    """Each request's response, in the batch's order: its own rows of every output it asked for
    (all of them when it named none). A model that does not batch returns each output whole.
    The version is the one the worker computed, else `version`."""
    model_version = result.model_version or version
    outputs = [(o.name, o.datatype, list(o.shape), o.raw) for o in result.outputs]
    offset = 0
    for request in batch:
        response = inference_pb2.ModelInferResponse(
            model_name=spec.name, model_version=model_version, id=request.request_id
        )
        for name, datatype, shape, raw in outputs:
            if request.output_names and name not in request.output_names:
                continue
            if spec.batches:
                per_row = len(raw) // rows
                piece = raw[offset * per_row : (offset + request.rows) * per_row]
                response.outputs.add(name=name, datatype=datatype, shape=[request.rows, *shape[1:]])
            else:
                piece = raw
                response.outputs.add(name=name, datatype=datatype, shape=shape)
            response.raw_output_contents.append(piece)
        offset += request.rows
        yield response


def _read(request: PendingRequest, index: int, unreadable: Unreadable) -> bytes:
    """Input `index` of `request` as bytes; zeros of its length when it can no longer be read."""
    data = request.inputs[index]
    if isinstance(data, bytes):
        return data
    try:
        return data.read()
    except TideserveError as error:
        unreadable(request, error)
        return bytes(len(data))


def _read_into(
    request: PendingRequest, index: int, target: memoryview, unreadable: Unreadable
) -> None:
    """Input `index` of `request` into `target`; as `_read` when it can no longer be read."""
    data = request.inputs[index]
    if isinstance(data, bytes):
        target[:] = data
        return
    try:
        data.read_into(target)
    except TideserveError as error:
        unreadable(request, error)
        target[:] = bytes(len(target))
