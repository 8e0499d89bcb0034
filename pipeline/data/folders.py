"""Image folders (Keras's flow_from_directory layout): a sub-folder per class, decoded by PIL."""

from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data.raw import DataError, RawData, Resolve
from pipeline.spec.base import pair
from pipeline.spec.data import DataSection

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Transparent pixels become white: what an image viewer or a web page shows behind them.
ALPHA_BACKGROUND = (255, 255, 255)


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
        x, y, skipped = decode_all(files, mode, size, data.skip_corrupt)
        out.splits[split] = (x, y)
        out.skipped[split] = [str(p.relative_to(folder)) for p in skipped]
        out.checksums[str(folder)] = folder_fingerprint(folder)
    out.classes = classes or []
    return out


def folder_fingerprint(folder: Path) -> str:
    """sha1 of every image file's relative name, size and mtime: changes when the folder does."""
    h = hashlib.sha1()
    for path in image_files(folder):
        st = path.stat()
        h.update(f"{path.relative_to(folder)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (any depth; symlinked folders are not followed), sorted.
    A folder that cannot be listed is a DataError naming it: skipping it, as ``Path.rglob``
    does, would leave its images out of the dataset without a word."""
    _require_folder(folder)

    def fail(err: OSError) -> None:
        raise DataError(f"cannot read folder {err.filename or folder}: {err.strerror or err}")

    found = []
    for top, _dirs, names in os.walk(folder, onerror=fail):
        for name in names:
            path = Path(top) / name
            if path.suffix.lower() in IMAGE_EXTENSIONS and _is_file(path):
                found.append(path)
    return sorted(found)


def _require_folder(folder: Path) -> None:
    try:
        if folder.is_file():
            raise DataError(f"image folder {folder} is a file, not a folder of class sub-folders")
        if not folder.is_dir():
            raise DataError(
                f"image folder {folder} does not exist: expected one sub-folder per class"
            )
    except OSError as err:
        raise DataError(f"cannot read image folder {folder}: {err.strerror or err}") from err


def _is_file(path: Path) -> bool:
    """A regular file, or a link to one (not a dangling link, a fifo or a folder)."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except FileNotFoundError:
        return False  # a dangling link
    except OSError as err:  # e.g. a folder that lists but cannot be entered
        raise DataError(f"cannot read folder {path.parent}: {err.strerror or err}") from err


def _scan(folder: Path, classes: list[str] | None) -> tuple[list[str], list[tuple[Path, int]]]:
    _require_folder(folder)
    try:
        names = sorted(
            d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
    except OSError as err:
        raise DataError(f"cannot read image folder {folder}: {err.strerror or err}") from err
    if not names:
        raise DataError(f"image folder {folder} has no class sub-folders")
    if classes is not None and names != classes:
        raise DataError(
            f"{folder} has class folders {names}, but the training folder has {classes}: "
            "every split needs the same class sub-folders"
        )
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(names):
        found = image_files(folder / name)
        if not found:
            raise DataError(
                f"class folder {folder / name} has no images (expected files ending in "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        files += [(p, label) for p in found]
    return names, files


def decode(path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image file as uint8 (C, H, W) in PIL ``mode`` ("L" or "RGB"), resized to ``size``
    (height, width) when given; transparency composited on white; 16-bit images scaled to 8
    bits (``predict`` decodes its files here too)."""
    from PIL import Image

    with Image.open(path) as img:
        img = _eight_bit(img)
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


def _eight_bit(img: Any) -> Any:
    """A 16-bit grayscale image (PNG and TIFF open as mode ``I;16``, a 16-bit PGM as ``I``) as
    8-bit ``L``: its high byte, which is how PIL itself reads 16-bit RGB. PIL's ``convert``
    would clip every value above 255 instead: a 16-bit photo would come out all white. A 16-bit
    transparent gray (PNG ``tRNS``) becomes the alpha of an ``LA`` image."""
    from PIL import Image

    if not (img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PPM")):
        return img
    values = np.asarray(img).astype(np.int64)
    out = Image.fromarray((values >> 8).clip(0, 255).astype(np.uint8))
    transparent = img.info.get("transparency")
    if isinstance(transparent, int):
        alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
        out = Image.merge("LA", (out, Image.fromarray(alpha)))
    return out


def decode_all(
    files: list[tuple[Path, int]], mode: str, size: tuple[int, int] | None, skip_corrupt: bool
) -> tuple[torch.Tensor, torch.Tensor, list[Path]]:
    from PIL import Image

    def one(path: Path) -> np.ndarray | Exception:
        try:
            return decode(path, mode, size)
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
