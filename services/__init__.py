"""tideserve services: each folder is one process that talks to the others only over gRPC."""
