"""The evaluate stage: per-structure Dice, IoU, HD95, normalized surface Dice and volumes.

Dice and IoU of every structure come from one confusion matrix per case; surface metrics use
the voxel spacing (mm). Empty structures: absent from both maps -> every metric undefined
(NaN, left out of means); absent from one side -> Dice/IoU 0 (surface rule: see
``medseg.evaluate.surface``). Means are over cases per structure, then over structures.

Ignore label (label names with a label named ``ignore``, the highest value): reference voxels
of that value are left out of the confusion matrix (Dice, IoU) and counted per case
(``CaseResult.ignored_voxels``); surface metrics and volumes take the reference's structures
as they are (an ignored voxel belongs to no structure).

Regions (label names from a dataset.json declaring regions, ``medseg.regions``): every metric
is also computed per region on the region masks of both label maps (``CaseResult.regions``,
``EvaluationReport.region_means``), beside the per-label metrics, whose structures are then
named ``label_<value>`` (a painted value is not its region).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from medseg.errors import GeometryMismatchError, MedsegError
from medseg.evaluate.grid import grid_difference
from medseg.evaluate.metrics import confusion_matrix, dice_from_confusion, iou_from_confusion
from medseg.evaluate.pairing import Pairing
from medseg.evaluate.volumes import structure_statistics
from medseg.io.formats import read_volume
from medseg.manifest import ignore_label_value, without_ignore_label
from medseg.regions import RegionSet
from medseg.volume import Volume

logger = logging.getLogger(__name__)

METRICS = ("dice", "iou", "hd95_mm", "nsd", "volume_prediction_ml", "volume_reference_ml")


@dataclass
class CaseResult:
    """Metrics of one case per structure name."""

    case_id: str
    metrics: dict[str, dict[str, float]]
    ignored_voxels: int = 0  # reference voxels of the ignore label, in no metric
    regions: dict[str, dict[str, float]] = field(default_factory=dict)  # per region name


@dataclass
class EvaluationReport:
    """Everything an evaluation found."""

    label_names: dict[int, str]
    ignore_label: int | None = None
    cases: list[CaseResult] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    missing_prediction: list[str] = field(default_factory=list)
    missing_reference: list[str] = field(default_factory=list)
    regions: RegionSet | None = None

    def structure_means(self) -> dict[str, dict[str, float]]:
        """Per structure and metric: mean over the cases where it is defined."""
        means: dict[str, dict[str, float]] = {}
        for name in (n for v, n in sorted(self.label_names.items()) if v > 0):
            means[name] = {
                metric: _nanmean([c.metrics[name][metric] for c in self.cases if name in c.metrics])
                for metric in METRICS
            }
        return means

    def region_means(self) -> dict[str, dict[str, float]]:
        """Per region and metric: mean over the cases where it is defined (empty: no regions)."""
        names = [region.name for region in self.regions.regions] if self.regions else []
        return {
            name: {
                metric: _nanmean([c.regions[name][metric] for c in self.cases if name in c.regions])
                for metric in METRICS
            }
            for name in names
        }

    def overall_mean(self, metric: str = "dice", *, regions: bool = False) -> float:
        """Mean over structures of the per-structure means (over regions with ``regions``)."""
        means = self.region_means() if regions else self.structure_means()
        return _nanmean([m[metric] for m in means.values()])


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def evaluate_case(
    prediction: Volume,
    reference: Volume,
    *,
    label_names: dict[int, str],
    tolerance_mm: float,
    names: tuple[str, str] = ("prediction", "reference"),
    ignore_label: int | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics per structure name of one case (both maps on the same grid).

    ``label_names`` are the real structures (without the ignore label); reference voxels of
    ``ignore_label`` count in neither Dice nor IoU.

    Raises:
        GeometryMismatchError: the maps are not on the same voxel grid; the message calls them
            ``names`` and says what differs.
    """
    from medseg.evaluate.surface import surface_metrics

    prediction, reference = prediction.to_closest_ras(), reference.to_closest_ras()
    if not prediction.same_grid(reference):
        raise GeometryMismatchError(grid_difference(prediction, reference, names=names))
    size = max(max(label_names), int(prediction.array.max()), int(reference.array.max())) + 1
    matrix = confusion_matrix(prediction.array, reference.array, size, ignore_label=ignore_label)
    dice, iou = dice_from_confusion(matrix), iou_from_confusion(matrix)
    structures = [v for v in sorted(label_names) if v > 0]
    surfaces = surface_metrics(
        prediction.array,
        reference.array,
        spacing_mm=prediction.spacing_mm,
        labels=structures,
        tolerance_mm=tolerance_mm,
    )
    predicted_volumes = structure_statistics(prediction, label_names=label_names)
    reference_volumes = structure_statistics(reference, label_names=label_names)
    return {
        label_names[v]: {
            "dice": float(dice[v]),
            "iou": float(iou[v]),
            "hd95_mm": float(surfaces[v].hd95),
            "nsd": float(surfaces[v].nsd),
            "volume_prediction_ml": predicted_volumes[label_names[v]]["volume_ml"],
            "volume_reference_ml": reference_volumes[label_names[v]]["volume_ml"],
        }
        for v in structures
    }


def evaluate_regions(
    prediction: Volume,
    reference: Volume,
    *,
    regions: RegionSet,
    tolerance_mm: float,
    ignore_label: int | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics per region name of one case: each region's masks (its label values) in both
    maps, scored as one structure; reference voxels of ``ignore_label`` count in no Dice/IoU."""
    results = {}
    for region in regions.regions:
        predicted = np.isin(prediction.array, region.labels).astype(np.uint8)
        truth = np.isin(reference.array, region.labels).astype(np.uint8)
        if ignore_label is not None:
            truth[reference.array == ignore_label] = 2  # the ignore value of the binary maps
        results[region.name] = evaluate_case(
            prediction.with_array(predicted),
            reference.with_array(truth),
            label_names={1: region.name},
            tolerance_mm=tolerance_mm,
            ignore_label=None if ignore_label is None else 2,
        )[region.name]
    return results


def evaluate_pairing(
    pairing: Pairing,
    *,
    label_names: dict[int, str],
    tolerance_mm: float = 1.0,
    regions: RegionSet | None = None,
) -> EvaluationReport:
    """Evaluate every pair; a pair that cannot be read or compared is reported, not fatal.

    ``label_names`` may name an ignore label (see :func:`medseg.manifest.ignore_label_value`):
    it is no structure, and its reference voxels are counted per case instead of scored. With
    ``regions``, each region is scored too and the label values are named ``label_<value>``.

    Raises:
        IgnoreLabelError: the ignore label of ``label_names`` is not the highest value.
    """
    ignore_label = ignore_label_value(label_names, where="label names")
    names = without_ignore_label(label_names)
    if regions is not None:
        names = {v: "background" if v == 0 else f"label_{v}" for v in names}
    report = EvaluationReport(
        label_names=names,
        ignore_label=ignore_label,
        missing_prediction=pairing.missing_prediction,
        missing_reference=pairing.missing_reference,
        regions=regions,
    )
    for case_id, predicted_path, reference_path in pairing.pairs:
        try:
            reference, prediction = read_volume(reference_path), read_volume(predicted_path)
            metrics = evaluate_case(
                prediction,
                reference,
                label_names=report.label_names,
                tolerance_mm=tolerance_mm,
                names=(f"prediction {predicted_path}", f"reference {reference_path}"),
                ignore_label=ignore_label,
            )
            per_region = (
                {}
                if regions is None
                else evaluate_regions(
                    prediction,
                    reference,
                    regions=regions,
                    tolerance_mm=tolerance_mm,
                    ignore_label=ignore_label,
                )
            )
        except MedsegError as error:
            logger.warning("%s: %s", case_id, error)
            report.failed[case_id] = str(error)
            continue
        ignored = (
            0 if ignore_label is None else int(np.count_nonzero(reference.array == ignore_label))
        )
        report.cases.append(
            CaseResult(case_id, metrics, ignored_voxels=ignored, regions=per_region)
        )
    return report
