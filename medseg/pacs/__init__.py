"""Hospital integration: pull series from a PACS, push SEG + volume reports back.

``config`` (the YAML PACS file), ``secrets``, ``client`` (the protocol-neutral interface) with
``dicomweb`` and ``dimse`` implementations, ``filters`` (which series), ``retry``, ``pull``,
``push``, ``state`` (what was pulled and delivered) and ``batch`` (pull -> segment -> push).
"""
