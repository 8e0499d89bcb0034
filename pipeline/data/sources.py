"""Raw datasets as uint8 tensors (N, C, H, W) with int64 labels and class names.

Built-in datasets go through ``torchvision.datasets``: from a local mirror (``download=False``) or
torchvision's own download into a cache, their raw files checked against the md5s torchvision
publishes before anything reads them. Image folders are decoded with PIL.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import atomic
from pipeline.errors import PipelineError
from pipeline.spec.base import pair
from pipeline.spec.data import DATASETS, DataSection

MIRROR_ENV = "PIPELINE_DATA_MIRROR"
CACHE_ENV = "PIPELINE_DATA_CACHE"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Transparent pixels become white: what an image viewer or a web page shows behind them.
ALPHA_BACKGROUND = (255, 255, 255)

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


def read_source(
    data: DataSection,
    resolve: Resolve = lambda p: Path(p).resolve(),
    *,
    retries: int = 3,
    backoff_s: float = 2.0,
) -> RawData:
    """Read the dataset a data section names; paths in it are resolved with ``resolve``."""
    if data.dataset == "image_folder":
        return read_image_folder(data, resolve)
    return _BUILTIN[data.dataset].read(data, resolve, retries, backoff_s)


# ---- checksums, cached ---------------------------------------------------------------------


class _Stamps:
    """md5s already computed, keyed by path + size + mtime, so a second prepare does not re-hash
    ~50 MB of raw files. A changed file has a new key and is hashed again."""

    def __init__(self) -> None:
        self.path = cache_dir() / "verified.json"
        try:
            self.known: dict[str, str] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.dirty = False

    def digest(self, path: Path, kind: str = "md5") -> str:
        st = path.stat()
        key = f"{kind}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in self.known:
            self.known[key] = _md5(path, gzip.open if kind == "gunzip-md5" else open)
            self.dirty = True
        return self.known[key]

    def save(self) -> None:
        if not self.dirty:
            return

        def current(key: str) -> bool:  # forget files since changed or deleted
            path, size, mtime = key.split("|", 1)[1].rsplit("|", 2)
            try:
                st = os.stat(path)
            except OSError:
                return False
            return (st.st_size, st.st_mtime_ns) == (int(size), int(mtime))

        self.known = {k: v for k, v in self.known.items() if current(k)}
        with contextlib.suppress(OSError):  # a read-only cache only costs re-hashing later
            atomic.write_text(self.path, json.dumps(self.known, indent=0, sort_keys=True))


def _md5(path: Path, opener: Callable[..., Any] = open) -> str:
    h = hashlib.md5(usedforsecurity=False)
    try:
        with opener(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path} ({err}): replace it with a good copy") from err
    return h.hexdigest()


def _check_md5(path: Path, expected: str, stamps: _Stamps, what: str) -> str:
    if not path.is_file():
        raise DataError(f"{path} is missing: expected {what} there (md5 {expected})")
    actual = stamps.digest(path)
    if actual != expected:
        raise DataError(
            f"checksum mismatch for {path}: expected md5 {expected} (torchvision's published "
            f"value), got {actual}; the file is partial or corrupt: replace it with a good copy"
        )
    return actual


# ---- built-in datasets ---------------------------------------------------------------------


def _download(fetch: Callable[[], Any], what: str, retries: int, backoff_s: float) -> None:
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


@dataclass(frozen=True)
class _Builtin:
    """One torchvision dataset: where its raw files lie under ``root`` and how to read them."""

    name: str
    tv_class: str  # attribute of torchvision.datasets
    layout: str  # "idx" (MNIST family) or "cifar"

    def cls(self) -> Any:
        import torchvision.datasets

        return getattr(torchvision.datasets, self.tv_class)

    def files(self) -> list[tuple[str, str]]:
        """(path relative to root, md5) for every raw file torchvision publishes a md5 of."""
        cls = self.cls()
        if self.layout == "idx":
            folder = f"{cls.__name__}/raw"
            return [(f"{folder}/{os.path.basename(u)}", md5) for u, md5 in cls.resources]
        listed = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
        return [(f"{cls.base_folder}/{name}", md5) for name, md5 in listed]

    def read(self, data: DataSection, resolve: Resolve, retries: int, backoff_s: float) -> RawData:
        mirror = dataset_root(data, resolve)
        stamps = _Stamps()
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
        return RawData(list(DATASETS[self.name][3]), splits, checksums)

    def _mirror_root(self, mirror: Path, stamps: _Stamps) -> Path:
        if not mirror.is_dir():
            raise DataError(
                f"data mirror {mirror} does not exist: expected a folder laid out like "
                f"torchvision's root, holding {self.files()[0][0]} and the other raw files"
            )
        for rel, md5 in self.files():
            _check_md5(mirror / rel, md5, stamps, f"{self.tv_class}'s raw file {Path(rel).name}")
        return mirror

    def _cached_root(self, download: bool, stamps: _Stamps, retries: int, backoff_s: float) -> Path:
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
        if not download:
            raise DataError(
                f"{self.name} is not in the cache {root} (missing {(missing + bad)[0]}) and "
                f"data.download is false: set {MIRROR_ENV} or data.mirror to a local copy"
            )
        for rel in bad:
            (root / rel).unlink()
            extracted = (root / rel).with_suffix("")
            if rel.endswith(".gz") and extracted.exists():
                extracted.unlink()
        cls = self.cls()
        _download(
            lambda: cls(root=str(root), train=False, download=True),
            f"{self.name} into {root}",
            retries,
            backoff_s,
        )
        for rel, md5 in self.files():
            _check_md5(root / rel, md5, stamps, f"the downloaded {Path(rel).name}")
        return root

    def _extracted(self, root: Path, stamps: _Stamps) -> Path:
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
                ds = self.cls()(root=str(root), train=train, download=False)
                return ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64)
            ds = _trusting(self.cls())(root=str(root), train=train, download=False)
        except RuntimeError as err:
            raise DataError(f"torchvision could not read {self.name} from {root}: {err}") from err
        x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        return x, torch.as_tensor(ds.targets, dtype=torch.int64)


def _trusting(cls: type) -> type:
    # torchvision's CIFAR re-hashes all seven batch files (~180 MB) on every construction; ours
    # were just verified (with cached stamps), so skip that second pass.
    return type(cls.__name__, (cls,), {"_check_integrity": lambda self: True})


_BUILTIN = {
    "mnist": _Builtin("mnist", "MNIST", "idx"),
    "fashion_mnist": _Builtin("fashion_mnist", "FashionMNIST", "idx"),
    "cifar10": _Builtin("cifar10", "CIFAR10", "cifar"),
    "cifar100": _Builtin("cifar100", "CIFAR100", "cifar"),
}


# ---- image folders -------------------------------------------------------------------------


def read_image_folder(data: DataSection, resolve: Resolve) -> RawData:
    """Class sub-folders (sorted names = classes) of ``path``, and of ``test_path`` and
    ``validation.path`` when given, decoded to ``color_mode`` (default rgb) at ``image_size``."""
    assert data.path is not None  # the schema requires it for image_folder
    folders = {"train": resolve(data.path)}
    if data.test_path:
        folders["test"] = resolve(data.test_path)
    if data.validation is not None and data.validation.path:
        folders["val"] = resolve(data.validation.path)
    mode = "L" if data.color_mode == "grayscale" else "RGB"
    size = pair(data.image_size) if data.image_size is not None else None
    classes: list[str] | None = None
    out = RawData([], {})
    for split, folder in folders.items():
        names, files = _scan(folder, classes)
        classes = classes or names
        x, y, skipped = _decode_all(files, mode, size, data.skip_corrupt)
        out.splits[split] = (x, y)
        out.skipped[split] = [str(p.relative_to(folder)) for p in skipped]
        out.checksums[str(folder)] = folder_fingerprint(folder)
    out.classes = classes or []
    return out


def folder_fingerprint(folder: Path) -> str:
    """sha1 of every image file's relative name, size and mtime: changes when the folder does."""
    h = hashlib.sha1()
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            st = path.stat()
            h.update(f"{path.relative_to(folder)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _scan(folder: Path, classes: list[str] | None) -> tuple[list[str], list[tuple[Path, int]]]:
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist: expected one sub-folder per class")
    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise DataError(f"image folder {folder} has no class sub-folders")
    if classes is not None and names != classes:
        raise DataError(
            f"{folder} has class folders {names}, but the training folder has {classes}: "
            "every split needs the same class sub-folders"
        )
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(names):
        found = sorted(
            p
            for p in (folder / name).rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not found:
            raise DataError(
                f"class folder {folder / name} has no images (expected files ending in "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        files += [(p, label) for p in found]
    return names, files


def _decode(path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            img = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
            img.alpha_composite(rgba)
        img = img.convert(mode)
        if size is not None and img.size != (size[1], size[0]):
            # Pillow's bilinear resize widens its filter when shrinking, i.e. it antialiases.
            img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _decode_all(
    files: list[tuple[Path, int]], mode: str, size: tuple[int, int] | None, skip_corrupt: bool
) -> tuple[torch.Tensor, torch.Tensor, list[Path]]:
    from PIL import Image

    def one(path: Path) -> np.ndarray | Exception:
        try:
            return _decode(path, mode, size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            return err  # PIL raises all of these on broken files

    paths = [p for p, _ in files]
    # PIL releases the GIL while decoding: threads pay off for photos (1.4x on 2 cores for
    # 150x150 JPEGs) but lose to the GIL on thumbnails (28x28 PNGs: 1.4x slower).
    sample = paths[:64]
    big = sum(p.stat().st_size for p in sample) > 4096 * len(sample)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1) if big else 1) as pool:
        decoded = list(pool.map(one, paths))
    images, labels, skipped, first = [], [], [], Path()
    for (path, label), arr in zip(files, decoded, strict=True):
        if isinstance(arr, Exception):
            if not skip_corrupt:
                raise DataError(
                    f"cannot read image {path}: {arr} (fix or delete it, or set "
                    "data.skip_corrupt: true to skip unreadable images)"
                )
            skipped.append(path)
            continue
        if not images:
            first = path
        elif arr.shape != images[0].shape:
            raise DataError(
                f"{path} is {arr.shape[2]}x{arr.shape[1]} but {first} is "
                f"{images[0].shape[2]}x{images[0].shape[1]}: set data.image_size to resize them"
            )
        images.append(arr)
        labels.append(label)
    if not images:
        raise DataError(f"no readable images among {len(files)} files")
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64), skipped
