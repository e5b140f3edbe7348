"""Pipelines: YAML files naming stages, run in order with skip-when-unchanged records."""
