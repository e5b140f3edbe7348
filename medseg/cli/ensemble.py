"""``medseg ensemble``: several packaged models registered as ONE model version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from medseg.cli.options import tracking_uri_option
from medseg.cli.render import console


def ensemble(
    members: list[str] = typer.Argument(
        ...,
        metavar="MEMBER_URI...",
        help="Two or more models: models:/NAME@ALIAS, models:/NAME/N, runs:/ID/model, folder.",
    ),
    register: str = typer.Option(..., "--register", help="Register the ensemble under this name."),
    alias: str | None = typer.Option(None, "--alias", help="Point this alias at the new version."),
    postprocessing: Path | None = typer.Option(
        None,
        "--postprocessing",
        exists=True,
        dir_okay=False,
        help="JSON object stored as the package's postprocessing.json.",
    ),
    experiment: str = typer.Option("ensembles", help="MLflow experiment of the ensemble's run."),
    tracking_uri: str | None = tracking_uri_option("MLflow tracking URI of members and registry."),
) -> None:
    """Average the probabilities of MEMBER_URIs (folds, 2D and 3D configurations) in one model.

    The members must share one plan and label names. The ensemble is registered as a new
    version of --register; `medseg predict --model models:/NAME@ALIAS` and `medseg batch` use it
    like any model. Prints the new model URI.
    """
    from medseg.tracking.store import require_store_for_model

    for member in members:
        require_store_for_model(member, tracking_uri)  # seconds, before the heavy imports
    from medseg.tracking.ensemble import register_ensemble

    registered = register_ensemble(
        members,
        name=register,
        alias=alias,
        tracking_uri=tracking_uri,
        postprocessing=_read_postprocessing(postprocessing) if postprocessing else None,
        experiment=experiment,
    )
    for index, entry in enumerate(registered.members):
        console.print(
            f"member {index}: {escape(entry['source'])} ({entry['configuration']}, "
            f"run {entry['run_id'] or '-'})"
        )
    aliased = f" (alias {escape(alias)})" if alias else ""
    console.print(
        f"registered an ensemble of {len(registered.members)} members as "
        f"{escape(registered.model_uri)}{aliased}, run {registered.run_id}"
    )


def _read_postprocessing(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        ConfigError: the file is not JSON or holds something else than an object.
    """
    from medseg.errors import ConfigError

    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: cannot read post-processing rules: {error}") from error
    if not isinstance(payload, dict):
        raise ConfigError(f"{path}: post-processing rules must be a JSON object")
    return payload
