"""Property-based tests (hypothesis) of the request decoding path: whatever a client sends,
`parse_request` and the codec either accept it (and what they accept is consistent) or raise
InvalidArgument naming the problem; no other exception escapes. Run with
`--hypothesis-show-statistics` to see how many cases each property tried."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cluster import ROOT
from services.batcher.requests import parse_request
from tests.accounting import Examples, record
from tests.bad_input import SPECS, check_accepted
from tideserve import codec
from tideserve.errors import InvalidArgument
from tideserve.v1 import inference_pb2 as pb

EXAMPLES = 3000
INT64 = st.integers(-(2**63), 2**63 - 1)
# Mostly plausible dims, some negative, some huge (products overflow int64 and MAX_ELEMENTS).
DIMS = st.one_of(st.integers(-2, 9), st.integers(2**20, 2**40), INT64)
SHAPES = st.lists(DIMS, max_size=5)
DATATYPES = st.sampled_from([*codec.DATATYPES, "", "FP8", "fp32", "STRING", "BYTES "])
NAMES = st.sampled_from(["a", "b", "s", "x", "", "zz", "a "])
PARAMETER_NAMES = st.sampled_from(["priority", "timeout", "sequence_id", "binary_data", "?"])

PARSED = Examples("ModelInferRequest fields, perturbed (hypothesis: parse_request)")
DECODED = Examples("raw tensor bytes, any datatype and shape (hypothesis: codec.decode)")
CONVERTED = Examples("typed tensor contents (hypothesis: codec.contents_to_raw)")
BYTES = Examples("BYTES tensors, whole and truncated (hypothesis: codec.decode_bytes)")


@st.composite
def parameters(draw: st.DrawFn) -> pb.InferParameter:
    kind = draw(st.sampled_from(["bool", "int64", "string", "double", "uint64", "unset"]))
    value = pb.InferParameter()
    if kind == "bool":
        value.bool_param = draw(st.booleans())
    elif kind == "int64":
        value.int64_param = draw(INT64)
    elif kind == "string":
        value.string_param = draw(st.text(max_size=5))
    elif kind == "double":
        value.double_param = draw(st.floats(allow_nan=True, allow_infinity=True))
    elif kind == "uint64":
        value.uint64_param = draw(st.integers(0, 2**64 - 1))
    return value


@st.composite
def typed_contents(draw: st.DrawFn) -> pb.InferTensorContents:
    contents = pb.InferTensorContents()
    field = draw(st.sampled_from(sorted(set(codec.CONTENTS_FIELDS.values()))))
    if field == "bool_contents":
        contents.bool_contents.extend(draw(st.lists(st.booleans(), max_size=12)))
    elif field == "int_contents":
        contents.int_contents.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=12)))
    elif field == "int64_contents":
        contents.int64_contents.extend(draw(st.lists(INT64, max_size=12)))
    elif field == "uint_contents":
        contents.uint_contents.extend(draw(st.lists(st.integers(0, 2**32 - 1), max_size=12)))
    elif field == "uint64_contents":
        contents.uint64_contents.extend(draw(st.lists(st.integers(0, 2**64 - 1), max_size=12)))
    elif field in ("fp32_contents", "fp64_contents"):
        getattr(contents, field).extend(draw(st.lists(st.floats(width=32), max_size=12)))
    else:
        contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=6), max_size=12)))
    return contents


def exact_nbytes(datatype: str, shape: list[int]) -> int | None:
    """The raw length a tensor of this shape needs, when that is a small, knowable number."""
    if datatype not in codec.ELEMENT_SIZES or any(d < 0 or d > 64 for d in shape):
        return None
    count = 1
    for dim in shape:
        count *= dim
    return codec.ELEMENT_SIZES[datatype] * count if count <= 4096 else None


@st.composite
def exact_contents(draw: st.DrawFn, datatype: str, shape: list[int]) -> pb.InferTensorContents:
    """Typed contents of the field and count this datatype and shape need, where knowable."""
    contents = pb.InferTensorContents()
    field = codec.CONTENTS_FIELDS.get(datatype)
    count = exact_nbytes("UINT8", shape)  # the element count, when small and knowable
    if field is None or count is None or count > 256:
        return contents
    values = {
        "bool_contents": [True] * count,
        "bytes_contents": [b"ab"] * count,
        "fp32_contents": [0.5] * count,
        "fp64_contents": [0.5] * count,
    }.get(field, [draw(st.integers(0, 100))] * count)
    getattr(contents, field).extend(values)
    return contents


@st.composite
def requests(draw: st.DrawFn) -> tuple[int, pb.ModelInferRequest]:
    """Requests near the valid ones (so validation is reached deeply, and about half are valid),
    perturbed every way; with the index of the spec they were built for."""
    spec_index = draw(st.integers(0, len(SPECS) - 1))
    spec = SPECS[spec_index]
    request = pb.ModelInferRequest(model_name=spec.name, id=draw(st.text(max_size=4)))
    use_raw = draw(st.booleans())
    most_rows = st.integers(1, max(spec.max_batch_size, 1))
    rows = draw(most_rows | st.integers(-1, spec.max_batch_size + 1))
    for tensor in spec.inputs:
        if draw(st.integers(0, 19)) == 0:
            continue  # a missing input
        name = tensor.name if draw(st.integers(0, 9)) else draw(NAMES)
        datatype = tensor.datatype if draw(st.integers(0, 9)) else draw(DATATYPES)
        dims = [d if d >= 0 else draw(st.integers(0, 4)) for d in tensor.dims]
        shape = [rows, *dims] if spec.batches else dims
        if not draw(st.integers(0, 9)):
            shape = draw(SHAPES)
        copies = 2 if not draw(st.integers(0, 19)) else 1  # duplicated inputs
        for _ in range(copies):
            added = request.inputs.add(name=name, datatype=datatype, shape=shape)
            if use_raw:
                size = codec.ELEMENT_SIZES.get(datatype, 1)
                exact = exact_nbytes(datatype, shape)
                lengths = [0, size, draw(st.integers(0, 64))]
                if exact is not None:
                    lengths += [exact] * 6 + [exact + 1, max(exact - 1, 0)]
                length = draw(st.sampled_from(lengths))
                request.raw_input_contents.append(draw(st.binary(min_size=length,
                                                                 max_size=length)))
            elif draw(st.integers(0, 5)):
                added.contents.CopyFrom(draw(exact_contents(datatype, shape) | typed_contents()))
    if use_raw and not draw(st.integers(0, 19)):
        request.raw_input_contents.append(b"extra")
    outputs = st.sampled_from([o.name for o in spec.outputs])
    for name in draw(st.lists(outputs | outputs | NAMES, max_size=2)):
        request.outputs.add(name=name)
    if not draw(st.integers(0, 2)):
        for name in draw(st.lists(PARAMETER_NAMES, max_size=2)):
            request.parameters[name].CopyFrom(draw(parameters()))
    return spec_index, request


@PARSED.property
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(built=requests(), other_spec=st.integers(0, 4 * len(SPECS) - 1))
def test_parse_request_accepts_consistently_or_refuses_clearly(
    built: tuple[int, pb.ModelInferRequest], other_spec: int
) -> None:
    spec_index, request = built
    # Mostly the model the request was built for; now and then another one.
    spec = SPECS[other_spec] if other_spec < len(SPECS) else SPECS[spec_index]
    accepted = PARSED.accepted_or_refused(lambda: parse_request(request, spec, 0.0, None))
    if accepted is not None:
        check_accepted(accepted, spec)


@DECODED.property
@settings(max_examples=EXAMPLES, deadline=None)
@given(datatype=DATATYPES, shape=SHAPES, raw=st.binary(max_size=64))
def test_decode_returns_the_shape_or_refuses(datatype: str, shape: list[int], raw: bytes) -> None:
    array = DECODED.accepted_or_refused(lambda: codec.decode(datatype, shape, raw))
    if array is not None:
        assert list(array.shape) == shape


@CONVERTED.property
@settings(max_examples=EXAMPLES, deadline=None)
@given(datatype=DATATYPES, shape=SHAPES, contents=typed_contents())
def test_typed_contents_become_raw_bytes_or_are_refused(
    datatype: str, shape: list[int], contents: pb.InferTensorContents
) -> None:
    raw = CONVERTED.accepted_or_refused(lambda: codec.contents_to_raw(datatype, shape, contents))
    if raw is not None:
        assert list(codec.decode(datatype, shape, raw).shape) == shape


@BYTES.property
@settings(max_examples=EXAMPLES, deadline=None)
@given(items=st.lists(st.binary(max_size=20), max_size=10))
def test_bytes_tensors_round_trip_and_truncations_are_refused(items: list[bytes]) -> None:
    import numpy as np

    array = np.empty(len(items), dtype=object)
    array[:] = items
    raw = codec.encode_bytes(array)
    cuts = range(1, min(len(raw), 8) + 1)
    BYTES.example(1 + len(cuts))
    assert list(codec.decode_bytes(raw, [len(items)])) == items
    BYTES.answered("OK")
    for cut in cuts:
        with pytest.raises(InvalidArgument):
            codec.decode_bytes(raw[:-cut], [len(items)])
        BYTES.answered("INVALID_ARGUMENT")


def test_atheris_fuzzer_runs_a_bounded_number_of_cases(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    from tests.fuzz_requests import seed_request

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "valid").write_bytes(seed_request())
    runs = 20000
    done = subprocess.run(
        [sys.executable, "-m", "tests.fuzz_requests", f"-runs={runs}", "-seed=1", str(corpus)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    # libFuzzer stops at the first input that escapes as an exception: that one is lost.
    finished = re.search(r"Done (\d+) runs", done.stderr)
    done_runs = int(finished[1]) if finished else 0
    crashed = int(done.returncode != 0)
    record("arbitrary bytes as a ModelInferRequest (atheris, libFuzzer)", cases=done_runs + crashed,
           sent=done_runs + crashed, answered=done_runs, errors={})
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Done {runs} runs" in done.stderr
