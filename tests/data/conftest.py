"""Fixtures for the data tests: the real MNIST/Fashion-MNIST mirror, specs, one prepared MNIST.

The mirror is ``shared/datasets`` beside the repository (``PIPELINE_DATA_MIRROR`` overrides).
Without it the tests that need it skip, except under CI (env ``CI`` set), where they fail.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pipeline.data import Prepared, prepare
from pipeline.spec import load_spec_text
from pipeline.spec.spec import Spec

MIRROR = Path(
    os.environ.get("PIPELINE_DATA_MIRROR")
    or Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
)
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def need_mirror(*folders: str) -> Path:
    """The mirror path; skip (or fail under CI) when a needed dataset folder is not there."""
    missing = [f for f in folders if not (MIRROR / f / "raw").is_dir()]
    if missing:
        why = f"dataset mirror {MIRROR} lacks {', '.join(missing)} (set PIPELINE_DATA_MIRROR)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return MIRROR


def raw_idx(folder: str, name: str) -> np.ndarray:
    """An IDX file of the mirror read with numpy alone, to check prepare against."""
    with gzip.open(MIRROR / folder / "raw" / f"{name}.gz") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture(scope="package", autouse=True)
def _data_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Downloads, stamps and extractions go to a fresh cache; the mirror comes from each spec.
    # Package scope: the environment is restored before other test packages run.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIPELINE_DATA_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("PIPELINE_DATA_MIRROR", raising=False)
        yield


def spec_from(data: dict[str, Any], base_dir: Path, seed: int = 0, epochs: int = 1) -> Spec:
    """A minimal spec around a data section (checks off: the model is only a placeholder)."""
    text = yaml.safe_dump(
        {
            "name": "t",
            "seed": seed,
            "data": data,
            "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 2}]},
            "train": {"epochs": epochs},
        }
    )
    return load_spec_text(text, base_dir=base_dir, check=False)


@pytest.fixture
def make_spec(tmp_path: Path) -> Callable[..., Spec]:
    def make(data: dict[str, Any], seed: int = 0, epochs: int = 1) -> Spec:
        return spec_from(data, tmp_path, seed, epochs)

    return make


@pytest.fixture(scope="package")
def mnist_prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """The whole of MNIST with the seeds' validation split (first 5000), prepared once."""
    mirror = need_mirror("MNIST")
    root = tmp_path_factory.mktemp("prepared")
    data = {"dataset": "mnist", "mirror": str(mirror), "validation": {"first": 5000}}
    return prepare(spec_from(data, root), root / "out")
