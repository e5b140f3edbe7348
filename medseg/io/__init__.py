"""Readers and writers: NIfTI, DICOM series, atomic file output."""
