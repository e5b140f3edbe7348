"""The options of prediction, importable without torch (the pipeline file is checked with
them when it is read).

``PredictionOptions`` is the one declaration of how to predict, shared by ``medseg predict``,
``medseg batch`` and the pipeline's predict stage; ``CrfSettings`` are its dense-CRF settings
(``medseg.infer.crf``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medseg.errors import ConfigError, UnknownChoiceError
from medseg.infer.choices import Backend, Precision, runs_on
from medseg.ingest.non_finite import NonFinitePolicy
from medseg.lookup import unknown_choice


class CrfSettings(BaseModel):
    """Settings of the dense CRF (``PredictionOptions.crf``, ``crf:`` in pipeline YAML).

    The defaults assume images normalised to zero mean and unit variance (CT with the plan's
    foreground statistics, MR per case) on nnU-Net-like grids of about 1 mm, and are
    deliberately mild: only voxels the network is unsure about should move, so a well-trained
    network loses little where the CRF has nothing to add. Weights are in nats (the unit of
    the unary ``-log p``) because the kernels are normalised.

    * ``spatial_sigma_mm=1``, ``spatial_weight=1``: smoothing over the immediate neighbourhood
      (at 1 mm the 26 nearest neighbours carry two thirds of the weight); it cleans up
      isolated voxels and one-voxel notches without rounding off structures a few
      millimetres thick such as the hippocampus.
    * ``bilateral_sigma_mm=2``, ``max_window_radius=4``: the window reaches 2 sigma = 4 mm,
      4 voxels at 1 mm, so the default is not truncated on typical grids (128 offset pairs in
      3D, 24 in 2D). A boundary the network left up to about 2 voxels off an intensity edge,
      unsure in between, moves onto the edge; a smaller window barely moves it, a larger one
      costs cubically more in 3D.
    * ``intensity_sigma=0.5`` (units of the normalised image): tissue contrasts across organ
      boundaries are about 0.5-2 after normalisation (the hippocampus against its
      surroundings on MSD T1 about 0.5), neighbour-to-neighbour noise inside a structure
      about 0.2; voxels across such edges then weigh 0.6 to 0.0003, voxels on the same side
      0.9.
    * ``bilateral_weight=2``: with the smoothness term, a voxel whose neighbourhood fully
      disagrees is pulled by at most 3 nats: with two classes a voxel the network gives less
      than 0.95 can be overruled, a confident one never is.
    * ``iterations=5``: the usual number; later iterations change little.
    * ``per_slice``: for 3D inputs, a 2D CRF on each slice (along the 2D configuration's
      slice axis, else the coarsest axis) instead of one 3D CRF; nothing mixes across slices.
      2D inputs are one slice anyway.
    """

    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(5, ge=0)
    spatial_sigma_mm: float = Field(1.0, gt=0)
    spatial_weight: float = Field(1.0, ge=0)
    bilateral_sigma_mm: float = Field(2.0, gt=0)
    intensity_sigma: float = Field(0.5, gt=0)
    bilateral_weight: float = Field(2.0, ge=0)
    max_window_radius: int = Field(4, ge=1, le=10)
    per_slice: bool = False


class PredictionOptions(BaseModel):
    """How to predict (defaults: nnU-Net's, without test-time mirroring).

    The one declaration of the prediction options of ``medseg predict``, ``medseg batch`` and
    the pipeline's predict stage (which adds its own, not prediction, options to these).
    """

    model_config = ConfigDict(extra="forbid")

    overlap: float = Field(0.5, ge=0, lt=1)
    batch_size: int = Field(2, ge=1)
    mirror: bool = False
    # structures to reduce to their largest component: values, or "all" of the model's
    keep_largest: list[Annotated[int, Field(ge=1)]] | Literal["all"] | None = None
    crf: CrfSettings | None = None  # dense CRF on the probabilities before the argmax
    backend: Backend = Backend.AUTO  # the engine (medseg.infer.backends; auto: medseg.infer.auto)
    precision: Precision = Precision.AUTO  # bf16, int8: OpenVINO only, for a model tolerating it
    non_finite: NonFinitePolicy = NonFinitePolicy.ERROR  # NaN/Inf voxels: refuse or replace
    # apply the per-structure post-processing a model carries (decided by medseg select)
    model_postprocessing: bool = True
    # only the model's low-resolution members, at their spacing (PackagedModel.for_prediction)
    fast: bool = False
    # only these structures (names or label values) are written and measured
    structures: list[str] | None = None

    @field_validator("keep_largest", mode="before")
    @classmethod
    def _structure_list(cls, value: Any) -> Any:
        """``"1,3"`` (the command line's form) is ``[1, 3]``; an empty list is None."""
        if isinstance(value, str) and value != "all":
            return [part.strip() for part in value.split(",")]
        return value or None

    @field_validator("structures", mode="before")
    @classmethod
    def _structure_names(cls, value: Any) -> Any:
        """``"liver,spleen"`` (the command line's form) is ``["liver", "spleen"]``, label
        values are kept as text (``3`` is ``"3"``); an empty list is None."""
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list):
            value = [str(part).strip() for part in value if str(part).strip()]
        return value or None

    @field_validator("crf", mode="before")
    @classmethod
    def _crf_settings(cls, value: Any) -> Any:
        """``true`` (or ``{}``) asks for the default settings, ``false`` for no CRF."""
        if value is None or value is False:
            return None
        return {} if value is True else value

    @model_validator(mode="after")
    def _precision_of_backend(self) -> PredictionOptions:
        if not runs_on(self.precision, self.backend):
            raise ValueError(
                f"precision {self.precision.value} needs backend openvino "
                f"(not {self.backend.value})"
            )
        return self

    def kept_structures(self, label_names: dict[int, str]) -> list[int] | None:
        """The structure values ``keep_largest`` names, each one of the model's.

        Raises:
            ConfigError: a value the model has no structure for.
        """
        if not self.keep_largest:
            return None
        known = sorted(value for value in label_names if value > 0)
        if self.keep_largest == "all":
            return known
        if unknown := sorted(set(self.keep_largest) - set(known)):
            raise ConfigError(f"the model has no structure {unknown}; it has {known}")
        return list(self.keep_largest)

    def selected_structures(self, label_names: dict[int, str]) -> dict[int, str] | None:
        """The model's structures (value -> name, in label order) ``structures`` names, by name
        or label value; None when every structure is wanted.

        Raises:
            UnknownChoiceError: a name or value that is none of the model's structures (the
                message lists them and the closest name).
        """
        if not self.structures:
            return None
        named = {name: value for value, name in label_names.items() if value > 0}
        values = {str(value): value for value in named.values()}
        chosen: set[int] = set()
        for asked in self.structures:
            if asked not in named and asked not in values:
                raise UnknownChoiceError(unknown_choice(asked, named, what="structure"))
            chosen.add(named[asked] if asked in named else values[asked])
        return {value: label_names[value] for value in sorted(chosen)}
