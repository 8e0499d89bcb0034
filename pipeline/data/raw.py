"""What every data source reads into (:class:`RawData`), the one data error, and where local
copies live (the mirror and the cache)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.errors import PipelineError
from pipeline.spec.data import DataSection

MIRROR_ENV = "PIPELINE_DATA_MIRROR"
CACHE_ENV = "PIPELINE_DATA_CACHE"

Resolve = Callable[[str], Path]


class DataError(PipelineError):
    """A data problem a user can fix (missing or corrupt file, unknown class, failed download);
    the message names the file or field and says what was expected."""


@dataclass
class RawData:
    """Images before selection: split name ("train", "test", "val") -> (x uint8 N,C,H,W,
    y int64 N)."""

    classes: list[str]
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    checksums: dict[str, str] = field(default_factory=dict)
    """Source file -> md5 (built-ins), or folder -> fingerprint of names, sizes, mtimes."""
    skipped: dict[str, list[str]] = field(default_factory=dict)
    """Split -> corrupt image files skipped (``skip_corrupt: true``)."""


def cache_dir() -> Path:
    """Where downloads and verification stamps live (``PIPELINE_DATA_CACHE`` overrides)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache/pipeline/datasets"


def dataset_root(data: DataSection, resolve: Resolve = lambda p: Path(p).resolve()) -> Path | None:
    """The mirror folder (``PIPELINE_DATA_MIRROR`` wins over ``data.mirror``), or None."""
    env = os.environ.get(MIRROR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return resolve(data.mirror) if data.mirror else None
