"""atheris (libFuzzer) on the request decoding path: arbitrary bytes are parsed as a
ModelInferRequest, as the batcher's gRPC layer does, and validated against each test model.

    python -m tests.fuzz_requests -runs=100000 [CORPUS_DIR]   # libFuzzer prints "Done N runs"

A case passes when protobuf refuses the bytes (DecodeError, which gRPC answers as a failed
deserialization) or `parse_request` accepts consistently or raises InvalidArgument; anything else
escapes and libFuzzer reports it as a crash with the input that caused it.
"""

from __future__ import annotations

import sys

import atheris
from google.protobuf.message import DecodeError

from services.batcher.requests import parse_request
from tests.bad_input import SPECS, check_accepted
from tideserve.errors import InvalidArgument
from tideserve.v1 import inference_pb2 as pb


def one_input(data: bytes) -> None:
    try:
        request = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return
    for spec in SPECS:
        try:
            accepted = parse_request(request, spec, 0.0, None)
        except InvalidArgument:
            continue
        check_accepted(accepted, spec)


def seed_request() -> bytes:
    """A valid request for the first model: put it in the corpus directory so mutations start
    near the accepted region and reach the deep checks."""
    request = pb.ModelInferRequest(model_name="mixed")
    request.inputs.add(name="a", datatype="FP32", shape=[1, 3])
    request.inputs.add(name="b", datatype="INT64", shape=[1, 2])
    request.raw_input_contents.extend([b"\0" * 12, b"\0" * 16])
    return request.SerializeToString()


if __name__ == "__main__":
    # Coverage feedback from every Python module loaded (the decoding path and what it calls).
    atheris.instrument_all()
    one_input(seed_request())
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
