"""Run by the tests in a process of its own (see triton_infer.py for why): the model lifecycle and
statistics calls of tritonclient.grpc, unchanged, against a batcher.

Usage: python -m tests.clients.triton_lifecycle ADDRESS ACTION [ARG ...]
  infer MODEL COUNT [VERSION]   COUNT inferences of one random row each
  stats [MODEL]                 get_inference_statistics
  load MODEL                    load_model
  unload MODEL                  unload_model
  index                         get_model_repository_index
Prints one JSON object: the call's answer, or {"error": ..., "status": ...} when it raised.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def infer(client: triton.InferenceServerClient, model: str, count: int, version: str) -> dict:
    metadata = client.get_model_metadata(model, as_json=True)
    tensor_meta = metadata["inputs"][0]
    dims = [int(d) for d in tensor_meta["shape"][1:]]
    rng = np.random.default_rng(3)
    versions = set()
    for _ in range(count):
        row = rng.standard_normal([1, *dims]).astype(np.float32)
        tensor = triton.InferInput(tensor_meta["name"], list(row.shape), "FP32")
        tensor.set_data_from_numpy(row)
        result = client.infer(model, [tensor], model_version=version)
        versions.add(result.get_response(as_json=True)["model_version"])
    return {"ok": count, "versions": sorted(versions)}


def main(address: str, action: str, args: list[str]) -> int:
    client = triton.InferenceServerClient(address)
    try:
        if action == "infer":
            answer = infer(client, args[0], int(args[1]), args[2] if len(args) > 2 else "")
        elif action == "stats":
            answer = client.get_inference_statistics(args[0] if args else "", as_json=True)
        elif action == "load":
            client.load_model(args[0])
            answer = {"ok": True}
        elif action == "unload":
            client.unload_model(args[0])
            answer = {"ok": True}
        elif action == "index":
            answer = {"models": client.get_model_repository_index(as_json=True).get("models", [])}
        else:
            raise SystemExit(f"unknown action {action!r}")
    except InferenceServerException as error:
        answer = {"error": error.message(), "status": error.status()}
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
