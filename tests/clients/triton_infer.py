"""Run by the tests in a process of its own: tritonclient's generated code and ours both define
the `inference.*` protobuf symbols, which cannot share one descriptor pool.

Usage: python -m tests.clients.triton_infer ADDRESS REPOSITORY MODEL [MODEL ...]
For each model, sends a batch of 3 random rows with tritonclient.grpc and compares the answer with
the TorchScript file run in this process. Prints one JSON line per model; exits 1 on a mismatch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc as triton


def main(address: str, repository: Path, models: list[str]) -> int:
    client = triton.InferenceServerClient(address)
    if not (client.is_server_live() and client.is_server_ready()):
        print(json.dumps({"error": "server not live and ready"}))
        return 1
    rng = np.random.default_rng(1)
    failed = False
    for model in models:
        metadata = client.get_model_metadata(model, as_json=True)
        config = client.get_model_config(model, as_json=True)["config"]
        tensor_meta = metadata["inputs"][0]
        dims = [int(d) for d in tensor_meta["shape"][1:]]
        batch = rng.standard_normal([3, *dims]).astype(np.float32)
        tensor = triton.InferInput(tensor_meta["name"], list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        output_name = metadata["outputs"][0]["name"]
        result = client.infer(model, [tensor]).as_numpy(output_name)
        module = torch.jit.load(str(repository / model / "1" / "model.pt")).eval()
        with torch.inference_mode():
            expected = module(torch.from_numpy(batch)).numpy()
        close = (
            result is not None
            and result.shape == expected.shape
            and bool(np.allclose(result, expected, rtol=1e-4, atol=1e-5))
        )
        failed |= not close
        print(
            json.dumps(
                {
                    "model": model,
                    "ready": client.is_model_ready(model),
                    "allclose": close,
                    "shape": list(result.shape) if result is not None else None,
                    "max_batch_size": int(config.get("max_batch_size", 0)),
                    "dynamic_batching": "dynamic_batching" in config,
                }
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:]))
