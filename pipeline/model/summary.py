"""A Keras-style summary of a built model: per layer its output shape, parameters and MACs.

Counting follows Keras: batch-norm moving mean and variance count as non-trainable parameters
(2 per channel; ``num_batches_tracked`` is not counted), as do frozen parameters. MACs are
multiply-accumulates per sample of conv2d (out_h * out_w * out_ch * in_ch/groups * kh * kw)
and dense/linear layers (in * out), wherever they sit (backbones included); every other
module counts 0 (pooling, normalization and activations are elementwise and comparatively
cheap).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from pipeline.model.build import build_model
from pipeline.model.modules import Composite
from pipeline.model.trace import meta_forward
from pipeline.spec.base import LayerKind, Shape
from pipeline.spec.composite import Backbone, Reuse
from pipeline.spec.spec import Spec


@dataclass(frozen=True)
class SummaryRow:
    name: str
    type: str
    output_shape: Shape
    """Without the batch axis."""
    params: int
    trainable: int
    non_trainable: int
    macs: int
    """Multiply-accumulates per sample."""


@dataclass(frozen=True)
class Summary:
    name: str
    rows: list[SummaryRow]
    total_params: int
    trainable_params: int
    non_trainable_params: int
    total_macs: int

    def table(self) -> str:
        """Keras's ``model.summary()`` layout, with a MACs column."""
        header = ("Layer (type)", "Output Shape", "Param #", "MACs")
        cells = [
            (
                f"{r.name} ({r.type})",
                "(None, " + ", ".join(map(str, r.output_shape)) + ")",
                f"{r.params:,}",
                f"{r.macs:,}",
            )
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in [header, *cells]) + 3 for i in range(4)]
        width = sum(widths) + 1

        def line(row: tuple[str, ...]) -> str:
            return (" " + "".join(c.ljust(w) for c, w in zip(row, widths, strict=True))).rstrip()

        lines = [f'Model: "{self.name}"', "_" * width, line(header), "=" * width]
        for i, row in enumerate(cells):
            lines += [line(row), "=" * width if i == len(cells) - 1 else "_" * width]
        return "\n".join(
            [
                *lines,
                f"Total params: {self.total_params:,}",
                f"Trainable params: {self.trainable_params:,}",
                f"Non-trainable params: {self.non_trainable_params:,}",
                f"Total MACs per sample: {self.total_macs:,}",
                "_" * width,
            ]
        )


def count_params(module: nn.Module) -> tuple[int, int]:
    """(trainable, non-trainable) the way Keras counts: frozen parameters and batch-norm moving
    statistics are non-trainable."""
    trainable = frozen = 0
    for p in module.parameters():
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            frozen += 2 * m.running_mean.numel()
    return trainable, frozen


def _conv_macs(m: Any, out: Shape) -> int:
    return math.prod(out[1:]) * (m.in_channels // m.groups) * math.prod(m.kernel_size)


def _linear_macs(m: Any, out: Shape) -> int:
    return m.in_features * m.out_features * math.prod(out[1:-1])


MACS: dict[type[nn.Module], Callable[[Any, Shape], int]] = {
    nn.Conv2d: _conv_macs,
    nn.Linear: _linear_macs,
}

# layer kind -> the type column, where the schema class name says too little
TYPE_LABELS: dict[type[LayerKind], Callable[[Any], str]] = {
    Backbone: lambda layer: layer.arch,
    Reuse: lambda layer: f"Reuse of {layer._source.name}" if layer._source else "Reuse",
}


def _label(layer: LayerKind) -> str:
    label = TYPE_LABELS.get(type(layer))
    return label(layer) if label else type(layer).__name__


def _children(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Sub-rows of an expanded composite (backbone blocks, reused layers, residual branches)."""
    if not isinstance(module, Composite):
        return []
    return [(f"{name}.{kid}", m) for kid, m in module.parts()]


def _type_name(module: nn.Module) -> str:
    if type(module) is nn.Sequential:
        return "+".join(type(m).__name__ for m in module.children()) or "Sequential"
    return type(module).__name__


def summarize(
    model: nn.Module | Spec, spec: Spec | None = None, *, expand: bool = False
) -> Summary:
    """Rows for the spec's top-level layers (``expand``: also the inside of backbones, reused
    models and residual blocks, as ``parent.child``), with totals over the whole model.

    ``summarize(spec)`` builds the model itself on the meta device, without checkpoints or
    downloads (what ``pipeline summary`` needs).
    """
    if isinstance(model, Spec):
        spec = model
        model = build_model(spec, device="meta", load_weights=False)
    if spec is None:
        raise TypeError("summarize(model, spec): the spec is missing")
    shape = spec.model.resolved_input_shape()
    assert shape is not None, "the spec has no input_shape"
    entries: list[tuple[str, str, nn.Module]] = []
    for name, layer in zip(spec.model.layer_names(), spec.model.layers, strict=True):
        module = model.get_submodule(name)
        entries.append((name, _label(layer), module))
        if expand:
            entries += [(sub, _type_name(m), m) for sub, m in _children(name, module)]

    macs_of = {id(m): MACS[type(m)] for m in model.modules() if type(m) in MACS}
    counted = {f"m{i}": m for i, m in enumerate(model.modules()) if id(m) in macs_of}
    watch = {**{f"row:{name}": m for name, _, m in entries}, **counted}
    shapes = meta_forward(model, shape, watch)
    macs = {id(m): macs_of[id(m)](m, shapes[key]) for key, m in counted.items() if key in shapes}

    rows = []
    for name, label, module in entries:
        trainable, frozen = count_params(module)
        row_macs = sum(macs.get(id(m), 0) for m in module.modules())
        out = shapes.get(f"row:{name}", ())[1:]
        rows.append(SummaryRow(name, label, out, trainable + frozen, trainable, frozen, row_macs))
    trainable, frozen = count_params(model)
    return Summary(spec.name, rows, trainable + frozen, trainable, frozen, sum(macs.values()))
