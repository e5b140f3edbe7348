"""The ignore label: target voxels of that value count in no loss, no sum and no gradient."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from medseg.errors import LossConfigError, LossInputError
from medseg.losses import (
    BorderWeightedCELoss,
    CrossEntropyLoss,
    DeepSupervisionLoss,
    DiceCELoss,
    FocalLoss,
    SegmentationLoss,
    build_loss,
)

IGNORE = 3  # three real classes 0..2, the ignore label is the next value

LOSSES: list = [
    pytest.param(lambda: CrossEntropyLoss(), id="ce"),
    pytest.param(lambda: CrossEntropyLoss(class_weights=[0.5, 2.0, 3.0]), id="ce-weighted"),
    pytest.param(lambda: DiceCELoss(), id="dice-ce"),
    pytest.param(lambda: DiceCELoss(batch_dice=True, include_background=True), id="batch-dice"),
    pytest.param(lambda: DiceCELoss(ce_weight=0.0), id="dice"),
    pytest.param(lambda: FocalLoss(gamma=2.0, class_weights=[1.0, 2.0, 0.5]), id="focal"),
    pytest.param(lambda: BorderWeightedCELoss(), id="border-ce"),
    pytest.param(lambda: build_loss({"dice_ce": 1.0, "border_ce": 0.5, "focal": 0.2}), id="sum"),
    pytest.param(
        lambda: build_loss({"dice_ce": {"batch_dice": True}, "border_ce": 0.5}), id="batch-sum"
    ),
]
# averages over voxels (and batch Dice): equal to the loss of the labelled voxels alone
VOXEL_AVERAGES = [p for p in LOSSES if p.id not in {"dice-ce", "dice", "sum"}]


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (2, 3, 6, 5, 4), a target with about a third of its voxels ignored, weights."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn((2, 3, 6, 5, 4), generator=generator)
    target = torch.randint(0, 3, (2, 6, 5, 4), generator=generator)
    ignored = torch.rand(target.shape, generator=generator) < 0.35
    weights = 1 + torch.rand(target.shape, generator=generator)
    return logits, target.masked_fill(ignored, IGNORE), weights


def _value_and_gradient(
    loss: SegmentationLoss, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.clone().requires_grad_(True)
    value = loss(logits, target, weights)
    value.backward()
    assert logits.grad is not None
    return value.detach(), logits.grad


@pytest.mark.parametrize("make", LOSSES)
def test_logits_at_ignored_voxels_change_neither_the_loss_nor_the_other_gradients(
    make: Callable[[], SegmentationLoss],
) -> None:
    loss = make().ignoring(IGNORE)
    logits, target, weights = _inputs(seed=3)
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    assert 0 < int(ignored.sum()) < ignored.numel()
    value, gradient = _value_and_gradient(loss, logits, target, weights)
    changed = torch.where(ignored, 50 * torch.randn_like(logits), logits)
    changed_value, changed_gradient = _value_and_gradient(loss, changed, target, weights)
    assert torch.isfinite(value) and value > 0
    assert changed_value.item() == pytest.approx(value.item(), rel=1e-6)
    torch.testing.assert_close(changed_gradient[~ignored], gradient[~ignored])
    assert torch.count_nonzero(gradient[ignored]) == 0
    assert torch.count_nonzero(gradient[~ignored]) > 0


@pytest.mark.parametrize("make", VOXEL_AVERAGES)
def test_a_voxel_average_with_ignored_voxels_is_that_of_the_labelled_voxels_alone(
    make: Callable[[], SegmentationLoss],
) -> None:
    logits, target, weights = _inputs(seed=5)
    labelled = target != IGNORE
    # the labelled voxels as one image (1, K, N): the same sums and means without any mask
    alone = logits.movedim(1, -1)[labelled].T[None]
    expected = make()(alone, target[labelled][None], weights[labelled][None])
    value = make().ignoring(IGNORE)(logits, target, weights)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_per_sample_dice_counts_only_the_labelled_voxels_of_each_sample() -> None:
    # sample 0 fully labelled, sample 1 with the predicted class 2 everywhere it is ignored:
    # per-sample Dice over labelled voxels is perfect for both, so the loss is ~0
    target = torch.zeros((2, 4, 4), dtype=torch.long)
    target[:, :2] = 1
    target[1, 2:, 2:] = IGNORE
    prediction = target.clone()
    prediction[1, 2:, 2:] = 2
    logits = 40 * torch.nn.functional.one_hot(prediction, 3).movedim(-1, 1).float()
    value = DiceCELoss().ignoring(IGNORE)(logits, target)
    # class 2 absent from sample 1's labelled voxels and predicted only where ignored: Dice 1
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    # unmasked (the ignored voxels as background) the same prediction is penalized
    as_background = target.masked_fill(target == IGNORE, 0)
    assert DiceCELoss()(logits, as_background).item() > 0.2


@pytest.mark.parametrize("make", LOSSES)
def test_a_batch_with_every_voxel_ignored_has_loss_zero_and_zero_gradient(
    make: Callable[[], SegmentationLoss],
) -> None:
    logits, _, weights = _inputs(seed=7)
    target = torch.full((2, 6, 5, 4), IGNORE)
    value, gradient = _value_and_gradient(make().ignoring(IGNORE), logits, target, weights)
    assert value.item() == 0.0
    assert torch.count_nonzero(gradient) == 0


def test_deep_supervision_keeps_the_ignore_label_at_every_resolution() -> None:
    loss = DeepSupervisionLoss(DiceCELoss()).ignoring(IGNORE)
    outputs = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
    assert loss(outputs, torch.full((2, 8, 8), IGNORE)).item() == 0.0
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :, 4:] = IGNORE
    partial = loss(outputs, target)
    inner = DiceCELoss().ignoring(IGNORE)
    expected = (2 / 3) * inner(outputs[0], target) + (1 / 3) * inner(
        outputs[1], target[:, 1::2, 1::2]
    )
    assert partial.item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_ignore_value_is_a_class_index_error_unless_the_loss_ignores_it() -> None:
    logits, target, _ = _inputs(seed=9)
    with pytest.raises(LossInputError, match=r"0\.\.2 for 3 classes, got 0\.\.3"):
        DiceCELoss()(logits, target)
    with pytest.raises(LossInputError, match=r"or the ignore label 3, got 0\.\.4"):
        DiceCELoss().ignoring(IGNORE)(logits, target.masked_fill(target == 1, 4))


def test_ignoring_reaches_every_term_and_refuses_background() -> None:
    loss = build_loss({"dice_ce": 1.0, "focal": 0.5}).ignoring(IGNORE)
    assert [term.ignore_label for term in loss.modules() if isinstance(term, SegmentationLoss)] == [
        IGNORE
    ] * 3
    assert loss.ignoring(None).ignore_label is None
    with pytest.raises(LossConfigError, match="ignore_label: must be a label value >= 1"):
        DiceCELoss().ignoring(0)
