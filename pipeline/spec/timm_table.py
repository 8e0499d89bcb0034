"""timm backbones as validation sees them: read from ``timm_archs.json``, never from timm.

``pipeline.model.timm_table`` measures the table from timm (``pipeline docs`` rewrites it when
timm's version or its list of names changed). A backbone ``arch: timm/<name>`` is valid when
``<name>`` is in the table; ``TIMM_NAMES`` (every name timm has) only serves the error for a
name the table lacks.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from pipeline.spec.arch import Arch

TABLE_FILE = "pipeline/spec/timm_archs.json"
"""The table, relative to the project root."""
PREFIX = "timm/"

TABLE_NAMES: tuple[str, ...] = (
    # timm's own tiny test architectures: quick experiments and this project's tests
    "test_resnet", "test_efficientnet", "test_convnext",
    "resnet10t", "resnet18", "resnet18d", "resnet34", "resnet50", "resnet50d",
    "resnext50_32x4d", "mobilenetv3_small_050", "mobilenetv3_small_100",
    "mobilenetv3_large_100", "mobilenetv4_conv_small", "lcnet_050", "mnasnet_100",
    "efficientnet_b0", "efficientnet_b1", "tf_efficientnet_b0", "efficientnetv2_rw_t",
    "convnext_atto", "convnext_nano", "convnext_tiny", "regnetx_002", "regnety_002",
)  # fmt: skip
"""Convolutional timm architectures whose output size follows one stride rule (checked when the
table is written); transformers with a fixed input size are left out, and so is DenseNet (a
29x29 input still gives a 1x1 map: no one rule)."""


class TableError(Exception):
    """The table is missing or unreadable."""


class TimmArch(Arch):
    """A timm architecture: ``timm.create_model(name)``; without the top,
    ``create_model(name, num_classes=0, global_pool="")``, whose output is the feature map."""

    source: ClassVar[str] = "timm"

    top_blocks: list[str]
    """Its top-level children with the classifier (timm keeps the same names without it,
    as identities)."""
    stages: list[str]
    """The children of a top-level block that timm's feature_info points into
    (``blocks.0``...), selectable after their parent."""
    input_size: list[int]
    """[channels, height, width] of timm's pretrained_cfg: the size its weights were trained at."""
    mean: list[float]
    std: list[float]
    """The normalization its pretrained weights expect (pretrained_cfg), per RGB channel."""
    params: int
    top_params: int
    first_conv_per_channel: int = 0
    """Parameters of its first convolution per input channel (params count 3 channels)."""
    buffers: int
    activations_per_pixel: float

    def children(self, include_top: bool) -> list[str]:
        """Its top-level children, each followed by its stages (as the model side's
        ``timm_backbones.block_names``)."""
        out = []
        for block in self.top_blocks if include_top else self.blocks:
            out += [block, *(s for s in self.stages if s.rsplit(".", 1)[0] == block)]
        return out


def read_table(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise TableError(f"cannot read the timm table {path}: {err}") from err
    if not isinstance(data, dict) or not {"timm_version", "archs", "names"} <= set(data):
        raise TableError(f"{path} is not a timm table (run `pipeline docs`)")
    return data


def is_current(root: Path) -> bool:
    """The table under ``root`` is for the installed timm and :data:`TABLE_NAMES` (cheap:
    imports and builds nothing)."""
    try:
        data = read_table(root / TABLE_FILE)
        version = metadata.version("timm")
    except (TableError, metadata.PackageNotFoundError):
        return False
    return data["timm_version"] == version and list(data["archs"]) == list(TABLE_NAMES)


_TABLE = read_table(Path(__file__).with_name(Path(TABLE_FILE).name))
TIMM_VERSION: str = _TABLE["timm_version"]
TIMM_ARCHS: dict[str, TimmArch] = {
    PREFIX + name: TimmArch(**entry) for name, entry in _TABLE["archs"].items()
}
TIMM_NAMES: tuple[str, ...] = tuple(sorted(_TABLE["names"]))
"""Every model name of the timm version the table was written with."""
