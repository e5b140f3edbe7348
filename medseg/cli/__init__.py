"""The ``medseg`` command line: parse, call one function, print.

One module per command group (``data``, ``preprocess``, ``train``, ``predict``, ``batch``,
``evaluate``, ``pipeline``, ``pacs``), each with its summary; ``app`` registers them under the
root command; ``options`` declares the options several commands share, ``checks`` their
checks, ``render`` the shared console and progress bars, ``errors`` the error policy (exit
codes).
"""

from medseg.cli.app import app, main

__all__ = ["app", "main"]
