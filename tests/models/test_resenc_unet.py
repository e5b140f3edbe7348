"""Residual-encoder U-Net (nnU-Net ResEnc M preset): shapes, blocks, deep supervision, residuals."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional

from medseg.errors import MedsegError
from medseg.losses import DeepSupervisionLoss, build_loss
from medseg.models import build_network, network_arguments, network_options
from medseg.models.resenc_unet import ResidualBlock

# (patch, pool_strides, auxiliary outputs as unet: levels - 3, at least 1, none up to 2 levels)
PLANS = {
    "3d": ([32, 32, 32], [[2, 2, 2], [2, 2, 2], [2, 2, 2]], 1),
    "2d": ([32, 48], [[2, 2], [2, 2], [2, 2], [2, 2]], 2),
    "anisotropic": ([8, 32, 32], [[1, 2, 2], [2, 2, 2], [2, 2, 1]], 1),
    "two-levels": ([16, 16], [[2, 2]], 0),
    "one-level": ([8, 8, 8], [], 0),
}


def _network(plan: str, **options) -> nn.Module:
    patch, strides, _ = PLANS[plan]
    options = network_options("resenc_unet", {"base_filters": 4, "max_filters": 16} | options)
    return build_network(
        **network_arguments(
            architecture="resenc_unet",
            in_channels=1,
            num_classes=3,
            configuration={"patch_size": patch, "pool_strides": strides},
            **options,
        )
    )


def _unet(plan: str, deep_supervision: bool) -> nn.Module:
    patch, strides, _ = PLANS[plan]
    arguments = network_arguments(
        architecture="unet",
        in_channels=1,
        num_classes=3,
        configuration={"patch_size": patch, "pool_strides": strides},
        base_filters=4,
        deep_supervision=deep_supervision,
    )
    return build_network(**arguments)


@pytest.mark.parametrize("plan", PLANS)
def test_logits_have_the_input_size(plan: str) -> None:
    patch, _, auxiliary = PLANS[plan]
    network = _network(plan)
    x = torch.randn(1, 1, *patch)
    with torch.no_grad():
        outputs = network.train()(x)
        assert network.deep_supervision is (auxiliary > 0)
        if auxiliary:
            assert isinstance(outputs, list) and len(outputs) == 1 + auxiliary
            assert all(o.shape == (1, 3, *patch) for o in outputs)
        else:
            assert outputs.shape == (1, 3, *patch)
        assert network.eval()(x).shape == (1, 3, *patch)


@pytest.mark.parametrize("plan", ["3d", "2d", "anisotropic"])
@pytest.mark.parametrize("deep_supervision", [True, False])
def test_deep_supervision_outputs_as_unet(plan: str, deep_supervision: bool) -> None:
    x = torch.randn(1, 1, *PLANS[plan][0])
    network = _network(plan, deep_supervision=deep_supervision)
    unet = _unet(plan, deep_supervision)
    with torch.no_grad():
        outputs, reference = network.train()(x), unet.train()(x)
    assert network.deep_supervision is unet.deep_supervision is deep_supervision
    assert type(outputs) is type(reference)
    if deep_supervision:
        assert [o.shape for o in outputs] == [o.shape for o in reference]


@pytest.mark.parametrize(
    ("plan", "options", "blocks"),
    [
        ("3d", {}, [1, 3, 4, 6]),
        ("2d", {}, [1, 3, 4, 6, 6]),
        ("one-level", {}, [1]),
        ("anisotropic", {"blocks_per_stage": [2, 1, 1, 2, 9]}, [2, 1, 1, 2]),
    ],
)
def test_residual_blocks_per_encoder_stage(plan: str, options: dict, blocks: list[int]) -> None:
    network = _network(plan, **options)
    counted = [
        sum(isinstance(m, ResidualBlock) for m in stage.modules())
        for stage in network.encoder.stages
    ]
    assert counted == blocks
    assert network.blocks_per_stage == tuple(blocks)


def test_stages_downsample_by_the_plan_strides_in_their_first_block() -> None:
    network = _network("anisotropic")
    strides = [stage[0].conv1.conv.stride for stage in network.encoder.stages]
    assert strides == [(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 1)]
    later = {block.conv1.conv.stride for stage in network.encoder.stages for block in stage[1:]}
    assert later == {(1, 1, 1)}
    upsamplings = [(m.kernel_size, m.stride) for m in network.upsamplings]
    assert upsamplings == [((1, 2, 2), (1, 2, 2)), ((2, 2, 2), (2, 2, 2)), ((2, 2, 1), (2, 2, 1))]


def test_too_few_blocks_per_stage_is_an_error() -> None:
    with pytest.raises(MedsegError, match=r"needs blocks_per_stage of at least 4 positive counts"):
        _network("3d", blocks_per_stage=[1, 3, 4])


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "stride", "skip"),
    [(8, 8, (1, 1, 1), nn.Identity), (4, 8, (1, 2, 2), nn.Sequential)],
)
def test_residual_block_adds_its_skip(
    in_channels: int, out_channels: int, stride: tuple[int, ...], skip: type
) -> None:
    torch.manual_seed(0)
    block = ResidualBlock(3, in_channels, out_channels, stride).eval()
    assert isinstance(block.skip, skip)
    x = torch.randn(2, in_channels, 4, 8, 8)
    with torch.no_grad():
        branch = block.conv2(block.conv1(x))
        expected = functional.leaky_relu(branch + block.skip(x), 0.01)
        torch.testing.assert_close(block(x), expected)
        assert (branch.abs() > 1e-3).any()
        for conv in (block.conv1.conv, block.conv2.conv):
            conv.weight.zero_()
        # without its convolutions the block passes its skip (the identity here) on
        torch.testing.assert_close(block(x), functional.leaky_relu(block.skip(x), 0.01))
        if skip is nn.Identity:
            nonnegative = x.relu()
            torch.testing.assert_close(block(nonnegative), nonnegative)


def test_one_training_step_through_build_network_and_network_options() -> None:
    torch.manual_seed(0)
    network = _network("3d", blocks_per_stage=[1, 2, 2, 2]).train()
    image = torch.randn(2, 1, 32, 32, 32)
    target = (image[:, 0] > 0.5).long() + (image[:, 0] > 1.5).long()
    loss = DeepSupervisionLoss(build_loss("dice_ce"))
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    before = [p.detach().clone() for p in network.parameters()]
    value = loss(network(image), target)
    value.backward()
    optimizer.step()
    assert torch.isfinite(value)
    assert all(not torch.equal(p, b) for p, b in zip(network.parameters(), before, strict=True))


def test_network_options_converts_blocks_per_stage() -> None:
    assert network_options("resenc_unet", {"blocks_per_stage": [1.0, 2]}) == {
        "blocks_per_stage": [1, 2]
    }
