"""The Kubernetes manifests in ``deploy/`` are valid API objects for every Kubernetes version
they say they need, and the Indexed Job hands each pod the shard ``medseg batch`` expects.

Validated with ``kubernetes-validate`` (the API's OpenAPI schemas, bundled per version) in
strict mode, so a misspelled or misplaced field fails like a required one that is missing.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml
from packaging.version import Version

from medseg.batch.sharding import SHARD_COUNT_VARIABLE, Shard, shard_from_environment, shard_of
from medseg.cli.app import app

REPOSITORY = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((REPOSITORY / "deploy").glob("*/*.yaml"))
OLDEST_SUPPORTED = Version("1.29")  # deploy/k8s/medseg-batch-job.yaml: backoffLimitPerIndex


def _supported_versions() -> list[str]:
    """Every bundled Kubernetes minor version from the oldest the manifests support."""
    latest = Version(kubernetes_validate.latest_version())
    return [f"1.{minor}.0" for minor in range(OLDEST_SUPPORTED.minor, latest.minor + 1)]


def _documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def _containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of a Job's or CronJob's pod template."""
    spec = document["spec"]
    if document["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]["containers"]


def _batch_job() -> dict[str, Any]:
    (job,) = [
        d for d in _documents(REPOSITORY / "deploy/k8s/medseg-batch-job.yaml") if d["kind"] == "Job"
    ]
    return job


def test_the_manifests_are_found() -> None:
    names = {path.relative_to(REPOSITORY).as_posix() for path in MANIFESTS}
    assert {
        "deploy/k8s/medseg-batch-job.yaml",
        "deploy/k8s/medseg-batch-summary-job.yaml",
        "deploy/pacs/medseg-nightly-cronjob.yaml",
    } <= names


@pytest.mark.parametrize("version", _supported_versions())
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_every_manifest_is_a_valid_api_object(path: Path, version: str) -> None:
    for document in _documents(path):
        kubernetes_validate.validate(document, version, strict=True)


def test_a_mistake_in_a_manifest_is_caught() -> None:
    job = copy.deepcopy(_batch_job())
    job["spec"]["completion"] = job["spec"].pop("completions")
    with pytest.raises(kubernetes_validate.ValidationError, match="completion"):
        kubernetes_validate.validate(job, _supported_versions()[-1], strict=True)


def test_each_index_of_the_indexed_job_is_its_own_shard_of_the_batch() -> None:
    job = _batch_job()
    assert job["spec"]["completionMode"] == "Indexed"
    completions = job["spec"]["completions"]
    (container,) = _containers(job)
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    assert env[SHARD_COUNT_VARIABLE] == str(completions)
    shards = [
        shard_from_environment(env | {"JOB_COMPLETION_INDEX": str(index)})
        for index in range(completions)
    ]
    assert shards == [Shard(index, completions) for index in range(completions)]
    keys = [f"scan-{number}" for number in range(400)]
    owners = {key: [s.index for s in shards if shard_of(key, s.count) == s.index] for key in keys}
    assert all(len(owner) == 1 for owner in owners.values())  # every scan in exactly one pod
    assert {owner[0] for owner in owners.values()} == set(range(completions))


def _options(command: str) -> set[str]:
    click_command = typer.main.get_command(app).commands[command]
    return {name for parameter in click_command.params for name in parameter.opts}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_the_containers_call_medseg_commands_with_options_it_has(path: Path) -> None:
    for document in _documents(path):
        if document["kind"] not in ("Job", "CronJob"):
            continue
        for container in _containers(document):
            command, *arguments = container["args"]
            options = {a.split("=", 1)[0] for a in arguments if a.startswith("--")}
            assert options <= _options(command), (path.name, options - _options(command))
