"""Request metadata keys the services set for each other (never for clients)."""

# On batcher -> balancer Dispatch calls, so the balancer routes without parsing the batch.
MODEL_KEY = "tideserve-model"
ROWS_KEY = "tideserve-rows"
# The Batch's id, so the balancer can log it without parsing the batch bytes it forwards.
BATCH_ID_KEY = "tideserve-batch-id"
