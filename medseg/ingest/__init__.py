"""Ingest stage: scan folders of DICOM series and volume files (NIfTI, NRRD, MetaImage) into
canonical volumes + manifest."""

from medseg.ingest.stage import EXIT_SOME_FAILED, IngestOutcome, IngestReport, OutcomeKind, ingest

__all__ = ["EXIT_SOME_FAILED", "IngestOutcome", "IngestReport", "OutcomeKind", "ingest"]
