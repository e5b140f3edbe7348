"""A team-style MLflow server on a real PostgreSQL backend store: log, register, promote, load.

PostgreSQL is started by the test (``tests/postgres_server.py``) and FAILS the test when it is
not installed; ``make test`` installs it (``.ci/provision.sh``). Artifacts are proxied by the
server (``--serve-artifacts``), so the client only talks HTTP, as it does with a team server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.infer.predictor import load_packaged_model
from medseg.infer.sliding_window import predict_probabilities
from medseg.preprocess.case import preprocess_case
from medseg.tracking.registry import Alias, register_and_promote
from tests.mlflow_server import running_mlflow_server
from tests.packaged_model import log_tiny_unet
from tests.phantoms import small_phantom
from tests.postgres_server import PostgresServer, postgres_server  # noqa: F401
from tests.tiny_dataset import SEEDS, TinyDataset

MODEL_NAME = "phantoms-postgres"
RUN_NAME = "postgres-backend"
SCAN_SEED = 11  # not one of the tiny dataset's phantoms


@dataclass
class Tracked:
    server_url: str
    server_folder: Path
    run_id: str
    version: str
    network: torch.nn.Module


@pytest.fixture(scope="module")
def tracked(
    postgres_server: PostgresServer,  # noqa: F811
    tiny_dataset: TinyDataset,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Tracked]:
    """A small U-Net logged, registered and promoted to champion on the PostgreSQL server."""
    folder = tmp_path_factory.mktemp("mlflow-postgres")
    backend = postgres_server.uri()
    with running_mlflow_server(folder, backend_store_uri=backend, timeout_s=120) as url:
        logged = log_tiny_unet(
            tiny_dataset.plan,
            url,
            experiment="postgres",
            run_name=RUN_NAME,
            registered_model_name=MODEL_NAME,
        )
        info, network = logged.info, logged.network
        version = str(info.registered_model_version)
        promotion = register_and_promote(version, name=MODEL_NAME, metric=0.8, tracking_uri=url)
        assert promotion.promoted and promotion.champion_version == version
        yield Tracked(url, folder, logged.run_id, version, network)


def test_champion_from_postgres_server_predicts_like_in_memory_network(tracked: Tracked) -> None:
    assert SCAN_SEED not in SEEDS
    model = load_packaged_model(
        f"models:/{MODEL_NAME}@{Alias.CHAMPION}", tracking_uri=tracked.server_url
    )
    configuration = model.plan.configurations[model.members[0].configuration]
    scan, _ = small_phantom(SCAN_SEED)
    case = preprocess_case(scan, None, model.plan, case_id="scan")
    image = torch.from_numpy(case.image)
    options = {"patch_size": configuration.patch_size, "num_classes": model.num_classes}
    with torch.inference_mode():
        loaded = predict_probabilities(model.members[0].network.cpu(), image, **options).numpy()
        expected = predict_probabilities(tracked.network, image, **options).numpy()
    assert loaded.shape == (6, *image.shape[1:])
    np.testing.assert_allclose(loaded, expected, atol=1e-5)


def test_run_and_model_version_rows_are_in_postgres(
    tracked: Tracked,
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    with contextlib.closing(postgres_server.connect()) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT name, status FROM runs WHERE run_uuid = %s", (tracked.run_id,))
        assert cursor.fetchall() == [(RUN_NAME, "FINISHED")]
        cursor.execute("SELECT version, run_id FROM model_versions WHERE name = %s", (MODEL_NAME,))
        assert cursor.fetchall() == [(int(tracked.version), tracked.run_id)]
        cursor.execute(
            "SELECT alias, version FROM registered_model_aliases WHERE name = %s", (MODEL_NAME,)
        )
        assert sorted(cursor.fetchall()) == [
            (Alias.CANDIDATE.value, int(tracked.version)),
            (Alias.CHAMPION.value, int(tracked.version)),
        ]
    # nothing went to a SQLite file; the weights went to the server's artifact destination
    assert not (tracked.server_folder / "mlflow.db").exists()
    assert list((tracked.server_folder / "artifacts").rglob("weights.pt"))
