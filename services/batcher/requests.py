"""Turning a client's ModelInferRequest into a PendingRequest, refusing anything malformed with
an INVALID_ARGUMENT that names the problem, before it can reach a queue or a worker."""

from __future__ import annotations

from collections.abc import Sequence

from services.batcher.batching import PendingRequest, RawInput
from tideserve import codec
from tideserve.errors import InvalidArgument
from tideserve.modelconfig import ModelSpec
from tideserve.v1 import inference_pb2 as pb

# Request parameters the batcher understands; others are accepted and ignored, as Triton does.
PRIORITY = "priority"
TIMEOUT_US = "timeout"
# Model names longer than this are refused before any lookup: a name is echoed in errors and
# logs, and Triton's own limits are far below it.
MAX_MODEL_NAME_BYTES = 256
# Characters of a client's string that an error message quotes: a message repeats what the
# client sent, and a stream of 64 KiB names must not come back as 64 KiB errors.
QUOTE_CHARS = 64


def quoted(text: str) -> str:
    """`text` as repr() writes it, cut to QUOTE_CHARS with the full length said."""
    if len(text) <= QUOTE_CHARS:
        return repr(text)
    return f"{text[:QUOTE_CHARS]!r}... ({len(text)} characters)"


def check_model_name(name: str) -> None:
    """INVALID_ARGUMENT for a name no model can have, before it reaches a lookup or a log."""
    size = len(name.encode())
    if size > MAX_MODEL_NAME_BYTES:
        raise InvalidArgument(
            f"model name {quoted(name)} has {size} bytes; names are at most {MAX_MODEL_NAME_BYTES}"
        )


def parameter_int(parameters: object, name: str) -> int | None:
    value = parameters.get(name)  # type: ignore[attr-defined]
    if value is None:
        return None
    kind = value.WhichOneof("parameter_choice")
    if kind in ("int64_param", "uint64_param"):
        number = getattr(value, kind)
    elif kind == "double_param" and value.double_param.is_integer():
        number = int(value.double_param)
    else:
        raise InvalidArgument(f"parameter {quoted(name)} must be an integer, got {kind}")
    if number < 0:
        raise InvalidArgument(f"parameter {quoted(name)} must be >= 0, got {number}")
    return number


def _check_dims(spec: ModelSpec, spec_dims: tuple[int, ...], shape: list[int], name: str) -> None:
    dims = shape[1:] if spec.batches else shape
    mismatch = len(dims) != len(spec_dims) or any(
        s >= 0 and s != d for s, d in zip(spec_dims, dims, strict=True)
    )
    if mismatch:
        expected = [-1, *spec_dims] if spec.batches else list(spec_dims)
        raise InvalidArgument(
            f"input {quoted(name)} has shape {shape}; model {spec.name!r} expects {expected} "
            "(-1 = any size" + (", batch dimension first)" if spec.batches else ")")
        )


def parse_request(
    request: pb.ModelInferRequest,
    spec: ModelSpec,
    now: float,
    deadline: float | None,
    raw_inputs: Sequence[RawInput] | None = None,
) -> PendingRequest:
    """Validate against the model's spec and return the request with raw inputs in model order.
    `raw_inputs` stands in for `raw_input_contents` (inputs read from shared-memory regions)."""
    raw_contents = request.raw_input_contents if raw_inputs is None else raw_inputs
    if raw_contents and len(raw_contents) != len(request.inputs):
        raise InvalidArgument(
            f"request has {len(request.inputs)} inputs but {len(raw_contents)} raw_input_contents"
        )
    by_name: dict[str, int] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in by_name:
            raise InvalidArgument(f"input {quoted(tensor.name)} appears more than once")
        if spec.input_named(tensor.name) is None:
            raise InvalidArgument(
                f"model {spec.name!r} has no input {quoted(tensor.name)}; "
                f"inputs are {[t.name for t in spec.inputs]}"
            )
        by_name[tensor.name] = index

    rows = 1
    inputs: list[RawInput] = []
    shape_key: list[tuple[int, ...]] = []
    for input_spec in spec.inputs:
        index = by_name.get(input_spec.name)
        if index is None:
            raise InvalidArgument(f"missing input {input_spec.name!r} for model {spec.name!r}")
        tensor = request.inputs[index]
        if tensor.datatype != input_spec.datatype:
            raise InvalidArgument(
                f"input {quoted(tensor.name)} has datatype "
                f"{tensor.datatype[:QUOTE_CHARS] or '(none)'}, "
                f"model {spec.name!r} expects {input_spec.datatype}"
            )
        shape = list(tensor.shape)
        if spec.batches:
            if not shape:
                raise InvalidArgument(f"input {quoted(tensor.name)} needs a batch dimension first")
            tensor_rows, dims = shape[0], shape[1:]
            if not 1 <= tensor_rows <= spec.max_batch_size:
                raise InvalidArgument(
                    f"input {quoted(tensor.name)} has batch size {tensor_rows}; "
                    f"model {spec.name!r} takes 1..{spec.max_batch_size}"
                )
            if inputs and tensor_rows != rows:
                raise InvalidArgument("all inputs of a request must have the same batch size")
            rows = tensor_rows
        else:
            dims = shape
        _check_dims(spec, input_spec.dims, shape, tensor.name)
        if raw_contents:
            raw = raw_contents[index]
            expected = codec.expected_nbytes(tensor.datatype, shape)
            if len(raw) != expected:
                raise InvalidArgument(
                    f"input {quoted(tensor.name)}: raw content has {len(raw)} bytes but "
                    f"{tensor.datatype} {shape} needs {expected}"
                )
        elif tensor.HasField("contents"):
            raw = codec.contents_to_raw(tensor.datatype, shape, tensor.contents, tensor.name)
        else:
            raise InvalidArgument(
                f"input {quoted(tensor.name)} has no data (raw or typed contents)"
            )
        inputs.append(raw)
        shape_key.append(tuple(dims))

    output_names = tuple(o.name for o in request.outputs)
    known = {o.name for o in spec.outputs}
    for name in output_names:
        if name not in known:
            raise InvalidArgument(
                f"model {spec.name!r} has no output {quoted(name)}; outputs are {sorted(known)}"
            )

    priority = parameter_int(request.parameters, PRIORITY) or 0
    batching = spec.batching
    if batching.priority_levels and priority > batching.priority_levels:
        raise InvalidArgument(
            f"priority {priority} is outside 1..{batching.priority_levels} for model {spec.name!r}"
        )
    level_policy = batching.priority_queue_policy.get(
        priority or batching.default_priority_level, batching.default_queue_policy
    )
    timeout_us = level_policy.default_timeout_us
    requested = parameter_int(request.parameters, TIMEOUT_US)
    if requested and level_policy.allow_timeout_override:
        timeout_us = requested
    return PendingRequest(
        request_id=request.id,
        rows=rows,
        inputs=inputs,
        shape_key=tuple(shape_key),
        output_names=output_names,
        arrival=now,
        priority=priority,
        expires=now + timeout_us / 1e6 if timeout_us else None,
        deadline=deadline,
    )
