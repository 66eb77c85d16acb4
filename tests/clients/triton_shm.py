"""Run by the tests in a process of its own (tritonclient's protobuf symbols clash with ours).

Usage: python -m tests.clients.triton_shm ADDRESS REPOSITORY MODEL
Puts a 3-row input and the output in system shared memory with tritonclient.utils.shared_memory,
registers both regions, infers over unary and over the stream, and checks the output region
against the TorchScript file run here; then reads the region status, unregisters, and prints one
JSON line of what it saw. Exits 1 on a mismatch.
"""

from __future__ import annotations

import json
import os
import queue
import sys
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc as triton
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException


def main(address: str, repository: Path, model: str) -> int:
    client = triton.InferenceServerClient(address)
    metadata = client.get_model_metadata(model, as_json=True)
    input_meta, output_meta = metadata["inputs"][0], metadata["outputs"][0]
    dims = [int(d) for d in input_meta["shape"][1:]]
    batch = np.random.default_rng(3).standard_normal([3, *dims]).astype(np.float32)
    module = torch.jit.load(str(repository / model / "1" / "model.pt")).eval()
    with torch.inference_mode():
        expected = module(torch.from_numpy(batch)).numpy()

    tag = f"tideserve_test_{os.getpid()}"
    input_handle = shm.create_shared_memory_region(f"{tag}_in", f"/{tag}_in", batch.nbytes)
    output_handle = shm.create_shared_memory_region(f"{tag}_out", f"/{tag}_out", expected.nbytes)
    seen: dict[str, object] = {}
    try:
        shm.set_shared_memory_region(input_handle, [batch])
        client.register_system_shared_memory(f"{tag}_in", f"/{tag}_in", batch.nbytes)
        client.register_system_shared_memory(f"{tag}_out", f"/{tag}_out", expected.nbytes)
        try:
            client.register_system_shared_memory(f"{tag}_in", f"/{tag}_in", batch.nbytes)
        except InferenceServerException as error:
            seen["register_twice"] = error.status()

        tensor = triton.InferInput(input_meta["name"], list(batch.shape), "FP32")
        tensor.set_shared_memory(f"{tag}_in", batch.nbytes)
        output = triton.InferRequestedOutput(output_meta["name"])
        output.set_shared_memory(f"{tag}_out", expected.nbytes)

        result = client.infer(model, [tensor], outputs=[output])
        placed = result.get_output(output_meta["name"])
        unary = shm.get_contents_as_numpy(output_handle, np.float32, list(placed.shape))
        seen["unary_close"] = bool(np.allclose(unary, expected, rtol=1e-4, atol=1e-5))
        seen["unary_output_region"] = placed.parameters["shared_memory_region"].string_param

        shm.set_shared_memory_region(output_handle, [np.zeros_like(expected)])
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        client.async_stream_infer(model, [tensor], outputs=[output])
        _, error = answers.get(timeout=30)
        client.stop_stream()
        streamed = shm.get_contents_as_numpy(output_handle, np.float32, list(expected.shape))
        seen["stream_error"] = str(error) if error else None
        seen["stream_close"] = bool(np.allclose(streamed, expected, rtol=1e-4, atol=1e-5))

        status = client.get_system_shared_memory_status(as_json=True)
        seen["status"] = sorted(
            (r["name"], r["key"], int(r.get("byte_size", 0)))
            for r in status.get("regions", {}).values()
        )
        client.unregister_system_shared_memory(f"{tag}_in")
        try:
            client.infer(model, [tensor], outputs=[output])
        except InferenceServerException as error:
            seen["after_unregister"] = error.status()
        client.unregister_system_shared_memory()
        seen["status_after"] = client.get_system_shared_memory_status(as_json=True)
        seen["input_bytes"], seen["output_bytes"] = batch.nbytes, expected.nbytes
        seen["tag"] = tag
    finally:
        shm.destroy_shared_memory_region(input_handle)
        shm.destroy_shared_memory_region(output_handle)
    print(json.dumps(seen))
    return 0 if seen.get("unary_close") and seen.get("stream_close") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3]))
