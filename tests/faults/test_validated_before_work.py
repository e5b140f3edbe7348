"""Everything a command needs is checked before its work starts: a mistake in the training
config is reported before the dataset is preprocessed, a pipeline's ``--set`` overrides and
the files its stages name before the first stage runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.conftest import PhantomPlan
from tests.faults.test_cli_errors import one_error_line, run_cli
from tests.phantoms import write_phantom_nifti


@pytest.mark.parametrize(
    ("config_text", "what"),
    [
        ("epochs: 2\nlearning_rat: 0.01\n", "learning_rat: Extra inputs are not permitted"),
        ("configuration: 2d\nepochs: 0\n", "epochs: Input should be greater than or equal to 1"),
        ("architecture: unett\n", "architecture: unknown architecture 'unett'; known: unet,"),
        ("network: {base_filter: 4}\n", "network: unknown unet option 'base_filter'; valid"),
        ("loss: dice_cee\n", "loss: unknown loss 'dice_cee'; valid losses: ce, dice_ce,"),
    ],
    ids=["unknown key", "invalid value", "unknown architecture", "unknown network option", "loss"],
)
def test_train_refuses_a_bad_config_before_it_preprocesses(
    phantom_plan: PhantomPlan, tmp_path: Path, config_text: str, what: str
) -> None:
    manifest, plan = phantom_plan.manifest, phantom_plan.plan
    config = tmp_path / "train.yaml"
    config.write_text(config_text)
    cache = tmp_path / "cache"
    result = run_cli(
        "train", "-m", manifest, "-p", plan, "-c", config, "--cache", cache,
        "--run-dir", tmp_path / "run", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert line.startswith(f"error: {config}: "), line
    assert what in line
    assert not cache.exists()  # nothing was preprocessed
    assert not (tmp_path / "run").exists()


PIPELINE = """name: phantoms
stages:
  - {stage: ingest, input: scans, workers: 1}
  - {stage: plan, config: plan.yaml}
"""


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    """A two-stage pipeline over one phantom scan; the plan config is present."""
    write_phantom_nifti(tmp_path / "data" / "scans" / "case.nii.gz")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "plan.yaml").write_text("patch_size_3d: [32, 32, 32]\n")
    path = tmp_path / "configs" / "pipeline.yaml"
    path.write_text(PIPELINE.replace("config: plan.yaml", "config: configs/plan.yaml"))
    return path


def _run(tmp_path: Path, pipeline: Path, *options: str):
    return run_cli(
        "run", pipeline, "--data-root", tmp_path / "data", "--work-dir", tmp_path / "work",
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *options,
    )  # fmt: skip


def _nothing_ran(tmp_path: Path) -> bool:
    return not (tmp_path / "work").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("override", "what"),
    [
        ("ingest.workers=", "--set 'ingest.workers=': empty value; give one, or 'null'"),
        ("ingest.workers= ", "--set 'ingest.workers= ': empty value"),
        ("ingest.workers", "--set 'ingest.workers': expected STAGE.KEY=VALUE"),
        ("workers=2", "--set 'workers=2': expected STAGE.KEY=VALUE"),
        (".workers=2", "--set '.workers=2': expected STAGE.KEY=VALUE"),
        ("ingest.workers=[2", "--set 'ingest.workers=[2': the value is not valid YAML"),
        ("ingest.stage=plan", "--set 'ingest.stage=plan': a stage's kind and name are not options"),
        ("train.epochs=2", "--set 'train.epochs=2': no stage named 'train'"),
        ("ingest.workers=0", "ingest): workers: Input should be greater than or equal to 1"),
        ("ingest.worker=2", "ingest): worker: Extra inputs are not permitted"),
    ],
)
def test_run_refuses_a_bad_set_before_any_stage_runs(
    tmp_path: Path, pipeline: Path, override: str, what: str
) -> None:
    result = _run(tmp_path, pipeline, "--set", override)
    assert result.exit_code == 2, result.output
    assert what in one_error_line(result.output)
    assert _nothing_ran(tmp_path)


@pytest.mark.parametrize(
    ("override", "missing"),
    [
        ("plan.config=configs/plan-typo.yaml", "stage 'plan': 'configs/plan-typo.yaml' not found"),
        ("ingest.labels=labels", "stage 'ingest': 'labels' not found under the data root"),
    ],
    ids=["stage config", "stage data"],
)
def test_run_refuses_a_file_a_stage_names_that_does_not_exist_before_any_stage_runs(
    tmp_path: Path, pipeline: Path, override: str, missing: str
) -> None:
    result = _run(tmp_path, pipeline, "--set", override)
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert line.startswith(f"error: {pipeline}: "), line
    assert missing in line
    assert _nothing_ran(tmp_path)


def test_run_checks_only_the_stages_it_reaches(tmp_path: Path, pipeline: Path) -> None:
    result = _run(tmp_path, pipeline, "--to", "ingest", "--set", "plan.config=missing.yaml")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "work" / "ingest" / "manifest.jsonl").is_file()
    assert not (tmp_path / "work" / "plan").exists()
