"""The tensor codec: round trips for every datatype, zero-copy decode, BYTES framing, and the
errors a malformed tensor must raise before any buffer arithmetic."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import numpy as np
import pytest

from tideserve import codec
from tideserve.errors import InvalidArgument
from tideserve.v1 import inference_pb2

NUMERIC = sorted(codec.NUMPY_DTYPES)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_round_trip_every_numeric_datatype(datatype: str) -> None:
    dtype = codec.NUMPY_DTYPES[datatype]
    array = (np.arange(12) % 2 == 1) if datatype == "BOOL" else np.arange(12).astype(dtype)
    array = array.reshape(3, 4)

    name, shape, raw = codec.encode(array)
    decoded = codec.decode(name, shape, raw)

    assert name == datatype
    assert shape == [3, 4]
    assert len(raw) == 12 * dtype.itemsize
    assert decoded.dtype == dtype
    np.testing.assert_array_equal(decoded, array)


def test_decode_is_zero_copy_and_read_only() -> None:
    raw = np.arange(6, dtype="<f4").tobytes()

    decoded = codec.decode("FP32", [2, 3], raw)

    assert not decoded.flags.writeable
    assert not decoded.flags.owndata
    assert np.shares_memory(decoded, np.frombuffer(raw, dtype=np.uint8))


def test_encode_compacts_non_contiguous_arrays_in_logical_order() -> None:
    base = np.arange(12, dtype=np.int32).reshape(3, 4)
    transposed = base.T
    assert not transposed.flags.c_contiguous

    name, shape, raw = codec.encode(transposed)

    assert shape == [4, 3]
    np.testing.assert_array_equal(codec.decode(name, shape, raw), transposed)


def test_encode_big_endian_array_travels_little_endian() -> None:
    array = np.array([1.5, -2.0], dtype=">f8")

    name, _, raw = codec.encode(array)

    assert name == "FP64"
    assert raw == np.array([1.5, -2.0], dtype="<f8").tobytes()


@pytest.mark.parametrize("shape", [[0], [0, 5], [3, 0]])
def test_empty_tensors_round_trip(shape: list[int]) -> None:
    array = np.zeros(shape, dtype=np.float32)

    name, out_shape, raw = codec.encode(array)
    decoded = codec.decode(name, out_shape, raw)

    assert raw == b""
    assert decoded.shape == tuple(shape)


def test_decode_refuses_wrong_byte_count_naming_sizes() -> None:
    with pytest.raises(InvalidArgument, match="has 7 bytes but FP32 \\[2\\] needs 8"):
        codec.decode("FP32", [2], b"\x00" * 7)


def test_decode_refuses_unknown_datatype() -> None:
    with pytest.raises(InvalidArgument, match="FP8"):
        codec.decode("FP8", [1], b"\x00")


def test_bf16_has_a_size_but_no_numpy_decode() -> None:
    assert codec.expected_nbytes("BF16", [2, 3]) == 12
    with pytest.raises(InvalidArgument, match="BF16"):
        codec.decode("BF16", [1], b"\x00\x00")


def test_element_count_refuses_negative_and_absurd_shapes() -> None:
    assert codec.element_count([]) == 1
    assert codec.element_count([2, 3, 4]) == 24
    with pytest.raises(InvalidArgument, match="negative"):
        codec.element_count([2, -1])
    with pytest.raises(InvalidArgument, match="more than"):
        codec.element_count([1 << 30, 1 << 30, 2])


def test_expected_nbytes_refuses_bytes_tensors() -> None:
    with pytest.raises(InvalidArgument, match="no fixed element size"):
        codec.expected_nbytes("BYTES", [1])


def test_bytes_round_trip_with_lengths_prefixed() -> None:
    array = np.array([[b"a", b""], [b"hello", b"\x00\xff"]], dtype=object)

    name, shape, raw = codec.encode(array)
    decoded = codec.decode(name, shape, raw)

    assert name == "BYTES"
    assert raw[:5] == struct.pack("<I", 1) + b"a"
    assert decoded.shape == (2, 2)
    assert decoded.tolist() == array.tolist()


def test_encode_strings_as_utf8_bytes() -> None:
    _, _, raw = codec.encode(np.array(["hé"]))

    assert raw == struct.pack("<I", 3) + "hé".encode()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x01\x00", "inside an element length prefix"),
        (struct.pack("<I", 5) + b"abc", "runs past the end"),
        (struct.pack("<I", 1) + b"a", "has 1 elements but shape needs 2"),
    ],
)
def test_decode_bytes_refuses_malformed_framing(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        codec.decode("BYTES", [2], raw)


def test_datatype_of_unknown_dtype_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="no protocol datatype"):
        codec.datatype_of(np.dtype(np.complex64))


def test_typed_contents_become_raw_bytes() -> None:
    contents = SimpleNamespace(fp32_contents=[1.0, 2.5, -3.0], int_contents=[1, -2])

    assert (
        codec.contents_to_raw("FP32", [3], contents)
        == np.array([1.0, 2.5, -3.0], dtype="<f4").tobytes()
    )
    assert codec.contents_to_raw("INT16", [2], contents) == np.array([1, -2], "<i2").tobytes()


def test_typed_bytes_contents_are_framed() -> None:
    contents = SimpleNamespace(bytes_contents=[b"ab", b"c"])

    raw = codec.contents_to_raw("BYTES", [2], contents)

    assert codec.decode("BYTES", [2], raw).tolist() == [b"ab", b"c"]


def test_typed_contents_count_must_match_shape() -> None:
    contents = SimpleNamespace(fp32_contents=[1.0, 2.0])

    with pytest.raises(InvalidArgument, match="hold 2 values but FP32 \\[3\\] needs 3"):
        codec.contents_to_raw("FP32", [3], contents)


def test_typed_contents_in_another_datatypes_field_name_the_expected_field() -> None:
    contents = inference_pb2.InferTensorContents(int_contents=[1, 2, 3])

    with pytest.raises(InvalidArgument) as refused:
        codec.contents_to_raw("FP32", [3], contents, "INPUT__0")

    assert str(refused.value) == (
        "input 'INPUT__0' is FP32: put its values in fp32_contents (got int_contents)"
    )


def test_typed_contents_that_overflow_are_invalid() -> None:
    contents = SimpleNamespace(uint_contents=[300])

    with pytest.raises(InvalidArgument, match="do not fit UINT8"):
        codec.contents_to_raw("UINT8", [1], contents)


def test_typed_contents_refuse_fp16() -> None:
    with pytest.raises(InvalidArgument, match="typed contents"):
        codec.contents_to_raw("FP16", [1], SimpleNamespace())


def test_row_nbytes() -> None:
    assert codec.row_nbytes("FP32", [3, 4]) == 48
    assert codec.row_nbytes("INT8", []) == 1
