"""Builders of layers made of layers: residual blocks, branches and layers reused from another
spec."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from torch import nn

from pipeline.model.activations import activation_module
from pipeline.model.build import build_model
from pipeline.model.errors import ModelBuildError
from pipeline.model.init import apply_init
from pipeline.model.layers import batch_norm
from pipeline.model.modules import BranchBlock, ResidualBlock, Reused
from pipeline.model.registry import LAYER_BUILDERS, BuildContext, LayerContext, build_sequence
from pipeline.model.weights import load_into, read_state_dict
from pipeline.spec.base import Shape
from pipeline.spec.composite import Branch, Residual, Reuse


@LAYER_BUILDERS.register(Residual)
def _residual(layer: Residual, ctx: LayerContext) -> nn.Module:
    branch, out = build_sequence(layer.layers, ctx.in_shape, ctx.build, (*ctx.path, "layers"))
    shortcut = (
        _projection(ctx.in_shape, out, ctx.build)
        if layer.projects(ctx.in_shape, out)
        else nn.Identity()
    )
    return ResidualBlock(nn.Sequential(branch), shortcut, activation_module(layer.activation, out))


@LAYER_BUILDERS.register(Branch)
def _branch(layer: Branch, ctx: LayerContext) -> nn.Module:
    branches = [
        nn.Sequential(
            build_sequence(layers, ctx.in_shape, ctx.build, (*ctx.path, "branches", j))[0]
        )
        for j, layers in enumerate(layer.branches)
    ]
    act = activation_module(layer.activation, ctx.out_shape)
    return BranchBlock(branches, layer.merge, act)


def _projection(shape: Shape, out: Shape, build: BuildContext) -> nn.Module:
    """1x1 conv (stride = the branch's downsampling) + batch norm, or linear + batch norm for
    flat features: the shortcut that brings x to the branch's shape."""
    if len(shape) == 3:
        stride = (shape[1] // out[1], shape[2] // out[2])
        proj: nn.Module = nn.Conv2d(shape[0], out[0], 1, stride, bias=False)
    else:
        proj = nn.Linear(shape[0], out[0], bias=False)
    apply_init(build.spec.init.kernel, proj.weight, build.generator)
    return nn.Sequential(OrderedDict(proj=proj, bn=batch_norm(out)))


def default_checkpoint(source_name: str) -> Path:
    """Where training leaves an experiment's best weights (its run folder, relative to the
    working folder or under ``$PIPELINE_RUNS_DIR``)."""
    from pipeline.run import Run

    return Run.named(source_name).checkpoint("best")


@LAYER_BUILDERS.register(Reuse)
def _reuse(layer: Reuse, ctx: LayerContext) -> nn.Module:
    build = ctx.build
    source = layer._source
    if source is None:
        raise ModelBuildError(f"the reused spec {layer.spec!r} was not loaded")
    # the source's own pretrained weights are superseded by its checkpoint: never fetch them
    model = build_model(source, device="meta" if build.meta else "cpu", load_weights=False)
    if build.load_weights and not build.meta:
        path = (
            build.spec.path_of(layer.checkpoint)
            if layer.checkpoint
            else default_checkpoint(source.name).resolve()
        )
        state = read_state_dict(path, f"train {source.name} first: {path} not found")
        load_into(model, state, f"checkpoint {path}")
    kept = layer.kept_layers()
    names = source.model.layer_names()[: len(kept)]
    modules = OrderedDict((name, model.get_submodule(name)) for name in names)
    whole = len(kept) == len(source.model.layers)
    reused = Reused(modules, source.name, model.output_activation if whole else None)
    # the reuse layer's flag decides, whatever the source froze
    reused.requires_grad_(layer.trainable)
    return reused
