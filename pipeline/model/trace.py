"""Shapes seen in a forward pass on the meta device (no memory, no compute), and the check
that the built model produces the shapes the schema promises."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from pipeline.spec.base import Shape
from pipeline.spec.shapes import infer_shapes
from pipeline.spec.spec import Spec


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration (no random dropout masks, no running-stat updates), then each
    module's own mode back."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def meta_forward(
    model: nn.Module,
    input_shape: Sequence[int],
    watch: Mapping[str, nn.Module],
    batch: int = 2,
    seen: dict[str, Shape] | None = None,
) -> dict[str, Shape]:
    """Output shape (with the batch axis) of each watched module, from one forward pass of a
    ``(batch, *input_shape)`` meta tensor through ``model``'s structure; the model's own
    parameters are replaced by meta stand-ins, so a CPU or GPU model is left untouched.
    ``seen``, when given, is filled as the pass goes (what was seen before an error)."""
    seen = {} if seen is None else seen

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            seen[name] = tuple(output.shape)

        return hook

    stand_ins = {
        name: torch.empty_like(t, device="meta")
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    }
    handles = [m.register_forward_hook(record(name)) for name, m in watch.items()]
    try:
        with _eval_mode(model), torch.no_grad():
            x = torch.empty((batch, *input_shape), device="meta")
            functional_call(model, stand_ins, (x,))
    finally:
        for h in handles:
            h.remove()
    return seen


def assert_shapes(model: nn.Module, spec: Spec) -> None:
    """Raise AssertionError when a top-level layer's module outputs another shape than the
    schema's ``output_shape`` says: a bug in a builder, never in the user's spec."""
    shape = spec.model.resolved_input_shape()
    assert shape is not None, "the spec has no input_shape"
    names = spec.model.layer_names()
    want = infer_shapes(spec.model.layers, shape, path=())
    got: dict[str, Shape] = {}
    failure: RuntimeError | None = None
    try:
        meta_forward(model, shape, {name: model.get_submodule(name) for name in names}, seen=got)
    except RuntimeError as err:  # a wrong shape further up usually surfaces here
        failure = err
    for name, expected in zip(names, want, strict=True):
        if name not in got and failure is not None:
            raise AssertionError(f"layer {name}: the forward pass failed: {failure}")
        actual = got.get(name, ())[1:]
        if actual != tuple(expected):
            raise AssertionError(
                f"layer {name}: the spec says output shape {tuple(expected)}, the built module "
                f"gives {actual}"
            )
