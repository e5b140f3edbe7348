"""Pretrained encoder weights from an MLflow model, a checkpoint or a file; nothing else moves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medseg.errors import PretrainedEncoderError
from medseg.models import build_network
from medseg.models.pretrained import (
    PretrainedEncoder,
    encoder_state,
    load_encoder_weights,
    save_encoder_weights,
)
from medseg.train.checkpoint import TrainingState, save_checkpoint
from tests.packaged_model import log_tiny_unet
from tests.tiny_dataset import TinyDataset

STRIDES = [[2, 2, 2], [2, 2, 2], [2, 2, 2]]


def _unet(num_classes: int = 3, *, seed: int, base_filters: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(
        architecture="unet",
        in_channels=1,
        num_classes=num_classes,
        pool_strides=STRIDES,
        spatial_dims=3,
        base_filters=base_filters,
    )


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _not_encoder(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the tensors outside the encoder (DynUNet also lists encoder modules under
    ``skip_layers``: the same tensors, so they are told apart by storage)."""
    encoder = {v.data_ptr() for v in encoder_state(network).values()}
    return {k: v.clone() for k, v in network.state_dict().items() if v.data_ptr() not in encoder}


def test_encoder_of_a_registered_mlflow_model_is_loaded_and_nothing_else(
    tiny_dataset: TinyDataset, tmp_path: Path
) -> None:
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    source = log_tiny_unet(tiny_dataset.plan, tracking_uri, registered_model_name="encoders")
    target = _unet(num_classes=4, seed=1)  # another task: four classes
    decoder_before = _not_encoder(target)
    transfer = load_encoder_weights(
        target, PretrainedEncoder(source="models:/encoders/1"), tracking_uri=tracking_uri
    )
    assert _same(encoder_state(target), encoder_state(source.network))
    assert _same(_not_encoder(target), decoder_before)
    assert len(transfer.loaded) == len(encoder_state(target)) > 10
    assert transfer.skipped == {}
    assert "loaded from models:/encoders/1" in transfer.summary()


def test_encoder_file_and_training_checkpoint_are_sources(tmp_path: Path) -> None:
    source = _unet(seed=0)
    encoder_file = save_encoder_weights(source, tmp_path / "encoder.pt")
    checkpoint = tmp_path / "best.pt"
    optimizer = torch.optim.SGD(source.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    save_checkpoint(
        checkpoint, network=source, optimizer=optimizer, scaler=scaler, state=TrainingState()
    )
    for path in (encoder_file, checkpoint):
        target = _unet(num_classes=2, seed=2)
        load_encoder_weights(target, PretrainedEncoder(source=str(path)))
        assert _same(encoder_state(target), encoder_state(source))


def test_frozen_encoder_is_not_trained(tmp_path: Path) -> None:
    source = _unet(seed=0)
    target = _unet(seed=3)
    settings = PretrainedEncoder(source=str(save_encoder_weights(source, tmp_path / "e.pt")))
    load_encoder_weights(target, settings.model_copy(update={"freeze": True}))
    encoder = encoder_state(target)
    frozen = {n for n, p in target.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in target.named_parameters() if n in encoder}
    assert frozen and len(frozen) < len(list(target.parameters()))


def test_renamed_keys_and_partial_sources(tmp_path: Path) -> None:
    source = _unet(seed=0)
    state = {f"backbone.{k}": v for k, v in encoder_state(source).items()}
    dropped = sorted(state)[-1]
    del state[dropped]
    path = tmp_path / "foreign.pt"
    torch.save(state, path)
    target = _unet(seed=4)
    with pytest.raises(PretrainedEncoderError, match="no encoder tensor matches"):
        load_encoder_weights(target, PretrainedEncoder(source=str(path)))
    renamed = PretrainedEncoder(source=str(path), rename={"backbone.": ""})
    with pytest.raises(
        PretrainedEncoderError, match=r"strict, but 1 encoder tensors have no match"
    ):
        load_encoder_weights(target, renamed.model_copy(update={"strict": True}))
    transfer = load_encoder_weights(target, renamed)
    assert list(transfer.skipped) == [dropped.removeprefix("backbone.")]
    assert transfer.skipped[dropped.removeprefix("backbone.")] == "not in the source"


def test_unusable_sources_are_refused_with_the_reason(tmp_path: Path) -> None:
    target = _unet(seed=5)
    wider = save_encoder_weights(_unet(seed=0, base_filters=8), tmp_path / "wider.pt")
    with pytest.raises(PretrainedEncoderError, match=r"shape \(8, 1, 3, 3, 3\) in the source"):
        load_encoder_weights(target, PretrainedEncoder(source=str(wider)))
    with pytest.raises(PretrainedEncoderError, match="no such file, folder or MLflow model URI"):
        load_encoder_weights(target, PretrainedEncoder(source=str(tmp_path / "missing.pt")))
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(PretrainedEncoderError, match=r"notes\.txt: not a torch weights file"):
        load_encoder_weights(target, PretrainedEncoder(source=str(text)))
    with pytest.raises(PretrainedEncoderError, match="models:/absent/1"):
        load_encoder_weights(
            target,
            PretrainedEncoder(source="models:/absent/1"),
            tracking_uri=f"sqlite:///{tmp_path}/empty.db",
        )


def test_training_starts_from_a_frozen_pretrained_encoder(
    tiny_dataset: TinyDataset, tmp_path: Path
) -> None:
    """``pretrained_encoder:`` in a training config: the encoder is loaded, stays frozen, and
    MLflow records the file by name and hash, not by path."""
    from mlflow import MlflowClient

    from medseg.train.loop import train
    from tests.tiny_dataset import tiny_config

    configuration = tiny_dataset.plan.configurations["3d"]
    torch.manual_seed(7)
    source = build_network(
        architecture="unet",
        in_channels=1,
        num_classes=tiny_dataset.num_classes,
        pool_strides=configuration.pool_strides,
        spatial_dims=3,
        base_filters=4,
    )
    encoder_file = save_encoder_weights(source, tmp_path / "encoder.pt")
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = tiny_config(
        pretrained_encoder={"source": str(encoder_file), "freeze": True},
        experiment="pretrained",
    )
    result = train(
        manifest_path=tiny_dataset.manifest,
        plan=tiny_dataset.plan,
        cache_dir=tiny_dataset.cache,
        config=config,
        run_dir=tmp_path / "run",
        tracking_uri=tracking_uri,
    )
    payload = torch.load(result.best_checkpoint, weights_only=False)
    trained = build_network(**payload["extra"]["network_arguments"])
    trained.load_state_dict(payload["network"])
    assert _same(encoder_state(trained), encoder_state(source))  # frozen: unchanged
    fresh = {v.data_ptr() for v in encoder_state(trained).values()}
    head = {k: v for k, v in trained.state_dict().items() if v.data_ptr() not in fresh}
    assert any(not torch.equal(v, source.state_dict()[k]) for k, v in head.items())  # trained
    params = MlflowClient(tracking_uri=tracking_uri).get_run(result.run_id).data.params
    assert params["config.pretrained_encoder.source"].startswith("file encoder.pt sha256:")
    assert params["config.pretrained_encoder.freeze"] == "True"
    assert int(params["pretrained_encoder.loaded_tensors"]) == len(encoder_state(source))
    assert params["pretrained_encoder.skipped_tensors"] == "0"


def test_an_fcn_encoder_starts_a_deeplab(tmp_path: Path) -> None:
    """FCN, PSPNet and DeepLab share one encoder design: weights move between them."""
    arguments = {"in_channels": 1, "num_classes": 3, "pool_strides": STRIDES, "spatial_dims": 3}
    torch.manual_seed(0)
    fcn = build_network(architecture="fcn8s", base_filters=4, **arguments)
    torch.manual_seed(1)
    deeplab = build_network(architecture="deeplabv3", base_filters=4, **arguments)
    path = save_encoder_weights(fcn, tmp_path / "fcn-encoder.pt")
    transfer = load_encoder_weights(deeplab, PretrainedEncoder(source=str(path), strict=True))
    assert transfer.skipped == {}
    assert _same(encoder_state(deeplab), encoder_state(fcn))
