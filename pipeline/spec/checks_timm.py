"""The check of what timm says its pretrained weights expect (``pretrained_cfg``: mean, std,
input size), read from the timm table without importing timm."""

from __future__ import annotations

import math
from collections.abc import Iterator

from pipeline.spec.check_registry import check, warn
from pipeline.spec.composite import Backbone
from pipeline.spec.data import ExplicitNormalization
from pipeline.spec.errors import Problem
from pipeline.spec.shapes import named_layers
from pipeline.spec.spec import Spec
from pipeline.spec.timm_table import TIMM_ARCHS, TimmArch


def _same(given: list[float], wanted: list[float]) -> bool:
    values = given * len(wanted) if len(given) == 1 else given
    return len(values) == len(wanted) and all(
        math.isclose(a, b, abs_tol=1e-3) for a, b in zip(values, wanted, strict=True)
    )


def _expected(arch: TimmArch, channels: int | None) -> tuple[list[float], list[float]] | None:
    """The normalization the pretrained weights expect of ``channels`` input channels: timm's
    own for RGB; for one channel, whose first convolution timm sums over RGB, the RGB values'
    means (a grey image seen as the same value in R, G and B); none it can say for others."""
    if channels in (None, 3):
        return arch.mean, arch.std
    if channels == 1:
        return [round(sum(arch.mean) / 3, 4)], [round(sum(arch.std) / 3, 4)]
    return None


def _fits(normalize: object, wanted: tuple[list[float], list[float]]) -> bool:
    return (
        isinstance(normalize, ExplicitNormalization)
        and _same(normalize.mean, wanted[0])
        and _same(normalize.std, wanted[1])
    )


@check("timm-normalization")
def _timm_normalization(spec: Spec) -> Iterator[Problem]:
    """A timm backbone with pretrained weights sees its inputs normalized as timm trained them
    (its pretrained_cfg's mean and std); other inputs shift every activation the weights were
    fitted to."""
    for _path, name, layer in named_layers(spec.model.layers):
        if not isinstance(layer, Backbone) or layer.weights is None:
            continue
        arch = TIMM_ARCHS.get(layer.arch)
        wanted = _expected(arch, spec.data.channels()) if arch is not None else None
        if wanted is None or _fits(spec.data.normalize, wanted):
            continue
        size = "x".join(map(str, arch.input_size[1:]))
        grey = " (their RGB values averaged for one channel)" if len(wanted[0]) == 1 else ""
        yield warn(
            f"{name} ({layer.arch}) has pretrained weights trained on inputs normalized with "
            f"mean {wanted[0]}, std {wanted[1]}{grey} (at {size}), but data.normalize is "
            f"{_show(spec.data.normalize)}",
            ("data", "normalize"),
            hint=f"normalize: {{mean: {wanted[0]}, std: {wanted[1]}}}",
        )
        return


def _show(normalize: object) -> str:
    if isinstance(normalize, ExplicitNormalization):
        return f"{{mean: {normalize.mean}, std: {normalize.std}}}"
    return str(normalize)
