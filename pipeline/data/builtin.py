"""Built-in datasets through ``torchvision.datasets``: from a local mirror (``download=False``) or
torchvision's own download into the cache, their raw files checked against the md5s torchvision
publishes before anything reads them.

Which datasets there are, their shapes and classes, is ``pipeline.spec.data.DATASETS``; this
module reads every torchvision class of a family it knows (:data:`FAMILIES`), so adding a dataset
of a known family is one entry there. A dataset of a new family needs its layout here too.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import atomic
from pipeline.data.raw import MIRROR_ENV, DataError, RawData, Resolve, cache_dir, dataset_root
from pipeline.data.verify import Stamps, check_md5
from pipeline.spec.data import DATASETS, DataSection

FAMILIES = {"MNIST": "idx", "CIFAR10": "cifar"}
"""torchvision base class -> how its subclasses lie on disk: ``idx`` (MNIST, FashionMNIST, ...:
gzipped idx files under ``<Class>/raw``), ``cifar`` (CIFAR10, CIFAR100: pickled batches)."""


def download(fetch: Callable[[], Any], what: str, retries: int, backoff_s: float) -> None:
    """Call ``fetch`` up to ``retries`` times with exponential backoff; a retryable DataError
    suggesting a local mirror when every attempt fails."""
    last: BaseException | None = None
    for attempt in range(1, retries + 1):
        try:
            fetch()
            return
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            last = err
            if attempt < retries:
                time.sleep(backoff_s * 2 ** (attempt - 1))
    reason = str(last).strip().splitlines()[-1] if last and str(last).strip() else repr(last)
    raise DataError(
        f"downloading {what} failed after {retries} attempts ({reason}). Without internet, use a "
        f"local copy: set {MIRROR_ENV}=/path/to/datasets (or data.mirror in the spec) to a folder "
        f"laid out like torchvision's root, e.g. <mirror>/MNIST/raw/train-images-idx3-ubyte.gz",
        retryable=True,  # the network may come back
    )


def builtin(name: str) -> Builtin:
    """The reader of the built-in dataset ``name`` (a key of ``DATASETS``)."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, DATASETS[name].torchvision)
    for base, layout in FAMILIES.items():
        if issubclass(cls, getattr(torchvision.datasets, base)):
            return Builtin(name, cls, layout)
    raise TypeError(
        f"dataset {name!r}: torchvision.datasets.{cls.__name__} is of no family this module "
        f"reads ({', '.join(FAMILIES)}): add its layout to pipeline.data.builtin.FAMILIES"
    )


@dataclass(frozen=True)
class Builtin:
    """One torchvision dataset: where its raw files lie under ``root`` and how to read them."""

    name: str
    cls: Any  # the torchvision.datasets class
    layout: str  # a value of FAMILIES

    def files(self) -> list[tuple[str, str]]:
        """(path relative to root, md5) for every raw file torchvision publishes a md5 of."""
        cls = self.cls
        if self.layout == "idx":
            folder = f"{cls.__name__}/raw"
            return [(f"{folder}/{os.path.basename(u)}", md5) for u, md5 in cls.resources]
        listed = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
        return [(f"{cls.base_folder}/{name}", md5) for name, md5 in listed]

    def read(self, data: DataSection, resolve: Resolve, retries: int, backoff_s: float) -> RawData:
        mirror = dataset_root(data, resolve)
        stamps = Stamps()
        try:
            if mirror is not None:
                root = self._mirror_root(mirror, stamps)
            else:
                root = self._cached_root(data.download, stamps, retries, backoff_s)
            checksums = {rel: stamps.digest(root / rel) for rel, _ in self.files()}
            if self.layout == "idx":
                root = self._extracted(root, stamps)
        finally:
            stamps.save()
        splits = {"train": self._load(root, train=True), "test": self._load(root, train=False)}
        return RawData(list(DATASETS[self.name].classes), splits, checksums)

    def _mirror_root(self, mirror: Path, stamps: Stamps) -> Path:
        if not mirror.is_dir():
            raise DataError(
                f"data mirror {mirror} does not exist: expected a folder laid out like "
                f"torchvision's root, holding {self.files()[0][0]} and the other raw files"
            )
        for rel, md5 in self.files():
            check_md5(mirror / rel, md5, stamps, f"{self.cls.__name__}'s raw file {Path(rel).name}")
        return mirror

    def _cached_root(
        self, may_download: bool, stamps: Stamps, retries: int, backoff_s: float
    ) -> Path:
        root = cache_dir()
        missing = [rel for rel, md5 in self.files() if not (root / rel).is_file()]
        # A partial or corrupt download in our own cache is fetched again, not reported.
        bad = [
            rel
            for rel, md5 in self.files()
            if rel not in missing and stamps.digest(root / rel) != md5
        ]
        if not missing and not bad:
            return root
        if not may_download:
            raise DataError(
                f"{self.name} is not in the cache {root} (missing {(missing + bad)[0]}) and "
                f"data.download is false: set {MIRROR_ENV} or data.mirror to a local copy"
            )
        for rel in bad:
            (root / rel).unlink()
            extracted = (root / rel).with_suffix("")
            if rel.endswith(".gz") and extracted.exists():
                extracted.unlink()
        cls = self.cls
        download(
            lambda: cls(root=str(root), train=False, download=True),
            f"{self.name} into {root}",
            retries,
            backoff_s,
        )
        for rel, md5 in self.files():
            check_md5(root / rel, md5, stamps, f"the downloaded {Path(rel).name}")
        return root

    def _extracted(self, root: Path, stamps: Stamps) -> Path:
        """torchvision reads MNIST's uncompressed files: check they equal the verified .gz, or
        extract them into the cache when the root holds only the .gz files."""
        gz_files = [root / rel for rel, _ in self.files()]
        if all(p.with_suffix("").is_file() for p in gz_files):
            for gz in gz_files:
                raw, want = gz.with_suffix(""), stamps.digest(gz, "gunzip-md5")
                if stamps.digest(raw) != want:
                    raise DataError(
                        f"{raw} does not match the verified {gz.name} (md5 {stamps.digest(raw)},"
                        f" expected {want}): re-extract it with 'gunzip -kf {gz}'"
                    )
            return root
        out = cache_dir() / "extracted" / hashlib.sha1(str(root).encode()).hexdigest()[:10]
        for gz in gz_files:
            target = out / gz.relative_to(root).with_suffix("")
            if target.is_file() and stamps.digest(target) == stamps.digest(gz, "gunzip-md5"):
                continue
            with atomic.replacing(target) as tmp, tmp.open("wb") as dst, gzip.open(gz) as src:
                shutil.copyfileobj(src, dst, 1 << 22)
        return out

    def _load(self, root: Path, *, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            if self.layout == "idx":
                ds = self.cls(root=str(root), train=train, download=False)
                return ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64)
            ds = _trusting(self.cls)(root=str(root), train=train, download=False)
        except RuntimeError as err:
            raise DataError(f"torchvision could not read {self.name} from {root}: {err}") from err
        x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        return x, torch.as_tensor(ds.targets, dtype=torch.int64)


def _trusting(cls: type) -> type:
    # torchvision's CIFAR re-hashes all seven batch files (~180 MB) on every construction; ours
    # were just verified (with cached stamps), so skip that second pass.
    return type(cls.__name__, (cls,), {"_check_integrity": lambda self: True})
