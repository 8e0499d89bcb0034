"""The one exception type for problems a user can fix in the spec or on disk."""

from __future__ import annotations

from pipeline.errors import PipelineError


class ModelBuildError(PipelineError):
    """The spec cannot be turned into a model: a missing checkpoint or weights file, a failed
    download, weights that do not fit. The message says what to do."""
