"""Multi-channel cases through fingerprint, plan and preprocessing: statistics and normalization
per channel (CT scheme for a channel named CT, z-score per case for the others)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.datasets import import_dataset
from medseg.errors import ConfigError, ScanChannelsError
from medseg.io.formats import read_volume
from medseg.manifest import read_manifest, resolve
from medseg.preprocess.case import preprocess_case
from medseg.preprocess.config import NormalizationScheme, PlanOptions
from medseg.preprocess.plan import Plan, channel_scheme, plan_manifest
from tests.phantoms import two_channel_phantom, write_two_channel_dataset

OPTIONS = PlanOptions(patch_size_3d=(32, 32, 32), intensity_samples_per_case=10**6)


@pytest.fixture(scope="module")
def ct_t2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Plan]:
    """Three two-channel phantoms whose channels are named CT and T2, imported and planned."""
    root = tmp_path_factory.mktemp("ct_t2")
    write_two_channel_dataset(root / "data", range(3))
    metadata = json.loads((root / "data" / "dataset.json").read_text())
    metadata["channel_names"] = {"0": "CT", "1": "T2"}
    (root / "data" / "dataset.json").write_text(json.dumps(metadata))
    manifest = root / "m.jsonl"
    import_dataset(root / "data", manifest_path=manifest, val_fraction=0.0)
    return manifest, plan_manifest(manifest, options=OPTIONS)


def test_fingerprint_has_the_foreground_statistics_of_each_channel(
    ct_t2: tuple[Path, Plan],
) -> None:
    _, plan = ct_t2
    pooled = [[], []]  # type: list[list[np.ndarray]]
    for seed in range(3):
        channels, labels = two_channel_phantom(seed)
        for number, channel in enumerate(channels):
            pooled[number].append(channel.array[labels.array > 0].astype(np.float64))
    fingerprint_channels = plan.fingerprint["channels"]
    assert [c["name"] for c in fingerprint_channels] == ["CT", "T2"]
    for channel, samples in zip(fingerprint_channels, pooled, strict=True):
        values = np.concatenate(samples)
        low, high = np.percentile(values, [0.5, 99.5])
        stats = channel["intensity"]
        assert stats["mean"] == pytest.approx(values.mean(), rel=1e-9)
        assert stats["std"] == pytest.approx(values.std(), rel=1e-9)
        assert (stats["percentile_00_5"], stats["percentile_99_5"]) == pytest.approx((low, high))
    # The phantom's foreground is bright in both channels: about 200 (T1 ball) and 300 (T2).
    assert fingerprint_channels[0]["intensity"]["mean"] == pytest.approx(200, abs=2)
    assert fingerprint_channels[1]["intensity"]["mean"] == pytest.approx(300, abs=2)
    assert plan.fingerprint["intensity"] == fingerprint_channels[0]["intensity"]


def test_plan_normalizes_a_ct_channel_with_dataset_statistics_and_others_per_case(
    ct_t2: tuple[Path, Plan],
) -> None:
    manifest, plan = ct_t2
    ct, t2 = plan.channel_normalization
    ct_stats = plan.fingerprint["channels"][0]["intensity"]
    assert plan.channel_names == ["CT", "T2"] and plan.normalization == ct
    assert ct.scheme is NormalizationScheme.CT and t2.scheme is NormalizationScheme.ZSCORE
    assert (ct.clip_low, ct.clip_high) == (ct_stats["percentile_00_5"], ct_stats["percentile_99_5"])
    assert (ct.mean, ct.std) == (ct_stats["mean"], ct_stats["std"])
    record = read_manifest(manifest)[0]
    image_path, label_path = resolve(record, manifest)
    image = read_volume(image_path)
    case = preprocess_case(image, read_volume(label_path), plan, case_id=record.case_id)
    # Same grid (2 mm, no zero border to crop): the channels are only normalized.
    assert case.image.shape == (2, 32, 32, 32)
    raw_ct, raw_t2 = image.array[..., 0], image.array[..., 1]
    expected_ct = (np.clip(raw_ct, ct.clip_low, ct.clip_high) - ct.mean) / ct.std
    assert np.allclose(case.image[0], expected_ct, atol=1e-4)
    assert float(case.image[1].mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(case.image[1].std()) == pytest.approx(1.0, abs=1e-5)
    t2_parameters = case.properties.channel_normalization[1]
    assert t2_parameters["mean"] == pytest.approx(float(raw_t2.mean()), rel=1e-6)
    assert t2_parameters["std"] == pytest.approx(float(raw_t2.std()), rel=1e-5)
    assert case.properties.normalization == {"mean": ct.mean, "std": ct.std}


def test_a_scan_with_other_channels_than_the_plan_is_refused(ct_t2: tuple[Path, Plan]) -> None:
    _, plan = ct_t2
    (t1, _), _ = two_channel_phantom(0)
    with pytest.raises(
        ScanChannelsError, match=r"scan: the scan has 1 channel\(s\), the plan has 2"
    ):
        preprocess_case(t1, None, plan, case_id="scan")


def test_a_single_channel_plan_from_before_channels_loads_as_one_channel(
    ct_t2: tuple[Path, Plan], tmp_path: Path
) -> None:
    _, plan = ct_t2
    old = plan.model_dump(mode="json")
    old["modality"], old["normalization"] = "CT", old["channel_normalization"][0]
    del old["channel_names"], old["channel_normalization"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = Plan.load(tmp_path / "old.json")
    assert loaded.channel_names == ["CT"]
    assert loaded.channel_normalization == [loaded.normalization]
    assert loaded.normalization.scheme is NormalizationScheme.CT


def test_a_plan_without_one_normalization_per_channel_is_refused(
    ct_t2: tuple[Path, Plan], tmp_path: Path
) -> None:
    _, plan = ct_t2
    broken = plan.model_dump(mode="json")
    broken["channel_normalization"] = broken["channel_normalization"][:1]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ConfigError, match="channel_normalization has 1 entries for 2"):
        Plan.load(tmp_path / "broken.json")


@pytest.mark.parametrize(
    ("name", "scheme"),
    [
        ("CT", NormalizationScheme.CT),
        ("ct", NormalizationScheme.CT),
        ("noNorm", NormalizationScheme.NONE),
        ("T2", NormalizationScheme.ZSCORE),
        ("MR", NormalizationScheme.ZSCORE),
        ("zscore", NormalizationScheme.ZSCORE),
    ],
)
def test_channel_names_choose_the_scheme_as_nnunet_does(
    name: str, scheme: NormalizationScheme
) -> None:
    assert channel_scheme(name) is scheme
