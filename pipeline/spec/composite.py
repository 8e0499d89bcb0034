"""Layers made of layers: residual blocks, branches, named blocks, pretrained backbones, reused
models."""

from __future__ import annotations

import difflib
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, field_validator

from pipeline.spec import normalization, spatial  # noqa: F401  (registered before the union)
from pipeline.spec.activations import ActivationField
from pipeline.spec.arch import Arch
from pipeline.spec.base import LAYERS, PositiveInt, StrictModel
from pipeline.spec.layers import LayerBase, Shape, ShapeError, fmt, need_map
from pipeline.spec.shapes import LayerShapeError, infer_shapes
from pipeline.spec.timm_table import PREFIX, TIMM_ARCHS, TIMM_NAMES, TIMM_VERSION


@LAYERS.register
class Residual(LayerBase):
    """``out = activation(layers(x) + shortcut(x))`` (He et al.)."""

    type: Literal["residual"] = "residual"
    layers: list[LayerSpec]
    """The residual branch."""
    shortcut: Literal["identity", "projection", "auto"] = "auto"
    """identity: x itself; projection: 1x1 conv + batch norm to the branch's shape; auto: identity
    when the shapes agree, else projection."""
    activation: ActivationField | None = None
    """Applied after the sum."""

    child_keys: ClassVar[tuple[str, ...]] = ("layers",)

    def output_shape(self, shape: Shape) -> Shape:
        out = infer_shapes(self.layers, shape, path=("layers",))[-1] if self.layers else shape
        if out != shape:
            if self.shortcut == "identity":
                raise ShapeError(
                    f"residual shapes disagree: input {fmt(shape)}, branch output {fmt(out)}",
                    "set shortcut: projection (or auto), or make the branch keep the shape",
                )
            if len(out) != len(shape):
                raise ShapeError(
                    f"a residual branch must keep the rank: input {fmt(shape)}, output {fmt(out)}"
                )
            if len(out) == 3 and (shape[1] % out[1] or shape[2] % out[2]):
                raise ShapeError(
                    f"projection needs the branch to divide the size evenly: {fmt(shape)} -> "
                    f"{fmt(out)}"
                )
        return out

    def projects(self, shape: Shape, out: Shape) -> bool:
        return self.shortcut == "projection" or (self.shortcut == "auto" and out != shape)


@LAYERS.register
class Branch(LayerBase):
    """Inception-style: run each layer list on the same input, then concatenate the outputs on
    the channels (or features) or add them. An empty list passes the input through."""

    type: Literal["branch"] = "branch"
    branches: Annotated[list[list[LayerSpec]], Field(min_length=2)]  # type: ignore[valid-type]
    """The parallel layer lists, each applied to the input."""
    merge: Literal["concat", "add"] = "concat"
    """concat: stack the outputs' channels (equal heights and widths needed); add: sum them
    (equal shapes needed)."""
    activation: ActivationField | None = None
    """Applied after the merge."""

    child_list_keys: ClassVar[tuple[str, ...]] = ("branches",)

    def branch_shapes(self, shape: Shape) -> list[Shape]:
        """Each branch's output shape (the input for an empty one)."""
        return [
            infer_shapes(b, shape, path=("branches", j))[-1] if b else shape
            for j, b in enumerate(self.branches)
        ]

    def output_shape(self, shape: Shape) -> Shape:
        outs = self.branch_shapes(shape)
        first = outs[0]
        for j, out in enumerate(outs[1:], start=1):
            if self.merge == "add" and out != first:
                raise LayerShapeError(
                    ("branches", j),
                    f"add needs equal shapes: branch 0 gives {fmt(first)}, branch {j} gives "
                    f"{fmt(out)}",
                    "make the branches end in the same shape, or merge: concat",
                )
            if self.merge == "concat" and (len(out) != len(first) or out[1:] != first[1:]):
                raise LayerShapeError(
                    ("branches", j),
                    f"concat needs equal spatial sizes: branch 0 gives {fmt(first)}, branch {j} "
                    f"gives {fmt(out)}",
                    "give the branches the same strides and padding (padding: same keeps sizes)",
                )
        if self.merge == "add":
            return first
        return (sum(out[0] for out in outs), *first[1:])


@LAYERS.register
class Block(LayerBase):
    """Insert the named block from ``model.blocks``, ``repeat`` times (expanded when loading)."""

    type: Literal["block"] = "block"
    expanded_on_load: ClassVar[bool] = True
    block: str
    """A key of ``model.blocks``."""
    repeat: PositiveInt = 1
    params: dict[str, Any] = {}
    """Values for a parameterised block's ``$name`` placeholders (over its defaults)."""


def _vgg_names(convs: list[int]) -> list[str]:
    names = []
    for b, n in enumerate(convs, start=1):
        names += [f"block{b}_conv{i}" for i in range(1, n + 1)] + [f"block{b}_pool"]
    return names


ARCHS: dict[str, Arch] = {
    "vgg16": Arch(
        channels=512, reductions=5, step="halve", min_size=32, blocks=_vgg_names([2, 2, 3, 3, 3])
    ),
    "vgg19": Arch(
        channels=512, reductions=5, step="halve", min_size=32, blocks=_vgg_names([2, 2, 4, 4, 4])
    ),
    "resnet18": Arch(
        channels=512,
        reductions=5,
        step="stride2",
        min_size=32,
        blocks=["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"],
        top=["avgpool", "flatten", "fc"],
    ),
    "resnet34": Arch(
        channels=512,
        reductions=5,
        step="stride2",
        min_size=32,
        blocks=["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"],
        top=["avgpool", "flatten", "fc"],
    ),
    "resnet50": Arch(
        channels=2048,
        reductions=5,
        step="stride2",
        min_size=32,
        blocks=["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"],
        top=["avgpool", "flatten", "fc"],
    ),
    "mobilenet_v2": Arch(
        channels=1280,
        reductions=5,
        step="stride2",
        min_size=32,
        blocks=[f"features_{i}" for i in range(19)],
    ),
}
BACKBONE_ARCHS: dict[str, Arch] = {**ARCHS, **TIMM_ARCHS}
"""torchvision's architectures by their own names, timm's as ``timm/<name>``."""


class WeightsFile(StrictModel):
    path: str
    """A state dict saved by torch.save, loaded with weights_only=True."""


@LAYERS.register
class Backbone(LayerBase):
    """A torchvision or timm architecture as one layer (Keras's ``VGG16(include_top=False)``)."""

    type: Literal["backbone"] = "backbone"
    arch: Literal[tuple(BACKBONE_ARCHS)]  # type: ignore[valid-type]
    """A torchvision architecture, or ``timm/<name>`` for a timm one (docs/timm.md)."""
    weights: str | WeightsFile | None = None
    """None: random init; a weights name downloaded on first use (torchvision's DEFAULT,
    IMAGENET1K_V1, ...; timm's DEFAULT or a pretrained tag such as a1_in1k); or {path: file.pt}."""
    include_top: bool = False
    """Keep the ImageNet classifier (1000 outputs); false gives the convolutional base."""

    @field_validator("arch", mode="before")
    @classmethod
    def _timm_name_not_in_table(cls, value: Any) -> Any:
        """A timm name the table lacks, where timm has it or the closest of timm's names is not
        in the table either: say so and how to add it (else the literal error's did-you-mean)."""
        if not isinstance(value, str) or not value.startswith(PREFIX) or value in BACKBONE_ARCHS:
            return value
        name = value[len(PREFIX) :]
        missing = (
            "but its shapes are not in the table validation reads: add it to TABLE_NAMES in "
            "pipeline/spec/timm_table.py and run `pipeline docs` (docs/timm.md)"
        )
        if name in TIMM_NAMES:
            raise ValueError(f"timm {TIMM_VERSION} has {name!r}, {missing}")
        close = difflib.get_close_matches(name.lower(), TIMM_NAMES, n=1, cutoff=0.6)
        if close and PREFIX + close[0] not in BACKBONE_ARCHS:
            raise ValueError(
                f"timm {TIMM_VERSION} has no {name!r}; did you mean {PREFIX + close[0]!r}? "
                f"timm has that, {missing}"
            )
        return value

    def output_shape(self, shape: Shape) -> Shape:
        c, h, w = need_map(f"backbone {self.arch}", shape)
        arch = BACKBONE_ARCHS[self.arch]
        if c != 3 and not self.arch.startswith(PREFIX):  # timm takes any: in_chans
            raise ShapeError(
                f"{self.arch} takes RGB input (3 channels), got {c}",
                "set data.color_mode: rgb (grayscale images are repeated to 3 channels), or "
                "use a timm backbone (arch: timm/<name>), which takes any number of channels",
            )
        if min(h, w) < arch.min_size:
            raise ShapeError(
                f"{self.arch} needs inputs of at least {arch.min_size}x{arch.min_size}, "
                f"got {h}x{w}",
                f"resize the images (data.image_size) to >= {arch.min_size}",
            )
        if self.include_top:
            return (arch.top_features,)
        return (arch.channels, arch.out_hw(h), arch.out_hw(w))


@LAYERS.register
class Reuse(LayerBase):
    """Layers of an earlier experiment's model (the seeds' model_B_on_A): its spec says the
    architecture, its checkpoint the weights."""

    type: Literal["reuse"] = "reuse"
    spec: str
    """The earlier experiment's spec file, relative to this spec's file."""
    upto: str | None = None
    """Keep its layers up to and including this one (a layer name) ..."""
    drop_last: int = 1
    """... or else all but the last N layers (1 drops the old head)."""
    checkpoint: str | None = None
    """Weights to load; default: the earlier experiment's best checkpoint."""

    _source: Any = PrivateAttr(default=None)  # the loaded Spec of ``spec``, set by the loader

    def kept_layers(self) -> list[Any]:
        if self._source is None:
            raise ShapeError(f"the reused spec {self.spec!r} was not loaded")
        layers = self._source.model.layers
        names = self._source.model.layer_names()
        if self.upto is not None:
            if self.upto not in names:
                raise ShapeError(
                    f"{self.spec} has no layer {self.upto!r}", f"its layers: {', '.join(names)}"
                )
            return layers[: names.index(self.upto) + 1]
        if not 0 <= self.drop_last < len(layers):
            raise ShapeError(f"drop_last must be in [0, {len(layers) - 1}] for {self.spec}")
        return layers[: len(layers) - self.drop_last]

    def output_shape(self, shape: Shape) -> Shape:
        src = self._source.model.resolved_input_shape() if self._source else None
        if src is not None and tuple(src) != tuple(shape):
            raise ShapeError(
                f"{self.spec} was built for input {fmt(tuple(src))}, this model gives {fmt(shape)}"
            )
        kept = self.kept_layers()
        return infer_shapes(kept, shape, path=())[-1] if kept else shape


LayerSpec = LAYERS.union()
Residual.model_rebuild()
Branch.model_rebuild()
