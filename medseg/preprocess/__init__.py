"""Preprocess stage: fingerprint, plan, resample, normalize, crop, cache, border weights."""
