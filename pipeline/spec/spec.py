"""The top-level spec: one YAML file describing one image-classification experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, PrivateAttr, create_model, model_validator

from pipeline.spec.base import LAYERS, Size, StrictModel
from pipeline.spec.composite import LayerSpec
from pipeline.spec.data import AugmentSection, DataSection
from pipeline.spec.errors import Problem
from pipeline.spec.init import InitSection
from pipeline.spec.optim import Adam, ConstantSchedule, OptimizerSpec, ScheduleSpec
from pipeline.spec.resolve import expand_model
from pipeline.spec.shapes import named_layers
from pipeline.spec.train import EvaluateSection, TrainSection

MAX_NAME = 100
"""Longest experiment name: it names folders (``runs/<name>``), whose names the file system
bounds (300 characters failed with 'File name too long')."""


class _Generated(StrictModel):
    # Descriptions are copied explicitly; reading docstrings of generated classes is slow.
    model_config = ConfigDict(use_attribute_docstrings=False)


def _partial(cls: type[StrictModel]) -> type[StrictModel]:
    """The kind's fields, all optional: what ``defaults`` may set for every layer of a kind."""
    fields: dict[str, Any] = {
        name: (info.annotation | None, Field(default=None, description=info.description))
        for name, info in cls.model_fields.items()
        if name not in ("type", "name")
    }
    return create_model(f"{cls.__name__}Defaults", __base__=_Generated, **fields)


LayerDefaults = create_model(
    "LayerDefaults",
    __base__=_Generated,
    __doc__="Per-kind defaults (the seeds' ``partial(Dense, activation=..., ...)``): each layer of "
    "that kind takes these values for the fields it does not set itself.",
    **{
        kind: (_partial(cls) | None, None)
        for kind, cls in sorted(LAYERS.kinds.items())
        if not cls.expanded_on_load
    },
)


class ParamBlock(StrictModel):
    """A named block with parameters: ``$name`` in its layers' values (``${name}`` inside longer
    text, quoted in a flow mapping) takes the value a ``{type: block}`` reference gives in its
    ``params``, or the default here (null: required). Its layers are checked where the block is
    used, with the values substituted."""

    params: dict[str, Any] = {}
    layers: Annotated[list[dict[str, Any]], Field(min_length=1)]


class ModelSection(StrictModel):
    """The network, as a list of layers applied in order."""

    input_shape: Annotated[list[Size], Field(min_length=1, max_length=3)] | None = None
    """[channels, height, width] (channels first, as PyTorch) or [features]; default: from the
    dataset (MNIST: [1, 28, 28])."""
    layers: Annotated[list[LayerSpec], Field(min_length=1)]  # type: ignore[valid-type]
    blocks: dict[str, list[LayerSpec] | ParamBlock] = {}  # type: ignore[valid-type]
    """Named layer lists, inserted with ``{type: block, block: <name>, repeat: N}``; or blocks
    with parameters, ``{params: {width: 64}, layers: [{type: conv2d, filters: $width}]}``,
    inserted with ``{type: block, block: <name>, params: {width: 256}}``."""
    defaults: LayerDefaults = LayerDefaults()  # type: ignore[valid-type]

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        problems: list[Problem] = []
        out = expand_model(data, problems, ())
        if problems:
            raise ValueError("; ".join(p.message for p in problems))
        return out

    def layer_names(self) -> list[str]:
        """Names of the top-level layers, explicit or Keras-style defaults (``conv2d_1``)."""
        return [name for path, name, _ in named_layers(self.layers) if len(path) == 1]

    def resolved_input_shape(self) -> tuple[int, ...] | None:
        return tuple(self.input_shape) if self.input_shape else None


class Spec(StrictModel):
    """An image-classification experiment: data, model, training and evaluation."""

    spec_version: Literal[1] = 1
    """Version of this spec language."""
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=MAX_NAME)]
    """Experiment name; names the output folders (letters, digits, _ . -; at most 100)."""
    description: str = ""
    extends: str | None = None
    """A base spec file (.yaml or .yml, relative to this one) that this spec overrides, merged
    deep. This and every other path a spec names (reused specs and checkpoints, image folders,
    weights files) must lie in the spec's project folder (the nearest one above it holding
    dvc.yaml, .dvc, .git or pyproject.toml), or in a folder of the environment variable
    PIPELINE_ALLOWED_PATHS (separated by os.pathsep), PIPELINE_DATA_MIRROR or
    PIPELINE_DATA_CACHE."""
    seed: int = 0
    """Seeds data splits, initialization, shuffling and augmentation."""
    data: DataSection
    augment: AugmentSection = AugmentSection()
    model: ModelSection
    init: InitSection = InitSection()
    optimizer: OptimizerSpec = Adam()  # type: ignore[valid-type]
    schedule: ScheduleSpec = ConstantSchedule()  # type: ignore[valid-type]
    train: TrainSection = TrainSection()
    evaluate: EvaluateSection = EvaluateSection()
    ignore_checks: list[str] = []
    """Names of cross-field checks whose warnings to silence (see ``pipeline checks``)."""

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _warnings: list[Problem] = PrivateAttr(default_factory=list)
    _overrides: tuple[str, ...] = PrivateAttr(default=())
    _source: Path | None = PrivateAttr(default=None)

    @property
    def warnings(self) -> list[Problem]:
        """Warnings of the cross-field checks (errors raise instead)."""
        return self._warnings

    @property
    def overrides(self) -> tuple[str, ...]:
        """The ``-S`` overrides the spec was loaded with, as given (a run records them)."""
        return self._overrides

    @property
    def source(self) -> Path | None:
        """The file the spec was loaded from (None for a spec from text): what the processes
        of a distributed run load again."""
        return self._source

    def resolved(self) -> dict[str, Any]:
        """The spec actually used, as JSON data: every default filled in, blocks expanded, no
        ``extends`` (``validate --resolved`` prints it as YAML, a run records it)."""
        return self.model_dump(mode="json", by_alias=True, exclude={"extends"}, exclude_none=True)

    def path_of(self, relative: str) -> Path:
        """A path written in the spec, resolved against the spec file's folder."""
        return (self._base_dir / relative).resolve()

    @model_validator(mode="after")
    def _input_shape_from_data(self) -> Spec:
        if self.model.input_shape is None:
            shape = self.data.input_shape()
            if shape is not None:
                self.model.input_shape = list(shape)
        return self

    def num_classes(self) -> int | None:
        """Classes after selection, when known without reading the data."""
        sel = self.data.classes
        source = self.data.source_classes()
        if sel is not None and sel.merge is not None:
            return len(sel.merge)
        if sel is not None and sel.keep is not None:
            return len(sel.keep)
        if source is None:
            return None
        return len(source) - (len(sel.drop) if sel is not None and sel.drop else 0)
