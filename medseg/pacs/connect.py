"""Open the client a PACS file asks for (DICOMweb or DIMSE)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from medseg.pacs.client import PacsClient
from medseg.pacs.config import ConnectionSettings


def open_client(connection: ConnectionSettings) -> PacsClient:
    """A client for ``connection``; credentials are read now (env or secrets file)."""
    if connection.protocol == "dimse":
        from medseg.pacs.dimse import DimseClient

        assert connection.dimse is not None  # checked by the config model
        return DimseClient(connection.dimse, connection.name)
    from medseg.pacs.dicomweb import DicomwebClient

    assert connection.dicomweb is not None
    return DicomwebClient(connection.dicomweb, connection.name)


@contextlib.contextmanager
def connected(connection: ConnectionSettings) -> Iterator[PacsClient]:
    """``open_client`` as a context manager that closes the client."""
    client = open_client(connection)
    try:
        yield client
    finally:
        client.close()
