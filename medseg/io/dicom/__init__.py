"""DICOM: image series read into volumes; the SEG, SR and secondary capture objects medseg writes.

Reading a series: ``scan`` (headers of files, one frame record per image), ``mosaic`` (Siemens
mosaics), ``metadata`` (the allow-listed series facts), ``geometry`` (slice order and spacing
rules), ``corrections`` (gantry tilt, unequal slices), ``pixels`` and ``fastpath`` (decoding),
``series`` (files -> series -> ``Volume``). Writing: ``seg`` (DICOM SEG), ``sr`` (volume
report), ``sc`` (overlay capture).
"""

from medseg.io.dicom.series import (
    DicomScan,
    DicomSeries,
    load_series,
    read_dicom_series,
    scan_dicom_files,
)

__all__ = ["DicomScan", "DicomSeries", "load_series", "read_dicom_series", "scan_dicom_files"]
