"""The data stage: read raw datasets, select classes and splits, write prepared arrays, batch them.

Public API::

    from pipeline.data import prepare, load_prepared, report, BatchLoader, DataError
    prepared = prepare(spec)                       # data/prepared/<dataset>-<hash>/, atomic
    train = BatchLoader.from_prepared(prepared, "train", 64, shuffle=True, seed=spec.seed)

Modules: ``sources`` (``read_source``, over ``builtin``: torchvision datasets, checked by
``verify``; and ``folders``: image folders), ``raw`` (``RawData``, ``DataError``, mirror and
cache), ``select`` and ``prepare`` (the prepare stage; ``store``: the prepared folder on disk,
whose it is and how it is replaced), ``loader`` (batches), ``augment`` (a
package: batched augmentation), ``preview``. Adding a torchvision dataset of a known family is one
entry of ``pipeline.spec.data.DATASETS``.
"""

from __future__ import annotations

from pipeline.data.loader import BatchLoader
from pipeline.data.prepare import (
    Prepared,
    build_splits,
    data_key,
    load_prepared,
    load_prepared_for,
    prepare,
    prepared_dir,
    report,
)
from pipeline.data.raw import DataError, RawData, cache_dir, dataset_root
from pipeline.data.sources import read_source

__all__ = [
    "BatchLoader",
    "DataError",
    "Prepared",
    "RawData",
    "build_splits",
    "cache_dir",
    "data_key",
    "dataset_root",
    "load_prepared",
    "load_prepared_for",
    "prepare",
    "prepared_dir",
    "read_source",
    "report",
]
