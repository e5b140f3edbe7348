"""Every stage kind a pipeline file may name, by kind."""

from medseg.pipeline.stages.apply import APPLY_STAGES
from medseg.pipeline.stages.base import StageContext, StageDefinition, StageOptions, StageResult
from medseg.pipeline.stages.data import DATA_STAGES
from medseg.pipeline.stages.model import MODEL_STAGES

STAGES: dict[str, StageDefinition] = {
    stage.kind: stage for stage in (*DATA_STAGES, *MODEL_STAGES, *APPLY_STAGES)
}

__all__ = [
    "STAGES",
    "StageContext",
    "StageDefinition",
    "StageOptions",
    "StageResult",
]
