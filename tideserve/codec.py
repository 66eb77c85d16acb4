"""The one place that converts between wire tensors and numpy arrays.

Wire tensors are (datatype, shape, raw bytes) in the Open Inference Protocol's terms: row-major,
little-endian, BYTES elements each prefixed by a 4-byte little-endian length. Decoding numeric
tensors is zero-copy (`np.frombuffer`); callers that hand the array to torch use
`torch.from_numpy`, which is zero-copy too.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence

import numpy as np

from tideserve.errors import InvalidArgument

# Datatype names of the protocol -> little-endian numpy dtypes. BF16 has no numpy dtype; it travels
# as raw 2-byte words and only the worker (torch) interprets it.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}

ELEMENT_SIZES: dict[str, int] = {name: dt.itemsize for name, dt in NUMPY_DTYPES.items()}
ELEMENT_SIZES["BF16"] = 2

DATATYPES = (*NUMPY_DTYPES, "BF16", "BYTES")

# Where typed `contents` keep each datatype (InferTensorContents field names).
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# Largest element count a request may describe; shapes beyond it are refused before any arithmetic
# on buffers, so a hostile shape cannot make us allocate or overflow.
MAX_ELEMENTS = 1 << 40


def element_count(shape: Sequence[int]) -> int:
    """Number of elements of a shape, refusing negative or absurd dimensions. A zero dimension
    does not excuse the others: numpy refuses [0, 2**20, 2**43] too (the product of the
    non-zero dims overflows), so that product is bounded as well."""
    count = 1
    extent = 1
    for dim in shape:
        if dim < 0:
            raise InvalidArgument(f"shape {list(shape)} has a negative dimension")
        count *= dim
        extent *= max(dim, 1)
        if extent > MAX_ELEMENTS:
            raise InvalidArgument(f"shape {list(shape)} has more than {MAX_ELEMENTS} elements")
    return count


def expected_nbytes(datatype: str, shape: Sequence[int]) -> int:
    """Byte size of a fixed-size tensor; BYTES tensors have no fixed size and are not accepted."""
    size = ELEMENT_SIZES.get(datatype)
    if size is None:
        raise InvalidArgument(f"datatype {datatype!r} has no fixed element size")
    return size * element_count(shape)


@functools.lru_cache(maxsize=64)
def datatype_of(dtype: np.dtype) -> str:
    """Protocol datatype name for a numpy dtype (kept per dtype: every output of every batch
    asks)."""
    for name, candidate in NUMPY_DTYPES.items():
        if candidate == dtype.newbyteorder("<") or candidate == dtype:
            return name
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    raise InvalidArgument(f"numpy dtype {dtype} has no protocol datatype")


def decode(datatype: str, shape: Sequence[int], raw: bytes | memoryview) -> np.ndarray:
    """Raw bytes -> read-only numpy array, without copying numeric data."""
    if datatype == "BYTES":
        return decode_bytes(bytes(raw), shape)
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"datatype {datatype!r} cannot be decoded to numpy")
    expected = dtype.itemsize * element_count(shape)
    if len(raw) != expected:
        raise InvalidArgument(
            f"raw content has {len(raw)} bytes but {datatype} {list(shape)} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(shape))


def encode(array: np.ndarray) -> tuple[str, list[int], bytes]:
    """numpy array -> (datatype, shape, raw bytes); non-contiguous arrays are compacted once."""
    datatype = datatype_of(array.dtype)
    if datatype == "BYTES":
        return datatype, list(array.shape), encode_bytes(array)
    dtype = NUMPY_DTYPES[datatype]
    contiguous = np.ascontiguousarray(array, dtype=dtype)
    return datatype, list(array.shape), contiguous.tobytes()


def encode_bytes(array: np.ndarray) -> bytes:
    """BYTES tensor -> length-prefixed elements, flattened row-major."""
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_bytes(raw: bytes, shape: Sequence[int]) -> np.ndarray:
    """Length-prefixed elements -> object array of bytes, each length checked against the buffer."""
    count = element_count(shape)
    items: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidArgument("BYTES content ends inside an element length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidArgument("BYTES element runs past the end of its content")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidArgument(f"BYTES content has {len(items)} elements but shape needs {count}")
    result = np.empty(count, dtype=object)
    result[:] = items
    return result.reshape(tuple(shape))


def contents_to_raw(datatype: str, shape: Sequence[int], contents: object, name: str = "") -> bytes:
    """Typed `InferTensorContents` -> raw bytes, so the rest of the path sees one representation.
    `name`, the input's, makes refusals say which input is wrong."""
    what = f"input {name!r}" if name else "the tensor"
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise InvalidArgument(f"{what}: datatype {datatype!r} cannot be sent as typed contents")
    values = getattr(contents, field)
    count = element_count(shape)
    if not values and count:
        # Values in another datatype's field (int_contents for FP32, a common slip): name the
        # field that was expected rather than report zero values.
        others = sorted(
            f for f in set(CONTENTS_FIELDS.values()) if f != field and getattr(contents, f, None)
        )
        if others:
            raise InvalidArgument(
                f"{what} is {datatype}: put its values in {field} (got {', '.join(others)})"
            )
    if len(values) != count:
        raise InvalidArgument(
            f"{what}: typed contents hold {len(values)} values but {datatype} {list(shape)} "
            f"needs {count} (in {field})"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return encode_bytes(array)
    try:
        return np.asarray(values, dtype=NUMPY_DTYPES[datatype]).tobytes()
    except OverflowError as exc:
        raise InvalidArgument(f"{what}: typed contents do not fit {datatype}: {exc}") from exc


def row_nbytes(datatype: str, dims: Sequence[int]) -> int:
    """Bytes of one batch row of a fixed-size tensor with per-row dims `dims`."""
    return ELEMENT_SIZES[datatype] * math.prod(dims)
