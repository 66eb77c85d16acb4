"""The worker: loads PyTorch models from a model repository and runs batches on GPU or CPU."""
