"""Builders of layer norm and group norm (schemas in ``pipeline.spec.normalization``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.registry import LAYER_BUILDERS, LayerContext
from pipeline.spec.normalization import GroupNorm, LayerNorm


class ChannelLayerNorm(nn.LayerNorm):
    """Layer norm over the channels of an (N, C, H, W) map at each position: what Keras's
    LayerNormalization(axis=-1) computes on NHWC, without keeping a channels-last copy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # explicit permutations: ONNX rejects the negative axis movedim(-1, 1) exports
        y = F.layer_norm(
            x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps
        )
        return y.permute(0, 3, 1, 2)


@LAYER_BUILDERS.register(LayerNorm)
def _layer_norm(layer: LayerNorm, ctx: LayerContext) -> nn.Module:
    kind = nn.LayerNorm if len(ctx.in_shape) == 1 else ChannelLayerNorm
    return kind(ctx.in_shape[0], eps=layer.eps, elementwise_affine=layer.affine)


@LAYER_BUILDERS.register(GroupNorm)
def _group_norm(layer: GroupNorm, ctx: LayerContext) -> nn.Module:
    return nn.GroupNorm(layer.groups, ctx.in_shape[0], eps=layer.eps, affine=layer.affine)
