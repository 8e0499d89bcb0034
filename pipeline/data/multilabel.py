"""Multi-label image folders: the images under ``data.path`` and a labels file saying which
classes each one shows (``data.multi_label``).

The labels file is a CSV with the header ``file,labels``: ``file`` is relative to the folder,
``labels`` the image's classes separated by spaces or ``;`` (empty: none of them). The classes
are ``data.label_names`` in that order or, without it, every label of the training file,
sorted. Labels become multi-hot int64 rows (N, K), which the loader and the binary
cross-entropy take as they are. Mistakes in the file are reported as ``file:line: ...``.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.data.folders import decode_all, folder_fingerprint
from pipeline.data.raw import DataError, RawData, Resolve
from pipeline.spec.base import pair
from pipeline.spec.data import DataSection
from pipeline.spec.errors import did_you_mean

Row = tuple[int, str, list[str]]
"""(line number, image file as written, its labels)."""

_SEPARATORS = re.compile(r"[;\s]+")


def read_labels_file(path: Path) -> list[Row]:
    """The rows of a labels file, each image once."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read labels file {path}: {err}") from err
    header = [h.strip().lower() for h in lines[0]] if lines else []
    if header != ["file", "labels"]:
        raise DataError(f"{path}:1: expected the header 'file,labels', found {','.join(header)!r}")
    rows: list[Row] = []
    seen: dict[str, int] = {}
    for number, fields in enumerate(lines[1:], start=2):
        if not fields or not "".join(fields).strip():
            continue  # a blank line
        if len(fields) > 2 or not fields[0].strip():
            raise DataError(
                f"{path}:{number}: expected 'file,labels' (labels separated by spaces or ';'), "
                f"found {','.join(fields)!r}"
            )
        name = fields[0].strip()
        if name in seen:
            raise DataError(f"{path}:{number}: {name} is listed again (first on line {seen[name]})")
        seen[name] = number
        labels = [t for t in _SEPARATORS.split(fields[1] if len(fields) > 1 else "") if t]
        rows.append((number, name, labels))
    if not rows:
        raise DataError(f"{path} lists no images (expected 'file,labels' rows after the header)")
    return rows


def class_names(rows: list[Row], given: list[str] | None, path: Path) -> list[str]:
    """``given`` (every label checked against it), else the labels of ``rows``, sorted."""
    if given is None:
        return sorted({label for _, _, labels in rows for label in labels})
    check_labels(rows, given, path, "data.label_names")
    return list(given)


def check_labels(rows: list[Row], classes: list[str], path: Path, source: str) -> None:
    """A DataError at the first label that is not one of ``classes``."""
    known = set(classes)
    for number, _, labels in rows:
        for label in labels:
            if label not in known:
                hint = did_you_mean(label, classes)
                raise DataError(
                    f"{path}:{number}: unknown class {label!r}{'; ' + hint if hint else ''} "
                    f"(the classes, from {source}: {', '.join(classes)})"
                )


def multi_hot(rows: list[Row], classes: list[str]) -> torch.Tensor:
    """(N, K) int64: 1 where the row names the class."""
    index = {c: i for i, c in enumerate(classes)}
    out = torch.zeros(len(rows), len(classes), dtype=torch.int64)
    for r, (_, _, labels) in enumerate(rows):
        out[r, [index[label] for label in labels]] = 1
    return out


def image_path(folder: Path, name: str, labels_file: Path, number: int) -> Path:
    """The image a row names: a file inside ``folder`` (never ``..`` out of it)."""
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise DataError(f"{labels_file}:{number}: {name} is outside the image folder {folder}")
    if not path.is_file():
        raise DataError(f"{labels_file}:{number}: no image {name} in {folder}")
    return path


def labels_fingerprint(path: Path) -> str:
    """sha1 of a labels file's bytes: prepare redoes the data when the labels change."""
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError as err:
        raise DataError(f"cannot read labels file {path}: {err.strerror or err}") from err


def read_multi_label_folder(data: DataSection, resolve: Resolve) -> RawData:
    """The training folder (and ``test_path``) with their labels files, decoded like an image
    folder's images (``color_mode``, ``image_size``, ``skip_corrupt``)."""
    assert data.path is not None and data.labels_file is not None  # the checks require them
    splits = {"train": (resolve(data.path), resolve(data.labels_file))}
    if data.test_path and data.test_labels_file:
        splits["test"] = (resolve(data.test_path), resolve(data.test_labels_file))
    mode = "L" if data.color_mode == "grayscale" else "RGB"
    size = pair(data.image_size) if data.image_size is not None else None
    out = RawData([], {})
    for split, (folder, labels_file) in splits.items():
        rows = read_labels_file(labels_file)
        if split == "train":
            out.classes = class_names(rows, data.label_names, labels_file)
        else:
            check_labels(rows, out.classes, labels_file, "the training labels file")
        files = [
            (image_path(folder, name, labels_file, n), r) for r, (n, name, _) in enumerate(rows)
        ]
        x, row, skipped = decode_all(files, mode, size, data.skip_corrupt)
        out.splits[split] = (x, multi_hot(rows, out.classes)[row])
        out.skipped[split] = [str(p.relative_to(folder.resolve())) for p in skipped]
        out.checksums[str(folder)] = folder_fingerprint(folder)
        out.checksums[str(labels_file)] = labels_fingerprint(labels_file)
    return out


def fingerprints(data: DataSection, path_of: Callable[[str], Path]) -> dict[str, str]:
    """The labels files' fingerprints, keyed as written (prepare's 'complete' compares them)."""
    files = [data.labels_file, data.test_labels_file]
    return {f: labels_fingerprint(path_of(f)) for f in files if f}
