"""The layout of ``medseg.tracking``: the store check stays free of mlflow, and models packaged
before the package was split (their code file imports ``medseg.tracking``) still resolve."""

from __future__ import annotations

import subprocess
import sys


def test_store_and_ownership_import_without_mlflow() -> None:
    # Commands check the store in seconds before they pay for importing mlflow.
    code = (
        "import sys, medseg.tracking.store, medseg.tracking.ownership; "
        "print(sorted(m for m in sys.modules if m == 'mlflow' or m.startswith('mlflow.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"


def test_old_model_code_file_resolves_the_pyfunc_class() -> None:
    from medseg.tracking import SegmentationPyfuncModel
    from medseg.tracking.packaging import SegmentationPyfuncModel as packaged

    assert SegmentationPyfuncModel is packaged
