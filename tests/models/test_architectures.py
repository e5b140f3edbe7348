"""Registered architectures: fit any plan patch, train, expose their encoder and export to ONNX."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional

from medseg.errors import MedsegError
from medseg.losses import DeepSupervisionLoss, build_loss
from medseg.models import ARCHITECTURES, build_network, network_arguments
from medseg.models.deeplab import fit_rates
from medseg.models.encoders import dilated_levels_for
from medseg.models.fcn import bilinear_upsampling
from medseg.models.pspnet import adaptive_average_pool

NAMES = sorted(ARCHITECTURES)
NEW_NAMES = ["fcn32s", "fcn16s", "fcn8s", "unet_resize", "pspnet", "deeplabv3", "resenc_unet"]
NEW_NAMES += ["fcdensenet56", "fcdensenet67", "fcdensenet103"]
SMALL = {"base_filters": 4, "max_filters": 16}
SMALL_TIRAMISU = {"base_filters": 4, "growth_rate": 2}

# (patch, pool_strides): patch sides are divisible by the product of the strides per axis
HIPPOCAMPUS_3D = ([40, 56, 40], [[2, 2, 2], [2, 2, 2], [1, 2, 1]])
HIPPOCAMPUS_2D = ([56, 40], [[2, 2], [2, 2], [2, 2]])
PLANS = [
    HIPPOCAMPUS_3D,
    HIPPOCAMPUS_2D,
    ([32, 32, 16], [[2, 2, 2], [2, 2, 2], [2, 2, 1], [2, 2, 1]]),
    ([24, 12, 8], [[1, 2, 2], [3, 2, 1], [2, 1, 2]]),
    ([12, 20], [[3, 1], [2, 2]]),
]


def _network(
    name: str, plan: tuple[list[int], list[list[int]]], *, num_classes: int = 3, **options
) -> nn.Module:
    patch, strides = plan
    arguments = network_arguments(
        architecture=name,
        in_channels=2,
        num_classes=num_classes,
        configuration={"patch_size": patch, "pool_strides": strides},
        **((SMALL_TIRAMISU if name.startswith("fcdensenet") else SMALL) | options),
    )
    return build_network(**arguments)


def _first(output: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    return output[0] if isinstance(output, list) else output


@pytest.mark.parametrize("plan", PLANS, ids=lambda plan: "x".join(map(str, plan[0])))
@pytest.mark.parametrize("name", NAMES)
def test_logits_have_the_patch_size(name: str, plan: tuple) -> None:
    patch = plan[0]
    network = _network(name, plan)
    x = torch.randn(1, 2, *patch)
    with torch.no_grad():
        assert _first(network.train()(x)).shape == (1, 3, *patch)
        assert network.eval()(x).shape == (1, 3, *patch)


@pytest.mark.parametrize("plan", [HIPPOCAMPUS_3D, HIPPOCAMPUS_2D], ids=["3d", "2d"])
@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name: str, plan: tuple) -> None:
    network = _network(name, plan).train()
    output = network(torch.randn(1, 2, *plan[0]))
    outputs = output if isinstance(output, list) else [output]
    sum((o * torch.randn_like(o)).sum() for o in outputs).backward()
    unreached = [key for key, p in network.named_parameters() if p.grad is None or not p.grad.any()]
    assert unreached == []


@pytest.mark.parametrize(("name", "scores"), [("fcn32s", 1), ("fcn16s", 2), ("fcn8s", 3)])
def test_fcn_scores_levels_and_upsamples_by_transposed_convolution(name: str, scores: int) -> None:
    network = _network(name, HIPPOCAMPUS_3D)
    assert len(network.scores) == scores
    assert all(isinstance(layer, nn.Conv3d) for layer in network.scores)
    assert all(layer.kernel_size == (1, 1, 1) for layer in network.scores)
    assert len(network.upsamplings) == scores
    assert all(isinstance(layer, nn.ConvTranspose3d) for layer in network.upsamplings)


@pytest.mark.parametrize(("name", "levels", "needed"), [("fcn16s", 0, 1), ("fcn8s", 1, 2)])
def test_fcn_without_enough_levels_for_its_skips_is_an_error(
    name: str, levels: int, needed: int
) -> None:
    with pytest.raises(MedsegError, match=rf"{name} needs at least {needed} downsampling levels"):
        _network(name, ([16, 16], [[2, 2]] * levels))


@pytest.mark.parametrize("factor", [(2, 2, 1), (4, 3, 2), (8, 8, 8)])
def test_fcn_upsampling_starts_as_trilinear_interpolation(factor: tuple[int, ...]) -> None:
    x = torch.randn(1, 2, 5, 6, 4)
    with torch.no_grad():
        upsampled = bilinear_upsampling(3, 2, factor)(x)
    expected = functional.interpolate(x, scale_factor=factor, mode="trilinear", align_corners=False)
    assert upsampled.shape == expected.shape
    # the transposed convolution pads with zeros where interpolation repeats the border
    interior = (..., *(slice(step, -step) for step in factor))
    torch.testing.assert_close(upsampled[interior], expected[interior])


@pytest.mark.parametrize("upsample_mode", ["nearest", "linear"])
def test_unet_resize_upsamples_without_transposed_convolution(upsample_mode: str) -> None:
    network = _network("unet_resize", HIPPOCAMPUS_3D, upsample_mode=upsample_mode)
    kinds = {type(module) for module in network.modules()}
    assert not kinds & {nn.ConvTranspose2d, nn.ConvTranspose3d}
    resizes = [m for m in network.modules() if isinstance(m, nn.Upsample)]
    assert len(resizes) == 3
    assert {m.mode for m in resizes} == {"nearest" if upsample_mode == "nearest" else "trilinear"}


def test_unet_resize_deep_supervision_is_a_list_full_resolution_first() -> None:
    network = _network("unet_resize", HIPPOCAMPUS_3D)
    x = torch.randn(1, 2, *HIPPOCAMPUS_3D[0])
    assert network.deep_supervision
    with torch.no_grad():
        outputs = network.train()(x)
        assert isinstance(outputs, list) and len(outputs) == 2
        assert all(o.shape == (1, 3, 40, 56, 40) for o in outputs)
        torch.testing.assert_close(outputs[0], network.eval()(x))


@pytest.mark.parametrize("name", NAMES)
def test_deep_supervision_attribute(name: str) -> None:
    assert _network(name, HIPPOCAMPUS_3D).deep_supervision is ("unet" in name)


def _encoder_dilations(network: nn.Module) -> list[tuple[int, ...]]:
    return [m.dilation for m in network.encoder.modules() if isinstance(m, nn.Conv3d)]


@pytest.mark.parametrize("name", ["pspnet", "deeplabv3"])
def test_context_networks_dilate_their_deepest_encoder_level(name: str) -> None:
    dilations = _encoder_dilations(_network(name, HIPPOCAMPUS_3D))
    # only the last level dilates, by the stride it does not pool
    assert dilations == [(1, 1, 1)] * 6 + [(1, 2, 1)] * 2


def test_fcn_encoder_is_not_dilated() -> None:
    assert set(_encoder_dilations(_network("fcn8s", HIPPOCAMPUS_3D))) == {(1, 1, 1)}


@pytest.mark.parametrize(
    ("strides", "output_stride", "dilated"),
    [
        ([[2, 2, 2]] * 3, None, 1),
        ([[2, 2, 2]] * 3, 8, 0),
        ([[2, 2, 2]] * 3, 4, 1),
        ([[2, 2, 2]] * 5, 8, 2),
        ([[2, 2, 2]] * 5, 16, 1),
        ([[1, 2, 2], [2, 2, 2], [2, 2, 1]], 4, 1),
        ([[2, 2, 2]] * 3, 1, 3),
        ([], None, 0),
    ],
)
def test_dilated_levels_keep_every_axis_within_the_output_stride(
    strides: list[list[int]], output_stride: int | None, dilated: int
) -> None:
    assert dilated_levels_for(strides, output_stride) == dilated


def test_deeplab_output_stride_option_sets_the_dilated_levels() -> None:
    network = _network("deeplabv3", ([64, 64], [[2, 2]] * 5), output_stride=8)
    dilations = [m.dilation for m in network.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert dilations == [(1, 1)] * 8 + [(2, 2)] * 2 + [(4, 4)] * 2


def test_pspnet_pools_the_configured_bins() -> None:
    network = _network("pspnet", HIPPOCAMPUS_2D, bins=[1, 2, 4, 8])
    assert network.head.pyramid.bins == (1, 2, 4, 8)
    assert len(network.head.pyramid.branches) == 4


def test_pspnet_bins_larger_than_the_features_are_clipped() -> None:
    network = _network("pspnet", ([16, 8], [[2, 2], [2, 2]]), bins=[1, 6, 50])
    with torch.no_grad():
        assert network.eval()(torch.randn(1, 2, 16, 8)).shape == (1, 3, 16, 8)


@pytest.mark.parametrize(
    ("size", "cells"),
    [((5, 7, 5), (3, 3, 3)), ((5, 7, 5), (2, 6, 1)), ((10, 14, 10), (6, 6, 6)), ((7, 9), (6, 4))],
)
def test_adaptive_average_pool_matches_torch(size: tuple[int, ...], cells: tuple[int, ...]) -> None:
    x = torch.randn(2, 3, *size)
    pool = functional.adaptive_avg_pool3d if len(size) == 3 else functional.adaptive_avg_pool2d
    torch.testing.assert_close(adaptive_average_pool(x, cells), pool(x, cells))


def test_deeplab_uses_the_configured_rates() -> None:
    network = _network("deeplabv3", HIPPOCAMPUS_3D, rates=[2, 4, 6, 8])
    assert network.head.rates == (2, 4, 6, 8)
    assert len(network.head.atrous) == 4


@pytest.mark.parametrize(
    ("rates", "size", "expected"),
    [
        ((6, 12, 18), (40, 40), [(6, 6), (12, 12), (18, 18)]),
        ((6, 12, 18), (10, 14, 40), [(3, 4, 6), (6, 9, 12), (9, 13, 18)]),
        ((6, 12, 18), (1, 3), [(1, 1), (1, 1), (1, 2)]),
        ((2, 4), (5, 4), [(2, 2), (4, 3)]),
    ],
)
def test_rates_are_scaled_to_fit_the_feature_map(
    rates: tuple[int, ...], size: tuple[int, ...], expected: list[tuple[int, ...]]
) -> None:
    assert fit_rates(rates, size) == expected


def test_build_network_takes_yaml_options() -> None:
    config = yaml.safe_load(
        "architecture: deeplabv3\n"
        "network: {rates: [3, 6, 9], output_stride: 8, head_filters: 8, base_filters: 4}\n"
    )
    network = build_network(
        architecture=config["architecture"],
        in_channels=1,
        num_classes=2,
        pool_strides=[[2, 2], [2, 2], [2, 2], [2, 2]],
        spatial_dims=2,
        **config["network"],
    )
    assert network.head.rates == (3, 6, 9)
    with torch.no_grad():
        assert network.eval()(torch.randn(1, 1, 32, 48)).shape == (1, 2, 32, 48)


def test_unknown_architecture_lists_the_known_ones() -> None:
    known = (
        "unet, unet_resize, resenc_unet, fcn32s, fcn16s, fcn8s, fcdensenet56, fcdensenet67, "
        "fcdensenet103, pspnet, deeplabv3"
    )
    with pytest.raises(
        MedsegError, match=f"unknown architecture 'vnet'; known: {known}; did you mean 'unet'"
    ):
        build_network(architecture="vnet")


@pytest.mark.parametrize(("name", "option"), [("fcn8s", "deep_supervision"), ("fcn8s", "variant")])
def test_unknown_option_names_the_options_the_architecture_takes(name: str, option: str) -> None:
    with pytest.raises(MedsegError, match=rf"'{name}' takes no option\(s\) {option}; it takes: "):
        _network(name, HIPPOCAMPUS_2D, **{option: True})


def _encoder_modules(network: nn.Module) -> list[nn.Module]:
    if hasattr(network, "encoder"):
        return [network.encoder]
    unet = network.network
    return [unet.input_block, unet.downsamples, unet.bottleneck]


@pytest.mark.parametrize("name", NAMES)
def test_encoder_prefixes_cover_exactly_the_encoder_parameters(name: str) -> None:
    network = _network(name, HIPPOCAMPUS_3D)
    named = {
        id(p) for key, p in network.named_parameters() if key.startswith(network.encoder_prefixes)
    }
    encoder = {id(p) for module in _encoder_modules(network) for p in module.parameters()}
    assert encoder and named == encoder


@pytest.mark.parametrize(
    "names", [("fcn32s", "fcn8s", "pspnet", "deeplabv3"), ("unet", "unet_resize")]
)
def test_encoder_weights_transfer_between_architectures(names: tuple[str, ...]) -> None:
    networks = [_network(name, HIPPOCAMPUS_3D) for name in names]
    source, *targets = networks
    encoder = {
        key: value
        for key, value in source.state_dict().items()
        if key.startswith(source.encoder_prefixes)
    }
    for target in targets:
        state = target.state_dict()
        assert {key: value.shape for key, value in state.items() if key in encoder} == {
            key: value.shape for key, value in encoder.items()
        }
        assert not target.load_state_dict(encoder, strict=False).unexpected_keys
        for key, value in encoder.items():
            torch.testing.assert_close(target.state_dict()[key], value)


@pytest.mark.parametrize("name", NAMES)
def test_a_few_steps_reduce_the_loss_on_a_two_class_problem(name: str) -> None:
    torch.manual_seed(0)
    network = _network(name, ([32, 32], [[2, 2], [2, 2]]), num_classes=2).train()
    target = torch.zeros(4, 32, 32, dtype=torch.long)
    for case, (row, column) in enumerate([(3, 5), (12, 2), (9, 17), (20, 20)]):
        target[case, row : row + 9, column : column + 11] = 1
    image = torch.stack([target, 1 - target], dim=1).float() + 0.3 * torch.randn(4, 2, 32, 32)
    loss = DeepSupervisionLoss(build_loss("dice_ce"))
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        value = loss(network(image), target)
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert losses[-1] < 0.8 * losses[0]


ONNX_FAST = {
    ("fcn8s", "2d"),
    ("unet_resize", "2d"),
    ("pspnet", "3d"),
    ("deeplabv3", "3d"),
    ("resenc_unet", "3d"),
    ("fcdensenet103", "3d"),
}


@pytest.mark.parametrize(
    ("name", "dims"),
    [
        pytest.param(name, dims, marks=[] if (name, dims) in ONNX_FAST else pytest.mark.slow)
        for name in NEW_NAMES
        for dims in ("3d", "2d")
    ],
)
def test_onnx_export_matches_torch(name: str, dims: str, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from medseg.infer.backends import OnnxRuntimePredictor, export_onnx

    plan = HIPPOCAMPUS_3D if dims == "3d" else HIPPOCAMPUS_2D
    network = _network(name, plan)
    path = export_onnx(network, patch_size=plan[0], in_channels=2, cache_dir=tmp_path)
    predictor = OnnxRuntimePredictor(onnx_path=path, patch_size=plan[0], in_channels=2)
    x = torch.randn(3, 2, *plan[0])
    with torch.no_grad():
        torch.testing.assert_close(predictor(x), network.eval()(x), atol=1e-4, rtol=1e-4)
