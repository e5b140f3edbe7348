"""Deep supervision: scale weights, resizing, weighted sums, gradients."""

from __future__ import annotations

import pytest
import torch

from medseg.errors import LossInputError
from medseg.losses import (
    CrossEntropyLoss,
    DeepSupervisionLoss,
    DiceCELoss,
    FocalLoss,
    SegmentationLoss,
    build_loss,
    deep_supervision_weights,
)
from tests.losses.helpers import _random_inputs


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
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        weights: torch.Tensor | None,
        labelled: torch.Tensor | None,
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
