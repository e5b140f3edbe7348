"""Segmentation losses with one call signature, selectable from a config.

Every loss is a :class:`SegmentationLoss` called as ``loss(logits, target, weights=None)``:

* ``logits``: float ``(B, K, *spatial)``, raw network output, ``K >= 2`` classes including
  background, 2D or 3D spatial.
* ``target``: integer class indices ``(B, *spatial)`` or ``(B, 1, *spatial)``, values ``0..K-1``
  (and the ignore label of partial annotations, left out of every loss, after
  ``loss.ignoring(value)``).
* ``weights``: optional float per-voxel weights ``(B, *spatial)`` (or ``(B, 1, *spatial)``), the
  border-weight maps of :mod:`medseg.preprocess.border_weights`. Only losses whose
  ``needs_weights`` is True use them; the others accept and ignore them, so a training loop can
  pass the same arguments to any loss and load weight maps only when ``loss.needs_weights``.

Losses are computed in float32 with autocast disabled, so fp16/bf16 logits from mixed-precision
training give the same value as float32 logits (the gradient is cast back to the logits' dtype).

Region-based plans (:mod:`medseg.regions`) train ``dice_bce``: one sigmoid logit channel per
region, the label map as target (see ``SegmentationLoss.for_regions``).

One family per module: ``cross_entropy``, ``dice``, ``dice_bce`` (regions), ``focal``,
``border`` (border-weighted cross-entropy), ``compound`` (weighted sums), ``deep_supervision``;
``base`` holds what they share and ``registry`` the table of configurable losses
(:data:`LOSSES`), the :class:`LossSpec` a config writes and :func:`build_loss`.

Config form for :func:`build_loss`: a name (``"dice_ce"``), or a mapping of names to a weight or
to options (``{"dice_ce": 1.0, "border_ce": 0.5}``, ``{"focal": {"weight": 1.0, "gamma": 3.0}}``).
"""

from medseg.losses.base import SegmentationLoss, TermSpec
from medseg.losses.border import BorderCESpec, BorderWeightedCELoss
from medseg.losses.compound import CombinedLoss
from medseg.losses.cross_entropy import CESpec, CrossEntropyLoss
from medseg.losses.deep_supervision import DeepSupervisionLoss, deep_supervision_weights
from medseg.losses.dice import DiceCELoss, DiceCESpec
from medseg.losses.dice_bce import DiceBCELoss, DiceBCESpec
from medseg.losses.focal import FocalLoss, FocalSpec
from medseg.losses.registry import LOSSES, LossSpec, build_loss, parse_loss_spec

__all__ = [
    "LOSSES",
    "BorderCESpec",
    "BorderWeightedCELoss",
    "CESpec",
    "CombinedLoss",
    "CrossEntropyLoss",
    "DeepSupervisionLoss",
    "DiceBCELoss",
    "DiceBCESpec",
    "DiceCELoss",
    "DiceCESpec",
    "FocalLoss",
    "FocalSpec",
    "LossSpec",
    "SegmentationLoss",
    "TermSpec",
    "build_loss",
    "deep_supervision_weights",
    "parse_loss_spec",
]
