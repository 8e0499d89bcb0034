"""Spec -> torch: build the model a spec describes, check its shapes, summarize it.

Importing the package registers every layer builder (the builder modules below) and checks
that each layer kind of the spec has one, so a kind without a builder fails here, by name.
"""

import pipeline.model.activations
import pipeline.model.backbones
import pipeline.model.composite
import pipeline.model.layers
import pipeline.model.normalization
import pipeline.model.spatial
import pipeline.model.timm_backbones  # noqa: F401  (they register their builders)
from pipeline.model.build import Network, build_model
from pipeline.model.errors import ModelBuildError
from pipeline.model.registry import LAYER_BUILDERS
from pipeline.model.summary import Summary, SummaryRow, summarize
from pipeline.model.trace import assert_shapes

LAYER_BUILDERS.check_complete()

__all__ = [
    "ModelBuildError",
    "Network",
    "Summary",
    "SummaryRow",
    "assert_shapes",
    "build_model",
    "summarize",
]
