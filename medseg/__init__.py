"""medseg: medical-image segmentation pipeline (ingest, preprocess, train, infer, evaluate)."""

__version__ = "0.1.0"
