"""Synthetic CT phantom and DICOM series writer, so the demo runs on a fresh machine."""
