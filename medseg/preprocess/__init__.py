"""Preprocess stage: fingerprint, plan, resample, normalize, crop, cache, sampling, weights."""
