"""Evaluate stage: per-structure metrics, organ volumes, reports."""
