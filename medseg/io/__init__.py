"""Readers and writers: volume file formats (``formats``: NIfTI, NRRD, MetaImage), DICOM
series, atomic file output."""
