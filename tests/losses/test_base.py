"""What every loss shares: input checks, gradients, float32 under half precision."""

from __future__ import annotations

import pytest
import torch

from medseg.errors import LossInputError
from medseg.losses import (
    BorderWeightedCELoss,
    CrossEntropyLoss,
    DiceCELoss,
    FocalLoss,
    SegmentationLoss,
    build_loss,
)
from tests.losses.helpers import _random_inputs

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
