"""Clients' system shared-memory regions (Triton's extension): a client on the batcher's host
registers a byte range of a /dev/shm segment by name, then names it in an input's or output's
parameters instead of sending the bytes (perf_analyzer --shared-memory system,
tritonclient.utils.shared_memory).

Any client that reaches the port can name a segment, so a registration is checked for what it
could be turned into: the segment must be a regular file of this batcher's user on the /dev/shm
filesystem, opened without following links, with one name (a hard link could rename a file the
other rules refuse), and neither one of tideserve's own segments nor a POSIX semaphore.

Regions are read and written with pread/pwrite through the segment's descriptor, never mapped:
a client may truncate its segment at any time, and touching a mapping past the new end kills
the process with SIGBUS, which Python cannot catch. A read comes up short instead, and only the
request that named the region fails. Inputs are still read once, straight into the batch
(`RegionSlice.read_into`), as the mapping's view was.
"""

from __future__ import annotations

import errno
import os
import stat
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from services.batcher.requests import parameter_int, quoted
from tideserve import shared_memory
from tideserve.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unimplemented,
)
from tideserve.shared_memory import PREFIX as INTERNAL_PREFIX
from tideserve.shared_memory import SHM_DIR
from tideserve.v1 import inference_pb2 as pb

# Parameters of an input or requested output that place its bytes in a region.
REGION = shared_memory.REGION_PARAMETER
BYTE_SIZE = shared_memory.BYTE_SIZE_PARAMETER
OFFSET = shared_memory.OFFSET_PARAMETER
# Names in /dev/shm that are not clients' tensors: tideserve's own batch segments (other
# clients' inputs) and glibc's named semaphores (sem_open), which a write would corrupt.
RESERVED_PREFIXES = (INTERNAL_PREFIX, "sem.")
# Regions registered at a time: each holds a descriptor of the batcher's, which its gRPC
# connections need too; Triton clients register a few.
MAX_REGIONS = 256
# Longest region name: names are kept, logged and quoted back.
MAX_REGION_NAME_BYTES = 256
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(eq=False)
class Region:
    """A registered range of an open segment. The descriptor closes when the last reference
    goes: a batch still holding a `RegionSlice` of an unregistered region reads the same file,
    never whatever file the number was reused for."""

    name: str
    key: str
    offset: int
    byte_size: int
    fd: int = field(repr=False)

    def __post_init__(self) -> None:
        weakref.finalize(self, os.close, self.fd)

    def segment_bytes(self) -> int:
        return os.fstat(self.fd).st_size

    def cut_short(self, size: int) -> FailedPrecondition:
        return FailedPrecondition(
            f"shared-memory region {quoted(self.name)} covers bytes {self.offset}.."
            f"{self.offset + self.byte_size} of segment {quoted(self.key)}, which now has "
            f"{size} bytes: the segment was truncated after registration; unregister the "
            "region and register it again"
        )


@dataclass(frozen=True, eq=False)
class RegionSlice:
    """An input's bytes in a client's region, read when the batch is assembled (into the
    batch's buffer) rather than copied out of the region on arrival."""

    region: Region
    start: int
    size: int

    def __len__(self) -> int:
        return self.size

    def read(self) -> bytes:
        data = os.pread(self.region.fd, self.size, self.start)
        if len(data) != self.size:
            raise self.region.cut_short(self.region.segment_bytes())
        return data

    def read_into(self, target: memoryview) -> None:
        """Fill `target` (exactly `size` bytes) from the region; FailedPrecondition when the
        segment has been cut short since the request arrived."""
        if os.preadv(self.region.fd, [target], self.start) != self.size:
            raise self.region.cut_short(self.region.segment_bytes())


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
        if not name or len(name.encode()) > MAX_REGION_NAME_BYTES:
            raise InvalidArgument(
                f"a shared-memory region needs a name of 1..{MAX_REGION_NAME_BYTES} bytes, "
                f"got {quoted(name)}"
            )
        if name in self.regions:
            raise AlreadyExists(
                f"shared-memory region {quoted(name)} is already registered; unregister it first"
            )
        if len(self.regions) >= MAX_REGIONS:
            raise ResourceExhausted(
                f"{MAX_REGIONS} shared-memory regions are registered, the most this batcher "
                "keeps; unregister some first"
            )
        segment = key.removeprefix("/")
        if not segment or "/" in segment or segment in (".", "..") or "\0" in segment:
            raise InvalidArgument(
                f"shared-memory key {quoted(key)} is not a POSIX shm name such as '/input_data'"
            )
        if segment.startswith(RESERVED_PREFIXES):
            raise InvalidArgument(f"shared-memory key {quoted(key)} is reserved for tideserve")
        fd = self._open(key, segment)
        try:
            size = self._check_segment(key, fd)
            if byte_size <= 0 or offset < 0 or offset + byte_size > size:
                raise InvalidArgument(
                    f"region {offset}+{byte_size} does not fit segment {quoted(key)} of "
                    f"{size} bytes"
                )
        except BaseException:
            os.close(fd)
            raise
        self.regions[name] = Region(name, key, offset, byte_size, fd)

    def _open(self, key: str, segment: str) -> int:
        try:
            return os.open(self.shm_dir / segment, _OPEN_FLAGS)
        except FileNotFoundError:
            raise NotFound(
                f"no shared-memory segment {quoted(key)} on the batcher's host: create it with "
                "shm_open (tritonclient.utils.shared_memory) before registering it"
            ) from None
        except PermissionError:
            raise PermissionDenied(
                f"the batcher may not open shared-memory segment {quoted(key)}: give its user "
                "read and write access"
            ) from None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise InvalidArgument(
                    f"shared-memory segment {quoted(key)} is a symbolic link; register the "
                    "segment itself"
                ) from None
            if error.errno == errno.EISDIR:
                raise InvalidArgument(
                    f"shared-memory segment {quoted(key)} is not a regular file in {self.shm_dir}"
                ) from None
            raise InvalidArgument(
                f"shared-memory segment {quoted(key)} cannot be opened: {error.strerror}"
            ) from None

    def _check_segment(self, key: str, fd: int) -> int:
        """The segment's size, once it is known to be a client's plain shm segment."""
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_dev != os.stat(self.shm_dir).st_dev:
            raise InvalidArgument(
                f"shared-memory segment {quoted(key)} is not a regular file in {self.shm_dir}"
            )
        if info.st_nlink != 1:
            raise InvalidArgument(
                f"shared-memory segment {quoted(key)} has {info.st_nlink} names; register a "
                "segment made with shm_open, not a hard link"
            )
        if info.st_uid != os.geteuid():
            raise PermissionDenied(
                f"shared-memory segment {quoted(key)} belongs to uid {info.st_uid}; the batcher "
                f"takes only segments of its own user (uid {os.geteuid()}): create it as that "
                "user"
            )
        return info.st_size

    def unregister(self, name: str) -> None:
        """Forget `name` (every region when empty); an unknown name is not an error, as in
        Triton."""
        for gone in list(self.regions) if not name else [name]:
            self.regions.pop(gone, None)

    def status(self, name: str) -> list[Region]:
        if not name:
            return list(self.regions.values())
        return [self._get(name)]

    def slice(self, name: str, offset: int, size: int) -> RegionSlice:
        """`size` bytes of region `name` from `offset`, to be read when the batch is assembled;
        refused at once when the segment is already too short for the region."""
        region = self._get(name)
        start = self._span(region, offset, size)
        current = region.segment_bytes()
        if current < region.offset + region.byte_size:
            raise region.cut_short(current)
        return RegionSlice(region, start, size)

    def write(self, name: str, offset: int, data: bytes) -> None:
        region = self._get(name)
        start = self._span(region, offset, len(data))
        # A segment truncated after this check grows back to hold the write (pwrite extends a
        # file, where a mapping would fault); the check keeps the honest error for the usual case.
        current = region.segment_bytes()
        if current < region.offset + region.byte_size:
            raise region.cut_short(current)
        if os.pwrite(region.fd, data, start) != len(data):
            raise FailedPrecondition(
                f"shared-memory region {quoted(name)} took a partial write; is /dev/shm full?"
            )

    def close(self) -> None:
        self.unregister("")

    def _get(self, name: str) -> Region:
        region = self.regions.get(name)
        if region is None:
            raise NotFound(f"no shared-memory region {quoted(name)} is registered")
        return region

    @staticmethod
    def _span(region: Region, offset: int, size: int) -> int:
        if offset < 0 or offset + size > region.byte_size:
            raise InvalidArgument(
                f"{size} bytes at offset {offset} do not fit shared-memory region "
                f"{quoted(region.name)} ({region.byte_size} bytes)"
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
) -> list[bytes | RegionSlice] | None:
    """The request's raw inputs in input order (as parse_request takes them) when some of them
    lie in regions, else None; and a check that the outputs' regions exist before any compute.

    A region's input is a `RegionSlice`, not a copy: the batch is assembled straight from the
    client's memory, which the client leaves alone until its response arrives (Triton's
    contract too). A 64-row cnn request is 3 MB; copying it out first cost the batcher a copy
    per request."""
    placements = [_placement(t.parameters) for t in request.inputs]
    for output in request.outputs:
        placed = _placement(output.parameters)
        if placed is not None:
            regions.status(placed[0])
    if not any(placements):
        return None
    inline = iter(request.raw_input_contents)
    raw: list[bytes | RegionSlice] = []
    for tensor, placed in zip(request.inputs, placements, strict=True):
        if placed is None:
            chunk = next(inline, None)
            if chunk is None:
                raise InvalidArgument(
                    f"input {quoted(tensor.name)} has no data (raw or shared memory)"
                )
            raw.append(chunk)
        else:
            name, offset, byte_size = placed
            raw.append(regions.slice(name, offset, byte_size))
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
                f"output {quoted(output.name)} has {len(data)} bytes; its shared-memory placement "
                f"holds {byte_size}"
            )
        regions.write(name, offset, data)
        response.raw_output_contents[index] = b""
        output.parameters[REGION].string_param = name
        output.parameters[BYTE_SIZE].int64_param = len(data)
        if offset:
            output.parameters[OFFSET].int64_param = offset
