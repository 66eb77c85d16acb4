"""The batcher: the client-facing GRPCInferenceService, with a dynamic batching queue per model."""
