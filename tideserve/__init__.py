"""tideserve: a gRPC serving stack for PyTorch models — batcher, balancer, workers, scaler.

This package holds what every service shares: generated protobuf code (`tideserve.v1`), the tensor
codec, gRPC options and server plumbing, settings loading, errors and logging. Services live in
`services/` and import only this package, never each other.
"""

__version__ = "0.1.0"
