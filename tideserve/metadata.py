"""Metadata keys the services set: request metadata for each other, and the error-reason
trailer, which clients see too."""

# On batcher -> balancer Dispatch calls, so the balancer routes without parsing the batch.
MODEL_KEY = "tideserve-model"
ROWS_KEY = "tideserve-rows"
# The Batch's id, so the balancer can log it without parsing the batch bytes it forwards.
BATCH_ID_KEY = "tideserve-batch-id"
# Trailing metadata on a failed call: the machine-readable reason of a `TideserveError`
# (`worker-lost`, `no-ready-worker`, `balancer-unreachable`, `deadline`, `version-not-served`),
# for failures that share a status code. Set by `serving.ErrorMapping`, read back by
# `serving.error_from_rpc`.
REASON_KEY = "tideserve-error-reason"
