"""Every shipped config with one key misspelled is refused by the command that reads it, with
one line that names the file and the misspelled key (and the key meant, where one is close)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.faults.conftest import PhantomPlan
from tests.faults.test_cli_errors import one_error_line, run_cli

REPOSITORY = Path(__file__).resolve().parents[2]
NESTED = {  # the sections whose keys are options of a loss, an architecture, a transform...
    "train": ("network", "loss", "augmentation", "validation"),
    "plan": ("border_weights",),
    "pacs": ("connection", "filters", "retry"),
}


def _cases() -> list:
    cases = []
    for kind in ("train", "plan", "pacs"):
        for path in sorted((REPOSITORY / "configs" / kind).glob("*.yaml")):
            payload = yaml.safe_load(path.read_text())
            keys = [(next(iter(payload)),)]  # a top-level key
            keys += [(section, next(iter(payload[section]))) for section in NESTED[kind]
                     if isinstance(payload.get(section), dict) and payload[section]]  # fmt: skip
            cases += [
                pytest.param(kind, path, key, id=f"{path.name}:{'.'.join(key)}") for key in keys
            ]
    for path in sorted((REPOSITORY / "pipelines").glob("*.yaml")):
        payload = yaml.safe_load(path.read_text())
        train = next(
            i
            for i, stage in enumerate(payload["stages"])
            if stage["stage"] in ("train", "cross_validate")
        )
        option = list(payload["stages"][train])[-1]  # hippocampus-3d: max_minutes
        cases += [
            _case("pipeline", path, key) for key in [("experiment",), ("stages", train, option)]
        ]
    return cases


def _case(kind: str, path: Path, key: tuple):
    return pytest.param(kind, path, key, id=f"{kind}/{path.name}:{'.'.join(map(str, key))}")


def _misspell(payload: dict, key: tuple) -> str:
    """Drop the last letter of the key at path ``key`` (in place); the misspelled key."""
    *parents, name = key
    section = payload
    for part in parents:
        section = section[part]
    misspelled = name[:-1]
    assert misspelled not in section
    items = [(misspelled if k == name else k, v) for k, v in section.items()]
    section.clear()
    section.update(items)
    return misspelled


def _command(kind: str, path: Path, tmp_path: Path, phantom_plan: PhantomPlan) -> list:
    store = f"sqlite:///{tmp_path}/mlflow.db"
    if kind == "train":
        return ["train", "-m", phantom_plan.manifest, "-p", phantom_plan.plan, "-c", path,
                "--run-dir", tmp_path / "run", "--tracking-uri", store]  # fmt: skip
    if kind == "plan":
        return ["plan", phantom_plan.manifest, "-o", tmp_path / "plan.json", "-c", path]
    if kind == "pacs":
        return ["pacs", "pull", "-c", path, "-o", tmp_path / "pulled"]
    return ["run", path, "--data-root", tmp_path / "data", "--work-dir", tmp_path / "work",
            "--tracking-uri", store]  # fmt: skip


@pytest.mark.parametrize(("kind", "shipped", "key"), _cases())
def test_a_misspelled_key_is_refused_in_one_line_naming_the_file_and_the_key(
    kind: str, shipped: Path, key: tuple, tmp_path: Path, phantom_plan: PhantomPlan
) -> None:
    payload = yaml.safe_load(shipped.read_text())
    misspelled = _misspell(payload, key)
    path = tmp_path / shipped.name
    path.write_text(yaml.safe_dump(payload, sort_keys=False))
    (tmp_path / "data").mkdir()  # the pipelines' data root

    result = run_cli(*_command(kind, path, tmp_path, phantom_plan))

    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert line.startswith(f"error: {path.resolve() if kind == 'pipeline' else path}: "), line
    assert misspelled in line
    if kind != "pipeline" or len(key) > 1:  # the pipeline file's top level is checked by hand
        assert f"did you mean '{key[-1]}'?" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "work").exists()
    assert not (tmp_path / "plan.json").exists() and not (tmp_path / "pulled").exists()


def test_run_refuses_a_misspelled_key_in_the_train_config_a_stage_names_before_any_stage_runs(
    tmp_path: Path,
) -> None:
    pipeline = tmp_path / "pipelines" / "demo.yaml"
    pipeline.parent.mkdir()
    pipeline.write_text((REPOSITORY / "pipelines" / "demo.yaml").read_text())
    for kind in ("plan", "train"):
        (tmp_path / "configs" / kind).mkdir(parents=True)
    plan = (REPOSITORY / "configs" / "plan" / "demo.yaml").read_text()
    (tmp_path / "configs" / "plan" / "demo.yaml").write_text(plan)
    train = tmp_path / "configs" / "train" / "demo.yaml"
    train.write_text((REPOSITORY / "configs" / "train" / "demo.yaml").read_text().replace(
        "rotation_probability:", "rotation_probabilty:"
    ))  # fmt: skip
    data = tmp_path / "data"
    for folder in (
        "train/dicom",
        "train/labels",
        "heldout/dicom",
        "heldout/labels",
        "heldout/nifti",
    ):
        (data / folder).mkdir(parents=True)
    (data / "train" / "dataset.json").write_text("{}")

    result = run_cli(*_command("pipeline", pipeline, tmp_path, None))  # type: ignore[arg-type]

    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert line.startswith(f"error: {pipeline}: {train}: augmentation.rotation_probabilty: "), line
    assert "did you mean 'rotation_probability'?" in line
    assert not (tmp_path / "work").exists() and not (tmp_path / "mlflow.db").exists()
