"""Raw datasets as uint8 tensors (N, C, H, W) with int64 labels and class names: one entry point
over the sources, built-in datasets (:mod:`pipeline.data.builtin`, verified by
:mod:`pipeline.data.verify`) and image folders (:mod:`pipeline.data.folders`)."""

from __future__ import annotations

from pathlib import Path

from pipeline.data.builtin import builtin
from pipeline.data.folders import read_image_folder
from pipeline.data.multilabel import read_multi_label_folder
from pipeline.data.raw import DataError, RawData, Resolve, cache_dir, dataset_root
from pipeline.spec.data import DataSection

__all__ = ["DataError", "RawData", "cache_dir", "dataset_root", "read_source"]


def read_source(
    data: DataSection,
    resolve: Resolve = lambda p: Path(p).resolve(),
    *,
    retries: int = 3,
    backoff_s: float = 2.0,
) -> RawData:
    """Read the dataset a data section names; paths in it are resolved with ``resolve``."""
    if data.dataset == "image_folder":
        read = read_multi_label_folder if data.multi_label else read_image_folder
        return read(data, resolve)
    return builtin(data.dataset).read(data, resolve, retries, backoff_s)
