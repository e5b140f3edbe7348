"""Training on partial annotations: the phantoms of the tiny dataset with only every third slice
labelled, the other slices set to the ignore label (a label named ``ignore`` in dataset.json).

Measured (30 steps of ``learning_config``, float32, threads=1), Dice on the fully labelled
references of two training phantoms: liver 0.454, spine 0.493. The same training with the
unlabelled slices as background (what a pipeline without ignore label learns) scores liver 0.0,
spine 0.20; with every slice labelled, liver 0.62, spine 0.69.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.datasets import import_dataset
from medseg.errors import IgnoreLabelError
from medseg.evaluate.metrics import confusion_matrix, dice_from_confusion
from medseg.io.nifti import read_nifti, write_nifti
from medseg.manifest import label_names_path, read_manifest
from medseg.models import build_network
from medseg.preprocess.cache import load_cache
from medseg.preprocess.case import class_locations, preprocess_case
from medseg.preprocess.config import LabelResampling, PlanOptions
from medseg.preprocess.plan import Plan, plan_manifest
from medseg.preprocess.resample import resample_labels
from medseg.preprocess.stage import preprocess_manifest
from medseg.train.augment import AugmentationConfig, Augmenter
from medseg.train.checkpoint import load_checkpoint
from medseg.train.loop import train
from medseg.train.sampling import SampleSource, choose_patch
from medseg.train.validation import predict_case_probabilities
from medseg.volume import Volume
from tests.tiny_dataset import PLAN_OPTIONS, TinyDataset, learning_config, write_tiny_dataset

IGNORE = 6  # the phantoms' labels are 0..5
EVERY = 3  # one labelled slice (along k) in three
LEARNT_WITH_PARTIAL_LABELS = {"liver": 0.3, "spine": 0.3}


def _keep_every_third_slice(label_path: Path) -> None:
    volume = read_nifti(label_path)
    labels = np.asarray(volume.array).copy()
    labels[:, :, np.arange(labels.shape[2]) % EVERY != 0] = IGNORE
    write_nifti(Volume(labels.astype(np.uint8), volume.affine_ras), label_path)


@pytest.fixture(scope="module")
def partial_dataset(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    root = tmp_path_factory.mktemp("partial_phantoms")
    data = write_tiny_dataset(root / "data")
    for label_path in sorted((data / "labels").glob("*.nii.gz")):
        _keep_every_third_slice(label_path)
    metadata = json.loads((data / "dataset.json").read_text())
    metadata["labels"][str(IGNORE)] = "ignore"
    (data / "dataset.json").write_text(json.dumps(metadata))
    manifest = root / "partial.jsonl"
    import_dataset(data, manifest_path=manifest, val_fraction=0.2)
    plan = plan_manifest(manifest, options=PlanOptions(**PLAN_OPTIONS))
    plan_path = plan.save(root / "plan.json")
    preprocess_manifest(manifest, plan=plan, cache_dir=root / "cache", workers=1)
    return TinyDataset(manifest, plan, plan_path, root / "cache")


def test_the_plan_records_the_ignore_label_apart_from_the_labels_to_predict(
    partial_dataset: TinyDataset, tmp_path: Path
) -> None:
    plan = partial_dataset.plan
    assert plan.ignore_label == IGNORE
    assert (
        list(plan.label_names) == [0, 1, 2, 3, 4, 5] and "ignore" not in plan.label_names.values()
    )
    assert Plan.load(partial_dataset.plan_path).ignore_label == IGNORE
    # a plan written before the ignore label existed loads, with none
    payload = json.loads(partial_dataset.plan_path.read_text())
    del payload["ignore_label"]
    (tmp_path / "old.json").write_text(json.dumps(payload))
    assert Plan.load(tmp_path / "old.json").ignore_label is None


def test_unannotated_voxels_do_not_count_as_foreground_in_the_fingerprint(
    partial_dataset: TinyDataset, tiny_dataset: TinyDataset
) -> None:
    """Counted as foreground, the air and fat of the ignored slices pulled the CT clip range
    to -1024 HU; annotated voxels only give the range of the fully labelled phantoms."""
    partial, full = partial_dataset.plan.normalization, tiny_dataset.plan.normalization
    assert partial.clip_low is not None and full.clip_low is not None
    assert partial.clip_low > -500
    assert abs(partial.clip_low - full.clip_low) < 50
    assert partial.mean is not None and full.mean is not None
    assert abs(partial.mean - full.mean) < 25


def test_the_cache_keeps_the_ignore_value_but_never_centres_a_patch_on_it(
    partial_dataset: TinyDataset,
) -> None:
    for case in load_cache(partial_dataset.cache):
        assert case.label is not None
        assert IGNORE in np.unique(case.label)  # kept through cropping and resampling
        source = SampleSource.from_cached_case(case)
        assert IGNORE not in source.foreground_classes and source.foreground_classes


def test_a_case_labelled_only_with_background_and_ignore_draws_random_patches() -> None:
    labels = np.full((12, 12, 12), IGNORE, np.uint8)
    labels[:, :, ::EVERY] = 0
    locations = class_locations(labels, seed=0, case_id="c", ignore_label=IGNORE)
    assert locations == {}
    assert set(class_locations(labels, seed=0, case_id="c")) == {IGNORE}  # without: a class
    source = SampleSource(
        case_id="c", image=np.zeros((1, 12, 12, 12), np.float32), label=labels,
        class_locations=locations,
    )  # fmt: skip
    draw = choose_patch(
        source, patch_size=(8, 8, 8), force_foreground=True, rng=np.random.default_rng(0)
    )
    assert draw.fell_back and draw.foreground_class is None


@pytest.mark.parametrize("mode", list(LabelResampling))
def test_resampling_and_augmentation_keep_the_ignore_value(mode: LabelResampling) -> None:
    labels = np.zeros((16, 16, 12), np.uint8)
    labels[4:12, 4:12, 2:10] = 1
    labels[:, :, 1::EVERY] = IGNORE
    resampled = resample_labels(labels, (23, 21, 17), mode=mode)
    assert set(np.unique(resampled)) == {0, 1, IGNORE}
    always = AugmentationConfig(rotation_probability=1, scale_probability=1)
    batch = torch.from_numpy(resampled.astype(np.int64))[None]
    augmented = Augmenter(always, seed=3)(image=torch.rand(1, 1, 23, 21, 17), label=batch).label
    assert set(augmented.unique().tolist()) == {0, 1, IGNORE}  # nearest: no value in between


def _dice_on_full_references(
    network: torch.nn.Module, dataset: TinyDataset, case_ids: list[str]
) -> dict[str, float]:
    """Dice per structure of ``network`` against the phantoms' complete label maps."""
    full = write_tiny_dataset(dataset.manifest.parent / "full")
    total = np.zeros((6, 6), np.int64)
    for case_id in case_ids:
        case = preprocess_case(
            read_nifti(full / "images" / f"{case_id}.nii.gz"),
            read_nifti(full / "labels" / f"{case_id}.nii.gz"),
            dataset.plan,
            case_id=case_id,
        )
        prediction = predict_case_probabilities(
            network, case.image, patch_size=dataset.plan.configurations["3d"].patch_size,
            num_classes=6, device=torch.device("cpu"), overlap=0.5, mirror=False, slice_axis=None,
        ).argmax(0).numpy()  # fmt: skip
        assert prediction.max() < IGNORE  # no channel for the ignore label
        total += confusion_matrix(prediction, case.label, 6)
    dice = dice_from_confusion(total)
    return {name: float(dice[value]) for value, name in dataset.plan.label_names.items() if value}


def test_training_on_every_third_slice_learns_the_fully_labelled_structures(
    partial_dataset: TinyDataset, tmp_path: Path
) -> None:
    result = train(
        manifest_path=partial_dataset.manifest,
        plan=partial_dataset.plan,
        cache_dir=partial_dataset.cache,
        config=learning_config(steps_per_epoch=15),
        run_dir=tmp_path / "run",
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
    )
    assert result.state.step == 30
    extra = torch.load(result.best_checkpoint, weights_only=False)["extra"]
    network = build_network(**extra["network_arguments"])
    assert extra["network_arguments"]["num_classes"] == 6
    load_checkpoint(result.best_checkpoint, network=network)
    network.eval()
    training = [r.case_id for r in read_manifest(partial_dataset.manifest) if r.split == "train"]
    dice = _dice_on_full_references(network, partial_dataset, training[:2])
    learnt = {name: round(dice[name], 3) for name in LEARNT_WITH_PARTIAL_LABELS}
    assert all(learnt[name] >= LEARNT_WITH_PARTIAL_LABELS[name] for name in learnt), learnt
    # validation during training scored the annotated voxels only: a finite Dice
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert np.isfinite(history[-1]["val_mean_dice"])


@pytest.mark.parametrize(
    "names",
    [
        {"0": "background", "1": "ignore", "2": "liver"},
        {"0": "background", "1": "ignore", "2": "IGNORE"},
        {"0": "ignore"},
    ],
)
def test_an_ignore_label_that_is_not_the_single_highest_value_is_refused_naming_the_file(
    tmp_path: Path, names: dict[str, str]
) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    (data / "dataset.json").write_text(json.dumps({"labels": names}))
    with pytest.raises(IgnoreLabelError, match=rf"^{data / 'dataset.json'}: "):
        import_dataset(data, manifest_path=tmp_path / "m.jsonl")
    # the sidecar of a manifest is checked when the plan is made
    (data / "dataset.json").unlink()
    manifest = tmp_path / "m.jsonl"
    import_dataset(data, manifest_path=manifest)
    label_names_path(manifest).write_text(json.dumps({"labels": names}))
    with pytest.raises(IgnoreLabelError, match=rf"^{label_names_path(manifest)}: "):
        plan_manifest(manifest, options=PlanOptions(**PLAN_OPTIONS))
