"""Segmentation losses: hand-computed values, agreement with torch and MONAI, specs, AMP."""

from __future__ import annotations

import importlib
import inspect
import math
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
import yaml

from medseg.losses import (
    BorderWeightedCELoss,
    CESpec,
    CombinedLoss,
    CrossEntropyLoss,
    DeepSupervisionLoss,
    DiceCELoss,
    DiceCESpec,
    FocalLoss,
    FocalSpec,
    LossConfigError,
    LossInputError,
    LossSpec,
    SegmentationLoss,
    build_loss,
    deep_supervision_weights,
)

LN = math.log
SMOOTH = 1e-5


def _dice(overlap: float, sizes: float) -> float:
    """Smoothed Dice of one class: (2 * sum(p * g) + s) / (sum(p) + sum(g) + s)."""
    return (2 * overlap + SMOOTH) / (sizes + SMOOTH)


# Two classes on a 2x2 image, pixels a b / c d. Logits (class 0, class 1) per pixel:
#   a (0, ln3) b (0, 0) / c (ln3, 0) d (0, ln3)  ->  p1 = 3/4 1/2 / 1/4 3/4  (p0 = 1 - p1)
# Target 1 0 / 0 0, so p(target) = 3/4 1/2 / 3/4 1/4 and the pixel CEs are
#   ln(4/3) ln2 / ln(4/3) ln4.
LOGITS_2 = torch.tensor([[[[0.0, 0.0], [LN(3), 0.0]], [[LN(3), 0.0], [0.0, LN(3)]]]])
TARGET_2 = torch.tensor([[[1, 0], [0, 0]]])
CE_2 = (LN(4 / 3) + LN(2) + LN(4 / 3) + LN(4)) / 4
# Class 1: g1 = 1 0 / 0 0, overlap 3/4, sum(p1) = 9/4, sum(g1) = 1.
# Class 0: p0 = 1/4 1/2 / 3/4 1/4, g0 = 0 1 / 1 1, overlap 1/2 + 3/4 + 1/4 = 3/2, sum(p0) = 7/4,
# sum(g0) = 3.
DICE_2_CLASS_1 = _dice(3 / 4, 9 / 4 + 1)  # ~ 1.5 / 3.25 = 6/13
DICE_2_CLASS_0 = _dice(3 / 2, 7 / 4 + 3)  # ~ 3 / 4.75 = 12/19

# Batch of two: sample 0 as above, sample 1 has uniform logits (p1 = 1/2 on 4 pixels, sum 2)
# and no class 1 in its target.
LOGITS_B2 = torch.cat([LOGITS_2, torch.zeros(1, 2, 2, 2)])
TARGET_B2 = torch.cat([TARGET_2, torch.zeros(1, 2, 2, dtype=torch.long)])

# Three classes, uniform logits: p = 1/3 everywhere, every pixel CE = ln3. Target 0 1 / 2 2:
# class 1: overlap 1/3, sum(p) 4/3, sum(g) 1; class 2: overlap 2/3, sum(p) 4/3, sum(g) 2.
LOGITS_3 = torch.zeros(1, 3, 2, 2)
TARGET_3 = torch.tensor([[[0, 1], [2, 2]]])

BORDER_WEIGHTS_2 = torch.tensor([[[2.0, 1.0], [1.0, 4.0]]])

HAND_CASES = [
    pytest.param(CrossEntropyLoss(), LOGITS_2, TARGET_2, None, CE_2, id="ce"),
    # torch's weighted mean: sum(w[y] * ce) / sum(w[y]) with w[y] = 3 1 / 1 1, sum 6.
    pytest.param(
        CrossEntropyLoss(class_weights=[1.0, 3.0]),
        LOGITS_2,
        TARGET_2,
        None,
        (3 * LN(4 / 3) + LN(2) + LN(4 / 3) + LN(4)) / 6,
        id="ce-class-weights",
    ),
    pytest.param(CrossEntropyLoss(), LOGITS_3, TARGET_3, None, LN(3), id="ce-3-classes"),
    # Dice over class 1 only (background excluded), plus CE.
    pytest.param(DiceCELoss(), LOGITS_2, TARGET_2, None, 1 - DICE_2_CLASS_1 + CE_2, id="dice-ce"),
    pytest.param(
        DiceCELoss(include_background=True),
        LOGITS_2,
        TARGET_2,
        None,
        1 - (DICE_2_CLASS_0 + DICE_2_CLASS_1) / 2 + CE_2,
        id="dice-ce-with-background",
    ),
    # 1 - (2/7 + 2/5) / 2 = 23/35 without smoothing.
    pytest.param(
        DiceCELoss(ce_weight=0.0),
        LOGITS_3,
        TARGET_3,
        None,
        1 - (_dice(1 / 3, 4 / 3 + 1) + _dice(2 / 3, 4 / 3 + 2)) / 2,
        id="dice-3-classes",
    ),
    # Per sample: sample 1 has Dice s / (2 + s) ~ 0 for the absent class 1; mean over samples.
    pytest.param(
        DiceCELoss(ce_weight=0.0),
        LOGITS_B2,
        TARGET_B2,
        None,
        1 - (DICE_2_CLASS_1 + _dice(0, 2)) / 2,
        id="dice-per-sample",
    ),
    # Batch dice: overlap 3/4, sum(p1) = 9/4 + 2, sum(g1) = 1 -> ~ 1.5 / 5.25 = 2/7.
    pytest.param(
        DiceCELoss(ce_weight=0.0, batch_dice=True),
        LOGITS_B2,
        TARGET_B2,
        None,
        1 - _dice(3 / 4, 9 / 4 + 2 + 1),
        id="dice-batch",
    ),
    pytest.param(
        DiceCELoss(dice_weight=0.5, ce_weight=2.0),
        LOGITS_2,
        TARGET_2,
        None,
        0.5 * (1 - DICE_2_CLASS_1) + 2.0 * CE_2,
        id="dice-ce-term-weights",
    ),
    # (1 - p_t)^2 * ce per pixel: (1/4)^2 ln(4/3), (1/2)^2 ln2, (1/4)^2 ln(4/3), (3/4)^2 ln4.
    pytest.param(
        FocalLoss(gamma=2.0),
        LOGITS_2,
        TARGET_2,
        None,
        (LN(4 / 3) / 16 + LN(2) / 4 + LN(4 / 3) / 16 + 9 * LN(4) / 16) / 4,
        id="focal",
    ),
    # Same terms weighted by alpha[y] = 3 1 / 1 1, divided by sum(alpha[y]) = 6.
    pytest.param(
        FocalLoss(gamma=2.0, class_weights=[1.0, 3.0]),
        LOGITS_2,
        TARGET_2,
        None,
        (3 * LN(4 / 3) / 16 + LN(2) / 4 + LN(4 / 3) / 16 + 9 * LN(4) / 16) / 6,
        id="focal-class-weights",
    ),
    # mean(w * ce) with w = 2 1 / 1 4.
    pytest.param(
        BorderWeightedCELoss(),
        LOGITS_2,
        TARGET_2,
        BORDER_WEIGHTS_2,
        (2 * LN(4 / 3) + LN(2) + LN(4 / 3) + 4 * LN(4)) / 4,
        id="border-ce",
    ),
    pytest.param(
        CombinedLoss([(1.0, CrossEntropyLoss()), (0.5, BorderWeightedCELoss())]),
        LOGITS_2,
        TARGET_2,
        BORDER_WEIGHTS_2,
        CE_2 + 0.5 * (2 * LN(4 / 3) + LN(2) + LN(4 / 3) + 4 * LN(4)) / 4,
        id="combined",
    ),
]


@pytest.mark.parametrize(("loss", "logits", "target", "weights", "expected"), HAND_CASES)
def test_loss_equals_the_hand_computed_value(
    loss: SegmentationLoss,
    logits: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None,
    expected: float,
) -> None:
    assert loss(logits, target, weights).item() == pytest.approx(expected, abs=1e-6)


def _random_inputs(
    shape: tuple[int, ...], seed: int, *, absent_class: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, K, *spatial) and target (B, *spatial); optionally class K-1 never present."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(shape, generator=generator)
    n_labels = shape[1] - 1 if absent_class else shape[1]
    target = torch.randint(0, n_labels, (shape[0], *shape[2:]), generator=generator)
    return logits, target


@pytest.fixture(scope="module")
def monai_losses() -> ModuleType:
    """``monai.losses``, imported only by the tests that compare with it (it takes seconds).

    MONAI is a dependency of medseg: without it these tests fail rather than skip."""
    return importlib.import_module("monai.losses")


SHAPES = [pytest.param((2, 3, 8, 7), id="2d"), pytest.param((2, 4, 6, 5, 4), id="3d")]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("class_weights", [None, (0.2, 1.0, 3.0, 0.5)])
def test_cross_entropy_matches_torch(
    shape: tuple[int, ...], class_weights: tuple[float, ...] | None
) -> None:
    logits, target = _random_inputs(shape, seed=1)
    class_weights = None if class_weights is None else class_weights[: shape[1]]
    expected = F.cross_entropy(
        logits, target, weight=None if class_weights is None else torch.tensor(class_weights)
    )
    actual = CrossEntropyLoss(class_weights=class_weights)(logits, target)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("batch_dice", [False, True])
def test_dice_term_matches_monai(
    monai_losses: ModuleType, shape: tuple[int, ...], include_background: bool, batch_dice: bool
) -> None:
    logits, target = _random_inputs(shape, seed=2, absent_class=True)
    monai_loss = monai_losses.DiceLoss(
        to_onehot_y=True,
        softmax=True,
        include_background=include_background,
        batch=batch_dice,
        smooth_nr=SMOOTH,
        smooth_dr=SMOOTH,
    )
    loss = DiceCELoss(include_background=include_background, batch_dice=batch_dice, ce_weight=0.0)
    torch.testing.assert_close(
        loss(logits, target), monai_loss(logits, target[:, None]), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_dice_ce_matches_monai_dice_ce(monai_losses: ModuleType, shape: tuple[int, ...]) -> None:
    logits, target = _random_inputs(shape, seed=3)
    monai_loss = monai_losses.DiceCELoss(
        to_onehot_y=True,
        softmax=True,
        include_background=False,
        smooth_nr=SMOOTH,
        smooth_dr=SMOOTH,
        lambda_dice=0.7,
        lambda_ce=1.3,
    )
    loss = DiceCELoss(dice_weight=0.7, ce_weight=1.3)
    torch.testing.assert_close(
        loss(logits, target), monai_loss(logits, target[:, None]), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("class_weights", [None, (1.0, 2.0, 0.5, 4.0)])
def test_focal_with_gamma_0_equals_cross_entropy(class_weights: tuple[float, ...] | None) -> None:
    logits, target = _random_inputs((2, 4, 6, 5, 4), seed=4)
    focal = FocalLoss(gamma=0.0, class_weights=class_weights)(logits, target)
    ce = CrossEntropyLoss(class_weights=class_weights)(logits, target)
    torch.testing.assert_close(focal, ce, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("gamma", "class_weights"),
    [(2.0, None), (0.5, (0.2, 1.0, 3.0, 0.5)), (3.0, (1.0, 1.0, 2.0, 1.0))],
)
def test_focal_loss_matches_its_definition(
    shape: tuple[int, ...], gamma: float, class_weights: tuple[float, ...] | None
) -> None:
    # -(1 - p_t)^gamma ln p_t per voxel, averaged with the weights alpha[y] (Lin et al. 2017),
    # in float64; below the cross-entropy, which is gamma 0
    logits, target = _random_inputs(shape, seed=5)
    class_weights = None if class_weights is None else class_weights[: shape[1]]
    log_p_t = torch.log_softmax(logits.double(), 1).gather(1, target[:, None])[:, 0]
    focal = -((1 - log_p_t.exp()) ** gamma) * log_p_t
    alpha = torch.tensor(class_weights or [1.0] * shape[1], dtype=torch.float64)[target]
    expected = (alpha * focal).sum() / alpha.sum()
    actual = FocalLoss(gamma=gamma, class_weights=class_weights)(logits, target)
    assert actual.item() == pytest.approx(expected.item(), rel=1e-5)
    assert actual < CrossEntropyLoss(class_weights=class_weights)(logits, target)


@pytest.mark.parametrize("shape", SHAPES)
def test_border_ce_with_unit_weights_equals_cross_entropy(shape: tuple[int, ...]) -> None:
    logits, target = _random_inputs(shape, seed=6)
    weights = torch.ones(target.shape)
    torch.testing.assert_close(
        BorderWeightedCELoss()(logits, target, weights),
        CrossEntropyLoss()(logits, target),
        rtol=0,
        atol=1e-6,
    )


def test_border_ce_scales_with_constant_weights() -> None:
    # mean(w * ce), not sum(w * ce) / sum(w): a constant weight 3 triples the loss.
    logits, target = _random_inputs((2, 3, 8, 7), seed=7)
    weighted = BorderWeightedCELoss()(logits, target, torch.full(target.shape, 3.0))
    torch.testing.assert_close(weighted, 3 * CrossEntropyLoss()(logits, target))


@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("batch_dice", [False, True])
def test_perfect_prediction_gives_a_dice_term_near_0(
    include_background: bool, batch_dice: bool
) -> None:
    # Class 2 is absent from the target and gets ~0 probability: its Dice is s / (~0 + s) ~ 1.
    target = torch.tensor([[[0, 1, 1], [0, 0, 1]], [[1, 1, 1], [0, 0, 0]]])
    logits = 40.0 * F.one_hot(target, 3).movedim(-1, 1).float()
    loss = DiceCELoss(include_background=include_background, batch_dice=batch_dice, ce_weight=0.0)
    assert loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_combined_loss_is_the_weighted_sum_of_its_terms() -> None:
    logits, target = _random_inputs((2, 3, 8, 7), seed=8)
    weights = 1 + torch.rand(target.shape, generator=torch.Generator().manual_seed(0))
    terms = [(0.3, DiceCELoss(batch_dice=True)), (2.0, FocalLoss()), (0.5, BorderWeightedCELoss())]
    expected = sum(weight * loss(logits, target, weights) for weight, loss in terms)
    torch.testing.assert_close(CombinedLoss(terms)(logits, target, weights), expected)


@pytest.mark.parametrize(
    ("loss", "needs_weights"),
    [
        pytest.param(CrossEntropyLoss(), False, id="ce"),
        pytest.param(DiceCELoss(), False, id="dice-ce"),
        pytest.param(FocalLoss(), False, id="focal"),
        pytest.param(BorderWeightedCELoss(), True, id="border-ce"),
        pytest.param(CombinedLoss([(1.0, DiceCELoss()), (1.0, FocalLoss())]), False, id="combo"),
        pytest.param(
            CombinedLoss([(1.0, DiceCELoss()), (0.5, BorderWeightedCELoss())]), True, id="combo-w"
        ),
        pytest.param(DeepSupervisionLoss(BorderWeightedCELoss()), True, id="deep-supervision"),
    ],
)
def test_needs_weights_tells_whether_weight_maps_are_used(
    loss: SegmentationLoss, needs_weights: bool
) -> None:
    assert loss.needs_weights is needs_weights


@pytest.mark.parametrize(
    ("n_outputs", "drop_lowest", "expected"),
    [
        (1, False, (1.0,)),
        (3, False, (4 / 7, 2 / 7, 1 / 7)),  # 1, 1/2, 1/4 over their sum 7/4
        (3, True, (2 / 3, 1 / 3, 0.0)),  # 1, 1/2, 0 over 3/2
        (2, True, (1.0, 0.0)),
    ],
)
def test_deep_supervision_weights_halve_per_level_and_sum_to_1(
    n_outputs: int, drop_lowest: bool, expected: tuple[float, ...]
) -> None:
    assert deep_supervision_weights(n_outputs, drop_lowest=drop_lowest) == pytest.approx(expected)


class _RecordingLoss(SegmentationLoss):
    """Records what it is called with and returns a constant 1 (with a gradient path)."""

    needs_weights = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Size, torch.Tensor, torch.Tensor | None]] = []

    def _loss(
        self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        self.calls.append((logits.shape, target, weights))
        return 1.0 + 0.0 * logits.sum()


@pytest.mark.parametrize(
    ("output_sizes", "full_size"),
    [
        pytest.param([(16, 16), (8, 8), (4, 4)], (16, 16), id="2d"),
        pytest.param([(8, 8, 4), (4, 4, 4), (2, 2, 2)], (8, 8, 4), id="3d-anisotropic"),
    ],
)
def test_deep_supervision_resizes_target_and_weights_to_each_output(
    output_sizes: list[tuple[int, ...]], full_size: tuple[int, ...]
) -> None:
    # a factor f per axis: the target at the centres of the f-voxel blocks (index f // 2),
    # the weights averaged over each block
    target = torch.randint(0, 3, (2, *full_size), generator=torch.Generator().manual_seed(9))
    weights = torch.rand((2, *full_size), generator=torch.Generator().manual_seed(10))
    recorder = _RecordingLoss()
    outputs = [torch.zeros(2, 3, *size) for size in output_sizes]
    DeepSupervisionLoss(recorder)(outputs, target, weights)
    assert len(recorder.calls) == len(output_sizes)
    for (_, low_target, low_weights), size in zip(recorder.calls, output_sizes, strict=True):
        factors = [full // low for full, low in zip(full_size, size, strict=True)]
        centres = (slice(None), *(slice(f // 2, None, f) for f in factors))
        torch.testing.assert_close(low_target, target[centres], rtol=0, atol=0)
        blocks = [2]
        for length, factor in zip(full_size, factors, strict=True):
            blocks += [length // factor, factor]
        block_means = weights.reshape(blocks).mean(dim=tuple(range(2, len(blocks), 2)))
        torch.testing.assert_close(low_weights, block_means)


def test_deep_supervision_samples_voxel_centres_and_averages_weights() -> None:
    # 4x4 -> 2x2 (factor 2): nearest-exact takes the second voxel of each pair (index 1, 3);
    # weights are the mean of each 2x2 block.
    target = torch.arange(16).reshape(1, 4, 4) % 3
    weights = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    recorder = _RecordingLoss()
    DeepSupervisionLoss(recorder)(
        [torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 2, 2)], target, weights
    )
    _, low_target, low_weights = recorder.calls[1]
    torch.testing.assert_close(low_target, target[:, 1::2, 1::2])
    # Block (0, 0) holds 0 1 / 4 5 -> 2.5; the others follow by +2 per column, +8 per row.
    torch.testing.assert_close(low_weights, torch.tensor([[[2.5, 4.5], [10.5, 12.5]]]))


def test_deep_supervision_value_is_the_weighted_sum_over_resolutions() -> None:
    generator = torch.Generator().manual_seed(11)
    outputs = [torch.randn(2, 3, 8 // 2**i, 8 // 2**i, generator=generator) for i in range(3)]
    target = torch.randint(0, 3, (2, 1, 8, 8), generator=generator)  # channel axis accepted
    loss = DiceCELoss()
    expected = (
        4 / 7 * loss(outputs[0], target[:, 0])
        + 2 / 7 * loss(outputs[1], target[:, 0, 1::2, 1::2])
        + 1 / 7 * loss(outputs[2], target[:, 0, 2::4, 2::4])  # factor 4: centre 1.5 rounds to 2
    )
    torch.testing.assert_close(DeepSupervisionLoss(loss)(outputs, target), expected)


def test_deep_supervision_skips_outputs_with_scale_weight_0_and_normalizes() -> None:
    recorder = _RecordingLoss()
    loss = DeepSupervisionLoss(
        recorder, scale_weights=deep_supervision_weights(3, drop_lowest=True)
    )
    outputs = [torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)]
    value = loss(outputs, torch.zeros(1, 8, 8, dtype=torch.long), torch.ones(1, 8, 8))
    assert len(recorder.calls) == 2
    assert value.item() == pytest.approx(1.0)  # constant 1 per output, weights sum to 1
    assert DeepSupervisionLoss(recorder, scale_weights=[2, 1, 1]).scale_weights == (0.5, 0.25, 0.25)


def test_deep_supervision_of_one_tensor_equals_the_wrapped_loss() -> None:
    logits, target = _random_inputs((2, 3, 8, 7), seed=12)
    torch.testing.assert_close(
        DeepSupervisionLoss(FocalLoss())(logits, target), FocalLoss()(logits, target)
    )


@pytest.mark.parametrize(
    ("loss", "outputs", "match"),
    [
        pytest.param(
            DeepSupervisionLoss(CrossEntropyLoss(), scale_weights=[1.0, 0.5]),
            [torch.zeros(1, 2, 8, 8)],
            "1 outputs but 2 scale weights",
            id="count",
        ),
        pytest.param(
            DeepSupervisionLoss(CrossEntropyLoss()),
            [torch.zeros(1, 2, 16, 16)],
            r"spatial shape \(16, 16\) does not fit in the target's \(8, 8\)",
            id="larger",
        ),
        pytest.param(DeepSupervisionLoss(CrossEntropyLoss()), [], "at least one", id="empty"),
    ],
)
def test_deep_supervision_rejects_outputs_that_do_not_fit(
    loss: DeepSupervisionLoss, outputs: list[torch.Tensor], match: str
) -> None:
    with pytest.raises(LossInputError, match=match):
        loss(outputs, torch.zeros(1, 8, 8, dtype=torch.long))


YAML_SPEC = """
dice_ce:
  batch_dice: true
  class_weights: [1, 2, 2]
border_ce: 0.5
"""


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param("ce", CrossEntropyLoss(), id="name"),
        pytest.param({"dice_ce": 1.0}, DiceCELoss(), id="weight-1"),
        pytest.param(
            {"dice_ce": 1.0, "border_ce": 0.5},
            CombinedLoss([(1.0, DiceCELoss()), (0.5, BorderWeightedCELoss())]),
            id="two",
        ),
        pytest.param({"focal": {"weight": 1.0, "gamma": 3.0}}, FocalLoss(gamma=3.0), id="options"),
        pytest.param({"focal": 2}, CombinedLoss([(2.0, FocalLoss())]), id="weight-2"),
        pytest.param(
            yaml.safe_load(YAML_SPEC),
            CombinedLoss(
                [
                    (1.0, DiceCELoss(batch_dice=True, class_weights=[1.0, 2.0, 2.0])),
                    (0.5, BorderWeightedCELoss()),
                ]
            ),
            id="yaml",
        ),
        pytest.param(
            LossSpec(ce=CESpec(class_weights=(1.0, 5.0, 2.0))),
            CrossEntropyLoss(class_weights=[1.0, 5.0, 2.0]),
            id="model",
        ),
    ],
)
def test_build_loss_from_specs(spec: object, expected: SegmentationLoss) -> None:
    loss = build_loss(spec)
    assert type(loss) is type(expected)
    assert getattr(loss, "term_weights", None) == getattr(expected, "term_weights", None)
    logits, target = _random_inputs((2, 3, 6, 5), seed=18)
    weights = 1 + torch.rand(target.shape, generator=torch.Generator().manual_seed(19))
    torch.testing.assert_close(
        loss(logits, target, weights), expected(logits, target, weights), rtol=0, atol=0
    )


def test_build_loss_passes_options_to_the_losses() -> None:
    loss = build_loss(yaml.safe_load(YAML_SPEC))
    dice_ce, border_ce = loss.losses
    assert dice_ce.batch_dice is True and dice_ce.include_background is False
    assert dice_ce.class_weights.tolist() == [1.0, 2.0, 2.0]
    assert isinstance(border_ce, BorderWeightedCELoss) and loss.needs_weights
    assert build_loss({"focal": {"gamma": 3.0}}).gamma == 3.0


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        pytest.param(
            "dice", "unknown loss 'dice'; valid losses: ce, dice_ce, focal, border_ce", id="name"
        ),
        pytest.param(
            {"dice_ce": 1.0, "tversky": 1.0}, "unknown loss 'tversky'; valid losses: ", id="extra"
        ),
        pytest.param(
            {"focal": {"gama": 3.0}},
            "focal: unknown option 'gama'; valid options: weight, gamma, class_weights",
            id="option",
        ),
        pytest.param({}, "no loss terms; give at least one of ce, dice_ce", id="empty"),
        pytest.param({"ce": 0.0}, r"ce\.weight: Input should be greater than 0", id="zero"),
        pytest.param({"ce": True}, "ce: give a weight or a mapping of options", id="bool"),
        pytest.param({"ce": "high"}, "ce: give a weight or a mapping of options", id="string"),
        pytest.param({"focal": {"gamma": -1.0}}, "focal: gamma: must be finite and >= 0", id="g"),
        pytest.param({"dice_ce": {"smooth": 0}}, "dice_ce: smooth: must be finite and > 0", id="s"),
        pytest.param(
            {"ce": {"class_weights": [1, -1]}}, "ce: class_weights: need one finite", id="cw"
        ),
        pytest.param(["ce"], "expected a loss name, a mapping", id="list"),
    ],
)
def test_build_loss_rejects_bad_specs_with_a_clear_message(spec: object, match: str) -> None:
    with pytest.raises(LossConfigError, match=match):
        build_loss(spec)


@pytest.mark.parametrize(
    ("spec_class", "loss_class"),
    [(CESpec, CrossEntropyLoss), (DiceCESpec, DiceCELoss), (FocalSpec, FocalLoss)],
)
def test_spec_options_mirror_the_loss_constructor(spec_class: type, loss_class: type) -> None:
    parameters = inspect.signature(loss_class).parameters
    options = {name: f.default for name, f in spec_class.model_fields.items() if name != "weight"}
    assert options == {name: p.default for name, p in parameters.items()}


LOGITS = torch.zeros(2, 3, 4, 4)
TARGET = torch.zeros(2, 4, 4, dtype=torch.long)


@pytest.mark.parametrize(
    ("loss", "logits", "target", "weights", "match"),
    [
        pytest.param(
            BorderWeightedCELoss(), LOGITS, TARGET, None, "needs per-voxel weights", id="no-w"
        ),
        pytest.param(
            BorderWeightedCELoss(),
            LOGITS,
            TARGET,
            torch.ones(2, 4, 5),
            r"weights shape \(2, 4, 5\) does not match target \(2, 4, 4\)",
            id="w-shape",
        ),
        pytest.param(
            CrossEntropyLoss(),
            LOGITS,
            torch.zeros(2, 4, 5, dtype=torch.long),
            None,
            r"target shape \(2, 4, 5\) does not match logits \(2, 3, 4, 4\)",
            id="t-shape",
        ),
        pytest.param(
            DiceCELoss(), LOGITS, TARGET.float(), None, "integer class indices", id="t-float"
        ),
        pytest.param(
            FocalLoss(), LOGITS, TARGET + 3, None, r"must lie in 0\.\.2 .* got 3\.\.3", id="range"
        ),
        pytest.param(
            CrossEntropyLoss(), torch.zeros(2, 1, 4, 4), TARGET, None, "need >= 2", id="one-class"
        ),
        pytest.param(
            CrossEntropyLoss(), TARGET, TARGET, None, "must be a float tensor", id="int-logits"
        ),
        pytest.param(
            CrossEntropyLoss(class_weights=[1.0, 2.0]),
            LOGITS,
            TARGET,
            None,
            "2 class weights but logits have 3 classes",
            id="class-weights",
        ),
    ],
)
def test_losses_reject_bad_inputs_with_a_clear_message(
    loss: SegmentationLoss,
    logits: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None,
    match: str,
) -> None:
    with pytest.raises(LossInputError, match=match):
        loss(logits, target, weights)


def test_target_with_a_channel_axis_and_a_small_integer_dtype_is_accepted() -> None:
    logits, target = _random_inputs((2, 3, 8, 7), seed=13)
    expected = DiceCELoss()(logits, target)
    torch.testing.assert_close(DiceCELoss()(logits, target[:, None].to(torch.uint8)), expected)


ALL_LOSSES = [
    pytest.param(CrossEntropyLoss(class_weights=[1.0, 2.0, 3.0]), id="ce"),
    pytest.param(DiceCELoss(batch_dice=True), id="dice-ce"),
    pytest.param(FocalLoss(gamma=0.5), id="focal"),
    pytest.param(BorderWeightedCELoss(), id="border-ce"),
    pytest.param(build_loss({"dice_ce": 1.0, "border_ce": 0.5, "focal": 0.2}), id="combined"),
]


@pytest.mark.parametrize("loss", ALL_LOSSES)
def test_gradient_is_the_derivative_of_the_loss(loss: SegmentationLoss) -> None:
    # along a random direction, the gradient's projection equals the central difference of
    # the value (a detached term or a wrong custom backward would not)
    logits, target = _random_inputs((2, 3, 6, 5, 4), seed=14)
    weights = 1 + torch.rand(target.shape, generator=torch.Generator().manual_seed(0))
    direction = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    logits.requires_grad_(True)
    loss(logits, target, weights).backward()
    assert logits.grad is not None
    projected = float((logits.grad * direction).sum())
    step = 1e-2
    with torch.no_grad():
        ahead = loss(logits + step * direction, target, weights)
        behind = loss(logits - step * direction, target, weights)
    assert float(ahead - behind) / (2 * step) == pytest.approx(projected, rel=2e-3)
    assert abs(projected) > 0.01


def test_gradients_through_deep_supervision_are_the_weighted_gradients_of_each_output() -> None:
    generator = torch.Generator().manual_seed(15)
    outputs = [torch.randn(2, 3, 8 // 2**i, 8 // 2**i, generator=generator) for i in range(3)]
    for output in outputs:
        output.requires_grad_(True)
    target = torch.randint(0, 3, (2, 8, 8), generator=generator)
    loss = build_loss("dice_ce")
    DeepSupervisionLoss(loss)(outputs, target).backward()
    sampled = [target, target[:, 1::2, 1::2], target[:, 2::4, 2::4]]
    for output, weight, low_target in zip(outputs, (4 / 7, 2 / 7, 1 / 7), sampled, strict=True):
        alone = output.detach().clone().requires_grad_(True)
        (weight * loss(alone, low_target)).backward()
        assert alone.grad is not None and alone.grad.abs().sum() > 0
        torch.testing.assert_close(output.grad, alone.grad)


@pytest.mark.parametrize("loss", ALL_LOSSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_are_computed_in_float32(
    loss: SegmentationLoss, dtype: torch.dtype
) -> None:
    logits, target = _random_inputs((2, 3, 6, 5, 4), seed=16)
    half = logits.to(dtype).requires_grad_(True)
    weights = (1 + torch.rand(target.shape)).to(dtype)
    value = loss(half, target, weights)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, loss(half.float(), target, weights.float()))
    value.backward()
    reference = half.detach().float().requires_grad_(True)
    loss(reference, target, weights.float()).backward()
    assert half.grad is not None and reference.grad is not None
    # the float32 gradient cast back (a combined loss adds its terms' gradients in ``dtype``)
    assert half.grad.dtype == dtype
    torch.testing.assert_close(half.grad, reference.grad.to(dtype))


def test_losses_work_under_cpu_autocast() -> None:
    logits, target = _random_inputs((2, 3, 6, 5, 4), seed=17)
    conv = torch.nn.Conv3d(3, 3, kernel_size=1)
    loss = build_loss({"dice_ce": 1.0, "focal": 1.0})
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        output = conv(logits)
        assert output.dtype == torch.bfloat16
        value = loss(output, target)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, loss(output.detach().float(), target), rtol=0, atol=0)
    value.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
