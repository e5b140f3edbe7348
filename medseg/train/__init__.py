"""Training stage: data from the cache, the loop (AMP, DDP, checkpoints), validation."""
