"""Clients' shared-memory regions (Triton's system shared-memory extension) without a network:
registration checks (links, non-files, other users' and reserved segments refused), inputs read
from a region when the batch is assembled, outputs written into one, a segment truncated after
registration, and the errors a client gets for each mistake."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from services.batcher.client_memory import (
    BYTE_SIZE,
    MAX_REGIONS,
    OFFSET,
    REGION,
    ClientRegions,
    RegionSlice,
    outputs_to_regions,
    region_inputs,
)
from tideserve.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unimplemented,
)
from tideserve.v1 import inference_pb2 as pb


@pytest.fixture
def regions(tmp_path: Path) -> ClientRegions:
    (tmp_path / "data").write_bytes(bytes(range(64)))
    made = ClientRegions(tmp_path)
    yield made
    made.close()


def place(parameters: object, region: str, byte_size: int, offset: int = 0) -> None:
    parameters[REGION].string_param = region  # type: ignore[index]
    parameters[BYTE_SIZE].int64_param = byte_size  # type: ignore[index]
    if offset:
        parameters[OFFSET].int64_param = offset  # type: ignore[index]


def test_registration_is_checked(regions: ClientRegions) -> None:
    regions.register("r", "/data", offset=8, byte_size=16)
    assert [(r.name, r.key, r.offset, r.byte_size) for r in regions.status("")] == [
        ("r", "/data", 8, 16)
    ]
    with pytest.raises(AlreadyExists):
        regions.register("r", "/data", 0, 4)
    with pytest.raises(NotFound, match="no shared-memory segment"):
        regions.register("s", "/missing", 0, 4)
    with pytest.raises(InvalidArgument, match="does not fit"):
        regions.register("s", "/data", 60, 8)
    with pytest.raises(InvalidArgument, match="does not fit"):
        regions.register("s", "/data", 2**64 - 4, 8)
    for key in ("/", "/../etc/passwd", "/a/b", ".."):
        with pytest.raises(InvalidArgument, match="not a POSIX shm name"):
            regions.register("s", key, 0, 4)
    with pytest.raises(InvalidArgument, match="reserved for tideserve"):
        regions.register("s", "/tideserve-1234-1", 0, 4)
    with pytest.raises(NotFound):
        regions.status("s")
    regions.unregister("r")
    regions.unregister("never-registered")  # as in Triton: not an error
    assert regions.status("") == []


def test_inputs_in_a_region_are_read_in_input_order(regions: ClientRegions) -> None:
    regions.register("r", "/data", offset=8, byte_size=16)
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="UINT8", shape=[1, 4])
    placed = request.inputs.add(name="b", datatype="UINT8", shape=[1, 8])
    place(placed.parameters, "r", byte_size=8, offset=4)
    request.raw_input_contents.append(b"AAAA")

    raw = region_inputs(request, regions)

    assert raw is not None
    assert raw[0] == b"AAAA"
    assert isinstance(raw[1], RegionSlice)
    assert len(raw[1]) == 8
    assert raw[1].read() == bytes(range(12, 20))
    target = bytearray(10)
    raw[1].read_into(memoryview(target)[1:9])
    assert target == b"\0" + bytes(range(12, 20)) + b"\0"


def test_a_request_without_regions_keeps_its_own_raw_contents(regions: ClientRegions) -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="UINT8", shape=[1, 4])
    request.raw_input_contents.append(b"AAAA")
    assert region_inputs(request, regions) is None


def test_unregistering_a_region_a_batch_still_holds_leaves_its_slice_readable(
    regions: ClientRegions, tmp_path: Path
) -> None:
    regions.register("r", "/data", offset=0, byte_size=16)
    held = regions.slice("r", 2, 4)
    regions.unregister("r")
    # A descriptor opened now must not take the number the slice reads from.
    (tmp_path / "other").write_bytes(b"x" * 64)
    other = os.open(tmp_path / "other", os.O_RDONLY)
    try:
        assert held.read() == bytes(range(2, 6))
    finally:
        os.close(other)


def test_links_other_files_and_reserved_names_are_refused(
    regions: ClientRegions, tmp_path: Path
) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_bytes(bytes(64))
    (tmp_path / "link").symlink_to(outside)
    with pytest.raises(InvalidArgument, match="symbolic link"):
        regions.register("s", "/link", 0, 8)
    assert outside.read_bytes() == bytes(64)
    os.link(tmp_path / "data", tmp_path / "second-name")
    with pytest.raises(InvalidArgument, match="2 names"):
        regions.register("s", "/second-name", 0, 8)
    (tmp_path / "dir").mkdir()
    with pytest.raises(InvalidArgument, match="not a regular file"):
        regions.register("s", "/dir", 0, 8)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InvalidArgument, match="not a regular file"):
        regions.register("s", "/fifo", 0, 8)
    for key in ("/sem.lock", "/tideserve-abcdef"):
        with pytest.raises(InvalidArgument, match="reserved"):
            regions.register("s", key, 0, 8)
    with pytest.raises(InvalidArgument, match="not a POSIX shm name"):
        regions.register("s", "/a\0b", 0, 8)
    assert regions.status("") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_segment_of_another_user_is_refused(regions: ClientRegions, tmp_path: Path) -> None:
    (tmp_path / "theirs").write_bytes(bytes(64))
    os.chown(tmp_path / "theirs", 65534, 65534)
    with pytest.raises(PermissionDenied, match="belongs to uid 65534"):
        regions.register("s", "/theirs", 0, 8)


def test_a_segment_truncated_after_registration_fails_reads_and_writes_clearly(
    regions: ClientRegions, tmp_path: Path
) -> None:
    regions.register("r", "/data", offset=8, byte_size=32)
    held = regions.slice("r", 0, 16)
    os.truncate(tmp_path / "data", 12)

    for attempt in (held.read, lambda: held.read_into(memoryview(bytearray(16)))):
        with pytest.raises(FailedPrecondition, match=r"'r' covers bytes 8..40 .* now has 12"):
            attempt()
    with pytest.raises(FailedPrecondition, match="truncated"):
        regions.slice("r", 0, 16)
    with pytest.raises(FailedPrecondition, match="truncated"):
        regions.write("r", 0, b"abcd")
    assert (tmp_path / "data").stat().st_size == 12

    os.truncate(tmp_path / "data", 64)
    assert regions.slice("r", 0, 8).read() == bytes(range(8, 12)) + bytes(4), "grown back"


def test_a_placement_outside_its_region_is_refused(regions: ClientRegions) -> None:
    regions.register("r", "/data", offset=8, byte_size=16)
    request = pb.ModelInferRequest(model_name="m")
    place(request.inputs.add(name="b", datatype="UINT8", shape=[1, 8]).parameters, "r", 8, 12)
    with pytest.raises(InvalidArgument, match="do not fit shared-memory region"):
        region_inputs(request, regions)


def test_unknown_output_region_is_refused_before_any_compute(regions: ClientRegions) -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="UINT8", shape=[1, 4])
    request.raw_input_contents.append(b"AAAA")
    place(request.outputs.add(name="y").parameters, "nowhere", 4)
    with pytest.raises(NotFound, match="'nowhere'"):
        region_inputs(request, regions)


def test_outputs_go_to_their_regions_and_keep_the_others_in_place(
    regions: ClientRegions, tmp_path: Path
) -> None:
    regions.register("out", "/data", offset=0, byte_size=32)
    request = pb.ModelInferRequest(model_name="m")
    request.outputs.add(name="y")
    place(request.outputs.add(name="z").parameters, "out", byte_size=16, offset=4)
    response = pb.ModelInferResponse(model_name="m")
    response.outputs.add(name="y", datatype="FP32", shape=[1, 2])
    response.outputs.add(name="z", datatype="FP32", shape=[1, 2])
    z = np.array([[1.5, -2.0]], dtype="<f4").tobytes()
    response.raw_output_contents.extend([b"yyyyyyyy", z])

    outputs_to_regions(request, response, regions)

    assert list(response.raw_output_contents) == [b"yyyyyyyy", b""]
    assert response.outputs[1].parameters[REGION].string_param == "out"
    assert response.outputs[1].parameters[BYTE_SIZE].int64_param == len(z)
    assert (tmp_path / "data").read_bytes()[4 : 4 + len(z)] == z


def test_an_output_larger_than_its_placement_is_refused(regions: ClientRegions) -> None:
    regions.register("out", "/data", offset=0, byte_size=32)
    request = pb.ModelInferRequest(model_name="m")
    place(request.outputs.add(name="y").parameters, "out", byte_size=4)
    response = pb.ModelInferResponse(model_name="m")
    response.outputs.add(name="y", datatype="FP32", shape=[1, 2])
    response.raw_output_contents.append(b"12345678")
    with pytest.raises(InvalidArgument, match="holds 4"):
        outputs_to_regions(request, response, regions)


def test_region_names_and_the_number_of_regions_are_bounded(regions: ClientRegions) -> None:
    with pytest.raises(InvalidArgument, match=r"1..256 bytes, got 'nnn.*\(300 characters\)"):
        regions.register("n" * 300, "/data", 0, 8)
    for index in range(MAX_REGIONS):
        regions.register(f"r{index}", "/data", 0, 8)
    with pytest.raises(ResourceExhausted, match="unregister some first"):
        regions.register("one-more", "/data", 0, 8)
    regions.unregister("r0")
    regions.register("one-more", "/data", 0, 8)


def test_turned_off_it_refuses_registration(tmp_path: Path) -> None:
    (tmp_path / "data").write_bytes(bytes(64))
    with pytest.raises(Unimplemented, match="turned off"):
        ClientRegions(tmp_path, enabled=False).register("r", "/data", 0, 16)
