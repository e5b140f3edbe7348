"""The worked examples of docs/extending.md work: each example module is run as the guide
writes it, put in its table as the guide's entry does, and used from end to end (a training
config, ``build_network``, a pipeline file, discovery, ``medseg --help``). Every table is
restored afterwards, and the tests check the example is unknown without its entry."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from medseg.errors import MedsegError
from tests.doc_examples import ROOT, example_module, fenced_languages, marked_blocks, run_example
from tests.phantoms import small_phantom

PHANTOM_CLASSES = 6  # background and the five structures of tests/phantoms.py


@contextmanager
def entry(table: MutableMapping, key: str, value: object) -> Iterator[None]:
    """``table[key] = value`` (the guide's table entry) while in use; the table as it was after."""
    assert key not in table, f"{key!r} is built in already: the example must add something new"
    table[key] = value
    try:
        yield
    finally:
        del table[key]


# --- the guide itself ---------------------------------------------------------------------------


def test_every_code_block_is_a_checked_example_or_entry() -> None:
    blocks = marked_blocks()
    assert {b.name for b in blocks if b.kind == "example"} == {
        "loss",
        "loss-use",
        "architecture",
        "architecture-use",
        "stage",
        "stage-use",
        "format",
        "format-use",
        "command",
    }
    assert all(b.language == ("python" if b.kind == "example" else "diff") for b in blocks)
    assert len(fenced_languages()) == len(blocks), "an unmarked code block is not checked"


@pytest.mark.parametrize(
    "block", [b for b in marked_blocks() if b.kind == "entry"], ids=lambda b: b.name
)
def test_each_table_entry_names_lines_that_are_in_its_file(block) -> None:
    """The unchanged and removed lines of the diff are in the file; the added ones are not."""
    lines = {line.strip() for line in (ROOT / block.name).read_text().splitlines()}
    for line in block.code.splitlines():
        marker, text = line[:1], line[1:].strip()
        if line.startswith("@@") or not text:
            continue
        if marker in (" ", "-"):
            assert text in lines, f"{block.name} no longer has: {text}"
        else:
            assert marker == "+", line
            assert text not in lines, f"{block.name} has the example already: {text}"


# --- a loss -------------------------------------------------------------------------------------


@pytest.fixture
def tversky() -> Iterator[type]:
    from medseg.losses import LOSSES

    with example_module("loss") as module, entry(LOSSES, "tversky", module.TverskyLoss):
        yield module.TverskyLoss


def test_the_example_loss_is_unknown_without_its_entry() -> None:
    from medseg.losses import parse_loss_spec

    with pytest.raises(MedsegError, match="tversky"):
        parse_loss_spec("tversky")


def test_the_example_loss_is_taken_by_a_training_config_and_computes(tversky) -> None:
    from medseg.losses import CombinedLoss
    from medseg.train.config import TrainConfig

    built = run_example("loss-use")
    assert isinstance(built["loss"], CombinedLoss)
    config = TrainConfig.model_validate({"loss": {"tversky": {"alpha": 0.3, "beta": 0.7}}})
    assert config.loss.model_dump() == {"tversky": {"alpha": 0.3, "beta": 0.7}}
    _, labels = small_phantom(1)
    target = torch.from_numpy(labels.array.astype(np.int64))[None]  # (1, 49, 39, 33)
    logits = torch.randn(1, PHANTOM_CLASSES, *target.shape[1:], requires_grad=True)
    value = built["loss"](logits, target)
    assert math.isfinite(value.item()) and value.item() > 0
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    perfect = torch.nn.functional.one_hot(target, PHANTOM_CLASSES).movedim(-1, 1).float() * 50
    assert tversky()(perfect, target).item() == pytest.approx(0.0, abs=1e-6)


def test_a_misspelt_option_of_the_example_loss_is_refused_when_the_config_is_read(
    tversky,
) -> None:
    from medseg.train.config import TrainConfig

    with pytest.raises(ValidationError, match="betta"):
        TrainConfig.model_validate({"loss": {"tversky": {"betta": 0.7}}})


# --- an architecture ----------------------------------------------------------------------------


@pytest.fixture
def dilated() -> Iterator[type]:
    import medseg.models
    from medseg.models import ARCHITECTURES

    with (
        example_module("architecture") as module,
        entry(ARCHITECTURES, "dilated", module.DilatedNet),
    ):
        try:
            yield module.DilatedNet
        finally:
            medseg.models._options_model.cache_clear()  # forget the example's options model


def test_the_example_architecture_is_unknown_without_its_entry() -> None:
    from medseg.models import build_network

    with pytest.raises(MedsegError, match="dilated"):
        build_network(architecture="dilated")


def test_the_example_architecture_builds_from_a_config_and_runs(dilated) -> None:
    from medseg.models import build_network
    from medseg.train.config import TrainConfig

    network = run_example("architecture-use")["network"]
    assert isinstance(network, dilated)
    with torch.no_grad():
        assert network(torch.zeros(1, 1, 32, 24, 16)).shape == (1, PHANTOM_CLASSES, 32, 24, 16)
    flat = build_network(
        architecture="dilated", in_channels=1, num_classes=3, pool_strides=[], spatial_dims=2
    )
    with torch.no_grad():
        assert flat(torch.zeros(2, 1, 20, 28)).shape == (2, 3, 20, 28)
    config = TrainConfig.model_validate({"architecture": "dilated", "network": {"filters": 8.0}})
    assert config.network == {"filters": 8}
    with pytest.raises(ValidationError, match="filter"):
        TrainConfig.model_validate({"architecture": "dilated", "network": {"filter": 8}})


# --- a pipeline stage ---------------------------------------------------------------------------


@pytest.fixture
def count_cases() -> Iterator[object]:
    from medseg.pipeline.stages import STAGES

    with example_module("stage") as module, entry(STAGES, "count-cases", module.COUNT_CASES):
        yield module.COUNT_CASES


def _census_project(folder: Path) -> Path:
    from tests.tiny_dataset import write_tiny_dataset

    write_tiny_dataset(folder / "data" / "phantoms")
    pipeline = folder / "census.yaml"
    pipeline.write_text(str(run_example("stage-use")["PIPELINE"]))
    return pipeline


def test_the_example_stage_is_unknown_without_its_entry(tmp_path: Path) -> None:
    from medseg.pipeline.spec import load_pipeline

    with pytest.raises(MedsegError, match="count-cases"):
        load_pipeline(_census_project(tmp_path))


def test_the_example_stage_runs_in_a_pipeline_file(tmp_path: Path, count_cases) -> None:
    from medseg.pipeline.runner import run_pipeline
    from medseg.pipeline.spec import load_pipeline

    pipeline = _census_project(tmp_path)
    report = run_pipeline(
        load_pipeline(pipeline),
        work_dir=tmp_path / "work",
        tracking=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    assert report.exit_code == 0, [(r.stage, r.error) for r in report.records]
    counts = json.loads((tmp_path / "work/count-cases/case_counts.json").read_text())
    assert counts == {"train": 3, "val": 2}  # five phantoms, val_fraction 0.4
    assert report.provided("case_counts") == tmp_path / "work/count-cases/case_counts.json"
    again = run_pipeline(
        load_pipeline(pipeline),
        work_dir=tmp_path / "work",
        tracking=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    assert again.skipped == ["dataset", "count-cases"]


def test_a_misspelt_option_of_the_example_stage_is_refused(tmp_path: Path, count_cases) -> None:
    from medseg.pipeline.spec import load_pipeline

    pipeline = _census_project(tmp_path)
    pipeline.write_text(pipeline.read_text().replace("labelled_only", "labeled_only"))
    with pytest.raises(MedsegError, match="labeled_only"):
        load_pipeline(pipeline)


# --- an input format ----------------------------------------------------------------------------


@pytest.fixture
def npvol() -> Iterator[object]:
    from medseg.io.formats import format_names, register_format, unregister_format

    assert "npvol" not in format_names()
    with example_module("format") as module:
        register_format(module.NPVOL)
        try:
            yield module.NPVOL
        finally:
            unregister_format("npvol")


def test_the_example_format_is_read_written_and_found_by_discovery(tmp_path: Path, npvol) -> None:
    from medseg.ingest.discovery import discover_scans
    from medseg.io.formats import read_volume, write_volume

    run_example("format-use")
    ct, labels = small_phantom(2)
    write_volume(ct, tmp_path / "scans" / "ct.npvol")
    [task] = discover_scans(tmp_path / "scans").tasks
    scan = task.read()
    np.testing.assert_array_equal(scan.array, ct.array)
    np.testing.assert_allclose(scan.affine_ras, ct.affine_ras)
    written = write_volume(labels, tmp_path / "labels.npvol", "npvol")
    assert read_volume(written).same_grid(labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.npvol", "scans"]  # no .tmp-*
    (tmp_path / "broken.npvol").write_text("not numpy")
    with pytest.raises(MedsegError, match=r"broken\.npvol"):
        read_volume(tmp_path / "broken.npvol")


# --- a command ----------------------------------------------------------------------------------


@pytest.fixture
def describe() -> Iterator[object]:
    from medseg.cli import app

    with example_module("command") as module:
        app.command()(module.describe)  # the guide's entry in medseg/cli/app.py
        try:
            yield module.describe
        finally:
            app.registered_commands[:] = [
                c for c in app.registered_commands if c.callback is not module.describe
            ]


def _medseg(*arguments: object):
    from medseg.cli import app

    return CliRunner().invoke(app, [str(a) for a in arguments], prog_name="medseg")


def test_the_example_command_is_unknown_without_its_entry() -> None:
    assert _medseg("describe", "x").exit_code == 2


def test_the_example_command_is_listed_and_describes_a_volume(tmp_path: Path, describe) -> None:
    from medseg.io.formats import write_volume

    assert "describe" in _medseg("--help").output
    ct, _ = small_phantom(3)
    scan = write_volume(ct, tmp_path / "ct.nrrd")
    result = _medseg("describe", scan)
    assert result.exit_code == 0, result.output
    spacing = " x ".join(f"{mm:g}" for mm in ct.spacing_mm)
    shape = " x ".join(map(str, ct.shape))
    assert " ".join(result.output.split()) == (
        f"ct.nrrd: nrrd, {shape} voxels of {spacing} mm, {ct.orientation}"
    )
    (tmp_path / "notes.txt").write_text("not a scan")
    refused = _medseg("describe", tmp_path / "notes.txt")
    assert refused.exit_code == 2
    assert refused.output.startswith("error: ") and "notes.txt" in refused.output


def test_links_to_the_guide_name_its_sections() -> None:
    headings = {
        "-".join(re.sub(r"[^\w\s-]", "", line[3:]).lower().split())
        for line in (ROOT / "docs/extending.md").read_text().splitlines()
        if line.startswith("## ")
    }
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    links = [
        (source.name, anchor)
        for source in sources
        for anchor in re.findall(r"extending\.md#([\w-]+)", source.read_text())
    ]
    assert len(links) >= 4
    assert [link for link in links if link[1] not in headings] == []
