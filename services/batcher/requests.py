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


def _in_model_order(
    tensors: Sequence[pb.ModelInferRequest.InferInputTensor], spec: ModelSpec
) -> list[int]:
    """Indices into `tensors` of the model's inputs, in the model's order; refuses duplicates,
    unknown and missing inputs."""
    names = [t.name for t in tensors]
    if len(names) == len(spec.inputs) and all(
        name == input_spec.name for name, input_spec in zip(names, spec.inputs, strict=True)
    ):
        # What nearly every client sends: the model's inputs, once each, in its order.
        return list(range(len(names)))
    by_name: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in by_name:
            raise InvalidArgument(f"input {quoted(name)} appears more than once")
        if spec.input_named(name) is None:
            raise InvalidArgument(
                f"model {spec.name!r} has no input {quoted(name)}; "
                f"inputs are {[t.name for t in spec.inputs]}"
            )
        by_name[name] = index
    order = []
    for input_spec in spec.inputs:
        index = by_name.get(input_spec.name)
        if index is None:
            raise InvalidArgument(f"missing input {input_spec.name!r} for model {spec.name!r}")
        order.append(index)
    return order


def parse_request(
    request: pb.ModelInferRequest,
    spec: ModelSpec,
    now: float,
    deadline: float | None,
    raw_inputs: Sequence[RawInput] | None = None,
) -> PendingRequest:
    """Validate against the model's spec and return the request with raw inputs in model order.
    `raw_inputs` stands in for `raw_input_contents` (inputs read from shared-memory regions).

    Runs on the batcher's event loop for every request, so it reads each protobuf field once
    (every read crosses into the protobuf runtime) and takes the common case first."""
    raw_contents = request.raw_input_contents if raw_inputs is None else raw_inputs
    tensors = request.inputs
    if raw_contents and len(raw_contents) != len(tensors):
        raise InvalidArgument(
            f"request has {len(tensors)} inputs but {len(raw_contents)} raw_input_contents"
        )
    batches = spec.batches
    rows = 1
    inputs: list[RawInput] = []
    shape_key: list[tuple[int, ...]] = []
    for input_spec, index in zip(spec.inputs, _in_model_order(tensors, spec), strict=True):
        tensor = tensors[index]
        datatype = tensor.datatype
        if datatype != input_spec.datatype:
            raise InvalidArgument(
                f"input {quoted(tensor.name)} has datatype "
                f"{datatype[:QUOTE_CHARS] or '(none)'}, "
                f"model {spec.name!r} expects {input_spec.datatype}"
            )
        shape = list(tensor.shape)
        if batches:
            if not shape:
                raise InvalidArgument(f"input {quoted(tensor.name)} needs a batch dimension first")
            tensor_rows, dims = shape[0], tuple(shape[1:])
            if not 1 <= tensor_rows <= spec.max_batch_size:
                raise InvalidArgument(
                    f"input {quoted(tensor.name)} has batch size {tensor_rows}; "
                    f"model {spec.name!r} takes 1..{spec.max_batch_size}"
                )
            if inputs and tensor_rows != rows:
                raise InvalidArgument("all inputs of a request must have the same batch size")
            rows = tensor_rows
        else:
            dims = tuple(shape)
        if dims != input_spec.dims:
            _check_dims(spec, input_spec.dims, shape, tensor.name)
        if raw_contents:
            raw = raw_contents[index]
            expected = codec.expected_nbytes(datatype, shape)
            if len(raw) != expected:
                raise InvalidArgument(
                    f"input {quoted(tensor.name)}: raw content has {len(raw)} bytes but "
                    f"{datatype} {shape} needs {expected}"
                )
        elif tensor.HasField("contents"):
            raw = codec.contents_to_raw(datatype, shape, tensor.contents, tensor.name)
        else:
            raise InvalidArgument(
                f"input {quoted(tensor.name)} has no data (raw or typed contents)"
            )
        inputs.append(raw)
        shape_key.append(dims)

    output_names = tuple(o.name for o in request.outputs)
    if output_names:
        known = {o.name for o in spec.outputs}
        for name in output_names:
            if name not in known:
                raise InvalidArgument(
                    f"model {spec.name!r} has no output {quoted(name)}; outputs are {sorted(known)}"
                )

    parameters = request.parameters
    priority = (parameter_int(parameters, PRIORITY) or 0) if parameters else 0
    batching = spec.batching
    if batching.priority_levels and priority > batching.priority_levels:
        raise InvalidArgument(
            f"priority {priority} is outside 1..{batching.priority_levels} for model {spec.name!r}"
        )
    level_policy = batching.priority_queue_policy.get(
        priority or batching.default_priority_level, batching.default_queue_policy
    )
    timeout_us = level_policy.default_timeout_us
    requested = parameter_int(parameters, TIMEOUT_US) if parameters else None
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
