"""Spec -> torch: build the model a spec describes, check its shapes, summarize it."""

from pipeline.model.build import SpecModel, build_model
from pipeline.model.errors import ModelBuildError
from pipeline.model.summary import Summary, SummaryRow, summarize
from pipeline.model.trace import assert_shapes

__all__ = [
    "ModelBuildError",
    "SpecModel",
    "Summary",
    "SummaryRow",
    "assert_shapes",
    "build_model",
    "summarize",
]
