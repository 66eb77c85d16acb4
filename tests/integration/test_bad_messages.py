"""Messages no client should send, against a real batcher: each gets a clear status and the
batcher keeps serving."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from harness.cluster import Cluster
from tests.accounting import record
from tideserve.grpc_options import MAX_MESSAGE_BYTES
from tideserve.v1 import inference_pb2 as pb
from tideserve.v1 import inference_pb2_grpc

pytestmark = pytest.mark.integration

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


def good(request_id: str = "ok") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny_cnn", id=request_id)
    request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(np.zeros([1, 1, 28, 28], np.float32).tobytes())
    return request


def still_serving(cluster: Cluster) -> None:
    with grpc.insecure_channel(cluster.batcher) as channel:
        answer = inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(good(), timeout=10)
    assert answer.outputs[0].shape == [1, 10]


def test_message_over_the_size_limit_is_refused(cluster: Cluster) -> None:
    request = good("huge")
    request.raw_input_contents[0] = b"\0" * (MAX_MESSAGE_BYTES + 1024)
    with grpc.insecure_channel(cluster.batcher, options=[("grpc.max_send_message_length", -1)]
                               ) as channel, pytest.raises(grpc.RpcError) as failure:
        inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    # Reached only when the call failed, with a status.
    record("message over the size limit", cases=1, sent=1, answered=1,
           errors={failure.value.code().name: 1})
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (failure.value.details() or "")
    still_serving(cluster)


def test_undecodable_bytes_on_the_stream_fail_only_that_stream(cluster: Cluster) -> None:
    with grpc.insecure_channel(cluster.batcher) as channel:
        raw_stream = channel.stream_stream(STREAM)  # no serializers: bytes as they are
        with pytest.raises(grpc.RpcError) as failure:
            list(raw_stream(iter([b"\xff\xff\xff not a protobuf"]), timeout=10))
    record("undecodable bytes on a stream", cases=1, sent=1, answered=1,
           errors={failure.value.code().name: 1})
    assert failure.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    still_serving(cluster)


def test_a_bad_request_on_a_stream_answers_with_an_error_and_the_stream_goes_on(
    cluster: Cluster,
) -> None:
    unknown = good("unknown")
    unknown.model_name = "no_such_model"
    wrong_size = good("short")
    wrong_size.raw_input_contents[0] = wrong_size.raw_input_contents[0][:-4]
    sent = [good("a"), unknown, wrong_size, good("b")]
    with grpc.insecure_channel(cluster.batcher) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        answers = list(stub.ModelStreamInfer(iter(sent), timeout=30))
    errors = sum(bool(answer.error_message) for answer in answers)
    record("bad requests on a stream (unknown model, wrong size)", cases=2, sent=len(sent),
           answered=len(answers), errors={"STREAM_ERROR": errors})
    assert [a.infer_response.id for a in answers] == ["a", "", "", "b"]
    assert "unknown model 'no_such_model'" in answers[1].error_message
    assert "3132 bytes" in answers[2].error_message
    assert not answers[0].error_message
    assert not answers[3].error_message
