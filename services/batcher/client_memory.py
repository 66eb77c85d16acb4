"""Clients' system shared-memory regions (Triton's extension): a client on the batcher's host
registers a byte range of a /dev/shm segment by name, then names it in an input's or output's
parameters instead of sending the bytes (perf_analyzer --shared-memory system,
tritonclient.utils.shared_memory).

The batcher assembles a batch straight from the region's bytes (the client leaves them alone
until it has the response, as with Triton), and writes each output into its region before
answering.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

from services.batcher.requests import parameter_int
from tideserve import shared_memory
from tideserve.errors import AlreadyExists, InvalidArgument, NotFound, Unimplemented
from tideserve.shared_memory import PREFIX as INTERNAL_PREFIX
from tideserve.shared_memory import SHM_DIR, unmap
from tideserve.v1 import inference_pb2 as pb

# Parameters of an input or requested output that place its bytes in a region.
REGION = shared_memory.REGION_PARAMETER
BYTE_SIZE = shared_memory.BYTE_SIZE_PARAMETER
OFFSET = shared_memory.OFFSET_PARAMETER


@dataclass(eq=False)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    buffer: mmap.mmap


class ClientRegions:
    def __init__(self, shm_dir: Path = SHM_DIR, enabled: bool = True) -> None:
        self.shm_dir = shm_dir
        self.enabled = enabled
        self.regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not self.enabled:
            raise Unimplemented(
                "system shared memory is turned off on this batcher (client_shared_memory); "
                "send tensors in the request"
            )
        if not name:
            raise InvalidArgument("a shared-memory region needs a name")
        if name in self.regions:
            raise AlreadyExists(
                f"shared-memory region {name!r} is already registered; unregister it first"
            )
        segment = key.removeprefix("/")
        if not segment or "/" in segment or segment in (".", ".."):
            raise InvalidArgument(
                f"shared-memory key {key!r} is not a POSIX shm name such as '/input_data'"
            )
        if segment.startswith(INTERNAL_PREFIX):
            # The batchers' own segments hold other clients' batches.
            raise InvalidArgument(f"shared-memory key {key!r} is reserved for tideserve")
        try:
            fd = os.open(self.shm_dir / segment, os.O_RDWR)
        except FileNotFoundError:
            raise NotFound(
                f"no shared-memory segment {key!r} on the batcher's host: create it with "
                "shm_open (tritonclient.utils.shared_memory) before registering it"
            ) from None
        except PermissionError:
            raise InvalidArgument(
                f"the batcher may not open shared-memory segment {key!r}: give its user read "
                "and write access"
            ) from None
        try:
            size = os.fstat(fd).st_size
            if byte_size <= 0 or offset + byte_size > size:
                raise InvalidArgument(
                    f"region {offset}+{byte_size} does not fit segment {key!r} of {size} bytes"
                )
            buffer = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.regions[name] = Region(name, key, offset, byte_size, buffer)

    def unregister(self, name: str) -> None:
        """Forget `name` (every region when empty); an unknown name is not an error, as in
        Triton."""
        for gone in list(self.regions) if not name else [name]:
            region = self.regions.pop(gone, None)
            if region is not None:
                unmap(region.buffer)

    def status(self, name: str) -> list[Region]:
        if not name:
            return list(self.regions.values())
        return [self._get(name)]

    def view(self, name: str, offset: int, size: int) -> memoryview:
        """`size` bytes of region `name` from `offset`, without copying. Unregistering the
        region while a batch still holds the view leaves the unmapping to the view's release."""
        region = self._get(name)
        start = self._span(region, offset, size)
        return memoryview(region.buffer)[start : start + size]

    def write(self, name: str, offset: int, data: bytes) -> None:
        region = self._get(name)
        start = self._span(region, offset, len(data))
        region.buffer[start : start + len(data)] = data

    def close(self) -> None:
        self.unregister("")

    def _get(self, name: str) -> Region:
        region = self.regions.get(name)
        if region is None:
            raise NotFound(f"no shared-memory region {name!r} is registered")
        return region

    @staticmethod
    def _span(region: Region, offset: int, size: int) -> int:
        if offset < 0 or offset + size > region.byte_size:
            raise InvalidArgument(
                f"{size} bytes at offset {offset} do not fit shared-memory region "
                f"{region.name!r} ({region.byte_size} bytes)"
            )
        return region.offset + offset


def _placement(parameters: object) -> tuple[str, int, int] | None:
    """(region, offset, byte size) when these tensor parameters place it in shared memory."""
    region = parameters.get(REGION)  # type: ignore[attr-defined]
    if region is None:
        return None
    offset = parameter_int(parameters, OFFSET) or 0
    byte_size = parameter_int(parameters, BYTE_SIZE)
    if not region.string_param or byte_size is None:
        raise InvalidArgument(
            f"{REGION!r} needs a region name (string) and {BYTE_SIZE!r} (integer)"
        )
    return region.string_param, offset, byte_size


def region_inputs(
    request: pb.ModelInferRequest, regions: ClientRegions
) -> list[bytes | memoryview] | None:
    """The request's raw inputs in input order (as parse_request takes them) when some of them
    lie in regions, else None; and a check that the outputs' regions exist before any compute.

    A region's input is a view, not a copy: the batch is assembled straight from the client's
    memory, which the client leaves alone until its response arrives (Triton's contract too).
    A 64-row cnn request is 3 MB; copying it out first cost the batcher a copy per request."""
    placements = [_placement(t.parameters) for t in request.inputs]
    for output in request.outputs:
        placed = _placement(output.parameters)
        if placed is not None:
            regions.status(placed[0])
    if not any(placements):
        return None
    inline = iter(request.raw_input_contents)
    raw: list[bytes | memoryview] = []
    for tensor, placed in zip(request.inputs, placements, strict=True):
        if placed is None:
            chunk = next(inline, None)
            if chunk is None:
                raise InvalidArgument(f"input {tensor.name!r} has no data (raw or shared memory)")
            raw.append(chunk)
        else:
            name, offset, byte_size = placed
            raw.append(regions.view(name, offset, byte_size))
    return raw


def outputs_to_regions(
    request: pb.ModelInferRequest, response: pb.ModelInferResponse, regions: ClientRegions
) -> None:
    """Write each output the request placed in a region there; its raw content is left empty
    (keeping the others' positions) and its parameters say where it went."""
    placed = {o.name: _placement(o.parameters) for o in request.outputs}
    for index, output in enumerate(response.outputs):
        placement = placed.get(output.name)
        if placement is None:
            continue
        name, offset, byte_size = placement
        data = response.raw_output_contents[index]
        if len(data) > byte_size:
            raise InvalidArgument(
                f"output {output.name!r} has {len(data)} bytes; its shared-memory placement "
                f"holds {byte_size}"
            )
        regions.write(name, offset, data)
        response.raw_output_contents[index] = b""
        output.parameters[REGION].string_param = name
        output.parameters[BYTE_SIZE].int64_param = len(data)
        if offset:
            output.parameters[OFFSET].int64_param = offset
