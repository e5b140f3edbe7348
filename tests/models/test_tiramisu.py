"""FC-DenseNet (Tiramisu): the paper's layer counts, dense-block wiring and the plan's strides."""

from __future__ import annotations

import pytest
import torch
import yaml
from pydantic import ValidationError
from torch import nn

from medseg.errors import MedsegError
from medseg.losses import DeepSupervisionLoss, build_loss
from medseg.models import build_network, network_arguments
from medseg.models.tiramisu import TIRAMISU_PRESETS, layers_for_levels, transition_up
from medseg.train.config import TrainConfig

TINY = {"base_filters": 4, "growth_rate": 2}
PAPER_2D = {"in_channels": 3, "num_classes": 11, "pool_strides": [[2, 2]] * 5, "spatial_dims": 2}


def _tiny(name: str, patch: list[int], strides: list[list[int]], **options) -> nn.Module:
    return build_network(
        **network_arguments(
            architecture=name,
            in_channels=1,
            num_classes=2,
            configuration={"patch_size": patch, "pool_strides": strides},
            **(TINY | options),
        )
    )


@pytest.mark.parametrize(
    ("name", "patch", "strides", "down_layers"),
    [
        ("fcdensenet56", [32, 32], [[2, 2]] * 5, [4, 4, 4, 4, 4]),
        ("fcdensenet103", [32, 32, 32], [[2, 2, 2]] * 3, [4, 5, 7]),
        ("fcdensenet67", [8, 32, 32], [[1, 2, 2], [1, 2, 2], [2, 2, 2]], [5, 5, 5]),
        ("fcdensenet103", [12, 20], [[3, 1], [2, 2]], [4, 5]),
        ("fcdensenet103", [64, 64], [[2, 2]] * 6, [4, 5, 7, 10, 12, 12]),
        ("fcdensenet56", [9, 7, 5], [], []),
    ],
)
def test_logits_have_the_input_size_and_one_block_per_plan_level(
    name: str, patch: list[int], strides: list[list[int]], down_layers: list[int]
) -> None:
    network = _tiny(name, patch, strides)
    assert [len(block.layers) for block in network.encoder.blocks] == down_layers
    assert [len(block.layers) for block in network.blocks] == down_layers[::-1]
    pools = [transition.pool.kernel_size for transition in network.encoder.transitions]
    assert [list(k) if isinstance(k, tuple) else [k] * len(patch) for k in pools] == strides
    x = torch.randn(2, 1, *patch)
    with torch.no_grad():
        assert network.train()(x).shape == (2, 2, *patch)
        assert network.eval()(x).shape == (2, 2, *patch)


def _conv_layers(network: nn.Module) -> int:
    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d, nn.ConvTranspose3d)
    return sum(isinstance(module, kinds) for module in network.modules())


@pytest.mark.parametrize(
    ("name", "layers", "paper_parameters"),
    [("fcdensenet56", 56, 1.5e6), ("fcdensenet67", 67, 3.5e6), ("fcdensenet103", 103, 9.4e6)],
)
def test_presets_have_the_papers_depth_and_size(
    name: str, layers: int, paper_parameters: float
) -> None:
    """The paper's 2D CamVid setting: 3 input channels, 11 classes, 5 poolings, 48 filters.

    Measured: 1,376,795 / 3,463,243 / 9,322,091 parameters (paper: 1.5 M / 3.5 M / 9.4 M).
    """
    network = build_network(architecture=name, **PAPER_2D)
    assert _conv_layers(network) == layers
    parameters = sum(p.numel() for p in network.parameters())
    assert abs(parameters - paper_parameters) < 0.1 * paper_parameters
    if name == "fcdensenet103":
        assert abs(parameters - 9.4e6) < 0.01 * 9.4e6


def test_up_path_carries_only_the_new_feature_maps_of_each_dense_block() -> None:
    network = build_network(architecture="fcdensenet103", **PAPER_2D).eval()
    k = 16
    # down path: each block's input is concatenated to its output (Table 2's m: 112 ... 656)
    assert network.encoder.skip_channels == [112, 192, 304, 464, 656]
    seen: list[int] = []
    hooks = [
        u.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
        for u in network.upsamplings
    ]
    with torch.no_grad():
        assert network(torch.randn(1, 3, 32, 32)).shape == (1, 11, 32, 32)
    for hook in hooks:
        hook.remove()
    # what each transition up receives is the previous block's n_layers * k new maps alone:
    # bottleneck 15, then the up blocks 12, 10, 7, 5
    assert seen == [15 * k, 12 * k, 10 * k, 7 * k, 5 * k]
    assert [block.out_channels for block in network.blocks] == [12 * k, 10 * k, 7 * k, 5 * k, 4 * k]
    # the classifier sees the last block's input (80 upsampled + 112 skip) and its 64 new maps
    assert network.classifier.in_channels == 256


@pytest.mark.parametrize(
    ("stride", "size"), [((2, 2, 2), (5, 6, 7)), ((1, 2, 3), (4, 4, 4)), ((4, 5, 1), (3, 2, 6))]
)
def test_transition_up_multiplies_the_size_by_the_stride(
    stride: tuple[int, ...], size: tuple[int, ...]
) -> None:
    upsampling = transition_up(3, 2, stride)
    with torch.no_grad():
        output = upsampling(torch.randn(1, 2, *size))
    assert output.shape[2:] == tuple(n * s for n, s in zip(size, stride, strict=True))


@pytest.mark.parametrize(
    ("levels", "expected"), [(0, []), (2, [4, 5]), (7, [4, 5, 7, 10, 12, 12, 12])]
)
def test_layers_for_levels_keeps_the_shallow_blocks_and_repeats_the_deepest(
    levels: int, expected: list[int]
) -> None:
    assert layers_for_levels(TIRAMISU_PRESETS["fcdensenet103"].down_layers, levels) == expected


@pytest.mark.parametrize(
    ("options", "strides", "message"),
    [
        ({}, [[2, 2]], r"pool_strides must have 3 positive entries each; got \[\[2, 2\]\]"),
        ({}, [[2, 0, 2]], r"got \[\[2, 0, 2\]\]"),
        ({"growth_rate": 0}, [[2, 2, 2]], r"growth_rate must be >= 1"),
        ({"dropout": 1.0}, [[2, 2, 2]], r"dropout must be in \[0, 1\); got 1.0"),
    ],
)
def test_invalid_options_are_refused(options: dict, strides: list[list[int]], message: str) -> None:
    with pytest.raises(MedsegError, match=message):
        _tiny("fcdensenet56", [16, 16, 16], strides, **options)


def test_trains_one_step_from_a_training_config() -> None:
    config = TrainConfig.model_validate(
        yaml.safe_load(
            "configuration: 3d\n"
            "architecture: fcdensenet67\n"
            "network: {growth_rate: 2.0, base_filters: 4, dropout: 0.1, norm: instance}\n"
        )
    )
    assert config.network == {
        "growth_rate": 2,
        "base_filters": 4,
        "dropout": 0.1,
        "norm": "instance",
    }
    network = build_network(
        **network_arguments(
            architecture=config.architecture,
            in_channels=1,
            num_classes=3,
            configuration={"patch_size": [8, 16, 16], "pool_strides": [[1, 2, 2], [2, 2, 2]]},
            **config.network,
        )
    ).train()
    assert network.encoder.blocks[0].layers[0].conv.out_channels == 2
    before = {key: value.clone() for key, value in network.state_dict().items()}
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    target = torch.randint(0, 3, (2, 8, 16, 16))
    loss = DeepSupervisionLoss(build_loss("dice_ce"))(network(torch.randn(2, 1, 8, 16, 16)), target)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.isfinite().all() for p in network.parameters())
    # every weight moved (a bias before a normalization may get a gradient too small to show)
    weights = {key for key, _ in network.named_parameters() if key.endswith("weight")}
    changed = {key for key in weights if not network.state_dict()[key].equal(before[key])}
    # stem, 25 dense layers and 2 transitions down (norm + conv each), 2 up, classifier
    assert len(weights) == 1 + 25 * 2 + 2 * 2 + 2 + 1 and changed == weights


def test_unknown_option_is_refused_by_the_training_config() -> None:
    with pytest.raises(ValidationError, match="growth_rate"):
        TrainConfig.model_validate({"architecture": "fcdensenet56", "network": {"growth": 8}})
