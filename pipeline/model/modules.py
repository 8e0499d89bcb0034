"""Small torch modules the builders need that torch.nn does not have as such."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

# activations that turn logits into probabilities: kept out of forward (losses take logits)
PROBABILITIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda z: torch.softmax(z, dim=1),
    "sigmoid": torch.sigmoid,
}


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of one axis for TF/Keras 'same': output = ceil(size / stride),
    the odd pixel going after (bottom/right), as TensorFlow does."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SamePad2d(nn.Module):
    """Pad a feature map for a strided 'same' window; computed per input, so any size works."""

    def __init__(
        self,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        dilation: tuple[int, int] = (1, 1),
        value: float = 0.0,
    ):
        super().__init__()
        self.kernel, self.stride, self.dilation, self.value = kernel, stride, dilation, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_pads(x.shape[-2], self.kernel[0], self.stride[0], self.dilation[0])
        left, right = same_pads(x.shape[-1], self.kernel[1], self.stride[1], self.dilation[1])
        return F.pad(x, (left, right, top, bottom), value=self.value)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, value={self.value}"


class AvgPoolSame2d(nn.Module):
    """Average pooling with Keras 'same' padding: padded pixels are left out of each average
    (TensorFlow's behaviour), so border outputs are not pulled towards zero."""

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int]):
        super().__init__()
        self.pad = SamePad2d(kernel, stride)
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = F.avg_pool2d(self.pad(x), self.kernel, self.stride)
        mask = self.pad(x.new_ones((1, 1, *x.shape[-2:])))
        return total / F.avg_pool2d(mask, self.kernel, self.stride)


class GlobalPool2d(nn.Module):
    """Mean or max of each channel over the whole map: (N, C, H, W) -> (N, C)."""

    def __init__(self, mode: str):
        super().__init__()
        if mode not in ("avg", "max"):
            raise ValueError(f"mode must be avg or max, got {mode!r}")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) if self.mode == "avg" else x.amax(dim=(2, 3))

    def extra_repr(self) -> str:
        return self.mode


class Scale(nn.Module):
    """Multiply by a constant factor."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class WeightedBlock(nn.Sequential):
    """A conv2d or dense layer with its optional padding, batch norm and activation.

    Always this container (children ``pad``?, ``conv``/``dense``, ``bn``?, ``act``?), so weight
    keys (``conv2d_1.conv.weight``) do not move when an activation or batch norm is added.
    """

    def __init__(self, parts: OrderedDict[str, nn.Module], core: str):
        super().__init__(parts)
        self.core_name = core

    @property
    def core(self) -> nn.Module:
        """The conv or linear module holding the layer's kernel."""
        return self.get_submodule(self.core_name)


class Composite(nn.Module):
    """A module made of layers (what a composite layer kind builds): it says which of its
    modules are layers in their own right, so summaries and layer selectors find them."""

    def parts(self) -> Iterator[tuple[str, nn.Module]]:
        """The modules a summary expands it into, by their names under this module."""
        raise NotImplementedError

    def inner_layers(self, name: str) -> Iterator[tuple[str, nn.Module]]:
        """The layers inside, nested ones too, by the names layer selectors (freeze, unfreeze,
        param_groups) use; ``name`` is this module's own layer name."""
        raise NotImplementedError


def inner_layers(name: str, module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """:meth:`Composite.inner_layers` of a composite; nothing for any other module."""
    return module.inner_layers(name) if isinstance(module, Composite) else iter(())


class ResidualBlock(Composite):
    """``act(branch(x) + shortcut(x))``."""

    def __init__(self, branch: nn.Sequential, shortcut: nn.Module, act: nn.Module | None):
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.branch(x) + self.shortcut(x))

    def parts(self) -> Iterator[tuple[str, nn.Module]]:
        yield from self.branch.named_children()
        yield "shortcut", self.shortcut

    def inner_layers(self, name: str) -> Iterator[tuple[str, nn.Module]]:
        # the branch's layers are layers of this spec: by their own names, unprefixed
        for child_name, child in self.branch.named_children():
            yield child_name, child
            yield from inner_layers(child_name, child)


class BranchBlock(Composite):
    """``act(merge(branch_0(x), branch_1(x), ...))``, merge being a channel concat or a sum;
    the branches' layers are children of ``branches.<j>`` under their own names."""

    def __init__(self, branches: list[nn.Sequential], merge: str, act: nn.Module | None):
        super().__init__()
        if merge not in ("concat", "add"):
            raise ValueError(f"merge must be concat or add, got {merge!r}")
        self.branches = nn.ModuleList(branches)
        self.merge = merge
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        merged = torch.cat(outs, dim=1) if self.merge == "concat" else sum(outs[1:], outs[0])
        return self.act(merged)

    def parts(self) -> Iterator[tuple[str, nn.Module]]:
        for branch in self.branches:
            yield from branch.named_children()

    def inner_layers(self, name: str) -> Iterator[tuple[str, nn.Module]]:
        # like a residual's branch: the layers of this spec, by their own names
        for child_name, child in self.parts():
            yield child_name, child
            yield from inner_layers(child_name, child)

    def extra_repr(self) -> str:
        return f"merge={self.merge}"


class BackboneNet(Composite, nn.Sequential):
    """A torchvision architecture; children named as ``ARCHS[arch].blocks`` (then its top)."""

    def __init__(self, blocks: OrderedDict[str, nn.Module], arch: str):
        super().__init__(blocks)
        self.arch = arch

    def parts(self) -> Iterator[tuple[str, nn.Module]]:
        return self.named_children()

    def inner_layers(self, name: str) -> Iterator[tuple[str, nn.Module]]:
        # bare too, as freeze selectors may name them (``block5_conv1``)
        for child_name, child in self.named_children():
            yield f"{name}.{child_name}", child
            yield child_name, child


class Reused(Composite, nn.Sequential):
    """Layers of another spec's model, under their names there.

    ``final_activation`` is the source's output activation ('softmax'/'sigmoid') when every
    layer is kept: applied here, unless this is the new model's last layer, where the model
    takes it over as its own output activation (forward must still return logits).
    """

    def __init__(
        self, layers: OrderedDict[str, nn.Module], source: str, final_activation: str | None = None
    ):
        super().__init__(layers)
        self.source = source
        self.final_activation = final_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return PROBABILITIES[self.final_activation](x) if self.final_activation else x

    def parts(self) -> Iterator[tuple[str, nn.Module]]:
        return self.named_children()

    def inner_layers(self, name: str) -> Iterator[tuple[str, nn.Module]]:
        # prefixed: the names come from another spec
        for child_name, child in self.named_children():
            yield f"{name}.{child_name}", child
            for sub, module in inner_layers(child_name, child):
                yield f"{name}.{sub}", module
